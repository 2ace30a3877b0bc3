//! `jitune verify`: re-measures the cached winners of the given kernel specs on this GPU, next
//! to each spec's default config, and flags entries whose time drifted beyond a threshold or
//! that lost to the default or stopped working (a driver update, a changed GPU clock policy, a
//! cache shipped from elsewhere under the same fingerprint).
//!
//! The measurement is the tuner's own: a [`GpuEvaluator`] compiles (or loads the cached CUBIN),
//! checks the winner's output against the default's, times both with the same L2 flush and
//! CUDA-event loop as tuning, then draws interleaved extra samples of both (the search's
//! re-measurement), and the median of all samples is compared with the stored median. An entry
//! is measured at its shape bucket's dimensions (the upper edge of the bucket), since the cache
//! keeps buckets, not the shape tuned; an entry tuned at a smaller shape of its bucket reads as
//! slower, so tune at bucket edges (e.g. powers of two) for a clean comparison.
//!
//! The cache file is only read: the evaluator sees it as a read-only layer (for CUBINs and
//! recorded failures) over a memory-only cache, so verifying never changes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};

use super::{
    exit, input_err, kernel_matches_spec, load_cache, looks_like_json, print_json, print_table,
    CliError, CliResult,
};
use jitune::cache::{Cache, CacheOptions, Entry};
use jitune::engine::GpuEvaluator;
use jitune::internals::median;
use jitune::internals::CompilePool;
use jitune::search::{Evaluator, Outcome};
use jitune::space::Config;
use jitune::spec::KernelSpec;
use jitune::Error;
use jitune::Gpu;

/// Arguments of `jitune verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The kernel specs whose cached winners are verified (e.g. kernels/*.toml); entries are
    /// matched by kernel id, so an entry of a changed spec is not verified (see `prune`).
    #[arg(required = true, value_name = "SPEC.toml")]
    pub specs: Vec<PathBuf>,
    /// Only the spec with this kernel name (or kernel id prefix).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Flag an entry when its re-measured time differs from the stored one by more than PCT
    /// percent, or when the default config is now faster than it by more than PCT percent.
    #[arg(long, default_value_t = 10.0, value_name = "PCT")]
    pub threshold: f64,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Extra interleaved samples of the winner and the default, on top of the first
    /// measurement.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// One verified entry.
struct Row {
    entry: Entry,
    default_config: String,
    now_ms: Option<f64>,
    default_ms: Option<f64>,
    /// Flags raised (`drift`, `slower-than-default`, `failed`); empty when fine.
    flags: Vec<&'static str>,
    /// Why the winner or the default could not be measured.
    detail: Option<String>,
}

impl Row {
    fn drift_pct(&self) -> Option<f64> {
        self.now_ms
            .map(|t| (t / self.entry.median_ms - 1.0) * 100.0)
    }

    fn speedup(&self) -> Option<f64> {
        Some(self.default_ms? / self.now_ms?)
    }

    fn status(&self) -> String {
        if self.flags.is_empty() {
            "ok".into()
        } else {
            self.flags.join(",")
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "key": self.entry.key.display(),
            "kernel": self.entry.kernel_name,
            "shape": self.entry.key.shape.to_text(),
            "config": self.entry.config,
            "stored_ms": self.entry.median_ms,
            "now_ms": self.now_ms,
            "default_config": self.default_config,
            "default_ms": self.default_ms,
            "drift_pct": self.drift_pct(),
            "speedup": self.speedup(),
            "status": self.status(),
            "flagged": !self.flags.is_empty(),
            "detail": self.detail,
        })
    }
}

/// Runs `jitune verify`; returns 0 when nothing is flagged, [`exit::DRIFT`] otherwise.
pub fn run(cache: Option<PathBuf>, args: VerifyArgs) -> CliResult<i32> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(CliError::new(
            exit::USAGE,
            "--threshold must be a percentage of at least 0",
        ));
    }
    // Inputs first: a bad spec is reported before anything touches the GPU.
    let mut specs: Vec<Arc<KernelSpec>> = Vec::new();
    for p in &args.specs {
        let s = KernelSpec::from_toml_file(p).map_err(input_err)?;
        if args
            .kernel
            .as_deref()
            .is_none_or(|k| kernel_matches_spec(&s, k))
        {
            specs.push(Arc::new(s));
        }
    }
    if specs.is_empty() {
        return Err(CliError::new(
            exit::NOT_FOUND,
            format!(
                "no given spec is kernel `{}`",
                args.kernel.as_deref().unwrap_or("")
            ),
        ));
    }
    jitune::require_cuda()?;
    let (path, snap) = load_cache(cache)?;
    let gpu = Arc::new(Gpu::new(args.device)?);
    let by_id: BTreeMap<_, _> = specs.iter().map(|s| (s.id(), s.clone())).collect();
    let ours: Vec<&Entry> = snap
        .entries
        .iter()
        .filter(|e| by_id.contains_key(&e.key.kernel))
        .collect();
    let here: Vec<&Entry> = ours
        .iter()
        .copied()
        .filter(|e| e.key.device == gpu.fingerprint_hash)
        .collect();
    let elsewhere = ours.len() - here.len();
    if here.is_empty() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::new(
            exit::NOT_FOUND,
            format!(
                "no cached winner of {} for this GPU ({}) in {}{}",
                names.join(", "),
                gpu.fingerprint.to_text(),
                path.display(),
                if elsewhere > 0 {
                    format!(" ({elsewhere} measured under other fingerprints)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    // The cache file as a read-only layer: CUBINs and failures are seen, nothing is written.
    let mut opts = CacheOptions::memory_only();
    if !looks_like_json(&path) {
        opts = opts.with_shipped(&path);
    }
    let layered = Arc::new(Cache::open(opts)?);
    let pool = Arc::new(CompilePool::default_sized());

    let bar = indicatif::ProgressBar::new(here.len() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("verifying [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut rows = Vec::with_capacity(here.len());
    for e in here {
        bar.set_message(e.key.display());
        let spec = by_id[&e.key.kernel].clone();
        let row = verify_entry(&gpu, spec, e, &layered, &pool, &args)?;
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let flagged = rows.iter().filter(|r| !r.flags.is_empty()).count();
    if args.json {
        print_json(&json!({
            "cache": path.display().to_string(),
            "device": gpu.fingerprint.to_text(),
            "threshold_pct": args.threshold,
            "entries": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "flagged": flagged,
            "other_fingerprints": elsewhere,
        }))?;
    } else {
        print_rows(&rows);
        println!(
            "verified {} entries on {}: {flagged} flagged (threshold {}%){}",
            rows.len(),
            gpu.fingerprint.to_text(),
            args.threshold,
            if elsewhere > 0 {
                format!("; {elsewhere} entries of other fingerprints not verified")
            } else {
                String::new()
            }
        );
        for r in rows.iter().filter(|r| r.detail.is_some()) {
            println!(
                "  {}: {}",
                r.entry.key.display(),
                r.detail.as_deref().unwrap_or("")
            );
        }
    }
    Ok(if flagged > 0 { exit::DRIFT } else { exit::OK })
}

/// The key as `show` accepts it, with the kernel's name in place of its id so a reader sees
/// which kernel drifted (`sgemm/512x512x512/952b…` rather than `016c…/512x512x512/952b…`).
fn named_key(e: &Entry) -> String {
    let key = e.key.display();
    match key.split_once('/') {
        Some((_, rest)) if !e.kernel_name.is_empty() => format!("{}/{rest}", e.kernel_name),
        _ => key,
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |t| format!("{t:.4}"))
}

fn print_rows(rows: &[Row]) {
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                named_key(&r.entry),
                format!("{:.4}", r.entry.median_ms),
                fmt_ms(r.now_ms),
                fmt_ms(r.default_ms),
                r.drift_pct().map_or("-".into(), |d| format!("{d:+.1}%")),
                r.speedup().map_or("-".into(), |s| format!("{s:.2}x")),
                r.status(),
                r.entry.config.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "KEY",
            "STORED_MS",
            "NOW_MS",
            "DEFAULT_MS",
            "DRIFT",
            "SPEEDUP",
            "STATUS",
            "CONFIG",
        ],
        &table,
    );
}

/// Whether an error belongs to one entry (its spec or config) rather than to the GPU: those
/// become a `failed` row, the others end the command.
fn entry_level(e: &Error) -> bool {
    !matches!(e, Error::Cuda { .. } | Error::NoCuda(_))
}

/// Re-measures one entry's winner and its spec's default config.
fn verify_entry(
    gpu: &Arc<Gpu>,
    spec: Arc<KernelSpec>,
    e: &Entry,
    cache: &Arc<Cache>,
    pool: &Arc<CompilePool>,
    args: &VerifyArgs,
) -> CliResult<Row> {
    let mut row = Row {
        entry: e.clone(),
        default_config: String::new(),
        now_ms: None,
        default_ms: None,
        flags: Vec::new(),
        detail: None,
    };
    match measure(gpu, spec, e, cache, pool, args.samples, &mut row) {
        Ok(()) => {}
        Err(err) if entry_level(&err) => {
            row.detail = Some(err.to_string());
        }
        Err(err) => return Err(err.into()),
    }
    if row.now_ms.is_none() {
        row.flags.push("failed");
        return Ok(row);
    }
    if row.drift_pct().is_some_and(|d| d.abs() > args.threshold) {
        row.flags.push("drift");
    }
    if row.default_config != row.entry.config
        && row
            .speedup()
            .is_some_and(|s| s < 1.0 / (1.0 + args.threshold / 100.0))
    {
        row.flags.push("slower-than-default");
    }
    Ok(row)
}

/// The measurement proper; fills `row`'s times (and `detail` when a config fails).
fn measure(
    gpu: &Arc<Gpu>,
    spec: Arc<KernelSpec>,
    e: &Entry,
    cache: &Arc<Cache>,
    pool: &Arc<CompilePool>,
    samples: usize,
    row: &mut Row,
) -> jitune::Result<()> {
    let shape = e.key.shape.dims().to_vec();
    let mut eval = GpuEvaluator::new(
        gpu.clone(),
        spec.clone(),
        &shape,
        cache.clone(),
        pool.clone(),
    )?;
    // Verification measures every config fully: the tuner's "too slow to keep timing" cut-off
    // is for pruning a search, not for judging a cached winner.
    eval.options.too_slow_factor = f64::INFINITY;
    let space = eval.space().clone();
    // The default as the tuner's reference uses it: the spec's default, or the first valid
    // config when the default is invalid at this shape.
    let default = if space.is_valid(&spec.default) {
        spec.default.clone()
    } else {
        space
            .iter()
            .next()
            .ok_or_else(|| Error::Space(format!("`{}` has no valid config here", spec.name)))?
    };
    row.default_config = space.config_text(&default);
    let winner = space.parse_config_text(&e.config)?;
    if !space.is_valid(&winner) {
        row.detail = Some(format!(
            "the cached config {} is not valid on this device at {}",
            e.config,
            e.key.shape.to_text()
        ));
        return Ok(());
    }
    let configs: Vec<Config> = if winner == default {
        vec![default.clone()]
    } else {
        vec![default.clone(), winner]
    };
    let first = eval.evaluate(&configs)?;
    let mut pooled: Vec<Vec<f64>> = Vec::with_capacity(configs.len());
    let mut ok: Vec<Config> = Vec::new();
    for (c, o) in configs.iter().zip(&first) {
        match o {
            Outcome::Measured(m) => {
                pooled.push(m.samples.clone());
                ok.push(c.clone());
            }
            Outcome::Failed(f) => {
                pooled.push(Vec::new());
                let which = if *c == default { "default" } else { "winner" };
                let msg = format!(
                    "{which} {} failed: {}: {}",
                    space.config_text(c),
                    f.class,
                    f.detail.lines().next().unwrap_or("")
                );
                row.detail = Some(match row.detail.take() {
                    Some(d) => format!("{d}; {msg}"),
                    None => msg,
                });
            }
        }
    }
    if samples > 0 && !ok.is_empty() {
        let more = eval.remeasure(&ok, samples)?;
        for (c, o) in ok.iter().zip(more) {
            let Some(i) = configs.iter().position(|x| x == c) else {
                continue;
            };
            match o {
                Outcome::Measured(m) => pooled[i].extend(m.samples),
                // Failing when run again: flaky, so it has no trustworthy time.
                Outcome::Failed(f) => {
                    pooled[i].clear();
                    let msg = format!(
                        "{} failed when measured again: {}: {}",
                        space.config_text(c),
                        f.class,
                        f.detail.lines().next().unwrap_or("")
                    );
                    row.detail = Some(match row.detail.take() {
                        Some(d) => format!("{d}; {msg}"),
                        None => msg,
                    });
                }
            }
        }
    }
    let time = |i: usize| (!pooled[i].is_empty()).then(|| median(&pooled[i]));
    row.default_ms = time(0);
    row.now_ms = if configs.len() == 1 { time(0) } else { time(1) };
    Ok(())
}
