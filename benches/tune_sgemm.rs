//! Search on the real GPU: the shipped tiled-SGEMM space at 4096^3, LFBO (100 evaluations)
//! against the exhaustive optimum, each run with the tuner's own pipeline (device-side
//! correctness check, adaptive timing with racing), then both winners re-timed side by side
//! (interleaved, 40 samples each) so the comparison is not decided by a lucky sample.
//!
//!     cargo bench --bench tune_sgemm [-- --evals N --shape M,N,K --exhaustive-limit-s S
//!                                       --skip-exhaustive --against FILE.json.gz]
//!
//! The exhaustive arm is an exhaustive search of the tuner (same measurement as LFBO's, so the
//! wall times compare like with like), stopped after `--exhaustive-limit-s` (default 420 s; it
//! then says how far it got, and its wall time is a lower bound). `--against FILE` skips it and
//! uses a space recorded by `examples/record_space` instead: its optimum is re-timed beside
//! LFBO's winner, and its recording time is printed (recorded without racing or early stops, so
//! not the tuner's exhaustive time). The figure of issue 18: LFBO within 3% of the optimum in
//! at most 10% of exhaustive's wall time.

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

/// The optimum of a recorded space: its config text in the spec's form, its time, and the
/// recording's wall time.
fn recorded_optimum(
    path: &str,
    space: &jitune::space::SearchSpace,
) -> jitune::Result<(String, f64, Option<f64>, bool)> {
    let data = jitune::replay::Cachefile::load(std::path::Path::new(path))?;
    let (c, t) = data
        .optimum()
        .ok_or_else(|| jitune::Error::Search(format!("{path}: no successful config")))?;
    // record_space names the parameters as the spec does: the text parses in the spec's space.
    let spec_text = data.space.config_text(c);
    space.parse_config_text(&spec_text)?;
    let recorded_by = std::fs::File::open(path)
        .ok()
        .and_then(|f| {
            let mut s = String::new();
            let mut r: Box<dyn std::io::Read> = if path.ends_with(".gz") {
                Box::new(flate2::read::GzDecoder::new(f))
            } else {
                Box::new(f)
            };
            r.read_to_string(&mut s).ok()?;
            serde_json::from_str::<serde_json::Value>(&s).ok()
        })
        .map(|v| v["recorded_by"].clone());
    let wall = recorded_by.as_ref().and_then(|r| r["wall_s"].as_f64());
    // Files from before `--max-s` have no flag: they were complete.
    let complete = recorded_by
        .as_ref()
        .and_then(|r| r["complete"].as_bool())
        .unwrap_or(true);
    Ok((spec_text, t, wall, complete))
}

fn run() -> jitune::Result<()> {
    let kernel =
        Kernel::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))?;
    let shape: Vec<i64> = arg("--shape")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![4096, 4096, 4096]);
    let evals: usize = arg("--evals").and_then(|s| s.parse().ok()).unwrap_or(100);
    let limit_s: f64 = arg("--exhaustive-limit-s")
        .and_then(|s| s.parse().ok())
        .unwrap_or(420.0);
    let skip_exhaustive = std::env::args().any(|a| a == "--skip-exhaustive");
    let against = arg("--against");
    let flops = 2.0 * shape.iter().map(|d| *d as f64).product::<f64>();
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;

    // Separate memory-only caches: neither run may reuse the other's CUBINs.
    let lfbo_tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    let space = kernel.spec.space_for(
        &shape,
        &lfbo_tuner.gpu().expect("a GPU tuner has a GPU").limits,
    )?;
    println!(
        "device {}; sgemm {:?}: {} valid configs",
        lfbo_tuner.fingerprint().to_text(),
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
            ..Default::default()
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
    if skip_exhaustive && against.is_none() {
        return Ok(());
    }
    let (optimum_text, ex_wall, complete) = match &against {
        Some(path) => {
            let (text, t, wall, complete) = recorded_optimum(path, &space)?;
            println!(
                "recorded    {path}: optimum {text} {t:.4} ms; recorded in {} (no racing: not \
                 the tuner's exhaustive time){}",
                wall.map_or("?".to_string(), |w| format!("{w:.0} s")),
                if complete {
                    ""
                } else {
                    "; INCOMPLETE recording (stopped at --max-s): its optimum is a partial one"
                }
            );
            (text, wall, complete)
        }
        None => {
            let ex_tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
            let ex = ex_tuner.tune_with(
                &kernel,
                &shape,
                &TuneOptions {
                    strategy: "exhaustive".into(),
                    max_evals: 100_000,
                    max_time_s: Some(limit_s),
                    seed: 1,
                    ..Default::default()
                },
            )?;
            let complete = ex.entry.evaluated as u64 >= space.count();
            println!(
                "exhaustive  {:4} configs {:7.1} s  winner {} {:.4} ms ({:.1} TFLOP/s){}",
                ex.entry.evaluated,
                ex.wall_s,
                ex.entry.config,
                ex.entry.median_ms,
                flops / ex.entry.median_ms / 1e9,
                if complete {
                    String::new()
                } else {
                    format!(
                        "; STOPPED at its {limit_s} s limit after {} of {} configs (its time is a \
                         lower bound, its winner not the optimum)",
                        ex.entry.evaluated,
                        space.count()
                    )
                }
            );
            if let Some(st) = &ex.stats {
                println!(
                    "exhaustive  {} raced of {} candidates",
                    st.raced,
                    st.candidates.len()
                );
            }
            (ex.entry.config.clone(), Some(ex.wall_s), complete)
        }
    };

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
    eval.options.too_slow_factor = f64::INFINITY;
    let a = space.parse_config_text(&lfbo.entry.config)?;
    let b = space.parse_config_text(&optimum_text)?;
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
        "re-timed    lfbo {:.4} ms, optimum {:.4} ms: lfbo within {:+.2}% of the optimum  (target <= 3%)",
        t[0],
        t[1],
        (t[0] / t[1] - 1.0) * 100.0
    );
    match ex_wall {
        Some(w) => println!(
            "wall time   lfbo {:.1} s = {:.1}% of exhaustive {:.1} s{}  (target <= 10%)",
            lfbo.wall_s,
            100.0 * lfbo.wall_s / w,
            w,
            if complete { "" } else { " (a lower bound)" }
        ),
        None => println!(
            "wall time   lfbo {:.1} s; exhaustive's wall time unknown",
            lfbo.wall_s
        ),
    }
    Ok(())
}
