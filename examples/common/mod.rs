//! Helpers shared by the examples and the GPU benches (each includes this file with
//! `#[path = ...] mod common;`): one measurement method for every contender, cuBLAS as the
//! yardstick of the GEMMs, GEMM operands in FP32/FP16/BF16, and loading optional kernel specs.
//!
//! Why one timing helper for everything: a ratio against cuBLAS or against a device-to-device
//! copy only means something when both sides are measured the same way in the same run. So
//! every contender (a jitune launch, a cuBLAS call, a copy) is timed here with the method
//! jitune's own tuner uses (`src/gpu/measure.rs`): a write of twice the L2 size before each run
//! (cold L2, as in an application), CUDA events around the run, warm-up first, the median of
//! many samples, and contenders interleaved round by round so clock drift hits all alike.
#![allow(dead_code)] // each program uses a different part of this file

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr};
use jitune::internals::Rng;
use jitune::internals::{f16_to_f32, f32_to_bf16, f32_to_f16, median};
use jitune::tuner::{Arg, Kernel, Tuner};
use jitune::{Error, Result};

/// A CUDA error as a jitune error, naming what was being done.
pub fn cuda<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::cuda(format!("{what}: {e}"))
}

/// The path of `kernels/NAME.toml` in this checkout.
pub fn spec_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("kernels")
        .join(format!("{name}.toml"))
}

/// Loads `kernels/NAME.toml`.
pub fn kernel(name: &str) -> Result<Kernel> {
    Kernel::from_toml_file(spec_path(name))
}

/// Loads `kernels/NAME.toml` if the file exists; when it does not, says so in one line and
/// returns `None` (the hgemm specs arrive in a later merge: the programs work before it).
pub fn optional_kernel(name: &str) -> Result<Option<Kernel>> {
    let path = spec_path(name);
    if !path.is_file() {
        println!(
            "{name}: {} is not in this checkout; skipping {name}",
            path.display()
        );
        return Ok(None);
    }
    Kernel::from_toml_file(&path).map(Some)
}

/// The hgemm spec to use on this GPU for `dtype` ("f16" or "bf16"): on an sm_90 device the
/// Hopper `wgmma` + TMA specs (`hgemm_sm90_tma_*`, sm_90a only; the fastest there), else the
/// portable `mma.sync` specs (`hgemm_*`). A spec missing from this checkout is passed over.
pub fn hgemm_spec_for(gpu: &jitune::Gpu, dtype: &str) -> String {
    let hopper = format!("hgemm_sm90_tma_{dtype}");
    if gpu.arch == "sm_90" && spec_path(&hopper).is_file() {
        hopper
    } else {
        format!("hgemm_{dtype}")
    }
}

/// Value of `--name VALUE` on the command line, else of the environment variable `env`.
pub fn option(name: &str, env: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

/// `--name` as a number (or the environment variable), else `default`; a value that does not
/// parse is an error rather than silently the default.
pub fn num_option<T: std::str::FromStr>(name: &str, env: &str, default: T) -> Result<T> {
    match option(name, env) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("{name} / {env}: `{v}` is not a number"))),
    }
}

/// A shape written `4096x4096x4096` or `4096,4096,4096`.
pub fn parse_shape(s: &str) -> Result<Vec<i64>> {
    s.split(['x', ','])
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| Error::Shape(format!("`{s}` is not a shape like 4096x4096x4096")))
        })
        .collect()
}

/// `m x n x k` for printing.
pub fn shape_text(shape: &[i64]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Median, 10th and 90th percentile of samples.
pub fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if s.is_empty() {
            return f64::NAN;
        }
        s[((s.len() - 1) as f64 * p).round() as usize]
    };
    (median(samples), q(0.1), q(0.9))
}

/// The measurement method of this file's header, on one stream.
pub struct Timer {
    pub stream: Arc<CudaStream>,
    flush: CudaSlice<u8>,
    events: Vec<(CudaEvent, CudaEvent)>,
    /// Warm-up runs per contender before timing.
    pub warmup: usize,
    /// Kernel time (ms) the timed runs of the slowest contender should fill.
    pub budget_ms: f64,
    pub min_reps: usize,
    pub max_reps: usize,
}

/// The work of contender `i` (of a comparison), enqueued on the stream given.
pub type Work<'a> = dyn FnMut(usize, &Arc<CudaStream>) -> Result<()> + 'a;

impl Timer {
    /// A timer on `stream`; the flush buffer is twice the device's L2.
    pub fn new(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>, l2_bytes: i64) -> Result<Timer> {
        let flush = stream
            .alloc_zeros::<u8>((2 * l2_bytes.max(1 << 20)) as usize)
            .map_err(cuda("allocating the L2 flush buffer"))?;
        let mut events = Vec::new();
        for _ in 0..8 {
            let a = ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("creating events"))?;
            let b = ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("creating events"))?;
            events.push((a, b));
        }
        Ok(Timer {
            stream,
            flush,
            events,
            warmup: 3,
            budget_ms: 300.0,
            min_reps: 10,
            max_reps: 100,
        })
    }

    /// One round: each contender once, each after an L2 flush, between CUDA events. Returns
    /// milliseconds per contender.
    fn round(&mut self, n: usize, work: &mut Work<'_>) -> Result<Vec<f64>> {
        if n > self.events.len() {
            return Err(Error::InvalidArgument(format!(
                "at most {} contenders per comparison",
                self.events.len()
            )));
        }
        for (i, (start, end)) in self.events[..n].iter().enumerate() {
            self.stream
                .memset_zeros(&mut self.flush)
                .map_err(cuda("flushing L2"))?;
            start
                .record(&self.stream)
                .map_err(cuda("recording an event"))?;
            work(i, &self.stream)?;
            end.record(&self.stream)
                .map_err(cuda("recording an event"))?;
        }
        self.stream
            .synchronize()
            .map_err(cuda("running the timed work"))?;
        self.events[..n]
            .iter()
            .map(|(s, e)| {
                s.elapsed_ms(e)
                    .map(|t| t as f64)
                    .map_err(cuda("reading events"))
            })
            .collect()
    }

    /// Times contenders `0..n`, interleaved: warm-up, one round to estimate, then enough
    /// rounds for the slowest to fill `budget_ms` (between `min_reps` and `max_reps`). Returns
    /// all samples (ms) per contender.
    pub fn compare(&mut self, n: usize, work: &mut Work<'_>) -> Result<Vec<Vec<f64>>> {
        for i in 0..n {
            for _ in 0..self.warmup {
                work(i, &self.stream)?;
            }
        }
        let first = self.round(n, work)?;
        let slowest = first.iter().copied().fold(1e-4, f64::max);
        let reps = ((self.budget_ms / slowest) as usize).clamp(self.min_reps, self.max_reps);
        let mut samples: Vec<Vec<f64>> = first.into_iter().map(|t| vec![t]).collect();
        for _ in 1..reps {
            for (s, t) in samples.iter_mut().zip(self.round(n, work)?) {
                s.push(t);
            }
        }
        Ok(samples)
    }

    /// Median time (ms) of one piece of work.
    pub fn time(&mut self, work: &mut dyn FnMut(&Arc<CudaStream>) -> Result<()>) -> Result<f64> {
        let s = self.compare(1, &mut |_, st| work(st))?;
        Ok(median(&s[0]))
    }
}

/// Element type of GEMM inputs (the output is FP32 in every case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    F32,
    F16,
    Bf16,
}

impl Prec {
    pub fn name(self) -> &'static str {
        match self {
            Prec::F32 => "f32",
            Prec::F16 => "f16",
            Prec::Bf16 => "bf16",
        }
    }
}

/// cuBLAS on one stream, loaded only when the library is there.
pub struct Blas {
    handle: cudarc::cublas::CudaBlas,
}

impl Blas {
    /// cuBLAS on `stream`, or the one-line reason it cannot be had. cudarc panics when a
    /// dynamically loaded library is missing, so presence is checked first (as
    /// `jitune::require_cuda` does for libcuda and libnvrtc) and any panic left is caught.
    pub fn load(stream: Arc<CudaStream>) -> std::result::Result<Blas, String> {
        let present =
            catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false);
        if !present {
            return Err("libcublas was not found (install the CUDA toolkit's cuBLAS or put it on LD_LIBRARY_PATH)".into());
        }
        match catch_unwind(AssertUnwindSafe(|| cudarc::cublas::CudaBlas::new(stream))) {
            Ok(Ok(handle)) => Ok(Blas { handle }),
            Ok(Err(e)) => Err(format!("cuBLAS did not start: {e}")),
            Err(_) => Err("cuBLAS did not load (a symbol is missing)".into()),
        }
    }

    /// Row-major `C[m,n] = A[m,k] · B[k,n]` with FP32 output and FP32 compute (no TF32), on the
    /// handle's stream. cuBLAS is column-major: a row-major matrix is its transpose in column
    /// major, so this computes `Cᵀ = Bᵀ · Aᵀ` with the operands swapped.
    pub fn gemm(&self, g: &GemmOperands, stream: &Arc<CudaStream>) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType,
        };
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let in_type = match g.prec {
            Prec::F32 => cudaDataType::CUDA_R_32F,
            Prec::F16 => cudaDataType::CUDA_R_16F,
            Prec::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (pa, _ga) = g.a.ptr(stream);
        let (pb, _gb) = g.b.ptr(stream);
        let (pc, _gc) = g.c_ref.device_ptr(stream);
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.handle.handle(),
                cublasOperation_t::CUBLAS_OP_N,
                cublasOperation_t::CUBLAS_OP_N,
                n,
                m,
                k,
                (&alpha) as *const f32 as *const _,
                pb as *const _,
                in_type,
                n,
                pa as *const _,
                in_type,
                k,
                (&beta) as *const f32 as *const _,
                pc as *mut _,
                cudaDataType::CUDA_R_32F,
                n,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| Error::cuda(format!("cublasGemmEx: {e}")))
    }
}

/// A GEMM input on the device: FP32, or 16-bit words (FP16/BF16).
pub enum Operand {
    F32(CudaSlice<f32>),
    Half(CudaSlice<u16>),
}

impl Operand {
    fn ptr<'s>(&'s self, s: &'s CudaStream) -> (u64, cudarc::driver::SyncOnDrop<'s>) {
        match self {
            Operand::F32(x) => x.device_ptr(s),
            Operand::Half(x) => x.device_ptr(s),
        }
    }
    fn arg(&self) -> Arg<'_> {
        match self {
            Operand::F32(x) => Arg::from(x),
            Operand::Half(x) => Arg::from(x),
        }
    }
}

/// Inputs and outputs of one GEMM: `c` for jitune's kernel, `c_ref` for cuBLAS, and host
/// copies of the inputs (the values after rounding to the input type) for CPU checks.
pub struct GemmOperands {
    pub prec: Prec,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: CudaSlice<f32>,
    pub c_ref: CudaSlice<f32>,
    pub host_a: Vec<f32>,
    pub host_b: Vec<f32>,
}

fn upload(
    stream: &Arc<CudaStream>,
    prec: Prec,
    len: usize,
    rng: &mut Rng,
) -> Result<(Operand, Vec<f32>)> {
    let vals: Vec<f32> = (0..len).map(|_| rng.next_f64() as f32 - 0.5).collect();
    match prec {
        Prec::F32 => {
            let d = stream.clone_htod(&vals).map_err(cuda("uploading inputs"))?;
            Ok((Operand::F32(d), vals))
        }
        Prec::F16 | Prec::Bf16 => {
            let bits: Vec<u16> = vals
                .iter()
                .map(|&v| {
                    if prec == Prec::F16 {
                        f32_to_f16(v)
                    } else {
                        f32_to_bf16(v)
                    }
                })
                .collect();
            let host = bits
                .iter()
                .map(|&b| {
                    if prec == Prec::F16 {
                        f16_to_f32(b)
                    } else {
                        f32::from_bits((b as u32) << 16)
                    }
                })
                .collect();
            let d = stream.clone_htod(&bits).map_err(cuda("uploading inputs"))?;
            Ok((Operand::Half(d), host))
        }
    }
}

impl GemmOperands {
    /// Random inputs in [-0.5, 0.5) rounded to `prec`, zeroed outputs, on `stream`.
    pub fn new(
        stream: &Arc<CudaStream>,
        prec: Prec,
        shape: &[i64],
        seed: u64,
    ) -> Result<GemmOperands> {
        let &[m, n, k] = shape else {
            return Err(Error::Shape(format!(
                "a GEMM shape has 3 dims (m, n, k), got {shape:?}"
            )));
        };
        let (m, n, k) = (m as usize, n as usize, k as usize);
        let mut rng = Rng::new(seed);
        let (a, host_a) = upload(stream, prec, m * k, &mut rng)?;
        let (b, host_b) = upload(stream, prec, k * n, &mut rng)?;
        Ok(GemmOperands {
            prec,
            m,
            n,
            k,
            a,
            b,
            c: stream.alloc_zeros(m * n).map_err(cuda("allocating C"))?,
            c_ref: stream.alloc_zeros(m * n).map_err(cuda("allocating C"))?,
            host_a,
            host_b,
        })
    }

    pub fn shape(&self) -> [i64; 3] {
        [self.m as i64, self.n as i64, self.k as i64]
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Launches `kernel` (sgemm or an hgemm spec: args a, b, c, M, N, K) through `tuner`.
    pub fn launch(&mut self, tuner: &Tuner, kernel: &Kernel, stream: &CudaStream) -> Result<()> {
        let shape = self.shape();
        self.launch_shape(tuner, kernel, stream, &shape)
    }

    /// Launches for a shape no larger than the operands' (a smaller GEMM on the same buffers).
    pub fn launch_shape(
        &mut self,
        tuner: &Tuner,
        kernel: &Kernel,
        stream: &CudaStream,
        shape: &[i64],
    ) -> Result<()> {
        let &[m, n, k] = shape else {
            return Err(Error::Shape(format!(
                "a GEMM shape has 3 dims, got {shape:?}"
            )));
        };
        let (m, n, k) = (m as i32, n as i32, k as i32);
        let mut args = [
            self.a.arg(),
            self.b.arg(),
            Arg::from(&mut self.c),
            Arg::from(m),
            Arg::from(n),
            Arg::from(k),
        ];
        tuner.launch(kernel, stream, shape, &mut args)
    }

    /// Largest error of `samples` random elements of jitune's C against an FP64 CPU product
    /// of the same (rounded) inputs, relative to `1 + |exact|`.
    pub fn spot_check(&self, stream: &Arc<CudaStream>, samples: usize, seed: u64) -> Result<f64> {
        let c = stream.clone_dtoh(&self.c).map_err(cuda("reading C"))?;
        let mut rng = Rng::new(seed);
        let mut worst = 0.0f64;
        for _ in 0..samples {
            let (i, j) = (rng.index(self.m), rng.index(self.n));
            let want: f64 = (0..self.k)
                .map(|p| self.host_a[i * self.k + p] as f64 * self.host_b[p * self.n + j] as f64)
                .sum();
            let got = c[i * self.n + j] as f64;
            let err = if got.is_finite() {
                (got - want).abs() / (1.0 + want.abs())
            } else {
                f64::INFINITY
            };
            worst = worst.max(err);
        }
        Ok(worst)
    }

    /// Relative L2 difference between jitune's C and cuBLAS's C (both must have run).
    pub fn diff_to_reference(&self, stream: &Arc<CudaStream>) -> Result<f64> {
        let c = stream.clone_dtoh(&self.c).map_err(cuda("reading C"))?;
        let r = stream.clone_dtoh(&self.c_ref).map_err(cuda("reading C"))?;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (x, y) in c.iter().zip(&r) {
            let (x, y) = (*x as f64, *y as f64);
            if !x.is_finite() {
                return Ok(f64::INFINITY);
            }
            num += (x - y) * (x - y);
            den += y * y;
        }
        if den == 0.0 {
            // Both all-zero would read as "identical": an unwritten reference is an error.
            return Err(Error::Search("cuBLAS's output is all zeros".into()));
        }
        Ok((num / den).sqrt())
    }
}

/// What `ship` tunes and `ship_serve` launches: (spec name, shapes). The HGEMM spec is used when
/// its file exists.
pub fn ship_list() -> Vec<(&'static str, Vec<Vec<i64>>)> {
    vec![
        (
            "sgemm",
            vec![
                vec![1024, 1024, 1024],
                vec![4096, 4096, 4096],
                vec![16, 4096, 4096],
            ],
        ),
        ("softmax", vec![vec![4096, 4096], vec![32768, 1024]]),
        (
            "hgemm_f16",
            vec![vec![4096, 4096, 4096], vec![16, 4096, 4096]],
        ),
    ]
}

/// The folder `ship` writes to and `ship_serve` reads from: `--dir`, else `$JITUNE_SHIP_DIR`,
/// else `jitune-ship` in the temporary directory.
pub fn ship_dir() -> PathBuf {
    option("--dir", "JITUNE_SHIP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("jitune-ship"))
}

/// Buffers for launching sgemm, an hgemm spec or softmax by name, sized for `shape` (smaller
/// shapes can be launched on them too).
pub enum KernelBuffers {
    Gemm(Box<GemmOperands>),
    Softmax(CudaSlice<f32>, CudaSlice<f32>),
}

impl KernelBuffers {
    pub fn new(
        name: &str,
        shape: &[i64],
        stream: &Arc<CudaStream>,
        seed: u64,
    ) -> Result<KernelBuffers> {
        let prec = match name {
            "sgemm" => Some(Prec::F32),
            n if n.starts_with("hgemm") && n.ends_with("_bf16") => Some(Prec::Bf16),
            n if n.starts_with("hgemm") && n.ends_with("_f16") => Some(Prec::F16),
            _ => None,
        };
        match prec {
            Some(p) => Ok(KernelBuffers::Gemm(Box::new(GemmOperands::new(
                stream, p, shape, seed,
            )?))),
            None => {
                let n = shape.iter().product::<i64>() as usize;
                let mut rng = Rng::new(seed);
                let x: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
                Ok(KernelBuffers::Softmax(
                    stream.clone_htod(&x).map_err(cuda("uploading x"))?,
                    stream.alloc_zeros(n).map_err(cuda("allocating y"))?,
                ))
            }
        }
    }

    pub fn launch(
        &mut self,
        tuner: &Tuner,
        kernel: &Kernel,
        stream: &CudaStream,
        shape: &[i64],
    ) -> Result<()> {
        match self {
            KernelBuffers::Gemm(g) => g.launch_shape(tuner, kernel, stream, shape),
            KernelBuffers::Softmax(x, y) => {
                let mut args = [
                    Arg::from(&*x),
                    Arg::from(y),
                    Arg::from(shape[0] as i32),
                    Arg::from(shape[1] as i32),
                ];
                tuner.launch(kernel, stream, shape, &mut args)
            }
        }
    }
}
