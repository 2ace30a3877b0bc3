//! Batched compilation: 100 tiled-SGEMM configs compiled serially in this process against the
//! worker-process pool, measured in the same run.
//!
//!     cargo bench --bench compile       (needs libnvrtc; prints a reason and exits 0 without it)

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
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);

    let t = Instant::now();
    let mut ok = 0;
    for r in &reqs {
        if compile_in_process(r)?.is_ok() {
            ok += 1;
        }
    }
    let serial = t.elapsed().as_secs_f64();

    let cmd = jitune::internals::worker_command()
        .ok_or_else(|| jitune::Error::Search("no worker command".into()))?;
    // The same in-process loop with a CUDA context alive (as in a tuning process), 20 configs.
    let _ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;
    let t = Instant::now();
    for r in &reqs[..20] {
        let _ = compile_in_process(r)?;
    }
    let with_ctx_ms = t.elapsed().as_secs_f64() * 1e3 / 20.0;
    println!("in process, context alive: {with_ctx_ms:.1} ms/config (20 configs)");
    // The same worker path with one worker: serial compilation without this process's state.
    let one = CompilePool::with_mode(PoolMode::Processes(cmd.clone()), 1);
    let t = Instant::now();
    let _ = one.compile_all(reqs.clone());
    let serial_worker = t.elapsed().as_secs_f64();
    let pool = CompilePool::with_mode(PoolMode::Processes(cmd), workers);
    let t = Instant::now();
    let out = pool.compile_all(reqs.clone());
    let pooled = t.elapsed().as_secs_f64();
    let pooled_ok = out.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    // Warm workers: a second batch shows the steady state of a tuning run.
    let t = Instant::now();
    let _ = pool.compile_all(reqs);
    let warm = t.elapsed().as_secs_f64();

    println!("configs                 100 ({ok} compiled serially, {pooled_ok} in the pool)");
    println!(
        "serial NVRTC, 1 process {serial:7.2} s  ({:.1} ms/config)",
        serial * 10.0
    );
    println!(
        "serial NVRTC, 1 worker  {serial_worker:7.2} s  ({:.1} ms/config)",
        serial_worker * 10.0
    );
    println!("pool, {workers:2} workers (cold) {pooled:7.2} s  speed-up {:.2}x (process start-up included)", serial / pooled);
    println!(
        "pool, {workers:2} workers (warm) {warm:7.2} s  speed-up {:.2}x  (target >= 5x)",
        serial / warm
    );
    Ok(())
}
