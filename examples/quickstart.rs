//! The main job: tune the shipped tiled SGEMM for a few shapes in Blocking mode, launch the
//! winners, check them against the CPU, and show what the cache did. Run it twice: the second
//! run finds every winner (and its CUBIN) in the cache and compiles nothing.
//!
//! Without a GPU or without the CUDA libraries it says why in one line and exits with status 2.

use std::process::ExitCode;
use std::time::Instant;

use jitune::cache::{Cache, CacheOptions};
use jitune::rng::Rng;
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};

fn main() -> ExitCode {
    jitune::gpu::pool::run_if_worker();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::from(2)
        }
    }
}

fn cuda<E: std::fmt::Display>(e: E) -> jitune::Error {
    jitune::Error::Cuda(e.to_string())
}

fn run() -> jitune::Result<()> {
    let kernel =
        Kernel::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))?;
    jitune::gpu::require_cuda()?;
    let opts = CacheOptions::default();
    let cache_path = opts.resolve_user_path();
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda)?;
    let tuner = Tuner::with_context(ctx, Cache::open(opts)?, Mode::Blocking)?;
    tuner.set_tune_options(TuneOptions {
        max_evals: 60,
        max_time_s: Some(20.0),
        ..Default::default()
    });
    println!("device: {}", tuner.gpu().fingerprint.to_text());
    println!(
        "cache:  {}",
        cache_path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "memory only".into())
    );
    println!(
        "{:>16}  {:<38} {:>10} {:>9} {:>8}",
        "shape (m,n,k)", "config", "ms", "TFLOP/s", "first"
    );
    let stream = tuner.gpu().ctx.default_stream();
    let mut rng = Rng::new(1);
    for (m, n, k) in [
        (1024usize, 1024usize, 1024usize),
        (2048, 2048, 2048),
        (4096, 4096, 4096),
        (16, 4096, 4096),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let da = stream.clone_htod(&a).map_err(cuda)?;
        let db = stream.clone_htod(&b).map_err(cuda)?;
        let mut dc = stream.alloc_zeros::<f32>(m * n).map_err(cuda)?;
        let shape = [m as i64, n as i64, k as i64];
        let mut args = [
            Arg::from(&da),
            Arg::from(&db),
            Arg::from(&mut dc),
            Arg::from(m as i32),
            Arg::from(n as i32),
            Arg::from(k as i32),
        ];
        let t = Instant::now();
        tuner.launch(&kernel, &stream, &shape, &mut args)?; // tunes on a miss, then launches
        stream.synchronize().map_err(cuda)?;
        let first = t.elapsed().as_secs_f64();
        // Time the tuned launch (events would be finer; this is a demo, the benches measure).
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            tuner.launch(&kernel, &stream, &shape, &mut args)?;
        }
        stream.synchronize().map_err(cuda)?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        // Spot-check a few outputs against the CPU.
        let c = stream.clone_dtoh(&dc).map_err(cuda)?;
        for _ in 0..16 {
            let (i, j) = (rng.index(m), rng.index(n));
            let want: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
            if (c[i * n + j] as f64 - want).abs() > 1e-3 * (1.0 + want.abs()) {
                return Err(jitune::Error::Search(format!(
                    "wrong result at ({i},{j}): {} vs {want}",
                    c[i * n + j]
                )));
            }
        }
        let plan = tuner
            .plan(&kernel, &shape)
            .ok_or_else(|| jitune::Error::Search("no plan".into()))?;
        let first_s = if first > 1.0 {
            format!("{first:.1} s")
        } else {
            format!("{:.1} ms", first * 1e3)
        };
        println!(
            "{:>16}  {:<38} {:>10.4} {:>9.2} {:>8}",
            format!("{m},{n},{k}"),
            plan.config,
            ms,
            2.0 * (m * n * k) as f64 / ms / 1e9,
            first_s
        );
    }
    let compiles = tuner.nvrtc_compiles();
    if compiles == 0 {
        println!("every winner came from the cache: NVRTC compiled nothing in this run");
    } else {
        println!(
            "NVRTC compiled {compiles} configs in this run; run again to launch from the cache"
        );
    }
    Ok(())
}
