//! Batched compilation: 100 tiled-SGEMM configs through the worker-process pool against the
//! honest baselines, measured in the same run: serial NVRTC in this process WITH a CUDA context
//! alive (as in any tuning process) and the same with threads.
//!
//! Why those baselines: a tuning process has a CUDA context, so serial NVRTC with one alive is
//! what the pool replaces; threads are the obvious alternative to processes. On the H200 (NVRTC
//! 13.0, device calls G and H of 2026-12-02) NVRTC in the tuning process itself was slow and
//! erratic (194-627 ms per config serially, 345-438 ms before any context), 16 threads of it
//! ran 26-31x faster than one (it does not serialise there), and one worker process compiled at
//! 23-28 ms per config. Holding NVRTC's builtins library open did not change the in-process
//! figure (call H), so the cause is not that library's reloading. The no-context figure is still
//! shown, on 5 configs, for reference.
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
    while configs.len() < 100 {
        if let Some(c) = space.sample(&mut rng) {
            configs.insert(c);
        }
    }
    let arch = std::env::var("JITUNE_ARCH").unwrap_or_else(|_| "sm_90".into());
    let reqs: Vec<CompileRequest> = configs
        .iter()
        .map(|c| CompileRequest::new(&spec, c, &arch))
        .collect();
    let n = reqs.len();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);

    // For reference only: a process without a CUDA context (first, before any context).
    let t = Instant::now();
    for r in &reqs[..5] {
        let _ = compile_in_process(r)?;
    }
    let no_ctx_ms = ms_per(t.elapsed().as_secs_f64(), 5);

    // From here on a context is alive, as in every tuning process.
    let _ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;
    let t = Instant::now();
    let mut ok = 0;
    for r in &reqs {
        if compile_in_process(r)?.is_ok() {
            ok += 1;
        }
    }
    let serial = t.elapsed().as_secs_f64();

    // Threads of this process, context alive.
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
    // One worker process, 20 configs: serial compilation without this process's state.
    let one = CompilePool::with_mode(PoolMode::Processes(cmd.clone()), 1);
    let t = Instant::now();
    let _ = one.compile_all(reqs[..20].to_vec());
    let one_worker_ms = ms_per(t.elapsed().as_secs_f64(), 20);
    let pool = CompilePool::with_mode(PoolMode::Processes(cmd), workers);
    let t = Instant::now();
    let out = pool.compile_all(reqs.clone());
    let pooled = t.elapsed().as_secs_f64();
    let pooled_ok = out.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    // Warm workers: a second batch shows the steady state of a tuning run.
    let t = Instant::now();
    let _ = pool.compile_all(reqs);
    let warm = t.elapsed().as_secs_f64();

    println!(
        "configs                          {n} ({ok} compiled serially, {pooled_ok} in the pool)"
    );
    println!(
        "serial, no CUDA context          {no_ctx_ms:7.1} ms/config (5 configs; reference only, not a baseline)"
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
    println!("1 worker process                 {one_worker_ms:7.1} ms/config (20 configs, start-up included)");
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
    Ok(())
}
