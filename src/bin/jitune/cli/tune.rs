//! `jitune tune`: tunes each kernel spec for the shapes of a shapes file on one GPU, with one
//! progress bar per shape driven by the search's progress callback (evaluations of the budget,
//! best time so far, ETA), then prints the summary table (winner, its time, the default's time,
//! the speed-up). Ctrl-C sets the search's cancellation flag: the shape in flight ends after
//! its current batch and its best config so far is stored, marked partial; finished shapes are
//! already stored; no further shape starts; the summary prints and the exit code is 130.
//! `--trace` writes each shape's convergence curve as measured: seconds and best time so far
//! after every batch.
//!
//! Shapes file (TOML): one array of shapes per kernel name, e.g.
//! `sgemm = [[1024, 1024, 1024], [4096, 4096, 4096]]`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::{cache_path, exit, input_err, print_json, print_table, CliError, CliResult, Strategy};
use jitune::cache::{Cache, CacheOptions};
use jitune::search::{Hooks, Progress, ProgressHook};
use jitune::tuner::{Kernel, Mode, TuneOptions, TuneReport, Tuner};
use jitune::Error;

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
    if args.budget == 0 {
        return Err(CliError::new(exit::USAGE, "--budget must be at least 1"));
    }
    if args.time_limit.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        return Err(CliError::new(
            exit::USAGE,
            "--time-limit must be a positive number of seconds",
        ));
    }
    jitune::require_cuda()?;
    let path = cache_path(cache)?;
    let cache = Cache::open(CacheOptions::at(&path))?;
    if let Some(why) = cache.degraded() {
        return Err(CliError::new(
            exit::CACHE,
            format!("{}: {why}", path.display()),
        ));
    }
    let gpu = jitune::Gpu::new(args.device)?;
    let tuner = Tuner::with_context(gpu.ctx.clone(), cache, Mode::Blocking)?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // The first Ctrl-C sets the flag the search checks between batches; a second one exits
        // at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(exit::INTERRUPTED);
            }
            eprintln!("\njitune: stopping after the batch in flight; its best config so far is stored (Ctrl-C again to quit now)");
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
        ..Default::default()
    };
    let multi = indicatif::MultiProgress::new();
    let style = bar_style(args.time_limit)?;
    let mut results: Vec<(String, Vec<i64>, TuneReport)> = Vec::new();
    // Shapes whose winner the cache file did not take (the cache keeps it in memory and counts
    // the failed write instead of failing): the run must not end with 0 as if it were stored.
    let mut not_stored: Vec<String> = Vec::new();
    let mut interrupted = false;
    'kernels: for (k, list) in kernels.iter().zip(&shapes) {
        for s in list {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break 'kernels;
            }
            // One bar per shape: evaluations of the budget, best so far, ETA.
            let bar = multi.add(indicatif::ProgressBar::new(args.budget as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("{} {}", k.spec.name, dims_text(s)));
            bar.set_message("compiling the reference");
            let curve: Arc<parking_lot::Mutex<Vec<(f64, f64)>>> = Arc::default();
            let hooks = Hooks {
                cancel: Some(stop.clone()),
                progress: Some(progress_hook(bar.clone(), curve.clone())),
            };
            let failed_writes = tuner.cache().store_write_failures();
            let report = tuner.tune_with_hooks(k, s, &opts, hooks);
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
            }
            let report = match report {
                Ok(r) => r,
                Err(_) if interrupted => {
                    // Cancelled before any config ran correctly: nothing to store for it.
                    bar.abandon_with_message("interrupted before any config was measured");
                    break 'kernels;
                }
                Err(e) => {
                    bar.abandon_with_message("failed");
                    return Err(e.into());
                }
            };
            let done = format!(
                "{:.4} ms{}{}",
                report.entry.median_ms,
                report.default_ms.map_or(String::new(), |d| format!(
                    " ({:.2}x over default)",
                    d / report.entry.median_ms
                )),
                if report.partial {
                    format!(", partial: {} evaluations", report.entry.evaluated)
                } else {
                    String::new()
                }
            );
            if report.partial {
                bar.abandon_with_message(done);
            } else {
                bar.finish_with_message(done);
            }
            if let Some(f) = trace.as_mut() {
                use std::io::Write;
                let line = json!({
                    "kernel": k.spec.name,
                    "shape": report.entry.key.shape.to_text(),
                    "strategy": report.entry.strategy,
                    "default_ms": report.default_ms,
                    "evaluated": report.entry.evaluated,
                    "curve": *curve.lock(),
                });
                writeln!(f, "{line}")
                    .map_err(|e| input_err(Error::io(args.trace.clone().unwrap_or_default(), e)))?;
            }
            if tuner.cache().store_write_failures() > failed_writes
                && !winner_persisted(tuner.cache(), &report.entry)
            {
                not_stored.push(format!("{} {}", k.spec.name, dims_text(s)));
            }
            results.push((k.spec.name.clone(), s.clone(), report));
            if interrupted {
                break 'kernels;
            }
        }
    }
    // Every bar is finished or abandoned and stays on stderr with its final message; the
    // summary goes to stdout below them.
    summary(&results, args.json)?;
    if !not_stored.is_empty() {
        return Err(CliError::new(
            exit::RUNTIME,
            format!(
                "{}: the winner of {} was tuned but not stored: the cache file refused the write (full or read-only disk, a lock held too long, a damaged file)",
                path.display(),
                not_stored.join(", ")
            ),
        ));
    }
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

/// Whether the user store holds `winner` (its key with its config): after a failed write, the
/// store may still hold it (the failure was another write: a binary, a failure record).
fn winner_persisted(cache: &Cache, winner: &jitune::cache::Entry) -> bool {
    cache
        .user_store()
        .and_then(|s| s.get(&winner.key).ok().flatten())
        .is_some_and(|e| e.config == winner.config && e.median_ms == winner.median_ms)
}

/// The bar of one shape: `sgemm 1024x1024x1024 [=====>    ] 40/120 evals best 0.1523 ms ETA 12s`.
/// With a time limit the ETA is the sooner of indicatif's rate estimate and the time left.
fn bar_style(time_limit: Option<f64>) -> CliResult<indicatif::ProgressStyle> {
    let limit = time_limit.map(std::time::Duration::from_secs_f64);
    Ok(indicatif::ProgressStyle::with_template(
        "{prefix:>24} [{bar:30}] {pos:>4}/{len} evals {msg} ETA {eta_or_limit}",
    )
    .map_err(|e| CliError::new(exit::RUNTIME, e.to_string()))?
    .with_key(
        "eta_or_limit",
        move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let mut eta = st.eta();
            if let Some(l) = limit {
                eta = eta.min(l.saturating_sub(st.elapsed()));
            }
            let _ = write!(w, "{}", indicatif::HumanDuration(eta));
        },
    )
    .progress_chars("=> "))
}

/// The search's progress callback driving one bar (the search layer knows nothing of bars),
/// and recording the convergence curve for `--trace`: after each batch, the seconds spent and
/// the best time so far. These are real times per batch; [`TuneReport::curve`] spreads its
/// per-evaluation points evenly over the run's duration instead.
fn progress_hook(
    bar: indicatif::ProgressBar,
    curve: Arc<parking_lot::Mutex<Vec<(f64, f64)>>>,
) -> ProgressHook {
    ProgressHook::new(move |p: &Progress| {
        bar.set_length(p.budget as u64);
        bar.set_position(p.evaluated as u64);
        if let Some(b) = p.best_ms {
            bar.set_message(format!("best {b:.4} ms"));
            let mut c = curve.lock();
            // Best so far never gets worse on the plot, even when re-measurement moves an
            // estimate up.
            let b = c.last().map_or(b, |l| l.1.min(b));
            c.push((p.elapsed_s, b));
        } else if p.evaluated > 0 {
            bar.set_message("nothing ran correctly yet");
        }
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
                    "partial": r.partial,
                    "strategy": r.entry.strategy,
                    "wall_s": r.wall_s,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(v));
    }
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|(k, s, r)| {
            [
                k.clone(),
                dims_text(s),
                format!("{:.4}", r.entry.median_ms),
                r.default_ms.map_or("-".into(), |d| format!("{d:.4}")),
                r.default_ms
                    .map_or("-".into(), |d| format!("{:.2}x", d / r.entry.median_ms)),
                if r.partial {
                    format!("{} (partial)", r.entry.evaluated)
                } else {
                    r.entry.evaluated.to_string()
                },
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
            "EVALS",
            "WINNER",
        ],
        &rows,
    );
    Ok(())
}
