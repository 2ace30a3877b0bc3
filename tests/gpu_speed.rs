//! Issue 18 on the GPU: the correctness gate on the device (against the host's arithmetic, for
//! every element type), failures it must catch, the host path for a caller's reference, the
//! 40-config transpose at 8192x8192 (tuning time, same winner as exhaustive, per-candidate
//! check cost), the roofline stop and preloading. Skips with a printed reason without a GPU or
//! without `JITUNE_GPU_TESTS=1`.
//!
//!     JITUNE_GPU_TESTS=1 cargo test --release --test gpu_speed -- --nocapture --test-threads=1

mod gpu_common;

use std::sync::Arc;

use cudarc::driver::{CudaContext, DevicePtr};
use gpu_common::{gpu_or_skip, kernel, sweep_evaluator, tuner};
use jitune::cache::{Cache, Entry};
use jitune::engine::GpuEvaluator;
use jitune::internals::{
    compare_kernels_compiled, compare_on_device, copy_bandwidth, f32_to_bf16, f32_to_f16, median,
    to_f64, Comparison, CompilePool, Operands, PoolMode, Rng, SCRATCH_BYTES,
};
use jitune::key::{Bucketing, ShapeBucket};
use jitune::search::{Evaluator, FailureClass, Outcome};
use jitune::space::Param;
use jitune::spec::{ElemType, SpecBuilder};
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions};
use jitune::Gpu;

/// `v` as `ty` bytes (integers rounded; NaN for integers is left to the caller).
fn encode(ty: ElemType, v: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &x in v {
        match ty {
            ElemType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            ElemType::F64 => out.extend_from_slice(&x.to_le_bytes()),
            ElemType::F16 => out.extend_from_slice(&f32_to_f16(x as f32).to_le_bytes()),
            ElemType::Bf16 => out.extend_from_slice(&f32_to_bf16(x as f32).to_le_bytes()),
            ElemType::I32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
            ElemType::U32 => out.extend_from_slice(&(x as u32).to_le_bytes()),
            ElemType::I64 => out.extend_from_slice(&(x as i64).to_le_bytes()),
            ElemType::U8 => out.push(x as u8),
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-10 * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan())
}

#[test]
fn the_device_comparison_is_the_host_comparison() {
    if !gpu_or_skip("the_device_comparison_is_the_host_comparison") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let stream = gpu.ctx.new_stream().unwrap();
    let scratch = stream.alloc_zeros::<u8>(SCRATCH_BYTES).unwrap();
    let (sp, _g) = scratch.device_ptr(&stream);
    let mut rng = Rng::new(18);
    let mut run = |ty: ElemType, n: usize, perturb: bool, nans: usize| {
        let reference: Vec<f64> = (0..n)
            .map(|_| {
                if ty.is_float() {
                    rng.next_f64() * 4.0 - 2.0
                } else {
                    (rng.below(100) + 1) as f64
                }
            })
            .collect();
        let out: Vec<f64> = reference
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if perturb && i % 7 == 3 {
                    r + if ty.is_float() { 0.01 } else { 1.0 }
                } else {
                    *r
                }
            })
            .collect();
        let mut out_bytes = encode(ty, &out);
        // All-ones bytes: NaN for floats (what an unwritten, poisoned element holds).
        for k in 0..nans.min(n) {
            let i = (k * 9973) % n;
            out_bytes[i * ty.size()..(i + 1) * ty.size()].fill(0xFF);
        }
        let ref_bytes = encode(ty, &reference);
        let host = Comparison::of_host(&to_f64(ty, &out_bytes), &to_f64(ty, &ref_bytes));
        let d_out = stream.clone_htod(&out_bytes).unwrap();
        let d_ref = stream.clone_htod(&ref_bytes).unwrap();
        let (op, _a) = d_out.device_ptr(&stream);
        let (rp, _b) = d_ref.device_ptr(&stream);
        let dev = compare_on_device(
            &gpu.ctx,
            &gpu.arch,
            &stream,
            Operands {
                ty,
                out: op,
                reference: rp,
                n,
                scratch: sp,
            },
        )
        .expect("the comparison kernel compiles")
        .expect("the comparison runs");
        (host, dev)
    };
    for ty in ElemType::ALL {
        for (n, perturb, nans) in [
            (1, false, 0),
            (1000, true, 0),
            (300_001, true, 0),
            (300_001, false, 0),
            (300_001, true, 3),
        ] {
            let (host, dev) = run(ty, n, perturb, nans);
            let what = format!("{} n={n} perturb={perturb} nans={nans}", ty.name());
            assert_eq!(dev.nonfinite, host.nonfinite, "{what}: {dev:?} vs {host:?}");
            assert_eq!(dev.max_abs, host.max_abs, "{what}");
            assert!(
                close(dev.sum_sq_diff, host.sum_sq_diff),
                "{what}: {dev:?} vs {host:?}"
            );
            assert!(
                close(dev.sum_sq_ref, host.sum_sq_ref),
                "{what}: {dev:?} vs {host:?}"
            );
            for tol in [0.0, 1e-3, 1e-2, 1.0] {
                assert_eq!(dev.passes(tol), host.passes(tol), "{what} tol {tol}");
            }
            if !perturb && nans == 0 {
                assert!(dev.passes(0.0), "{what}: identical data must pass exactly");
            }
        }
    }
    // Compiled once per element type in this context: a second round compiles nothing.
    let compiled = compare_kernels_compiled();
    for ty in ElemType::ALL {
        let _ = run(ty, 10, true, 0);
    }
    assert_eq!(compare_kernels_compiled(), compiled);
    println!("comparison kernels compiled in this process: {compiled}");
}

/// y[i] = i / 2, with a wrong variant (WRONG) and one that leaves the last element (SKIP).
fn iota() -> Kernel {
    let spec = SpecBuilder::new("iota")
        .source(
            "extern \"C\" __global__ void iota(float* y, int n) {\n\
             int i = blockIdx.x * B + threadIdx.x;\n\
             if (i < n && !(SKIP && i == n - 1)) y[i] = (WRONG ? 1.001f : 1.0f) * 0.5f * i;\n}",
        )
        .entry("iota")
        .param(Param::ints("B", &[64, 128]))
        .param(Param::ints("WRONG", &[0, 1]))
        .param(Param::ints("SKIP", &[0, 1]))
        .dim("n", Bucketing::NextPow2)
        .grid(["ceil_div(n, B)", "1", "1"])
        .block(["B", "1", "1"])
        .arg_buffer("y", "f32", "out", "n", "")
        .arg_scalar("n", "i32", "n")
        .default_config(&[("B", "128"), ("WRONG", "0"), ("SKIP", "0")])
        .tolerance(1e-6)
        .build()
        .unwrap();
    Kernel::new(spec)
}

fn iota_evaluator(gpu: &Arc<Gpu>, n: i64) -> GpuEvaluator {
    GpuEvaluator::new(
        gpu.clone(),
        iota().spec,
        &[n],
        Arc::new(Cache::memory_only()),
        Arc::new(CompilePool::with_mode(PoolMode::InProcess, 1)),
    )
    .unwrap()
}

/// Each config of the iota space with its outcome.
fn classes(eval: &mut GpuEvaluator) -> Vec<(String, Option<FailureClass>, String)> {
    let space = eval.space().clone();
    let all: Vec<_> = space.iter().collect();
    let out = eval.evaluate(&all).unwrap();
    all.iter()
        .zip(out)
        .map(|(c, o)| match o {
            Outcome::Measured(_) => (space.config_text(c), None, String::new()),
            Outcome::Failed(f) => (space.config_text(c), Some(f.class), f.detail),
        })
        .collect()
}

#[test]
fn wrong_and_unwritten_outputs_fail_on_the_device_and_on_the_host() {
    if !gpu_or_skip("wrong_and_unwritten_outputs_fail_on_the_device_and_on_the_host") {
        return;
    }
    let gpu = Arc::new(Gpu::new(0).unwrap());
    let n = 100_000i64;
    let expected: Vec<f64> = (0..n).map(|i| 0.5 * i as f64).collect();
    for host in [false, true] {
        let mut eval = iota_evaluator(&gpu, n);
        if host {
            eval.set_reference(vec![expected.clone()]);
        }
        for (text, class, detail) in classes(&mut eval) {
            let wrong = text.contains("WRONG=1");
            let skip = text.contains("SKIP=1");
            match (wrong, skip) {
                (false, false) => assert_eq!(class, None, "{text}: {detail}"),
                (_, true) => {
                    assert_eq!(class, Some(FailureClass::WrongResult), "{text}");
                    assert!(
                        detail.contains("NaN") && detail.contains("1 of them"),
                        "{detail}"
                    );
                }
                (true, false) => {
                    assert_eq!(class, Some(FailureClass::WrongResult), "{text}");
                    assert!(detail.contains("relative error"), "{detail}");
                }
            }
            if class.is_some() {
                let place = if host { "host" } else { "device" };
                assert!(detail.contains(place), "{text}: {detail}");
            }
        }
    }
    // A host reference that is wrong everywhere fails every config, the default included.
    let mut eval = iota_evaluator(&gpu, n);
    eval.set_reference(vec![expected.iter().map(|v| v + 1.0).collect()]);
    assert!(classes(&mut eval)
        .iter()
        .all(|(_, c, _)| *c == Some(FailureClass::WrongResult)));
}

fn transpose() -> Kernel {
    Kernel::from_toml_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/transpose.toml"
    ))
    .unwrap()
}

#[test]
fn transpose_8192_tunes_in_seconds_and_finds_the_exhaustive_winner() {
    if !gpu_or_skip("transpose_8192_tunes_in_seconds_and_finds_the_exhaustive_winner") {
        return;
    }
    let k = transpose();
    let shape = [8192i64, 8192];
    let t = tuner(Mode::Blocking, 120, 60.0);
    let space = k
        .spec
        .space_for(&shape, &t.gpu().expect("a GPU tuner has a GPU").limits)
        .unwrap();
    assert_eq!(space.count(), 40);
    let lfbo = t.tune(&k, &shape).unwrap();
    let stats = lfbo.stats.clone().expect("in-process tuning has stats");
    let checks: Vec<f64> = stats.candidates.iter().map(|c| c.check_s * 1e3).collect();
    let overhead: Vec<f64> = stats
        .candidates
        .iter()
        .map(|c| c.overhead_s() * 1e3)
        .collect();
    println!(
        "transpose 8192x8192, lfbo: {} configs in {:.2} s (target <= 3 s); winner {} at {:.4} ms \
         (default {:?} ms); per candidate: check median {:.2} ms, overhead median {:.2} ms \
         (target <= 5 ms); setup {:.2} s",
        lfbo.entry.evaluated,
        lfbo.wall_s,
        lfbo.entry.config,
        lfbo.entry.median_ms,
        lfbo.default_ms,
        median(&checks),
        median(&overhead),
        stats.setup_s
    );
    // The check no longer copies 256 MB to the host (it took about 700 ms that way).
    assert!(
        median(&checks) < 20.0,
        "check median {} ms",
        median(&checks)
    );
    let ex = tuner(Mode::Blocking, 100, 120.0)
        .tune_with(
            &k,
            &shape,
            &TuneOptions {
                strategy: "exhaustive".into(),
                max_evals: 100,
                max_time_s: None,
                ..Default::default()
            },
        )
        .unwrap();
    println!(
        "transpose 8192x8192, exhaustive: {} configs in {:.2} s; winner {} at {:.4} ms",
        ex.entry.evaluated, ex.wall_s, ex.entry.config, ex.entry.median_ms
    );
    // Re-timed side by side: LFBO's winner is the exhaustive one, or as fast within 3%.
    let gpu = Arc::new(Gpu::new(0).unwrap());
    let pool = Arc::new(CompilePool::with_mode(PoolMode::InProcess, 1));
    let mut eval = sweep_evaluator(&gpu, &pool, k.spec.clone(), &shape);
    let a = space.parse_config_text(&lfbo.entry.config).unwrap();
    let b = space.parse_config_text(&ex.entry.config).unwrap();
    eval.evaluate(&[a.clone(), b.clone()]).unwrap();
    let re = eval.remeasure(&[a, b], 30).unwrap();
    let (ta, tb) = (re[0].time_ms().unwrap(), re[1].time_ms().unwrap());
    println!(
        "re-timed: lfbo winner {ta:.4} ms, exhaustive winner {tb:.4} ms ({:+.2}%)",
        (ta / tb - 1.0) * 100.0
    );
    assert!(ta <= tb * 1.03, "lfbo {ta} ms vs exhaustive {tb} ms");
}

#[test]
fn the_roofline_stops_a_memory_bound_search() {
    if !gpu_or_skip("the_roofline_stops_a_memory_bound_search") {
        return;
    }
    let k = kernel("softmax");
    let shape = [8192i64, 8192];
    let t = tuner(Mode::Blocking, 60, 60.0);
    let bw = copy_bandwidth(
        &t.gpu().expect("a GPU tuner has a GPU").ctx,
        t.gpu().expect("a GPU tuner has a GPU").limits.l2_bytes,
    )
    .expect("a copy bandwidth");
    println!("copy bandwidth {:.2} TB/s", bw / 1e12);
    // Random search spends its whole budget unless stopped (LFBO may end on convergence).
    let run = |stop: Option<f64>, evals: usize| {
        tuner(Mode::Blocking, evals, 60.0)
            .tune_with(
                &k,
                &shape,
                &TuneOptions {
                    strategy: "random".into(),
                    max_evals: evals,
                    max_time_s: Some(60.0),
                    roofline_stop: stop,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    // A low bar any config meets: the search ends after its first batch, as a normal finish.
    let low = run(Some(0.3), 60);
    let floor = low.roofline_ms.expect("softmax declares its bytes");
    println!(
        "softmax 8192x8192 at 30% of the roofline: stopped {} after {} configs, best {:.4} ms \
         = {:.0}% of the roofline ({floor:.4} ms)",
        low.roofline_stop,
        low.entry.evaluated,
        low.entry.median_ms,
        100.0 * floor / low.entry.median_ms
    );
    assert!(low.roofline_stop && !low.partial);
    assert!((low.entry.evaluated as usize) < 60);
    assert!(!low.entry.strategy.contains("partial"));
    // No stop asked: the whole budget is spent.
    let none = run(None, 24);
    assert!(!none.roofline_stop);
    assert_eq!(none.entry.evaluated, 24);
    // The default (95%): printed, for the record.
    let d = run(Some(0.95), 60);
    println!(
        "softmax 8192x8192 at 95%: stopped {} after {} configs in {:.2} s, best {:.4} ms = {:.0}% \
         of the roofline",
        d.roofline_stop,
        d.entry.evaluated,
        d.wall_s,
        d.entry.median_ms,
        100.0 * floor / d.entry.median_ms
    );
}

/// Launches softmax through `t` at rows x cols and checks that each row sums to 1.
fn launch_softmax(t: &jitune::Tuner, k: &Kernel, rows: usize, cols: usize) {
    let stream = t
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .new_stream()
        .unwrap();
    let x = stream
        .clone_htod(&gpu_common::random(rows * cols, 5))
        .unwrap();
    let mut y = stream.alloc_zeros::<f32>(rows * cols).unwrap();
    t.launch(
        k,
        &stream,
        &[rows as i64, cols as i64],
        &mut [
            Arg::from(&x),
            Arg::from(&mut y),
            Arg::from(rows as i32),
            Arg::from(cols as i32),
        ],
    )
    .unwrap();
    let y = stream.clone_dtoh(&y).unwrap();
    for r in 0..rows {
        let s: f32 = y[r * cols..(r + 1) * cols].iter().sum();
        assert!((s - 1.0).abs() < 1e-3, "row {r} sums to {s}");
    }
}

#[test]
fn preloading_compiles_before_the_first_launch() {
    if !gpu_or_skip("preloading_compiles_before_the_first_launch") {
        return;
    }
    let k = kernel("softmax");
    let t = tuner(Mode::CacheOnly, 1, 1.0);
    // A winner known for another bucket is preloaded with the default.
    let space = k
        .spec
        .space_for(
            &[1024, 1024],
            &t.gpu().expect("a GPU tuner has a GPU").limits,
        )
        .unwrap();
    let other = space
        .iter()
        .find(|c| *c != k.spec.default)
        .expect("a second config");
    let entry = Entry::new(
        k.spec.id(),
        ShapeBucket::new(&[1024, 1024]).unwrap(),
        t.fingerprint().clone(),
        "softmax",
        &space.config_text(&other),
        0.1,
    );
    t.cache().put(entry).unwrap();
    let r = t.preload(&k).wait();
    println!("preload: {r:?}");
    assert_eq!((r.configs, r.failed), (2, 0));
    assert_eq!(r.compiled + r.from_table, 2);
    // The first launch (a cache-only miss: the default config) compiles nothing.
    let before = t.nvrtc_compiles();
    launch_softmax(&t, &k, 300, 512);
    assert_eq!(t.nvrtc_compiles(), before, "the first launch compiled");
    // A second preload has nothing new to do.
    assert_eq!(t.preload(&k).wait().configs, 0);

    // A launch while the preload is in flight waits for it: one compilation in all.
    let t2 = tuner(Mode::CacheOnly, 1, 1.0);
    let p = t2.preload(&k);
    launch_softmax(&t2, &k, 300, 512);
    let r2 = p.wait();
    assert_eq!(r2.configs, 1);
    assert_eq!(t2.nvrtc_compiles(), 1, "compiled twice: {r2:?}");
}

#[test]
fn timing_is_adaptive_and_racing_prunes() {
    if !gpu_or_skip("timing_is_adaptive_and_racing_prunes") {
        return;
    }
    // SGEMM 1024^3 over a sample of its space: most configs are clearly slower than the best
    // and stop early; none takes the 50-sample cap unless its runs are noisy.
    let k = kernel("sgemm");
    let shape = [1024i64, 1024, 1024];
    let gpu = Arc::new(Gpu::from_context(CudaContext::new(0).unwrap()).unwrap());
    let pool = Arc::new(CompilePool::with_mode(PoolMode::InProcess, 1));
    let mut eval = GpuEvaluator::new(
        gpu.clone(),
        k.spec.clone(),
        &shape,
        Arc::new(Cache::memory_only()),
        pool,
    )
    .unwrap();
    let space = eval.space().clone();
    let mut rng = Rng::new(3);
    let batch = gpu_common::sample_covering(&space, &mut rng, 40, &[], 400);
    let out = eval.evaluate(&batch).unwrap();
    let measured = out.iter().filter(|o| o.time_ms().is_some()).count();
    let stats = eval.stats();
    let samples: Vec<f64> = stats
        .candidates
        .iter()
        .filter(|c| c.samples > 0)
        .map(|c| c.samples as f64)
        .collect();
    println!(
        "sgemm 1024^3, {} configs ({measured} measured): {} raced, samples per config median {} \
         (was 8 and more before), flush {}",
        batch.len(),
        stats.raced,
        median(&samples),
        eval.flushes_l2()
    );
    assert!(stats.raced > 0, "no config was raced");
    assert!(median(&samples) < 8.0);
}
