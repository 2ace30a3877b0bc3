//! The application side of `examples/ship.rs`: open the exported cache as a read-only shipped
//! layer (no user cache file at all), with tuning disabled (`Mode::CacheOnly`), launch every
//! shipped kernel and shape, and prove it: each launch's plan must be a tuned plan whose config is
//! the shipped winner for that key, and NVRTC must have compiled nothing (the winners' CUBINs
//! ship in the file). Exit status 1 when the proof fails.
//!
//! Afterwards it launches one shape that was not shipped, to show the other side of CacheOnly:
//! the spec's default config, untuned, compiled on the spot.
//!
//!     cargo run --release --example ship_serve [-- --dir DIR]
//!
//! Without a GPU (or without the shipped file) it says why in one line and exits with status 2.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::ExitCode;

use common::{cuda, KernelBuffers, Timer};
use jitune::cache::export::Snapshot;
use jitune::cache::{Cache, CacheOptions};
use jitune::tuner::{Mode, Tuner};
use jitune::{Error, Result};

fn main() -> ExitCode {
    jitune::run_if_worker();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ship_serve: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(true) when every launch used the shipped winner and nothing was compiled.
fn run() -> Result<bool> {
    let mut list = Vec::new();
    for (name, shapes) in common::ship_list() {
        if let Some(k) = common::optional_kernel(name)? {
            list.push((k, shapes));
        }
    }
    jitune::require_cuda()?;
    let shipped = common::ship_dir().join("tuned.sqlite");
    if !shipped.is_file() {
        return Err(Error::store(format!(
            "{} does not exist; run `cargo run --release --example ship` first",
            shipped.display()
        )));
    }
    // What the file says, read independently of the tuner: key -> shipped winner.
    let expected: HashMap<_, _> = Snapshot::load(&shipped)?
        .entries
        .into_iter()
        .map(|e| (e.key, e.config))
        .collect();
    let cache = Cache::open(CacheOptions::memory_only().with_shipped(&shipped))?;
    if cache.shipped_stores().is_empty() {
        return Err(Error::store(format!(
            "{} could not be opened as a shipped cache (see the warning above)",
            shipped.display()
        )));
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda("opening device 0"))?;
    let tuner = Tuner::with_context(ctx.clone(), cache, Mode::CacheOnly)?;
    // JITUNE_MODE may name another mode; this program's point is that nothing tunes.
    tuner.set_mode(Mode::CacheOnly);
    println!(
        "device {}; shipped cache {} ({} winners), tuning disabled (cache-only)",
        tuner.fingerprint().to_text(),
        shipped.display(),
        expected.len()
    );
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let mut timer = Timer::new(
        &ctx,
        stream.clone(),
        tuner.gpu().expect("a GPU tuner has a GPU").limits.l2_bytes,
    )?;
    timer.budget_ms = 50.0;
    let mut ok = true;
    let mut launches = 0usize;
    println!(
        "\n{:<10} {:>15}  {:<52} {:>9}  verdict",
        "kernel", "shape", "launched config", "ms"
    );
    for (kernel, shapes) in &list {
        for shape in shapes {
            let mut bufs = KernelBuffers::new(&kernel.spec.name, shape, &stream, 1)?;
            for _ in 0..10 {
                bufs.launch(&tuner, kernel, &stream, shape)?;
                launches += 1;
            }
            stream.synchronize().map_err(cuda("running the kernels"))?;
            if let KernelBuffers::Gemm(g) = &bufs {
                let err = g.spot_check(&stream, 16, 2)?;
                if err > 2e-3 {
                    println!(
                        "{} {shape:?}: wrong result (error {err:.2e})",
                        kernel.spec.name
                    );
                    ok = false;
                }
            }
            let ms = timer.time(&mut |st| bufs.launch(&tuner, kernel, st, shape))?;
            let key = tuner.key(kernel, shape)?;
            let plan = tuner.plan(kernel, shape);
            let verdict = match (&plan, expected.get(&key)) {
                (None, _) => "no plan".to_string(),
                (Some(_), None) => "NOT SHIPPED (key missing from the file)".to_string(),
                (Some(p), Some(want)) if p.tuned && &p.config == want => {
                    "shipped winner".to_string()
                }
                (Some(p), Some(want)) => format!(
                    "MISMATCH: shipped {want}, launched {} (tuned: {})",
                    p.config, p.tuned
                ),
            };
            ok &= verdict == "shipped winner";
            println!(
                "{:<10} {:>15}  {:<52} {:>9.4}  {verdict}",
                kernel.spec.name,
                common::shape_text(shape),
                plan.map(|p| p.config.clone()).unwrap_or_default(),
                ms
            );
        }
    }
    let compiles = tuner.nvrtc_compiles();
    println!(
        "\n{launches} launches (plus timing runs); NVRTC compiles: {compiles}; every launch used the shipped winner: {}",
        if ok { "yes" } else { "NO" }
    );
    ok &= compiles == 0;

    // The other side of cache-only: a shape nobody shipped runs the default config, untuned.
    let sgemm = common::kernel("sgemm")?;
    let shape = [512i64, 512, 512];
    let mut bufs = KernelBuffers::new("sgemm", &shape, &stream, 3)?;
    bufs.launch(&tuner, &sgemm, &stream, &shape)?;
    stream.synchronize().map_err(cuda("running sgemm"))?;
    if let Some(p) = tuner.plan(&sgemm, &shape) {
        println!(
            "not shipped: sgemm 512x512x512 ran the default config {} (tuned: {}), which cost {} NVRTC compile(s)",
            p.config,
            p.tuned,
            tuner.nvrtc_compiles() - compiles
        );
    }
    if ok {
        println!("proof: every shipped launch used the shipped winner and NVRTC compiled nothing");
    }
    Ok(ok)
}
