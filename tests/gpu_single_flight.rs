//! Blocking mode's single flight on the GPU: threads that miss the same key at once tune it
//! once; the others wait for that winner and launch it (a correct result for every thread).
//!
//! Needs an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries it prints why it
//! skips and passes.

use std::sync::Barrier;

use jitune::cache::Cache;
use jitune::rng::Rng;
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};

#[test]
fn gpu_blocking_misses_of_one_key_tune_it_once() {
    if let Err(why) = jitune::gpu::gpu_tests_enabled() {
        println!("skipping gpu_blocking_misses_of_one_key_tune_it_once: {why}");
        return;
    }
    let kernel = Kernel::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))
        .expect("sgemm spec");
    let tuner = Tuner::with_context(
        cudarc::driver::CudaContext::new(0).unwrap(),
        Cache::memory_only(),
        Mode::Blocking,
    )
    .unwrap();
    tuner.set_tune_options(TuneOptions {
        max_evals: 16,
        max_time_s: Some(30.0),
        ..Default::default()
    });
    let (m, n, k) = (192usize, 160usize, 96usize);
    let mut rng = Rng::new(7);
    let a: Vec<f32> = (0..m * k)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    let mut reference = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                reference[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    let threads = 4;
    let start = Barrier::new(threads);
    let errors: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let stream = tuner.gpu().ctx.new_stream().unwrap();
                    let da = stream.clone_htod(&a).unwrap();
                    let db = stream.clone_htod(&b).unwrap();
                    let mut dc = stream.clone_htod(&vec![f32::NAN; m * n]).unwrap();
                    start.wait();
                    tuner
                        .launch(
                            &kernel,
                            &stream,
                            &[m as i64, n as i64, k as i64],
                            &mut [
                                Arg::from(&da),
                                Arg::from(&db),
                                Arg::from(&mut dc),
                                Arg::from(m as i64),
                                Arg::from(n as i64),
                                Arg::from(k as i64),
                            ],
                        )
                        .unwrap();
                    let c = stream.clone_dtoh(&dc).unwrap();
                    let (mut num, mut den) = (0f64, 0f64);
                    for (x, r) in c.iter().zip(&reference) {
                        num += (*x as f64 - r).powi(2);
                        den += r * r;
                    }
                    (num / den).sqrt()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "{threads} threads missed one key: {} search(es), relative errors {errors:?}",
        tuner.searches()
    );
    assert_eq!(tuner.searches(), 1, "one key, one search");
    for e in errors {
        assert!(e < 1e-5, "relative error {e}");
    }
}
