//! The launch hit path on the CPU, without a GPU: `Tuner::dry_launch` does everything
//! `Tuner::launch` does on a hit but the driver call (the key, the plan lookup, the counters,
//! the geometry memo, the argument checks and table), on a simulated device's tuner. Timed hot
//! (a tight loop) and, closer to serving, after the caches were swept by other work (the
//! driver's own `cuLaunchKernel` touches a lot of memory: on the H200 a raw launch costs
//! ~3.7 us and jitune's part measured ~250 ns there, against ~100 ns hot). After a sweep each
//! hit is timed on its own, less the clock's cost measured the same way.
//!
//!     cargo bench --bench hit_path      (no GPU needed)

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use jitune::cache::Cache;
use jitune::key::DeviceFingerprint;
use jitune::replay::Cachefile;
use jitune::tuner::{Arg, Mode, SimDevice, Tuner};
use tiny::median;

mod tiny;

fn args(n: usize) -> [Arg<'static>; 3] {
    // SAFETY: nothing is launched; the pointers are only checked and laid out.
    unsafe { tiny::raw_args(0x7f00_0000_1000, 0x7f00_0040_0000, n) }
}

/// Touches `buf` a cache line at a time (what other work does to the caches between launches).
fn sweep(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(64) {
        buf[i] = buf[i].wrapping_add(1);
    }
    black_box(&buf);
}

fn main() -> jitune::Result<()> {
    let data = Cachefile::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/convolution_A4000.json.gz"
    )))?;
    let fp = DeviceFingerprint {
        name: "Simulated".into(),
        compute_capability: (9, 0),
        sm_count: 132,
        nvrtc_version: (13, 0),
        driver_version: Some((13, 0)),
    };
    let dev = SimDevice::new(Arc::new(data), fp, "sim-hit-path", 0.0);
    let tuner = Tuner::simulated(dev, Cache::memory_only(), Mode::CacheOnly)?;
    let kernel = tiny::kernel()?;
    let n = 256usize;
    let shape = [n as i64];
    // The first call resolves the key (cache-only: the default's plan); then every call hits.
    tuner.dry_launch(&kernel, &shape, &mut args(n), &mut [0; 3])?;
    let plan = tuner.resolve(&kernel, &shape)?;

    const CALLS: usize = 1_000_000;
    let hot = |f: &dyn Fn()| {
        let mut v: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..CALLS {
                    f();
                }
                t.elapsed().as_nanos() as f64 / CALLS as f64
            })
            .collect();
        median(&mut v)
    };
    let whole = hot(&|| {
        black_box(tuner.dry_launch(&kernel, black_box(&shape), &mut args(n), &mut [0; 3])).ok();
    });
    let lookup = hot(&|| {
        black_box(tuner.plan(&kernel, black_box(&shape)));
    });
    let plan_part = hot(&|| {
        black_box(plan.dry_launch(&kernel.spec, black_box(&shape), &mut args(n), &mut [0; 3])).ok();
    });
    println!("hot (median of 7 loops of {CALLS} calls):");
    println!("  whole hit path short of the driver  {whole:6.1} ns  (Tuner::dry_launch)");
    println!("  key + plan lookup                   {lookup:6.1} ns  (Tuner::plan)");
    println!("  the plan's part                     {plan_part:6.1} ns  (Plan::dry_launch)");

    // After a sweep: each hit timed on its own right after sweeping a buffer, against an
    // empty timed region after the same sweep (the clock's own cost); medians of 20001.
    const SAMPLES: usize = 20_001;
    for kib in [256usize, 1024, 4096] {
        let mut buf = vec![0u8; kib * 1024];
        let (mut hit, mut empty) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
        for _ in 0..SAMPLES {
            sweep(&mut buf);
            let t = Instant::now();
            black_box(tuner.dry_launch(&kernel, black_box(&shape), &mut args(n), &mut [0; 3])).ok();
            hit.push(t.elapsed().as_nanos() as f64);
            sweep(&mut buf);
            let t = Instant::now();
            black_box(&shape);
            empty.push(t.elapsed().as_nanos() as f64);
        }
        println!(
            "after sweeping {kib:5} KiB: whole hit path {:6.1} ns (median of {SAMPLES}, less the clock's {:.1} ns)",
            median(&mut hit) - median(&mut empty),
            median(&mut empty)
        );
    }
    Ok(())
}
