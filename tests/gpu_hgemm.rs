//! GPU tests of the tensor-core GEMM specs: the portable `hgemm_{f16,bf16}`, and on compute
//! capability 9.0 the wgmma `hgemm_sm90_{f16,bf16}` (cp.async) and `hgemm_sm90_tma_{f16,bf16}`
//! (TMA loads through tensor maps jitune encodes at launch; zero maps and the cp.async fallback
//! where a shape cannot be described).
//!
//! - The tuned winner (Blocking mode, small budget) at ordinary and edge shapes (M = 1 decode
//!   rows, sizes no tile divides, K and N not multiples of 8) matches a CPU float64 product of
//!   the same 16-bit inputs, for both element types; the output starts as NaN, so an unwritten
//!   element fails.
//! - The default config (CacheOnly mode launches it untuned) matches the CPU, and dozens of other
//!   configs covering every layout, split-K factor, stage count and tile shape agree with it
//!   through the tuner's own correctness gate: none gives a wrong result.
//! - With `JITUNE_HGEMM_PERF=1` as well: tuning at 4096^3 within 30 s, the winner's TFLOP/s,
//!   the time-to-quality curve, and the median/best ratio of randomly drawn configs (the space
//!   must hold poor and good configs).
//!
//! Relative L2 errors are asserted at 5e-4: both sides multiply the same 16-bit values, so only
//! FP32 accumulation separates them (about 1e-6); a wrong row, column or K slice is far above.
//!
//! They need an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints
//! why it skips and passes. Set `JITUNE_WORKER_CMD` to the `jitune` binary to compile in parallel.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::sync::Arc;

use gpu_common::{
    cpu_gemm, gpu_or_skip, kernel, kernel_with_default, sample_covering, sweep_evaluator, tuner,
    Gemm,
};
use jitune::internals::CompilePool;
use jitune::internals::Rng;
use jitune::internals::{f32_to_bf16, f32_to_f16, to_f64};
use jitune::search::evaluator::{Evaluator, FailureClass, Outcome};
use jitune::spec::ElemType;
use jitune::tuner::{Kernel, Mode, Tuner};

/// `n` random 16-bit values of type `ty` (uniform in [-1, 1) before rounding): the bits for the
/// GPU and the exact values they stand for, as f64, for the CPU.
fn random_half(ty: ElemType, n: usize, seed: u64) -> (Vec<u16>, Vec<f64>) {
    let mut r = Rng::new(seed);
    let bits: Vec<u16> = (0..n)
        .map(|_| {
            let x = (r.next_f64() * 2.0 - 1.0) as f32;
            match ty {
                ElemType::Bf16 => f32_to_bf16(x),
                _ => f32_to_f16(x),
            }
        })
        .collect();
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let values = to_f64(ty, &bytes);
    (bits, values)
}

/// Runs one GEMM through `tuner.launch` on fresh random inputs; returns the relative error
/// against the CPU.
fn check(tuner: &Tuner, kernel: &Kernel, ty: ElemType, (m, n, k): (usize, usize, usize)) -> f64 {
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let seed = (m * 1_000_003 + n * 1009 + k) as u64;
    let (a_bits, a) = random_half(ty, m * k, seed);
    let (b_bits, b) = random_half(ty, k * n, seed + 1);
    let reference = cpu_gemm(&a, &b, m, n, k);
    let mut g = Gemm::new(&stream, (m, n, k), &a_bits, &b_bits, reference);
    let shape = g.shape();
    g.launch(tuner, kernel, &stream)
        .unwrap_or_else(|e| panic!("{} {shape:?}: {e}", kernel.spec.name));
    let err = g.error(&stream);
    let plan = tuner.plan(kernel, &shape).expect("a plan after the launch");
    println!(
        "{} {shape:?}: {} config {}, relative error {err:.2e}",
        kernel.spec.name,
        if plan.tuned { "tuned" } else { "untuned" },
        plan.config
    );
    assert!(
        err <= 5e-4,
        "{} {shape:?}: relative error {err:e}",
        kernel.spec.name
    );
    err
}

#[test]
fn gpu_hgemm_tuned_winners_match_cpu() {
    if !gpu_or_skip("gpu_hgemm_tuned_winners_match_cpu") {
        return;
    }
    let tuner = tuner(Mode::Blocking, 8, 15.0);
    let f16 = kernel("hgemm_f16");
    let bf16 = kernel("hgemm_bf16");
    for shape in [(1, 4096, 4096), (257, 129, 200), (512, 512, 512), (3, 5, 7)] {
        check(&tuner, &f16, ElemType::F16, shape);
    }
    for shape in [(1, 4096, 4096), (257, 129, 200), (100, 4104, 72)] {
        check(&tuner, &bf16, ElemType::Bf16, shape);
    }
}

#[test]
fn gpu_hgemm_many_configs_agree_with_the_checked_default() {
    if !gpu_or_skip("gpu_hgemm_many_configs_agree_with_the_checked_default") {
        return;
    }
    // The default config, untuned (CacheOnly), against the CPU: the vectorised path (N, K
    // multiples of 8) and the bounds-checked scalar path.
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    for (name, ty) in [("hgemm_f16", ElemType::F16), ("hgemm_bf16", ElemType::Bf16)] {
        let k = kernel(name);
        for shape in [(96, 200, 264), (257, 129, 200), (1, 256, 4096)] {
            check(&cache_only, &k, ty, shape);
        }
    }
    // Many configs against that default, through the tuner's correctness gate (tolerance 1e-3).
    let gpu = Arc::new(cache_only.gpu().expect("a GPU tuner has a GPU").clone());
    let cover = ["LAYOUT", "SPLITK", "STAGES"];
    agree(&gpu, "hgemm_f16", [96, 200, 264], &cover);
    agree(&gpu, "hgemm_f16", [257, 129, 200], &cover);
    agree(&gpu, "hgemm_bf16", [1, 256, 4096], &cover);
}

/// Evaluates 36 random configs of `name` at `shape` (plus more until every value of each
/// parameter in `cover` is in) through a `GpuEvaluator`, whose reference is the spec's default
/// config: wrong results and compile errors fail.
fn agree(gpu: &Arc<jitune::Gpu>, name: &str, shape: [i64; 3], cover: &[&str]) {
    let pool = Arc::new(CompilePool::default_sized());
    {
        let k = kernel(name);
        let mut eval = sweep_evaluator(gpu, &pool, k.spec.clone(), &shape);
        let space = eval.space().clone();
        let dims: Vec<usize> = cover
            .iter()
            .map(|c| k.spec.params.iter().position(|p| p.name == *c).unwrap())
            .collect();
        // 36 random configs, then enough more that every value of the `cover` parameters is in.
        let mut rng = Rng::new(7 + shape[0] as u64);
        let batch = sample_covering(&space, &mut rng, 36, &dims, 5000);
        let outcomes = eval.evaluate(&batch).unwrap();
        // Wrong results and compile errors fail the test; a launch failure (resources) or a
        // config stopped for being far slower than the best (checked before it was timed) is no
        // correctness problem.
        let (mut ok, mut launch, mut slow) = (0, 0, 0);
        for (c, o) in batch.iter().zip(&outcomes) {
            match o {
                Outcome::Measured(_) => ok += 1,
                Outcome::Failed(f) if f.class == FailureClass::Launch => {
                    launch += 1;
                    println!("  launch failure {}: {}", space.config_text(c), f.detail);
                }
                Outcome::Failed(f) if f.class == FailureClass::TooSlow => slow += 1,
                Outcome::Failed(f) => panic!(
                    "{name} {shape:?}: {} failed: {} ({})",
                    space.config_text(c),
                    f.class,
                    f.detail
                ),
            }
        }
        println!(
            "{name} {shape:?}: {} configs, {ok} correct, {slow} stopped as too slow, {launch} could not launch",
            batch.len()
        );
        assert!(ok >= batch.len() / 2, "{ok} of {} ran", batch.len());
    }
}

#[test]
fn gpu_hgemm_sm90_matches_cpu() {
    if !gpu_or_skip("gpu_hgemm_sm90_matches_cpu") {
        return;
    }
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    let limits = cache_only.gpu().expect("a GPU tuner has a GPU").limits;
    if (limits.cc_major, limits.cc_minor) != (9, 0) {
        println!("skipping gpu_hgemm_sm90_matches_cpu: the device is not compute capability 9.0");
        return;
    }
    // The default config (untuned) against the CPU, then many configs against it.
    for (name, ty) in [
        ("hgemm_sm90_f16", ElemType::F16),
        ("hgemm_sm90_bf16", ElemType::Bf16),
        ("hgemm_sm90_tma_f16", ElemType::F16),
        ("hgemm_sm90_tma_bf16", ElemType::Bf16),
    ] {
        let k = kernel(name);
        for shape in [
            (96, 200, 264),
            (257, 129, 200),
            (1, 256, 4096),
            (1, 4096, 4096),
            (512, 512, 512),
        ] {
            check(&cache_only, &k, ty, shape);
        }
    }
    let gpu = Arc::new(cache_only.gpu().expect("a GPU tuner has a GPU").clone());
    let cover = ["BM", "BN", "WGM", "STAGES", "INFLIGHT", "WS"];
    agree(&gpu, "hgemm_sm90_f16", [96, 200, 264], &cover);
    agree(&gpu, "hgemm_sm90_f16", [257, 129, 200], &cover);
    agree(&gpu, "hgemm_sm90_bf16", [200, 264, 1024], &cover);
    // TMA: real maps, zero maps (N % 8 != 0: the cp.async fallback), one row of A in BM-row boxes.
    agree(&gpu, "hgemm_sm90_tma_f16", [512, 512, 512], &cover);
    agree(&gpu, "hgemm_sm90_tma_f16", [257, 129, 200], &cover);
    agree(&gpu, "hgemm_sm90_tma_f16", [1, 4096, 4096], &cover);
    agree(&gpu, "hgemm_sm90_tma_bf16", [200, 264, 1024], &cover);
    // Split-K through the caller's launch path: c starts as NaN, so the parts add up right only
    // if jitune zero-filled it first. K parts past K read zeros: (64, 256, 192) has 3 slices in
    // 4 parts (TMA), (96, 200, 264) 5 in 4 parts of 2 (N % 8 != 0: the cp.async fallback).
    // (A tuner of its own: the spec's id ignores its default, so plans made above would be used.)
    let split = kernel_with_default("hgemm_sm90_tma_f16", "SPLIT_K", "4");
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    for shape in [
        (16, 4096, 4096),
        (64, 256, 192),
        (96, 200, 264),
        (1, 4096, 4096),
    ] {
        check(&cache_only, &split, ElemType::F16, shape);
        let (m, n, k) = shape;
        let plan = cache_only
            .plan(&split, &[m as i64, n as i64, k as i64])
            .unwrap();
        assert!(plan.config.contains("SPLIT_K=4"), "{}", plan.config);
    }
    let cover_split = ["BM", "BN", "STAGES", "WS", "SPLIT_K"];
    agree(&gpu, "hgemm_sm90_tma_f16", [16, 4096, 4096], &cover_split);
    agree(&gpu, "hgemm_sm90_tma_f16", [64, 256, 192], &cover_split);
    // Tuned winners.
    let tuner = tuner(Mode::Blocking, 8, 15.0);
    for (f16, bf16) in [
        ("hgemm_sm90_f16", "hgemm_sm90_bf16"),
        ("hgemm_sm90_tma_f16", "hgemm_sm90_tma_bf16"),
    ] {
        let (f16, bf16) = (kernel(f16), kernel(bf16));
        for shape in [(1, 4096, 4096), (257, 129, 200), (512, 512, 512), (3, 5, 7)] {
            check(&tuner, &f16, ElemType::F16, shape);
        }
        check(&tuner, &bf16, ElemType::Bf16, (100, 4104, 72));
    }
}

#[test]
fn gpu_hgemm_f16_4096_tuning_and_spread() {
    if !gpu_or_skip("gpu_hgemm_f16_4096_tuning_and_spread") {
        return;
    }
    if std::env::var("JITUNE_HGEMM_PERF").ok().as_deref() != Some("1") {
        println!("skipping gpu_hgemm_f16_4096_tuning_and_spread: JITUNE_HGEMM_PERF is not 1");
        return;
    }
    let names = std::env::var("JITUNE_HGEMM_PERF_SPECS")
        .unwrap_or_else(|_| "hgemm_f16,hgemm_sm90_f16,hgemm_sm90_tma_f16".into());
    for name in names.split(',') {
        tune_and_spread(name);
    }
}

/// Tunes `name` at 4096^3 for at most 30 s and prints the result and curve, then times 32
/// uniformly drawn configs and prints their median/best ratio.
fn tune_and_spread(name: &str) {
    let shape = [4096i64, 4096, 4096];
    let flops = 2.0 * 4096f64.powi(3);
    let tuner = tuner(Mode::Blocking, 400, 30.0);
    let k = kernel(name);
    let report = tuner.tune(&k, &shape).unwrap();
    println!(
        "{name} 4096^3: tuned in {:.1} s ({} configs, {} compiled): {} at {:.4} ms = {:.1} TFLOP/s; default {:?} ms",
        report.wall_s,
        report.entry.evaluated,
        report.compiled,
        report.entry.config,
        report.entry.median_ms,
        flops / report.entry.median_ms / 1e9,
        report.default_ms
    );
    for (i, (t, b)) in report.curve.iter().enumerate() {
        if i % 8 == 7 || i + 1 == report.curve.len() {
            println!(
                "  {:3} evals {:6.2} s  best {:.4} ms ({:.1} TFLOP/s)",
                i + 1,
                t,
                b,
                flops / b / 1e9
            );
        }
    }
    assert!(report.wall_s <= 45.0);
    // The spread of the space: 32 uniformly drawn configs.
    let gpu = Arc::new(tuner.gpu().expect("a GPU tuner has a GPU").clone());
    let pool = Arc::new(CompilePool::default_sized());
    let mut eval = sweep_evaluator(&gpu, &pool, k.spec.clone(), &shape);
    let space = eval.space().clone();
    let mut rng = Rng::new(99);
    let batch: Vec<_> = (0..32).filter_map(|_| space.sample(&mut rng)).collect();
    let outcomes = eval.evaluate(&batch).unwrap();
    let mut times: Vec<f64> = outcomes.iter().filter_map(|o| o.time_ms()).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    assert!(!times.is_empty());
    let med = times[times.len() / 2];
    println!(
        "{name} random configs at 4096^3: {} ran; best {:.3} ms, median {:.3} ms, worst {:.3} ms: median/best {:.2}",
        times.len(),
        times[0],
        med,
        times[times.len() - 1],
        med / times[0]
    );
    for (c, o) in batch.iter().zip(&outcomes) {
        println!(
            "  {:>9} {}",
            o.time_ms()
                .map(|t| format!("{t:.3}"))
                .unwrap_or("failed".into()),
            space.config_text(c)
        );
    }
}
