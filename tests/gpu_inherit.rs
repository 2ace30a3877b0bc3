//! Issue 16 on the GPU: a cache tuned here is rewritten to another NVRTC version (as a cache
//! shipped from another toolchain would be) and shipped to a new tuner in Background mode. Its
//! first launches use the inherited configs, compiled here (the foreign binaries are never
//! loaded), and they run as fast as the tuned ones (within 3%, re-timed side by side); strict
//! cache-only mode refuses an untuned key with the explanation.
//!
//! Needs an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries it prints why it
//! skips and passes.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use gpu_common::{gpu_or_skip, kernel, random};
use jitune::cache::export::Snapshot;
use jitune::cache::store::{BinaryRecord, Store};
use jitune::cache::{Cache, CacheOptions, Entry};
use jitune::engine::GpuEvaluator;
use jitune::internals::CompilePool;
use jitune::key::DeviceFingerprint;
use jitune::search::evaluator::{Evaluator, Outcome};
use jitune::tuner::{Mode, TuneOptions, Tuner};
use jitune::Arg;
use std::sync::Arc;

#[test]
fn gpu_a_cache_from_another_toolchain_is_inherited_and_compiled_here() {
    if !gpu_or_skip("gpu_a_cache_from_another_toolchain_is_inherited_and_compiled_here") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("jitune-inherit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let k = kernel("softmax");
    let shapes: [[i64; 2]; 2] = [[4096, 4096], [2048, 1024]];
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();

    // 1. Tune the shapes here, into a file.
    let tuned_path = dir.join("tuned.sqlite");
    let here = Tuner::with_context(
        ctx.clone(),
        Cache::open(CacheOptions::at(&tuned_path)).unwrap(),
        Mode::Blocking,
    )
    .unwrap();
    here.set_tune_options(TuneOptions {
        max_evals: 24,
        max_time_s: Some(20.0),
        ..Default::default()
    });
    let mut tuned: Vec<Entry> = Vec::new();
    for s in &shapes {
        tuned.push(here.tune(&k, s).unwrap().entry);
    }

    // 2. The same cache as another toolchain wrote it: the fingerprint's NVRTC and driver
    // changed, the binaries filed under that NVRTC.
    let fp = here.fingerprint().clone();
    let foreign = DeviceFingerprint {
        nvrtc_version: (fp.nvrtc_version.0 - 1, 9),
        driver_version: Some((fp.nvrtc_version.0 - 1, 9)),
        ..fp.clone()
    };
    let mut snap = Snapshot::from_store(&Store::open_rw(&tuned_path).unwrap()).unwrap();
    for e in &mut snap.entries {
        e.device = foreign.clone();
        e.key.device = foreign.hash64();
    }
    let foreign_nvrtc = format!("{}.{}", foreign.nvrtc_version.0, foreign.nvrtc_version.1);
    snap.binaries = snap
        .binaries
        .iter()
        .map(|b| BinaryRecord {
            nvrtc: foreign_nvrtc.clone(),
            ..b.clone()
        })
        .collect();
    snap.failures.clear();
    let shipped = dir.join("shipped.sqlite");
    snap.write_sqlite(&shipped).unwrap();

    // 3. A new process: the shipped layer only, Background mode.
    let fresh = Tuner::with_context(
        ctx.clone(),
        Cache::open(CacheOptions::at(dir.join("user.sqlite")).with_shipped(&shipped)).unwrap(),
        Mode::Background,
    )
    .unwrap();
    fresh.set_tune_options(TuneOptions {
        max_evals: 8,
        max_time_s: Some(10.0),
        ..Default::default()
    });
    let stream = ctx.default_stream();
    for (s, t) in shapes.iter().zip(&tuned) {
        let (rows, cols) = (s[0] as usize, s[1] as usize);
        let x = stream.clone_htod(&random(rows * cols, 3)).unwrap();
        let mut y = stream.alloc_zeros::<f32>(rows * cols).unwrap();
        fresh
            .launch(
                &k,
                &stream,
                s,
                &mut [
                    Arg::from(&x),
                    Arg::from(&mut y),
                    Arg::from(rows as i32),
                    Arg::from(cols as i32),
                ],
            )
            .unwrap();
        stream.synchronize().unwrap();
        let plan = fresh.plan(&k, s).expect("a plan serves");
        assert_eq!(
            plan.config, t.config,
            "the first launch uses the inherited config"
        );
    }
    let stats = fresh.stats();
    println!("inherit: {stats:?}");
    assert_eq!(stats.misses_by_decision.inherited, 2, "{stats:?}");
    assert!(
        fresh.nvrtc_compiles() >= 1,
        "the inherited configs were compiled here (the foreign binaries are filed under NVRTC {foreign_nvrtc})"
    );

    // 4. Re-timed side by side on this GPU: the inherited config against the tuned time.
    for (s, t) in shapes.iter().zip(&tuned) {
        let mut eval = GpuEvaluator::new(
            Arc::new(jitune::Gpu::from_context(ctx.clone()).unwrap()),
            k.spec.clone(),
            s,
            Arc::new(Cache::memory_only()),
            Arc::new(CompilePool::new(4)),
        )
        .unwrap();
        let c = eval.space().parse_config_text(&t.config).unwrap();
        eval.evaluate(std::slice::from_ref(&c)).unwrap();
        let now = match eval
            .remeasure(std::slice::from_ref(&c), 30)
            .unwrap()
            .remove(0)
        {
            Outcome::Measured(m) => m.time_ms,
            Outcome::Failed(f) => panic!("the inherited config failed: {}", f.detail),
        };
        let ratio = now / t.median_ms;
        println!(
            "inherit: softmax {s:?} {}: tuned {:.4} ms, inherited now {:.4} ms ({:+.1}%)",
            t.config,
            t.median_ms,
            now,
            100.0 * (ratio - 1.0)
        );
        // Within 3%, and a CUDA event's resolution (0.5 us) on top: the 2048 x 1024 softmax
        // runs in ~8 us, where 4% was one re-timing's noise (call Q: +4.0%, 0.34 us).
        assert!(
            now <= t.median_ms * 1.03 + 0.0005,
            "inherited config {:.1}% slower",
            100.0 * (ratio - 1.0)
        );
    }

    // 5. Strict mode: an untuned key is an error that explains itself.
    let strict = Tuner::with_context(
        ctx.clone(),
        Cache::open(CacheOptions::at(dir.join("user.sqlite")).with_shipped(&shipped)).unwrap(),
        Mode::CacheOnly,
    )
    .unwrap();
    strict.set_require_hit(true);
    let (rows, cols) = (512usize, 512usize);
    let x = stream.clone_htod(&random(rows * cols, 4)).unwrap();
    let mut y = stream.alloc_zeros::<f32>(rows * cols).unwrap();
    let err = strict
        .launch(
            &k,
            &stream,
            &[rows as i64, cols as i64],
            &mut [
                Arg::from(&x),
                Arg::from(&mut y),
                Arg::from(rows as i32),
                Arg::from(cols as i32),
            ],
        )
        .expect_err("strict mode refuses an untuned key");
    println!("inherit: strict mode: {err}");
    assert!(err.to_string().contains("not tuned"), "{err}");

    // 6. The Background tuner's re-check searches end before the process does (a test binary
    // that returned while one was inside the driver aborted at exit on the H200).
    let t0 = std::time::Instant::now();
    assert!(
        fresh.shutdown(std::time::Duration::from_secs(60)),
        "background searches still running after shutdown's 60 s"
    );
    println!("inherit: shutdown in {:.2} s", t0.elapsed().as_secs_f64());
}
