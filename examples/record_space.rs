//! Records the exhaustive measurement of one of our kernel specs' spaces at one shape on this
//! GPU as a Kernel Tuner cachefile (the layout of `tests/data/*.json.gz`, read by
//! `src/replay.rs`), so search strategies can be replayed on our own kernels in CI, without a GPU.
//!
//! Every valid config is compiled (worker pool), checked against the spec's reference config
//! and timed with jitune's own measurement (cold L2, CUDA events); nothing is skipped as "too
//! slow", so the file holds the whole space. As in Kernel Tuner, `time` is the mean of `times`
//! (per-run samples, ms) and a failure is a string time: `CompilationFailedConfig`,
//! `RuntimeFailedConfig` (launch or resource error), `VerificationFailedConfig` (wrong result).
//! Configs are compiled in parallel batches, so there is no per-config compile time as such:
//! each config is charged an equal share of its batch's wall time (`compile_time` is that share
//! less its `benchmark_time`), which keeps replay's simulated time close to the real run's.
//!
//!     cargo run --release --example record_space -- --kernel sgemm --shape 2048x2048x2048 \
//!         [--out sgemm_2048_H100.json.gz] [--limit N] [--budget-ms 10] [--max-s S]
//!
//! `--max-s S` stops after the batch that crosses S seconds and writes what was measured,
//! marked `"complete": false` (so a device command with a hard limit still leaves a file).
//!
//! `--kernel` is a name under `kernels/` or a path to a spec file. The file is written at the
//! end (gzip when the name ends in `.gz`) and read back through `jitune::replay::Cachefile` as a
//! check. Without a GPU it says why in one line and exits with status 2.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use common::cuda;
use jitune::cache::Cache;
use jitune::engine::GpuEvaluator;
use jitune::internals::CompilePool;
use jitune::search::{Evaluator, FailureClass, Outcome};
use jitune::space::{Config, Value};
use jitune::tuner::Kernel;
use jitune::Gpu;
use jitune::{Error, Result};
use serde_json::{json, Map, Value as Json};

fn main() -> ExitCode {
    jitune::run_if_worker();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("record_space: {e}");
            ExitCode::from(2)
        }
    }
}

fn json_value(v: &Value) -> Json {
    match v {
        Value::Int(i) => json!(i),
        Value::Bool(b) => json!(b),
        Value::Str(s) => json!(s),
    }
}

/// Kernel Tuner's failure strings (replay maps them back onto classes).
fn kt_failure(c: FailureClass) -> &'static str {
    match c {
        FailureClass::Compile => "CompilationFailedConfig",
        FailureClass::WrongResult => "VerificationFailedConfig",
        FailureClass::Launch
        | FailureClass::TooSlow
        | FailureClass::Timeout
        | FailureClass::Crashed => "RuntimeFailedConfig",
    }
}

fn run() -> Result<()> {
    let name = common::option("--kernel", "RECORD_KERNEL").unwrap_or_else(|| "sgemm".into());
    let kernel = if name.ends_with(".toml") || name.contains('/') {
        Kernel::from_toml_file(&name)?
    } else {
        common::kernel(&name)?
    };
    let shape = common::parse_shape(
        &common::option("--shape", "RECORD_SHAPE").unwrap_or_else(|| "2048x2048x2048".into()),
    )?;
    let limit: usize = common::num_option("--limit", "RECORD_LIMIT", usize::MAX)?;
    let budget_ms: f64 = common::num_option("--budget-ms", "RECORD_BUDGET_MS", 10.0)?;
    let max_s: f64 = common::num_option("--max-s", "RECORD_MAX_S", f64::INFINITY)?;
    jitune::require_cuda()?;
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda("opening device 0"))?;
    let gpu = Arc::new(Gpu::from_context(ctx)?);
    let spec = kernel.spec.clone();
    let space = spec.space_for(&shape, &gpu.limits)?;
    let device = gpu.fingerprint.name.clone();
    let out = common::option("--out", "RECORD_OUT").unwrap_or_else(|| {
        format!(
            "{}_{}_{}.json.gz",
            spec.name,
            common::shape_text(&shape),
            device.replace("NVIDIA ", "").replace([' ', '/'], "_")
        )
    });
    let configs: Vec<Config> = space.iter().take(limit).collect();
    println!(
        "{} at {}: {} valid configs ({} recorded) on {}",
        spec.name,
        common::shape_text(&shape),
        space.count(),
        configs.len(),
        gpu.fingerprint.to_text()
    );
    // A memory-only cache: no earlier failure records or binaries bias the recording.
    let mut eval = GpuEvaluator::new(
        gpu.clone(),
        spec.clone(),
        &shape,
        Arc::new(Cache::memory_only()),
        Arc::new(CompilePool::default_sized()),
    )?;
    eval.options.too_slow_factor = f64::INFINITY;
    eval.options.budget_ms = budget_ms;
    let start = Instant::now();
    let mut cache = Map::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut best: Option<(String, f64)> = None;
    for (bi, batch) in configs.chunks(32).enumerate() {
        let t = Instant::now();
        let outcomes = eval.evaluate(batch)?;
        let share_ms = t.elapsed().as_secs_f64() * 1e3 / batch.len() as f64;
        for (c, o) in batch.iter().zip(outcomes) {
            let values = space.values(c);
            let key = values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut rec = Map::new();
            for (p, v) in space.params().iter().zip(&values) {
                rec.insert(p.name.clone(), json_value(v));
            }
            match o {
                Outcome::Measured(m) if !m.samples.is_empty() => {
                    let mean = m.samples.iter().sum::<f64>() / m.samples.len() as f64;
                    let bench: f64 = m.samples.iter().sum();
                    rec.insert("time".into(), json!(mean));
                    rec.insert("times".into(), json!(m.samples));
                    rec.insert("compile_time".into(), json!((share_ms - bench).max(0.0)));
                    rec.insert("verification_time".into(), json!(0.0));
                    rec.insert("benchmark_time".into(), json!(bench));
                    if best.as_ref().is_none_or(|(_, b)| mean < *b) {
                        best = Some((key.clone(), mean));
                    }
                    ok += 1;
                }
                Outcome::Measured(_) => {
                    rec.insert("time".into(), json!("RuntimeFailedConfig"));
                    rec.insert("compile_time".into(), json!(share_ms));
                    failed += 1;
                }
                Outcome::Failed(f) => {
                    rec.insert("time".into(), json!(kt_failure(f.class)));
                    rec.insert("compile_time".into(), json!(share_ms));
                    rec.insert("verification_time".into(), json!(0.0));
                    rec.insert("benchmark_time".into(), json!(0.0));
                    failed += 1;
                }
            }
            rec.insert("strategy_time".into(), json!(0));
            rec.insert("framework_time".into(), json!(0));
            cache.insert(key, Json::Object(rec));
        }
        if bi % 5 == 4 || (bi + 1) * 32 >= configs.len() {
            println!(
                "  {:>5}/{} configs, {:.0} s, {} ok, {} failed, best {}",
                cache.len(),
                configs.len(),
                start.elapsed().as_secs_f64(),
                ok,
                failed,
                best.as_ref()
                    .map(|(k, t)| format!("{t:.4} ms ({k})"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        if start.elapsed().as_secs_f64() > max_s && cache.len() < configs.len() {
            println!(
                "  stopped at --max-s {max_s} s after {} of {} configs: the file says \"complete\": false",
                cache.len(),
                configs.len()
            );
            break;
        }
    }
    let complete = cache.len() == configs.len();
    let params = space.params();
    let doc = json!({
        "device_name": device,
        "kernel_name": spec.name,
        "problem_size": shape,
        "tune_params_keys": params.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "tune_params": params
            .iter()
            .map(|p| (p.name.clone(), Json::Array(p.values.iter().map(json_value).collect())))
            .collect::<Map<_, _>>(),
        "objective": "time",
        "recorded_by": {
            "tool": "jitune examples/record_space.rs",
            "jitune_version": env!("CARGO_PKG_VERSION"),
            "spec_id": spec.id().short(),
            "device": gpu.fingerprint.to_text(),
            "arch": gpu.arch,
            "first_budget_ms": budget_ms,
            "wall_s": start.elapsed().as_secs_f64(),
            "complete": complete,
        },
        "cache": Json::Object(cache),
    });
    let text = serde_json::to_string(&doc).map_err(|e| Error::Json {
        what: out.clone(),
        msg: e.to_string(),
    })?;
    let file = std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?;
    if out.ends_with(".gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
        gz.write_all(text.as_bytes())
            .and_then(|_| gz.finish().map(|_| ()))
            .map_err(|e| Error::io(&out, e))?;
    } else {
        let mut f = file;
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(&out, e))?;
    }
    // Read it back the way the replay tests will.
    let back = jitune::replay::Cachefile::load(std::path::Path::new(&out))?;
    let optimum = back
        .optimum()
        .map(|(c, t)| format!("{} at {t:.4} ms", back.key(c)))
        .unwrap_or_else(|| "none".into());
    if back.records.len() != configs.len() {
        return Err(Error::Search(format!(
            "{out}: read back {} records, wrote {}",
            back.records.len(),
            configs.len()
        )));
    }
    println!(
        "wrote {out}: {} configs ({ok} ok, {failed} failed) in {:.0} s; replay reads it back, optimum {optimum}",
        back.records.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
