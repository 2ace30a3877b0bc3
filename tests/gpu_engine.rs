//! GPU engine tests: compile + launch + correctness against a CPU reference, a second process
//! hitting the cache without NVRTC, Background mode swapping in a winner while another thread
//! launches, and each failure class from a planted bad config.
//!
//! They need an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints
//! why it skips and passes.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gpu_common::{gpu_or_skip, kernel, tuner, Gemm};
use jitune::cache::{Cache, CacheOptions};
use jitune::space::Param;
use jitune::spec::SpecBuilder;
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};

fn sgemm() -> Kernel {
    kernel("sgemm")
}

fn temp_cache(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jitune-gpu-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("cache.sqlite")
}

/// Runs sgemm through `tuner` at a shape and checks it against the CPU.
fn sgemm_matches_cpu(tuner: &Tuner, kernel: &Kernel, m: usize, n: usize, k: usize) {
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let mut g = Gemm::random(&stream, m, n, k, 1);
    g.launch(tuner, kernel, &stream).unwrap();
    let err = g.error(&stream);
    assert!(err < 1e-5, "relative error {err} at {m}x{n}x{k}");
}

#[test]
fn gpu_compile_launch_and_check_against_cpu() {
    if !gpu_or_skip("gpu_compile_launch_and_check_against_cpu") {
        return;
    }
    let tuner = tuner(Mode::Blocking, 12, 30.0);
    let kernel = sgemm();
    // Edge shapes: not multiples of any tile, and a single decode row.
    for (m, n, k) in [(257, 129, 65), (1, 300, 77), (128, 128, 128)] {
        sgemm_matches_cpu(&tuner, &kernel, m, n, k);
        let plan = tuner
            .plan(&kernel, &[m as i64, n as i64, k as i64])
            .unwrap();
        assert!(plan.tuned, "Blocking mode launches a tuned winner");
        println!("{m}x{n}x{k}: winner {}", plan.config);
    }
    // Bad calls are errors, not crashes.
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let small = stream.alloc_zeros::<f32>(4).unwrap();
    let mut out = stream.alloc_zeros::<f32>(4).unwrap();
    let e = tuner
        .launch(
            &kernel,
            &stream,
            &[128, 128, 128],
            &mut [
                Arg::from(&small),
                Arg::from(&small),
                Arg::from(&mut out),
                Arg::from(128),
                Arg::from(128),
                Arg::from(128),
            ],
        )
        .unwrap_err();
    assert!(e.to_string().contains("elements"), "{e}");
    let e = tuner
        .launch(&kernel, &stream, &[128, 128], &mut [])
        .unwrap_err();
    assert!(e.to_string().contains("dims"), "{e}");
}

/// The child half of the warm-start test: a fresh process launches from the cache.
#[test]
fn gpu_child_warm_start() {
    let Ok(path) = std::env::var("JITUNE_TEST_WARM_CACHE") else {
        return;
    };
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    let tuner = Tuner::with_context(ctx, cache, Mode::CacheOnly).unwrap();
    let kernel = sgemm();
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let mut g = Gemm::random(&stream, 512, 512, 512, 1);
    stream.synchronize().unwrap();
    let t = Instant::now();
    g.launch(&tuner, &kernel, &stream).unwrap();
    stream.synchronize().unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let plan = tuner.plan(&kernel, &g.shape()).unwrap();
    println!(
        "WARM first launch {first_ms:.3} ms, config {}, nvrtc compiles {}",
        plan.config,
        tuner.nvrtc_compiles()
    );
    assert!(plan.tuned, "the cached winner is used");
    assert_eq!(tuner.nvrtc_compiles(), 0, "a warm process never compiles");
    assert!(g.error(&stream) < 1e-5);
    // Where the first launch's time goes, measured again on a second connection to the file.
    let key = tuner.key(&kernel, &g.shape()).unwrap();
    let t = Instant::now();
    let other = Cache::open(CacheOptions::at(&path)).unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let entry = other.lookup(&key).unwrap().unwrap();
    let lookup_ms = t.elapsed().as_secs_f64() * 1e3;
    let fp = &tuner.fingerprint();
    let nvrtc = format!("{}.{}", fp.nvrtc_version.0, fp.nvrtc_version.1);
    let bkey = jitune::cache::store::BinaryKey {
        kernel: kernel.spec.id(),
        config: &entry.config,
        arch: &tuner.gpu().expect("a GPU tuner has a GPU").arch,
        nvrtc: &nvrtc,
    };
    let t = Instant::now();
    let bin = other.get_binary(&bkey).unwrap().unwrap();
    let binary_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let module = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .load_module(jitune::internals::Image::from_bytes(bin.clone()).to_ptx())
        .unwrap();
    let _f = module.load_function(&kernel.spec.entry).unwrap();
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    g.launch(&tuner, &kernel, &stream).unwrap();
    stream.synchronize().unwrap();
    let hot_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "WARM breakdown: cache open {open_ms:.3} ms, lookup {lookup_ms:.3} ms, CUBIN read {binary_ms:.3} ms ({} bytes), module load {load_ms:.3} ms, a hot launch+sync {hot_ms:.3} ms",
        bin.len()
    );
}

#[test]
fn gpu_second_process_hits_the_cache_without_nvrtc() {
    if !gpu_or_skip("gpu_second_process_hits_the_cache_without_nvrtc") {
        return;
    }
    let path = temp_cache("warm");
    {
        let cache = Cache::open(CacheOptions::at(&path)).unwrap();
        let tuner = Tuner::with_context(
            cudarc::driver::CudaContext::new(0).unwrap(),
            cache,
            Mode::Blocking,
        )
        .unwrap();
        tuner.set_tune_options(TuneOptions {
            max_evals: 10,
            max_time_s: Some(30.0),
            ..Default::default()
        });
        let r = tuner.tune(&sgemm(), &[512, 512, 512]).unwrap();
        println!(
            "tuned 512^3: {} {:.4} ms",
            r.entry.config, r.entry.median_ms
        );
        assert!(r.compiled > 0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "gpu_child_warm_start", "--nocapture"])
        .env("JITUNE_TEST_WARM_CACHE", &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed");
    assert!(text.contains("WARM first launch"), "the child did not run");
}

#[test]
fn gpu_background_mode_swaps_in_the_winner_while_launching() {
    if !gpu_or_skip("gpu_background_mode_swaps_in_the_winner_while_launching") {
        return;
    }
    let tuner = tuner(Mode::Background, 16, 30.0);
    let kernel = sgemm();
    let shape = [1024i64, 1024, 1024];
    let stop = Arc::new(AtomicBool::new(false));
    let launcher = {
        let (tuner, kernel, stop) = (tuner.clone(), kernel.clone(), stop.clone());
        std::thread::spawn(move || {
            let stream = tuner
                .gpu()
                .expect("a GPU tuner has a GPU")
                .ctx
                .new_stream()
                .unwrap();
            let mut g = Gemm::random(&stream, 1024, 1024, 1024, 3);
            assert_eq!(g.shape(), shape);
            let mut launches = 0usize;
            let mut configs = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                g.launch(&tuner, &kernel, &stream).unwrap();
                launches += 1;
                if launches % 50 == 1 {
                    assert!(
                        g.error(&stream) < 1e-5,
                        "wrong result while tuning in the background"
                    );
                    configs.insert(tuner.plan(&kernel, &shape).unwrap().config.clone());
                }
            }
            stream.synchronize().unwrap();
            (launches, configs)
        })
    };
    let t = Instant::now();
    while tuner.swaps() == 0 && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (launches, configs) = launcher.join().unwrap();
    println!(
        "background: {launches} launches, configs seen {configs:?}, swapped after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(tuner.swaps(), 1, "one key is tuned once");
    let plan = tuner.plan(&kernel, &shape).unwrap();
    assert!(plan.tuned);
    assert!(launches > 10);
}

#[test]
fn gpu_failure_classes_are_recorded_and_never_win() {
    if !gpu_or_skip("gpu_failure_classes_are_recorded_and_never_win") {
        return;
    }
    // BAD = 1 does not compile, 2 launches 2048 threads per block, 3 computes the wrong thing,
    // 4 is correct but far too slow.
    let src = r#"
extern "C" __global__ void twice(const float* x, float* y, int n) {
#if BAD == 1
    this is not C++;
#endif
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float spin = x[i];
#if BAD == 4
    // Correct but far slower than the rest: stops being timed as too slow.
    for (int r = 0; r < 20000; ++r) spin = spin * 0.9999f + 0.0001f;
#endif
    y[i] = x[i] * (BAD == 3 ? 3.0f : 2.0f) + (spin - spin);
}"#;
    let spec = SpecBuilder::new("planted")
        .source(src)
        .entry("twice")
        .param(Param::ints("BAD", &[0, 1, 2, 3, 4]))
        .param(Param::ints("B", &[128, 256]))
        .dim("n", jitune::key::Bucketing::Exact)
        .grid(["ceil_div(n, B)", "1", "1"])
        .block(["BAD == 2 ? 2048 : B", "1", "1"])
        .arg_buffer("x", "f32", "in", "n", "uniform(-1, 1)")
        .arg_buffer("y", "f32", "out", "n", "")
        .arg_scalar("n", "i32", "n")
        .default_config(&[("BAD", "0"), ("B", "128")])
        .build()
        .unwrap();
    let kernel = Kernel::new(spec);
    let path = temp_cache("failures");
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    let tuner = Tuner::with_context(
        cudarc::driver::CudaContext::new(0).unwrap(),
        cache,
        Mode::Blocking,
    )
    .unwrap();
    let r = tuner
        .tune_with(
            &kernel,
            &[1 << 20],
            &TuneOptions {
                strategy: "exhaustive".into(),
                max_evals: 100,
                max_time_s: None,
                seed: 1,
                ..Default::default()
            },
        )
        .unwrap();
    println!("winner {}", r.entry.config);
    assert!(
        r.entry.config.contains("BAD=0"),
        "a bad config won: {}",
        r.entry.config
    );
    let key = tuner.key(&kernel, &[1 << 20]).unwrap();
    let failures = tuner.cache().failures_for(&key).unwrap();
    for (c, class, msg) in &failures {
        println!("failure {c}: {class}: {}", msg.lines().next().unwrap_or(""));
    }
    let class_of = |bad: &str| {
        failures
            .iter()
            .filter(|f| f.0.contains(&format!("BAD={bad}")))
            .map(|f| f.1.name())
            .collect::<Vec<_>>()
    };
    assert_eq!(class_of("1"), vec!["compile", "compile"]);
    assert_eq!(class_of("2"), vec!["launch", "launch"]);
    assert_eq!(class_of("3"), vec!["wrong_result", "wrong_result"]);
    assert_eq!(class_of("4"), vec!["too_slow", "too_slow"]);
    assert!(class_of("0").is_empty());
}

#[test]
fn gpu_warmup_tunes_ahead_and_reports_progress() {
    if !gpu_or_skip("gpu_warmup_tunes_ahead_and_reports_progress") {
        return;
    }
    let tuner = tuner(Mode::CacheOnly, 8, 20.0);
    let kernel = sgemm();
    let shapes = vec![vec![256, 256, 256], vec![512, 256, 128]];
    let mut seen = Vec::new();
    let reports = tuner
        .warmup(&kernel, &shapes, |done, total, r| {
            seen.push((done, total, r.is_some()))
        })
        .unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(seen, vec![(1, 2, true), (2, 2, true)]);
    // Cached now: a second warmup tunes nothing, and CacheOnly launches use the tuned winners.
    let again = tuner.warmup(&kernel, &shapes, |_, _, _| {}).unwrap();
    assert!(again.is_empty());
    sgemm_matches_cpu(&tuner, &kernel, 256, 256, 256);
    assert!(tuner.plan(&kernel, &[256, 256, 256]).unwrap().tuned);
}
