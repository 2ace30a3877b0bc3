//! Blocking mode's single flight on the GPU: threads that miss the same key at once tune it
//! once; the others wait for that winner and launch it (a correct result for every thread).
//!
//! Needs an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries it prints why it
//! skips and passes.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::sync::Barrier;

use gpu_common::{gpu_or_skip, kernel, tuner, Gemm};
use jitune::tuner::Mode;

#[test]
fn gpu_blocking_misses_of_one_key_tune_it_once() {
    if !gpu_or_skip("gpu_blocking_misses_of_one_key_tune_it_once") {
        return;
    }
    let kernel = kernel("sgemm");
    let tuner = tuner(Mode::Blocking, 16, 30.0);
    let (m, n, k) = (192usize, 160usize, 96usize);
    let threads = 4;
    let start = Barrier::new(threads);
    let errors: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let stream = tuner
                        .gpu()
                        .expect("a GPU tuner has a GPU")
                        .ctx
                        .new_stream()
                        .unwrap();
                    // The same inputs in every thread (same seed).
                    let mut g = Gemm::random(&stream, m, n, k, 7);
                    start.wait();
                    g.launch(&tuner, &kernel, &stream).unwrap();
                    g.error(&stream)
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
