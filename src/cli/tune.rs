//! `jitune tune`: tunes each kernel spec for the shapes of a shapes file on one GPU, with a
//! progress bar per kernel that ticks as each shape finishes (best time so far, ETA over the
//! shapes; `tune_with` has no per-evaluation callback). Ctrl-C stops between shapes: every
//! finished shape is already stored in the cache; the shape in flight is abandoned.
//!
//! Shapes file (TOML): one array of shapes per kernel name, e.g.
//! `sgemm = [[1024, 1024, 1024], [4096, 4096, 4096]]`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::{cache_path, exit, input_err, print_json, print_table, CliError, CliResult, Strategy};
use crate::cache::{Cache, CacheOptions};
use crate::tuner::{Kernel, Mode, TuneOptions, TuneReport, Tuner};
use crate::Error;

/// Arguments of `jitune tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Kernel spec files (e.g. kernels/*.toml).
    #[arg(required = true, value_name = "SPEC.toml")]
    pub specs: Vec<PathBuf>,
    /// Shapes file: `KERNEL_NAME = [[d0, d1, ...], ...]` per kernel.
    #[arg(long, value_name = "FILE")]
    pub shapes: PathBuf,
    /// Most configs evaluated per shape.
    #[arg(long, default_value_t = 120)]
    pub budget: usize,
    /// Most seconds of tuning per shape.
    #[arg(long, value_name = "S")]
    pub time_limit: Option<f64>,
    /// Search strategy.
    #[arg(long, value_enum, default_value = "lfbo")]
    pub strategy: Strategy,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Search seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append each shape's convergence curve as one JSON line (for `jitune report --trace`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub trace: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Reads the shapes file: for each spec name, its shapes.
pub fn read_shapes(path: &Path, names: &[String]) -> CliResult<Vec<Vec<Vec<i64>>>> {
    let text = std::fs::read_to_string(path).map_err(|e| input_err(Error::io(path, e)))?;
    let bad = |m: String| CliError::new(exit::RUNTIME, format!("{}: {m}", path.display()));
    let doc: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for name in names {
        let list = doc
            .get(name)
            .ok_or_else(|| bad(format!("no shapes for kernel `{name}`")))?
            .as_array()
            .ok_or_else(|| bad(format!("`{name}` is not an array of shapes")))?;
        let mut shapes = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let dims = s
                .as_array()
                .ok_or_else(|| bad(format!("`{name}`[{i}] is not an array of integers")))?
                .iter()
                .map(|d| d.as_integer().filter(|v| *v > 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| {
                    bad(format!(
                        "`{name}`[{i}] holds a non-positive or non-integer dimension"
                    ))
                })?;
            shapes.push(dims);
        }
        if shapes.is_empty() {
            return Err(bad(format!("`{name}` has no shapes")));
        }
        out.push(shapes);
    }
    Ok(out)
}

/// Runs `jitune tune`; returns 0, or 130 when Ctrl-C stopped it.
pub fn run(cache: Option<PathBuf>, args: TuneArgs) -> CliResult<i32> {
    // Inputs first: a bad spec or shapes file is reported before anything touches the GPU.
    let mut kernels = Vec::new();
    for p in &args.specs {
        kernels.push(Kernel::from_toml_file(p).map_err(input_err)?);
    }
    let names: Vec<String> = kernels.iter().map(|k| k.spec.name.clone()).collect();
    let shapes = read_shapes(&args.shapes, &names)?;
    for (k, list) in kernels.iter().zip(&shapes) {
        for s in list {
            if k.spec.bucket(s).is_none() {
                return Err(CliError::new(
                    exit::RUNTIME,
                    format!(
                        "{}: shape {s:?} of `{}` needs {} dimensions",
                        args.shapes.display(),
                        k.spec.name,
                        k.spec.dims.len()
                    ),
                ));
            }
        }
    }
    crate::gpu::require_cuda()?;
    let path = cache_path(cache)?;
    let cache = Cache::open(CacheOptions::at(&path))?;
    if let Some(why) = cache.degraded() {
        return Err(CliError::new(
            exit::CACHE,
            format!("{}: {why}", path.display()),
        ));
    }
    let gpu = crate::gpu::device::Gpu::new(args.device)?;
    let tuner = Tuner::with_context(gpu.ctx.clone(), cache, Mode::Blocking)?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C exits at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(exit::INTERRUPTED);
            }
            eprintln!("\njitune: stopping after the shape in flight is abandoned; finished shapes are stored (Ctrl-C again to quit now)");
        });
    }
    let mut trace = match &args.trace {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| input_err(Error::io(p, e)))?,
        ),
        None => None,
    };
    let opts = TuneOptions {
        strategy: args.strategy.name().into(),
        max_evals: args.budget,
        max_time_s: args.time_limit,
        seed: args.seed,
    };
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} shapes {msg} ETA {eta}",
    )
    .map_err(|e| CliError::new(exit::RUNTIME, e.to_string()))?
    .progress_chars("=> ");
    let mut results: Vec<(String, Vec<i64>, TuneReport)> = Vec::new();
    let mut interrupted = false;
    'kernels: for (k, list) in kernels.iter().zip(&shapes) {
        let bar = multi.add(indicatif::ProgressBar::new(list.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(k.spec.name.clone());
        let mut best = f64::INFINITY;
        for s in list {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                bar.abandon_with_message("interrupted");
                break 'kernels;
            }
            bar.set_message(format!("tuning {}", dims_text(s)));
            let report = tuner.tune_with(k, s, &opts);
            if stop.load(Ordering::SeqCst) {
                // The shape finished (or failed) while stopping; a finished one is stored.
                interrupted = true;
            }
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon_with_message(format!("failed on {}", dims_text(s)));
                    return Err(e.into());
                }
            };
            best = best.min(report.entry.median_ms);
            bar.set_message(format!("best {best:.4} ms"));
            bar.inc(1);
            if let Some(f) = trace.as_mut() {
                use std::io::Write;
                let line = json!({
                    "kernel": k.spec.name,
                    "shape": report.entry.key.shape.to_text(),
                    "strategy": report.entry.strategy,
                    "default_ms": report.default_ms,
                    "curve": report.curve,
                });
                writeln!(f, "{line}")
                    .map_err(|e| input_err(Error::io(args.trace.clone().unwrap_or_default(), e)))?;
            }
            results.push((k.spec.name.clone(), s.clone(), report));
            if interrupted {
                bar.abandon_with_message("interrupted");
                break 'kernels;
            }
        }
        bar.finish_with_message(format!("best {best:.4} ms"));
    }
    summary(&results, args.json)?;
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

fn dims_text(s: &[i64]) -> String {
    s.iter().map(i64::to_string).collect::<Vec<_>>().join("x")
}

fn summary(results: &[(String, Vec<i64>, TuneReport)], json: bool) -> CliResult {
    if json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(k, s, r)| {
                json!({
                    "kernel": k,
                    "shape": s,
                    "key": r.entry.key.display(),
                    "config": r.entry.config,
                    "median_ms": r.entry.median_ms,
                    "default_ms": r.default_ms,
                    "speedup": r.default_ms.map(|d| d / r.entry.median_ms),
                    "evaluated": r.entry.evaluated,
                    "wall_s": r.wall_s,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(v));
    }
    let rows: Vec<[String; 6]> = results
        .iter()
        .map(|(k, s, r)| {
            [
                k.clone(),
                dims_text(s),
                format!("{:.4}", r.entry.median_ms),
                r.default_ms.map_or("-".into(), |d| format!("{d:.4}")),
                r.default_ms
                    .map_or("-".into(), |d| format!("{:.2}x", d / r.entry.median_ms)),
                r.entry.config.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "KERNEL",
            "SHAPE",
            "BEST_MS",
            "DEFAULT_MS",
            "SPEEDUP",
            "WINNER",
        ],
        &rows,
    );
    Ok(())
}
