//! Search on the real GPU: the shipped tiled-SGEMM space at 4096^3, LFBO against exhaustive
//! search measured in the same run, then both winners re-timed side by side (interleaved, 40
//! samples each) so the comparison is not decided by a lucky sample.
//!
//!     cargo bench --bench tune_sgemm [-- --evals N --shape M,N,K --skip-exhaustive]

use std::sync::Arc;

use jitune::cache::Cache;
use jitune::engine::GpuEvaluator;
use jitune::internals::CompilePool;
use jitune::search::evaluator::{Evaluator, Outcome};
use jitune::tuner::{Kernel, Mode, TuneOptions, Tuner};

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("tune_sgemm bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("tune_sgemm: {e}");
        std::process::exit(1);
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run() -> jitune::Result<()> {
    let kernel =
        Kernel::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))?;
    let shape: Vec<i64> = arg("--shape")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![4096, 4096, 4096]);
    let evals: usize = arg("--evals").and_then(|s| s.parse().ok()).unwrap_or(100);
    let skip_exhaustive = std::env::args().any(|a| a == "--skip-exhaustive");
    let flops = 2.0 * shape.iter().map(|d| *d as f64).product::<f64>();
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;

    // Separate memory-only caches: neither run may reuse the other's CUBINs.
    let lfbo_tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    let space = kernel.spec.space_for(&shape, &lfbo_tuner.gpu().limits)?;
    println!(
        "device {}; sgemm {:?}: {} valid configs",
        lfbo_tuner.gpu().fingerprint.to_text(),
        shape,
        space.count()
    );
    let lfbo = lfbo_tuner.tune_with(
        &kernel,
        &shape,
        &TuneOptions {
            strategy: "lfbo".into(),
            max_evals: evals,
            max_time_s: None,
            seed: 1,
        },
    )?;
    println!(
        "lfbo        {:4} configs {:7.1} s  winner {} {:.4} ms ({:.1} TFLOP/s); default {:?} ms",
        lfbo.entry.evaluated,
        lfbo.wall_s,
        lfbo.entry.config,
        lfbo.entry.median_ms,
        flops / lfbo.entry.median_ms / 1e9,
        lfbo.default_ms
    );
    println!("lfbo time-to-quality (s, best ms):");
    for (i, (t, b)) in lfbo.curve.iter().enumerate() {
        if i % 10 == 9 || i + 1 == lfbo.curve.len() {
            println!("  {:3} evals {:6.2} s  {:.4} ms", i + 1, t, b);
        }
    }
    if skip_exhaustive {
        return Ok(());
    }
    let ex_tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    let ex = ex_tuner.tune_with(
        &kernel,
        &shape,
        &TuneOptions {
            strategy: "exhaustive".into(),
            max_evals: 100_000,
            max_time_s: None,
            seed: 1,
        },
    )?;
    println!(
        "exhaustive  {:4} configs {:7.1} s  winner {} {:.4} ms ({:.1} TFLOP/s)",
        ex.entry.evaluated,
        ex.wall_s,
        ex.entry.config,
        ex.entry.median_ms,
        flops / ex.entry.median_ms / 1e9
    );

    // Side-by-side re-timing of the two winners.
    let gpu = Arc::new(jitune::Gpu::from_context(ctx)?);
    let mut eval = GpuEvaluator::new(
        gpu,
        kernel.spec.clone(),
        &shape,
        Arc::new(Cache::memory_only()),
        Arc::new(CompilePool::with_mode(
            jitune::internals::PoolMode::InProcess,
            1,
        )),
    )?;
    let a = space.parse_config_text(&lfbo.entry.config)?;
    let b = space.parse_config_text(&ex.entry.config)?;
    eval.evaluate(&[a.clone(), b.clone()])?;
    let re = eval.remeasure(&[a, b], 40)?;
    let t: Vec<f64> = re
        .iter()
        .map(|o| {
            if let Outcome::Measured(m) = o {
                m.time_ms
            } else {
                f64::NAN
            }
        })
        .collect();
    println!(
        "re-timed    lfbo {:.4} ms, exhaustive {:.4} ms: lfbo within {:+.2}% of the optimum",
        t[0],
        t[1],
        (t[0] / t[1] - 1.0) * 100.0
    );
    println!(
        "wall time   lfbo {:.1} s = {:.1}% of exhaustive {:.1} s  (target <= 10%, within 3%)",
        lfbo.wall_s,
        100.0 * lfbo.wall_s / ex.wall_s,
        ex.wall_s
    );
    Ok(())
}
