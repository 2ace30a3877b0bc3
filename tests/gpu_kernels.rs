//! GPU tests of the memory-bound kernel specs: softmax, layernorm and reduction are tuned and
//! launched through [`Tuner`] in Blocking mode (memory-only cache, a small budget) at ordinary
//! and edge shapes, on random inputs, and the tuned winner's output is compared with a CPU
//! float64 reference (relative L2 error within the spec's tolerance, no NaN, no output left
//! unwritten: outputs start as NaN).
//!
//! They need an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints
//! why it skips and passes.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use gpu_common::{gpu_or_skip, kernel};
use jitune::internals::Rng;
use jitune::tuner::{Arg, Kernel, Mode, Tuner};

fn tuner() -> Tuner {
    gpu_common::tuner(Mode::Blocking, 12, 20.0)
}

/// Uniform in `[lo, hi)`.
fn random(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| (lo + r.next_f64() * (hi - lo)) as f32)
        .collect()
}

/// Relative L2 error; panics on a non-finite output (an unwritten, still-NaN element).
fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (o, r)) in out.iter().zip(reference).enumerate() {
        assert!(o.is_finite(), "non-finite output {o} at {i}");
        num += (*o as f64 - r).powi(2);
        den += r * r;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn upload(stream: &Arc<CudaStream>, v: &[f32]) -> CudaSlice<f32> {
    stream.clone_htod(v).unwrap()
}

/// An output buffer poisoned with NaN: an element the kernel does not write fails the check.
fn poisoned(stream: &Arc<CudaStream>, n: usize) -> CudaSlice<f32> {
    stream.clone_htod(&vec![f32::NAN; n]).unwrap()
}

const ROW_SHAPES: [(usize, usize); 5] = [(1, 1), (3, 7), (64, 1000), (257, 4097), (4096, 4096)];

fn cpu_softmax(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for (j, &v) in row.iter().enumerate() {
            y[r * cols + j] = (v as f64 - m).exp() / s;
        }
    }
    y
}

fn cpu_layernorm(x: &[f32], gamma: &[f32], beta: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        for j in 0..cols {
            y[r * cols + j] = (row[j] as f64 - mean) * rstd * gamma[j] as f64 + beta[j] as f64;
        }
    }
    y
}

fn report(tuner: &Tuner, kernel: &Kernel, shape: &[i64], err: f64) {
    let plan = tuner.plan(kernel, shape).expect("a plan after the launch");
    assert!(plan.tuned, "Blocking mode launches a tuned winner");
    println!(
        "{} {shape:?}: winner {}, relative error {err:e}",
        kernel.spec.name, plan.config
    );
}

/// Launches softmax on `x` (rows × cols) through `tuner` and returns the shape and the relative
/// error against the float64 CPU softmax.
fn softmax_error(
    tuner: &Tuner,
    kernel: &Kernel,
    x: &[f32],
    rows: usize,
    cols: usize,
) -> ([i64; 2], f64) {
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    let reference = cpu_softmax(x, rows, cols);
    let dx = upload(&stream, x);
    let mut dy = poisoned(&stream, rows * cols);
    let shape = [rows as i64, cols as i64];
    tuner
        .launch(
            kernel,
            &stream,
            &shape,
            &mut [
                Arg::from(&dx),
                Arg::from(&mut dy),
                Arg::from(rows as i32),
                Arg::from(cols as i32),
            ],
        )
        .unwrap_or_else(|e| panic!("softmax {shape:?}: {e}"));
    (shape, rel_err(&stream.clone_dtoh(&dy).unwrap(), &reference))
}

#[test]
fn gpu_softmax_matches_cpu() {
    if !gpu_or_skip("gpu_softmax_matches_cpu") {
        return;
    }
    let tuner = tuner();
    let kernel = kernel("softmax");
    for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
        // Spread [-8, 8): exp() over a wide range, so a missing max subtraction would show.
        let x = random(rows * cols, -8.0, 8.0, 10 + i as u64);
        let (shape, err) = softmax_error(&tuner, &kernel, &x, rows, cols);
        assert!(err <= 1e-5, "softmax {shape:?}: relative error {err:e}");
        report(&tuner, &kernel, &shape, err);
    }
}

#[test]
fn gpu_softmax_is_stable_for_large_inputs() {
    if !gpu_or_skip("gpu_softmax_is_stable_for_large_inputs") {
        return;
    }
    // exp(100) overflows FP32: only a max-subtracting softmax gets this right.
    let tuner = tuner();
    let kernel = kernel("softmax");
    let (rows, cols) = (5usize, 333usize);
    let x: Vec<f32> = random(rows * cols, 90.0, 110.0, 3);
    let (_, err) = softmax_error(&tuner, &kernel, &x, rows, cols);
    assert!(err <= 1e-5, "relative error {err:e}");
}

#[test]
fn gpu_layernorm_matches_cpu() {
    if !gpu_or_skip("gpu_layernorm_matches_cpu") {
        return;
    }
    let tuner = tuner();
    let kernel = kernel("layernorm");
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
        let seed = 100 + 3 * i as u64;
        // An offset mean (0.5) exercises the centring.
        let x = random(rows * cols, -0.5, 1.5, seed);
        let gamma = random(cols, 0.5, 1.5, seed + 1);
        let beta = random(cols, -0.5, 0.5, seed + 2);
        let reference = cpu_layernorm(&x, &gamma, &beta, rows, cols);
        let (dx, dg, db) = (
            upload(&stream, &x),
            upload(&stream, &gamma),
            upload(&stream, &beta),
        );
        let mut dy = poisoned(&stream, rows * cols);
        let shape = [rows as i64, cols as i64];
        tuner
            .launch(
                &kernel,
                &stream,
                &shape,
                &mut [
                    Arg::from(&dx),
                    Arg::from(&dg),
                    Arg::from(&db),
                    Arg::from(&mut dy),
                    Arg::from(rows as i32),
                    Arg::from(cols as i32),
                ],
            )
            .unwrap_or_else(|e| panic!("layernorm {shape:?}: {e}"));
        let err = rel_err(&stream.clone_dtoh(&dy).unwrap(), &reference);
        assert!(err <= 1e-4, "layernorm {shape:?}: relative error {err:e}");
        report(&tuner, &kernel, &shape, err);
    }
}

/// The reduction's fixed slicing (NSLICES = 1024 in reduction.cu): partials in float64.
fn cpu_partials(x: &[f32]) -> Vec<f64> {
    const SLICES: usize = 1024;
    let chunk = x.len().div_ceil(4 * SLICES) * 4;
    (0..SLICES)
        .map(|g| {
            let start = (g * chunk).min(x.len());
            let end = ((g + 1) * chunk).min(x.len());
            x[start..end].iter().map(|&v| v as f64).sum()
        })
        .collect()
}

#[test]
fn gpu_reduction_matches_cpu() {
    if !gpu_or_skip("gpu_reduction_matches_cpu") {
        return;
    }
    let tuner = tuner();
    let kernel = kernel("reduction");
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    for (i, &n) in [1usize, 1000, 1 << 20, 10_000_019].iter().enumerate() {
        let x = random(n, -1.0, 1.0, 200 + i as u64);
        let reference = cpu_partials(&x);
        let dx = upload(&stream, &x);
        let mut dp = poisoned(&stream, 1024);
        let shape = [n as i64];
        tuner
            .launch(
                &kernel,
                &stream,
                &shape,
                &mut [Arg::from(&dx), Arg::from(&mut dp), Arg::from(n as i32)],
            )
            .unwrap_or_else(|e| panic!("reduction n={n}: {e}"));
        let partials = stream.clone_dtoh(&dp).unwrap();
        let err = rel_err(&partials, &reference);
        assert!(
            err <= 1e-5,
            "reduction n={n}: partials' relative error {err:e}"
        );
        // The sum itself: the error is judged against sum |x| (the sum may nearly cancel).
        let total: f64 = partials.iter().map(|&p| p as f64).sum();
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        let scale: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        assert!(
            (total - exact).abs() <= 1e-5 * scale,
            "reduction n={n}: sum {total} vs {exact}"
        );
        report(&tuner, &kernel, &shape, err);
    }
}
