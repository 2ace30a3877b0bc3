//! Helpers shared by the `gpu_*` integration tests: skipping without a GPU, loading the specs
//! under `kernels/`, memory-only tuners, random inputs, one GEMM problem with its CPU float64
//! reference, the relative error check, and evaluators and config samples for sweeping a space.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use jitune::cache::Cache;
use jitune::engine::GpuEvaluator;
use jitune::internals::CompilePool;
use jitune::internals::Rng;
use jitune::space::{Config, SearchSpace};
use jitune::spec::KernelSpec;
use jitune::tuner::{Arg, DeviceElem, Kernel, Mode, TuneOptions, Tuner};
use jitune::Gpu;

/// Whether GPU tests can run here; prints why `test` skips when they cannot.
pub fn gpu_or_skip(test: &str) -> bool {
    match jitune::internals::gpu_tests_enabled() {
        Ok(()) => true,
        Err(why) => {
            println!("skipping {test}: {why}");
            false
        }
    }
}

/// Loads `kernels/NAME.toml` of this checkout.
pub fn kernel(name: &str) -> Kernel {
    let path = format!("{}/kernels/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Kernel::from_toml_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The spec `name` with its default config's `param` set to `value` (launched untuned by a
/// CacheOnly tuner, this runs that value through the caller's launch path).
pub fn kernel_with_default(name: &str, param: &str, value: &str) -> Kernel {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let text = std::fs::read_to_string(format!("{dir}/{name}.toml")).unwrap();
    let (head, default) = text.split_once("[default]").unwrap();
    let default: String = default
        .lines()
        .map(|l| {
            if l.split('=').next().map(str::trim) == Some(param) {
                format!("{param} = {value}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let spec = KernelSpec::from_toml_str(&format!("{head}[default]{default}"), &|f| {
        let p = format!("{dir}/{f}");
        std::fs::read_to_string(&p).map_err(|e| jitune::Error::io(p, e))
    })
    .unwrap();
    Kernel::new(spec)
}

/// A tuner on device 0 with a memory-only cache, tuning at most `evals` configs in `secs`.
pub fn tuner(mode: Mode, evals: usize, secs: f64) -> Tuner {
    let tuner = Tuner::with_context(
        cudarc::driver::CudaContext::new(0).unwrap(),
        Cache::memory_only(),
        mode,
    )
    .unwrap();
    tuner.set_tune_options(TuneOptions {
        max_evals: evals,
        max_time_s: Some(secs),
        ..Default::default()
    });
    tuner
}

/// `n` values uniform in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// C = A * B in float64, all row-major (A is m x k, B is k x n).
pub fn cpu_gemm<T: Copy + Into<f64>>(a: &[T], b: &[T], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let av: f64 = a[i * k + p].into();
            let row = &b[p * n..(p + 1) * n];
            for (cv, bv) in c[i * n..(i + 1) * n].iter_mut().zip(row) {
                *cv += av * (*bv).into();
            }
        }
    }
    c
}

/// Relative L2 error; panics on a non-finite output (an unwritten, still-NaN element).
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (o, r)) in out.iter().zip(reference).enumerate() {
        assert!(o.is_finite(), "non-finite output {o} at {i}");
        num += (*o as f64 - r).powi(2);
        den += r * r;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// One GEMM problem of the specs' interface `(a, b, c, M, N, K)`: inputs of element type `T` on
/// the device, an FP32 output poisoned with NaN (an element the kernel does not write fails the
/// check), and the CPU float64 reference.
pub struct Gemm<T: DeviceElem> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub reference: Vec<f64>,
    pub da: CudaSlice<T>,
    pub db: CudaSlice<T>,
    pub dc: CudaSlice<f32>,
}

impl Gemm<f32> {
    /// Random FP32 inputs (uniform in [-1, 1), seeds `seed` and `seed + 1`).
    pub fn random(stream: &Arc<CudaStream>, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let a = random(m * k, seed);
        let b = random(k * n, seed + 1);
        let reference = cpu_gemm(&a, &b, m, n, k);
        Gemm::new(stream, (m, n, k), &a, &b, reference)
    }
}

impl<T: DeviceElem> Gemm<T> {
    /// Uploads `a` and `b` as given; `reference` is their product in float64.
    pub fn new(
        stream: &Arc<CudaStream>,
        (m, n, k): (usize, usize, usize),
        a: &[T],
        b: &[T],
        reference: Vec<f64>,
    ) -> Self {
        Gemm {
            m,
            n,
            k,
            reference,
            da: stream.clone_htod(a).unwrap(),
            db: stream.clone_htod(b).unwrap(),
            dc: stream.clone_htod(&vec![f32::NAN; m * n]).unwrap(),
        }
    }

    pub fn shape(&self) -> [i64; 3] {
        [self.m as i64, self.n as i64, self.k as i64]
    }

    /// Launches `kernel` through `tuner` on `stream` with this problem's buffers.
    pub fn launch(
        &mut self,
        tuner: &Tuner,
        kernel: &Kernel,
        stream: &CudaStream,
    ) -> jitune::Result<()> {
        let shape = self.shape();
        let (m, n, k) = (self.m as i32, self.n as i32, self.k as i32);
        tuner.launch(
            kernel,
            stream,
            &shape,
            &mut [
                Arg::from(&self.da),
                Arg::from(&self.db),
                Arg::from(&mut self.dc),
                Arg::from(m),
                Arg::from(n),
                Arg::from(k),
            ],
        )
    }

    /// The output's relative error against the CPU reference.
    pub fn error(&self, stream: &Arc<CudaStream>) -> f64 {
        rel_err(&stream.clone_dtoh(&self.dc).unwrap(), &self.reference)
    }
}

/// An evaluator of `spec` at `shape` (memory-only cache) that times every config passing the
/// correctness check, however slow, for sweeps over a space.
pub fn sweep_evaluator(
    gpu: &Arc<Gpu>,
    pool: &Arc<CompilePool>,
    spec: Arc<KernelSpec>,
    shape: &[i64],
) -> GpuEvaluator {
    let mut eval = GpuEvaluator::new(
        gpu.clone(),
        spec,
        shape,
        Arc::new(Cache::memory_only()),
        pool.clone(),
    )
    .unwrap();
    eval.options.too_slow_factor = 1e9;
    eval
}

/// Distinct configs drawn from `space` in `tries` draws: the first `at_least`, then each one that
/// brings a value of a parameter in `dims` (indices) not yet in the sample.
pub fn sample_covering(
    space: &SearchSpace,
    rng: &mut Rng,
    at_least: usize,
    dims: &[usize],
    tries: usize,
) -> Vec<Config> {
    let mut batch: Vec<Config> = Vec::new();
    for _ in 0..tries {
        let Some(c) = space.sample(rng) else {
            break;
        };
        if batch.contains(&c) {
            continue;
        }
        let new_value = dims
            .iter()
            .any(|&d| !batch.iter().any(|x| x.0[d] == c.0[d]));
        if batch.len() < at_least || new_value {
            batch.push(c);
        }
    }
    batch
}
