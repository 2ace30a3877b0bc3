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
//!
//! With `--against OTHER`, the reference is not the default but OTHER's winner of the same key
//! (kernel id, shape bucket, device fingerprint; matched in [`super::pairing`]): both winners
//! are re-timed side by side in this one process, by the same measurement, and a winner slower
//! than OTHER's by more than the threshold is flagged. This compares caches tuned apart (e.g.
//! by several processes sharing one file and by a single process) on equal terms, since stored
//! times were taken under whatever load each tuning run had. OTHER is only read too. Neither
//! file is a layer then: a config one run recorded as failed or too slow (under its own load)
//! must still be measured here, so both configs are compiled afresh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};

use super::pairing;
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
    /// percent, or when the default config is now faster than it by more than PCT percent
    /// (with --against: when it is slower than the other cache's winner by more than PCT
    /// percent).
    #[arg(long, default_value_t = 10.0, value_name = "PCT")]
    pub threshold: f64,
    /// Re-time each winner next to FILE's winner of the same key (kernel, shape bucket,
    /// device) instead of the default config; FILE (SQLite or JSON) is only read. Keys only one
    /// of the two caches holds are listed, not measured.
    #[arg(long, value_name = "FILE")]
    pub against: Option<PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Extra interleaved samples of the winner and the default (or the --against winner), on
    /// top of the first measurement.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// One verified entry.
struct Row {
    entry: Entry,
    /// The `--against` cache's entry of the same key; `None` when the reference is the
    /// spec's default config.
    against: Option<Entry>,
    /// The config the winner is timed next to: the default, or the `--against` winner.
    reference_config: String,
    /// Whether the winner and the reference are one config (then measured once).
    same_config: bool,
    now_ms: Option<f64>,
    reference_ms: Option<f64>,
    /// Flags raised (`drift`, `slower-than-default`, `slower-than-against`, `failed`); empty
    /// when fine.
    flags: Vec<&'static str>,
    /// Why the winner or the reference could not be measured.
    detail: Option<String>,
}

impl Row {
    fn drift_pct(&self) -> Option<f64> {
        self.now_ms
            .map(|t| (t / self.entry.median_ms - 1.0) * 100.0)
    }

    fn speedup(&self) -> Option<f64> {
        Some(self.reference_ms? / self.now_ms?)
    }

    /// The winner's time over the reference's: above 1 when the winner is slower.
    fn ratio(&self) -> Option<f64> {
        Some(self.now_ms? / self.reference_ms?)
    }

    fn ratio_pct(&self) -> Option<f64> {
        self.ratio().map(|r| (r - 1.0) * 100.0)
    }

    fn status(&self) -> String {
        if self.flags.is_empty() {
            "ok".into()
        } else {
            self.flags.join(",")
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "key": self.entry.key.display(),
            "kernel": self.entry.kernel_name,
            "shape": self.entry.key.shape.to_text(),
            "config": self.entry.config,
            "stored_ms": self.entry.median_ms,
            "now_ms": self.now_ms,
            "status": self.status(),
            "flagged": !self.flags.is_empty(),
            "detail": self.detail,
        });
        let mode = match &self.against {
            None => json!({
                "default_config": self.reference_config,
                "default_ms": self.reference_ms,
                "drift_pct": self.drift_pct(),
                "speedup": self.speedup(),
            }),
            Some(b) => json!({
                "against_config": b.config,
                "same_config": self.same_config,
                "against_stored_ms": b.median_ms,
                "against_ms": self.reference_ms,
                "ratio": self.ratio(),
                "ratio_pct": self.ratio_pct(),
            }),
        };
        if let (Some(o), Value::Object(m)) = (v.as_object_mut(), mode) {
            o.extend(m);
        }
        v
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
    // Inputs first: a bad spec or --against file is reported before anything touches the GPU.
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
    let against = match &args.against {
        Some(file) => Some(load_cache(Some(file.clone())).map_err(|e| CliError {
            msg: format!("--against: {}", e.msg),
            ..e
        })?),
        None => None,
    };
    jitune::require_cuda()?;
    let (path, snap) = load_cache(cache)?;
    let gpu = Arc::new(Gpu::new(args.device)?);
    let by_id: BTreeMap<_, _> = specs.iter().map(|s| (s.id(), s.clone())).collect();
    let ours = |e: &Entry| by_id.contains_key(&e.key.kernel);
    let here = |e: &Entry| ours(e) && e.key.device == gpu.fingerprint_hash;
    let elsewhere = |entries: &[Entry]| entries.iter().filter(|e| ours(e) && !here(e)).count();
    let names = || {
        specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let others = |n: usize| {
        if n > 0 {
            format!(" ({n} measured under other fingerprints)")
        } else {
            String::new()
        }
    };

    // What to measure: (this cache's entry, the other cache's entry of its key, if any).
    let (todo, pairing, other_fingerprints): (Vec<(&Entry, Option<&Entry>)>, _, _) = match &against
    {
        None => {
            let todo: Vec<_> = snap
                .entries
                .iter()
                .filter(|e| here(e))
                .map(|e| (e, None))
                .collect();
            let n = elsewhere(&snap.entries);
            if todo.is_empty() {
                return Err(CliError::new(
                    exit::NOT_FOUND,
                    format!(
                        "no cached winner of {} for this GPU ({}) in {}{}",
                        names(),
                        gpu.fingerprint.to_text(),
                        path.display(),
                        others(n)
                    ),
                ));
            }
            (todo, None, n)
        }
        Some((bpath, bsnap)) => {
            let p = pairing::pair(&snap.entries, &bsnap.entries, here);
            let n = elsewhere(&snap.entries) + elsewhere(&bsnap.entries);
            if p.both.is_empty() {
                return Err(CliError::new(
                    exit::NOT_FOUND,
                    format!(
                        "no key of {} for this GPU ({}) is in both {} ({} of its own) and {} \
                             ({} of its own){}",
                        names(),
                        gpu.fingerprint.to_text(),
                        path.display(),
                        p.only_a.len(),
                        bpath.display(),
                        p.only_b.len(),
                        others(n)
                    ),
                ));
            }
            let todo = p.both.iter().map(|&(a, b)| (a, Some(b))).collect();
            (todo, Some(p), n)
        }
    };

    // The cache file as a read-only layer: CUBINs and failures are seen, nothing is written.
    // Not with --against: see the module doc.
    let mut opts = CacheOptions::memory_only();
    if against.is_none() && !looks_like_json(&path) {
        opts = opts.with_shipped(&path);
    }
    let layered = Arc::new(Cache::open(opts)?);
    let pool = Arc::new(CompilePool::default_sized());

    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("verifying [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut rows = Vec::with_capacity(todo.len());
    for (e, b) in todo {
        bar.set_message(e.key.display());
        let spec = by_id[&e.key.kernel].clone();
        let row = verify_entry(&gpu, spec, e, b, &layered, &pool, &args)?;
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let flagged = rows.iter().filter(|r| !r.flags.is_empty()).count();
    let against_path = against.as_ref().map(|(p, _)| p.display().to_string());
    if args.json {
        let mut doc = json!({
            "cache": path.display().to_string(),
            "device": gpu.fingerprint.to_text(),
            "threshold_pct": args.threshold,
            "entries": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "flagged": flagged,
            "other_fingerprints": other_fingerprints,
        });
        if let (Some(p), Some(a)) = (&pairing, &against_path) {
            let keys = |l: &[&Entry]| l.iter().map(|e| e.key.display()).collect::<Vec<_>>();
            doc["against"] = json!(a);
            doc["same_config"] = json!(rows.iter().filter(|r| r.same_config).count());
            doc["only_cache"] = json!(keys(&p.only_a));
            doc["only_against"] = json!(keys(&p.only_b));
        }
        print_json(&doc)?;
    } else {
        let fingerprint = gpu.fingerprint.to_text();
        let not_verified = if other_fingerprints > 0 {
            format!("; {other_fingerprints} entries of other fingerprints not verified")
        } else {
            String::new()
        };
        match (&pairing, &against_path) {
            (Some(p), Some(a)) => {
                print_against_rows(&rows);
                println!(
                    "compared {} keys of {} against {a} on {fingerprint}: {} same config, \
                     {flagged} flagged (threshold {}%); {} only in {}, {} only in {a}{not_verified}",
                    rows.len(),
                    path.display(),
                    rows.iter().filter(|r| r.same_config).count(),
                    args.threshold,
                    p.only_a.len(),
                    path.display(),
                    p.only_b.len(),
                );
                for e in &p.only_a {
                    println!("  only in {}: {}", path.display(), named_key(e));
                }
                for e in &p.only_b {
                    println!("  only in {a}: {}", named_key(e));
                }
            }
            _ => {
                print_rows(&rows);
                println!(
                    "verified {} entries on {fingerprint}: {flagged} flagged (threshold {}%){not_verified}",
                    rows.len(),
                    args.threshold,
                );
            }
        }
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
                fmt_ms(r.reference_ms),
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

/// The `--against` table: both configs, both re-timed medians, their ratio.
fn print_against_rows(rows: &[Row]) {
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                named_key(&r.entry),
                fmt_ms(r.now_ms),
                fmt_ms(r.reference_ms),
                match (r.ratio(), r.ratio_pct()) {
                    (Some(x), Some(pct)) => format!("{x:.3} ({pct:+.1}%)"),
                    _ => "-".into(),
                },
                r.status(),
                r.entry.config.clone(),
                if r.same_config {
                    "(same)".into()
                } else {
                    r.reference_config.clone()
                },
            ]
        })
        .collect();
    print_table(
        &[
            "KEY",
            "NOW_MS",
            "AGAINST_MS",
            "RATIO",
            "STATUS",
            "CONFIG",
            "AGAINST_CONFIG",
        ],
        &table,
    );
}

/// Whether an error belongs to one entry (its spec or config) rather than to the GPU: those
/// become a `failed` row, the others end the command.
fn entry_level(e: &Error) -> bool {
    !matches!(e, Error::Cuda { .. } | Error::NoCuda(_))
}

/// Re-measures one entry's winner and its reference: `against`'s winner when given, else its
/// spec's default config.
fn verify_entry(
    gpu: &Arc<Gpu>,
    spec: Arc<KernelSpec>,
    e: &Entry,
    against: Option<&Entry>,
    cache: &Arc<Cache>,
    pool: &Arc<CompilePool>,
    args: &VerifyArgs,
) -> CliResult<Row> {
    let mut row = Row {
        entry: e.clone(),
        against: against.cloned(),
        reference_config: against.map_or_else(String::new, |b| b.config.clone()),
        same_config: against.is_some_and(|b| pairing::same_config(e, b)),
        now_ms: None,
        reference_ms: None,
        flags: Vec::new(),
        detail: None,
    };
    let reference = against.map(|b| b.config.as_str());
    match measure(gpu, spec, e, reference, cache, pool, args.samples, &mut row) {
        Ok(()) => {}
        Err(err) if entry_level(&err) => {
            row.detail = Some(err.to_string());
        }
        Err(err) => return Err(err.into()),
    }
    if against.is_some() {
        // Both winners must have a time for the comparison; stored times are not compared
        // (each was taken under its own tuning run's load).
        match row.ratio() {
            None => row.flags.push("failed"),
            Some(r) if !row.same_config && r > 1.0 + args.threshold / 100.0 => {
                row.flags.push("slower-than-against")
            }
            Some(_) => {}
        }
        return Ok(row);
    }
    if row.now_ms.is_none() {
        row.flags.push("failed");
        return Ok(row);
    }
    if row.drift_pct().is_some_and(|d| d.abs() > args.threshold) {
        row.flags.push("drift");
    }
    if row.reference_config != row.entry.config
        && row
            .speedup()
            .is_some_and(|s| s < 1.0 / (1.0 + args.threshold / 100.0))
    {
        row.flags.push("slower-than-default");
    }
    Ok(row)
}

/// The measurement proper; fills `row`'s times (and `detail` when a config fails). The
/// reference is the config text `reference` (the `--against` winner), else the spec's default.
#[allow(clippy::too_many_arguments)]
fn measure(
    gpu: &Arc<Gpu>,
    spec: Arc<KernelSpec>,
    e: &Entry,
    reference: Option<&str>,
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
    let invalid = |what: &str, config: &str| {
        format!(
            "{what} {config} is not valid on this device at {}",
            e.key.shape.to_text()
        )
    };
    let (reference, ref_name) = match reference {
        Some(text) => {
            let c = space.parse_config_text(text).map_err(|err| {
                Error::Space(format!("the --against config {text} of this key: {err}"))
            })?;
            if !space.is_valid(&c) {
                row.detail = Some(invalid("the --against config", text));
                return Ok(());
            }
            (c, "against")
        }
        // The default as the tuner's reference uses it: the spec's default, or the first
        // valid config when the default is invalid at this shape.
        None if space.is_valid(&spec.default) => (spec.default.clone(), "default"),
        None => (
            space
                .iter()
                .next()
                .ok_or_else(|| Error::Space(format!("`{}` has no valid config here", spec.name)))?,
            "default",
        ),
    };
    row.reference_config = space.config_text(&reference);
    let winner = space.parse_config_text(&e.config)?;
    if !space.is_valid(&winner) {
        row.detail = Some(invalid("the cached config", &e.config));
        return Ok(());
    }
    row.same_config = winner == reference;
    let configs: Vec<Config> = if row.same_config {
        vec![reference.clone()]
    } else {
        vec![reference.clone(), winner]
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
                let which = if *c == reference { ref_name } else { "winner" };
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
    row.reference_ms = time(0);
    row.now_ms = if configs.len() == 1 { time(0) } else { time(1) };
    Ok(())
}
