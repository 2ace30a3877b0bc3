//! Batched compilation: tiled-SGEMM configs through the worker-process pool against the honest
//! baselines, measured in the same run: serial NVRTC in this process WITH a CUDA context alive
//! (as in any tuning process) and the same with threads.
//!
//! Every arm compiles cold. NVRTC on the H200 (13.0, driver 580) keeps the CUBINs it made in the
//! driver's compute cache (`~/.nv/ComputeCache`, shared by every process of the user): a config
//! compiled once, by any process, compiles again in ~16-25 ms instead of 0.25-2 s (device calls K
//! and L of 2026-12-02). The figures of earlier runs of this bench, where the serial arm came
//! first and every later arm recompiled its configs, measured that cache, not the pool: the pool
//! "186x faster than serial" was a cache hit. Here each arm's requests carry a kernel of their
//! own (an empty `__global__` named for the arm and this run), so each arm's PTX is new to the
//! cache; the last line shows the cache's effect on its own (the pool's arm again, same requests).
//!
//!     cargo bench --bench compile       (needs libnvrtc and a GPU; prints a reason and exits 0
//!                                        without them)

use std::time::Instant;

use jitune::internals::{compile_in_process, CompileRequest};
use jitune::internals::{CompilePool, PoolMode};
use jitune::spec::{DeviceLimits, KernelSpec};

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("compile bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("compile bench: {e}");
        std::process::exit(1);
    }
}

fn ms_per(secs: f64, n: usize) -> f64 {
    secs * 1e3 / n as f64
}

fn run() -> jitune::Result<()> {
    let spec =
        KernelSpec::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))?;
    let space = spec.space_for(&[4096, 4096, 4096], &DeviceLimits::h100())?;
    let mut rng = jitune::internals::Rng::new(7);
    let mut configs = std::collections::BTreeSet::new();
    let n: usize = std::env::var("JITUNE_COMPILE_CONFIGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    while configs.len() < n {
        if let Some(c) = space.sample(&mut rng) {
            configs.insert(c);
        }
    }
    let arch = std::env::var("JITUNE_ARCH").unwrap_or_else(|_| "sm_90".into());
    let run_id = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // The same configs for every arm, each arm's PTX new to the driver's compute cache.
    let salted = |arm: &str| -> Vec<CompileRequest> {
        configs
            .iter()
            .map(|c| {
                let mut r = CompileRequest::new(&spec, c, &arch);
                r.source.push_str(&format!(
                    "\nextern \"C\" __global__ void jitune_bench_{arm}_{run_id}() {{}}\n"
                ));
                r
            })
            .collect()
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);

    // NVRTC loaded (its first call is slow on its own), then a context, as in every tuning
    // process.
    let _ = compile_in_process(&salted("load")[0])?;
    let _ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;
    let reqs = salted("serial");
    let t = Instant::now();
    let mut ok = 0;
    for r in &reqs {
        if compile_in_process(r)?.is_ok() {
            ok += 1;
        }
    }
    let serial = t.elapsed().as_secs_f64();

    // Threads of this process, context alive.
    let reqs = salted("threads");
    let t = Instant::now();
    let chunk = n.div_ceil(workers);
    std::thread::scope(|s| {
        for part in reqs.chunks(chunk) {
            s.spawn(move || {
                for r in part {
                    let _ = compile_in_process(r);
                }
            });
        }
    });
    let threaded = t.elapsed().as_secs_f64();

    let cmd = jitune::internals::worker_command()
        .ok_or_else(|| jitune::Error::Search("no worker command".into()))?;
    // One worker process, a quarter of the configs: serial compilation in a process of its own.
    let quarter = (n / 4).max(1);
    let one = CompilePool::with_mode(PoolMode::Processes(cmd.clone()), 1);
    let reqs = salted("one");
    let t = Instant::now();
    let _ = one.compile_all(reqs[..quarter].to_vec());
    let one_worker_ms = ms_per(t.elapsed().as_secs_f64(), quarter);
    let pool = CompilePool::with_mode(PoolMode::Processes(cmd), workers);
    let reqs = salted("pool");
    let t = Instant::now();
    let out = pool.compile_all(reqs.clone());
    let pooled = t.elapsed().as_secs_f64();
    let pooled_ok = out.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    // Warm workers (started, NVRTC loaded), cold configs: the steady state of a tuning run.
    let t = Instant::now();
    let _ = pool.compile_all(salted("warm"));
    let warm = t.elapsed().as_secs_f64();
    // The pool's requests again: what the driver's compute cache does on its own.
    let t = Instant::now();
    let _ = pool.compile_all(reqs);
    let cached = t.elapsed().as_secs_f64();

    println!(
        "configs                          {n} ({ok} compiled serially, {pooled_ok} in the pool); every arm cold"
    );
    println!(
        "serial, context alive (baseline) {serial:7.2} s  ({:.1} ms/config)",
        ms_per(serial, n)
    );
    println!(
        "{workers:2} threads, context alive        {threaded:7.2} s  ({:.1} ms/config, {:.2}x serial)",
        ms_per(threaded, n),
        serial / threaded
    );
    println!("1 worker process                 {one_worker_ms:7.1} ms/config ({quarter} configs, start-up included)");
    println!(
        "pool, {workers:2} workers (cold)          {pooled:7.2} s  speed-up {:.2}x vs serial, {:.2}x vs threads (process start-up included)",
        serial / pooled,
        threaded / pooled
    );
    println!(
        "pool, {workers:2} workers (warm)          {warm:7.2} s  speed-up {:.2}x vs serial, {:.2}x vs threads",
        serial / warm,
        threaded / warm
    );
    println!(
        "pool, the cold arm's requests again {cached:5.2} s  (the driver's compute cache: {:.1} ms/config; not a speed-up of jitune's)",
        ms_per(cached, n)
    );
    Ok(())
}
