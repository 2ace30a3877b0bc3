//! GPU tests of the warp-tiled FP32 GEMM spec (`kernels/sgemm.toml`).
//!
//! - The default config (CacheOnly mode launches it untuned) and the tuned winner (Blocking mode,
//!   small budget) match a CPU float64 product at ordinary and edge shapes: 1x1x1, an M = 1
//!   decode row, sizes no tile divides, K and N not multiples of 4 (the scalar load path) and
//!   512^3 (the float4 path). The output starts as NaN, so an unwritten element fails.
//! - Dozens of configs sampled across the space (every BK, both VEC, DBUF and ATRANS modes, every
//!   warp and thread tile parameter value, many block tiles) agree with that checked default through
//!   the tuner's own correctness gate, tightened to the same 1e-5: none gives a wrong result,
//!   fails to compile or fails to launch.
//!
//! - With `JITUNE_SGEMM_PERF=1` as well: the median/best time ratio of 48 random configs at
//!   2048^3 and 4096^3 (printed with every config's TFLOP/s).
//!
//! Relative L2 errors are asserted at 1e-5: the GPU accumulates in FP32 (about 1e-7 to 1e-6 at
//! these K), a wrong row, column or K slice is far above.
//!
//! They need an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints
//! why it skips and passes. Set `JITUNE_WORKER_CMD` to the `jitune` binary to compile in parallel.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::sync::Arc;

use gpu_common::{
    gpu_or_skip, kernel, kernel_with_default, sample_covering, sweep_evaluator, tuner, Gemm,
};
use jitune::internals::CompilePool;
use jitune::internals::Rng;
use jitune::search::evaluator::{Evaluator, Outcome};
use jitune::space::Config;
use jitune::tuner::{Kernel, Mode, Tuner};

const TOL: f64 = 1e-5;

const SHAPES: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (1, 4096, 4096),
    (3, 5, 7),
    (257, 129, 200),
    (100, 4100, 72),
    (513, 255, 1023),
    (512, 512, 512),
];

fn sgemm() -> Kernel {
    kernel("sgemm")
}

/// Runs one GEMM through `tuner.launch` on fresh random inputs and checks it against the CPU.
fn check(tuner: &Tuner, kernel: &Kernel, (m, n, k): (usize, usize, usize)) {
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let seed = (m * 1_000_003 + n * 1009 + k) as u64;
    let mut g = Gemm::random(&stream, m, n, k, seed);
    let shape = g.shape();
    g.launch(tuner, kernel, &stream)
        .unwrap_or_else(|e| panic!("sgemm {shape:?}: {e}"));
    let err = g.error(&stream);
    let plan = tuner.plan(kernel, &shape).expect("a plan after the launch");
    println!(
        "sgemm {shape:?}: {} config {}, relative error {err:.2e}",
        if plan.tuned { "tuned" } else { "untuned" },
        plan.config
    );
    assert!(err <= TOL, "sgemm {shape:?}: relative error {err:e}");
}

#[test]
fn gpu_sgemm_default_and_tuned_winners_match_cpu() {
    if !gpu_or_skip("gpu_sgemm_default_and_tuned_winners_match_cpu") {
        return;
    }
    let kernel = sgemm();
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    for shape in SHAPES {
        check(&cache_only, &kernel, shape);
    }
    let blocking = tuner(Mode::Blocking, 8, 15.0);
    for shape in SHAPES {
        check(&blocking, &kernel, shape);
    }
    // Split-K through the caller's launch path: C starts as NaN, so the parts add up right only
    // if jitune zero-filled it first; at K = 7 three of the four parts lie past K.
    let split = kernel_with_default("sgemm", "SPLIT_K", "4");
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    for (m, n, k) in [(16, 4096, 4096), (257, 129, 203), (3, 5, 7)] {
        check(&cache_only, &split, (m, n, k));
        let plan = cache_only
            .plan(&split, &[m as i64, n as i64, k as i64])
            .unwrap();
        assert!(plan.config.contains("SPLIT_K=4"), "{}", plan.config);
    }
}

#[test]
fn gpu_sgemm_many_configs_agree_with_the_checked_default() {
    if !gpu_or_skip("gpu_sgemm_many_configs_agree_with_the_checked_default") {
        return;
    }
    // The reference of the agreement below: the default config against the CPU at both shapes.
    let kernel = sgemm();
    let cache_only = tuner(Mode::CacheOnly, 1, 1.0);
    for shape in [(257, 129, 203), (512, 512, 512)] {
        check(&cache_only, &kernel, shape);
    }
    let gpu = Arc::new(cache_only.gpu().expect("a GPU tuner has a GPU").clone());
    let pool = Arc::new(CompilePool::default_sized());
    agree(&gpu, &pool, [257, 129, 203]);
    agree(&gpu, &pool, [512, 512, 512]);
}

/// Evaluates 40 random configs at `shape`, plus more until every value of every parameter is
/// in, through a `GpuEvaluator` whose reference is the spec's default config and whose
/// tolerance is tightened to `TOL`: wrong results, compile errors and launch failures fail.
fn agree(gpu: &Arc<jitune::Gpu>, pool: &Arc<CompilePool>, shape: [i64; 3]) {
    let mut spec = (*sgemm().spec).clone();
    spec.tolerance = TOL;
    let mut eval = sweep_evaluator(gpu, pool, Arc::new(spec.clone()), &shape);
    let space = eval.space().clone();
    let dims = spec.params.len();
    let mut rng = Rng::new(11 + shape[2] as u64);
    let all: Vec<usize> = (0..dims).collect();
    let batch = sample_covering(&space, &mut rng, 40, &all, 20_000);
    for d in 0..dims {
        let mut seen: Vec<_> = batch.iter().map(|c| c.0[d]).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            spec.params[d].values.len(),
            "{} not covered",
            spec.params[d].name
        );
    }
    let outcomes = eval.evaluate(&batch).unwrap();
    let mut ok = 0;
    for (c, o) in batch.iter().zip(&outcomes) {
        match o {
            Outcome::Measured(_) => ok += 1,
            Outcome::Failed(f) => panic!(
                "sgemm {shape:?}: {} failed: {} ({})",
                space.config_text(c),
                f.class,
                f.detail
            ),
        }
    }
    println!(
        "sgemm {shape:?}: {} configs agree with the default within {TOL:e}",
        batch.len()
    );
    assert_eq!(ok, batch.len());
}

#[test]
fn gpu_sgemm_space_spread() {
    if !gpu_or_skip("gpu_sgemm_space_spread") {
        return;
    }
    if std::env::var("JITUNE_SGEMM_PERF").ok().as_deref() != Some("1") {
        println!("skipping gpu_sgemm_space_spread: JITUNE_SGEMM_PERF is not 1");
        return;
    }
    // The median/best time ratio of 48 uniformly drawn configs: the space must hold poor and
    // good configs alike.
    let gpu = Arc::new(
        tuner(Mode::CacheOnly, 1, 1.0)
            .gpu()
            .expect("a GPU tuner has a GPU")
            .clone(),
    );
    let pool = Arc::new(CompilePool::default_sized());
    for s in [2048i64, 4096] {
        let shape = [s, s, s];
        let mut eval = sweep_evaluator(&gpu, &pool, sgemm().spec.clone(), &shape);
        let space = eval.space().clone();
        let mut rng = Rng::new(99);
        let batch: Vec<Config> = (0..48).filter_map(|_| space.sample(&mut rng)).collect();
        let outcomes = eval.evaluate(&batch).unwrap();
        let mut rows: Vec<(f64, String)> = batch
            .iter()
            .zip(&outcomes)
            .filter_map(|(c, o)| o.time_ms().map(|t| (t, space.config_text(c))))
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(!rows.is_empty());
        let flops = 2.0 * (s as f64).powi(3);
        let (best, med) = (rows[0].0, rows[rows.len() / 2].0);
        println!(
            "sgemm {s}^3: {} of {} random configs ran; best {best:.3} ms ({:.1} TFLOP/s), median {med:.3} ms, worst {:.3} ms: median/best {:.2}",
            rows.len(),
            batch.len(),
            flops / best / 1e9,
            rows[rows.len() - 1].0,
            med / best
        );
        for (t, c) in &rows {
            println!("  {t:8.3} ms {:5.1} TFLOP/s  {c}", flops / t / 1e9);
        }
    }
}
