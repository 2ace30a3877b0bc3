//! The `Tuner` and `launch`: where an application meets jitune.
//!
//! A launch hashes the kernel id and the bucketed shape into a [`TuningKey`] (no allocation),
//! reads the ready-to-launch [`Plan`] for that key from a `DashMap` shard, computes the launch
//! geometry from the plan's config values (no allocation) and launches on the caller's stream
//! with the caller's buffers. That is the whole hit path. On a miss the cache is consulted
//! (memory, user file, shipped files), and what happens next depends on the [`Mode`]:
//!
//! - `Blocking`: tune now, store the winner, launch it (first-run warm-up).
//! - `Background`: launch the best config known now (the cached winner of the nearest shape
//!   bucket, else the spec's default) and tune in a background thread; the winner's plan then
//!   replaces the provisional one atomically. Concurrent misses of one key are tuned once, and
//!   runs of different keys take turns (one at a time per tuner).
//! - `CacheOnly`: never tune; the default config on a miss.
//!
//! Tuning uses buffers of its own on a stream of its own: the caller's buffers are never read
//! or written by it. Where candidates run is the [`Isolation`]: by default in a benchmark
//! worker process in `Background` mode (a candidate that crashes or hangs takes down only the
//! worker; see [`crate::gpu::isolate`]) and in this process in `Blocking` mode (faster);
//! `JITUNE_ISOLATION` or [`Tuner::set_isolation`] choose otherwise.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    SyncOnDrop,
};
use dashmap::DashMap;
use once_cell::sync::OnceCell;

use crate::cache::store::BinaryKey;
use crate::cache::{Cache, CacheOptions, Entry};
use crate::gpu::compile::{compile_in_process, CompileRequest, Image};
use crate::gpu::device::Gpu;
use crate::gpu::evaluator::GpuEvaluator;
use crate::gpu::isolate::{IsolatedEvaluator, Isolation, IsolationOptions};
use crate::gpu::measure::{
    allow_shared, iqr, launch_raw, launch_raw_maps, median, scalar_bits, MAX_ARGS,
};
use crate::gpu::pool::CompilePool;
use crate::gpu::tensor_map::{encode_all, TensorMapSlot};
use crate::key::{KeyHashBuilder, TuningKey, MAX_DIMS};
use crate::search::{strategy_by_name, Hooks, SearchOptions};
use crate::space::Config;
use crate::spec::{ElemType, Geometry, KernelSpec, Role, MAX_TENSOR_MAPS, MAX_VARS};
use crate::{Error, Result};

/// What a launch does on a cache miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tune now (in process) and launch the winner. Threads that miss one key at once tune it
    /// once: the others wait for that search and launch its winner.
    Blocking,
    /// Launch the nearest tuned shape's winner (or the default) now; tune in the background
    /// (in an isolated worker process by default) and swap the winner in.
    Background,
    /// Never tune: launch the cached winner or the default.
    CacheOnly,
}

impl Mode {
    /// `blocking`, `background` or `cache-only` (also the values of `JITUNE_MODE`).
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "blocking" => Some(Mode::Blocking),
            "background" => Some(Mode::Background),
            "cache-only" | "cacheonly" | "cache_only" => Some(Mode::CacheOnly),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Blocking,
            1 => Mode::Background,
            _ => Mode::CacheOnly,
        }
    }

    /// The mode named by `JITUNE_MODE`, if it names one.
    pub fn from_env() -> Option<Mode> {
        std::env::var("JITUNE_MODE")
            .ok()
            .and_then(|v| Mode::parse(&v))
    }
}

/// A kernel ready to be launched through a [`Tuner`]: its spec, shared.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: Arc<KernelSpec>,
}

impl Kernel {
    /// Wraps a spec.
    pub fn new(spec: KernelSpec) -> Kernel {
        Kernel {
            spec: Arc::new(spec),
        }
    }

    /// Loads `kernels/NAME.toml`-style spec files.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Kernel> {
        Ok(Kernel::new(KernelSpec::from_toml_file(path)?))
    }
}

/// Element types a device buffer can hold, for [`Arg`].
pub trait DeviceElem: DeviceRepr {
    /// The spec type(s) this Rust type stands for.
    fn matches(ty: ElemType) -> bool;
}

macro_rules! elem {
    ($t:ty, $($e:ident),+) => {
        impl DeviceElem for $t {
            fn matches(ty: ElemType) -> bool {
                matches!(ty, $(ElemType::$e)|+)
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);
elem!(i32, I32);
elem!(u32, U32);
elem!(i64, I64);
elem!(u8, U8);
// Half-precision data travels as raw 16-bit words.
elem!(u16, F16, Bf16);

/// A type-erased device buffer of the caller's.
pub trait BufferArg {
    /// Whether the buffer's element type is `ty`.
    fn holds(&self, ty: ElemType) -> bool;
    /// Length in elements.
    fn elems(&self) -> usize;
    /// Device pointer for reading on `stream` (cudarc's stream-ordering events included).
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>);
    /// Device pointer for writing on `stream`.
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>);
}

impl<T: DeviceElem> BufferArg for CudaSlice<T> {
    fn holds(&self, ty: ElemType) -> bool {
        T::matches(ty)
    }
    fn elems(&self) -> usize {
        self.len()
    }
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.device_ptr(stream)
    }
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.device_ptr_mut(stream)
    }
}

/// One kernel argument, in the order of the spec's `args`.
pub enum Arg<'a> {
    /// A buffer the kernel reads.
    In(&'a dyn BufferArg),
    /// A buffer the kernel writes (or reads and writes).
    Out(&'a mut dyn BufferArg),
    /// A scalar, converted to the spec's type for that argument.
    Int(i64),
    Float(f64),
}

impl<'a, T: DeviceElem> From<&'a CudaSlice<T>> for Arg<'a> {
    fn from(s: &'a CudaSlice<T>) -> Self {
        Arg::In(s)
    }
}

impl<'a, T: DeviceElem> From<&'a mut CudaSlice<T>> for Arg<'a> {
    fn from(s: &'a mut CudaSlice<T>) -> Self {
        Arg::Out(s)
    }
}

impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Arg::Int(v as i64)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<f32> for Arg<'_> {
    fn from(v: f32) -> Self {
        Arg::Float(v as f64)
    }
}

/// The geometry and buffer sizes of the last shape launched with a plan, behind a seqlock:
/// launches of the same shape (the common case: a key is a shape bucket) skip evaluating the
/// spec's expressions. Every field is atomic, readers never block and writers never wait (a
/// writer that finds another writing just skips the update).
struct LaunchMemo {
    seq: AtomicU64,
    shape: [AtomicI64; MAX_DIMS],
    geometry: [AtomicU32; 7],
    need: [AtomicI64; MAX_ARGS],
    /// Bit i: argument i is zero-filled before the launch (its `zero` expression is non-zero).
    zero: AtomicU64,
}

impl LaunchMemo {
    fn new() -> LaunchMemo {
        LaunchMemo {
            seq: AtomicU64::new(0),
            shape: std::array::from_fn(|_| AtomicI64::new(0)),
            geometry: std::array::from_fn(|_| AtomicU32::new(0)),
            need: std::array::from_fn(|_| AtomicI64::new(0)),
            zero: AtomicU64::new(0),
        }
    }

    fn read(
        &self,
        shape: &[i64],
        n_args: usize,
        need: &mut [i64; MAX_ARGS],
        zero: &mut u64,
    ) -> Option<Geometry> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 == 0 || s1 & 1 == 1 {
            return None;
        }
        if shape
            .iter()
            .zip(&self.shape)
            .any(|(d, m)| m.load(Ordering::Relaxed) != *d)
        {
            return None;
        }
        let g: [u32; 7] = std::array::from_fn(|i| self.geometry[i].load(Ordering::Relaxed));
        for (n, m) in need[..n_args].iter_mut().zip(&self.need) {
            *n = m.load(Ordering::Relaxed);
        }
        *zero = self.zero.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        Some(Geometry {
            grid: [g[0], g[1], g[2]],
            block: [g[3], g[4], g[5]],
            shared_mem: g[6],
        })
    }

    fn write(&self, shape: &[i64], g: &Geometry, need: &[i64], zero: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || self
                .seq
                .compare_exchange(s, s + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        for (m, d) in self.shape.iter().zip(shape) {
            m.store(*d, Ordering::Relaxed);
        }
        let vals = [
            g.grid[0],
            g.grid[1],
            g.grid[2],
            g.block[0],
            g.block[1],
            g.block[2],
            g.shared_mem,
        ];
        for (m, v) in self.geometry.iter().zip(vals) {
            m.store(v, Ordering::Relaxed);
        }
        for (m, n) in self.need.iter().zip(need) {
            m.store(*n, Ordering::Relaxed);
        }
        self.zero.store(zero, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }
}

/// Everything a launch needs for one key, resolved ahead of time.
pub struct Plan {
    func: CudaFunction,
    /// The variable table with the config's values and the device limits filled in; a launch
    /// copies it and writes the shape into its slots.
    env: [i64; MAX_VARS],
    memo: LaunchMemo,
    /// The config, canonical text.
    pub config: String,
    /// Whether this is a tuned winner (false for a provisional or default plan).
    pub tuned: bool,
}

impl Plan {
    /// Geometry, required buffer lengths and the zero-filled arguments (bit mask) for
    /// `shape`, from the memo or evaluated.
    fn resolve(
        &self,
        spec: &KernelSpec,
        shape: &[i64],
        need: &mut [i64; MAX_ARGS],
        zero: &mut u64,
    ) -> Result<Geometry> {
        if let Some(g) = self.memo.read(shape, spec.args.len(), need, zero) {
            return Ok(g);
        }
        let mut env = self.env;
        let base = spec.shape_slot();
        env[base..base + shape.len()].copy_from_slice(shape);
        let g = spec.geometry_in(&env)?;
        for (n, a) in need.iter_mut().zip(&spec.args) {
            *n = a.len.eval(&env).map_err(|e| {
                Error::Eval(format!(
                    "kernel `{}`, argument `{}`: {e}",
                    spec.name, a.name
                ))
            })?;
        }
        *zero = spec.zero_mask(&env)?;
        self.memo.write(shape, &g, &need[..spec.args.len()], *zero);
        Ok(g)
    }

    /// Launches on `stream`. Allocation-free unless it fails.
    fn launch(
        &self,
        spec: &KernelSpec,
        stream: &CudaStream,
        shape: &[i64],
        args: &mut [Arg<'_>],
    ) -> Result<()> {
        let n_maps = spec.tensor_maps();
        if args.len() + n_maps != spec.args.len() || spec.args.len() > MAX_ARGS {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}` takes {} arguments{}, got {}",
                spec.name,
                spec.args.len() - n_maps,
                if n_maps > 0 {
                    " (its tensor maps are made by jitune, not passed)"
                } else {
                    ""
                },
                args.len()
            )));
        }
        if shape.len() != spec.dims.len() {
            return Err(Error::Shape(format!(
                "kernel `{}` takes {} dims",
                spec.name,
                spec.dims.len()
            )));
        }
        let mut need = [0i64; MAX_ARGS];
        let mut zero = 0u64;
        let geometry = self.resolve(spec, shape, &mut need, &mut zero)?;
        let n_args = spec.args.len();
        let mut raw = [0u64; MAX_ARGS];
        let mut guards: [Option<SyncOnDrop<'_>>; MAX_ARGS] = [const { None }; MAX_ARGS];
        // Caller arguments in spec order, skipping the tensor maps (made below).
        let spec_args = spec
            .args
            .iter()
            .enumerate()
            .filter(|(_, a)| a.role != Role::TensorMap);
        for (ci, (arg, (i, a))) in args.iter_mut().zip(spec_args).enumerate() {
            match (arg, a.role) {
                (Arg::Int(v), Role::Scalar) => raw[i] = scalar_bits(a.ty, *v),
                (Arg::Float(v), Role::Scalar) => {
                    raw[i] = match a.ty {
                        ElemType::F32 => (*v as f32).to_bits() as u64,
                        ElemType::F64 => v.to_bits(),
                        other => scalar_bits(other, *v as i64),
                    }
                }
                (Arg::In(b), Role::In) => {
                    check_buffer(spec, a, &**b, need[i])?;
                    let (p, g) = b.read_ptr(stream);
                    raw[i] = p;
                    guards[i] = Some(g);
                }
                (Arg::Out(b), Role::Out | Role::InOut | Role::In) => {
                    check_buffer(spec, a, &**b, need[i])?;
                    let (p, g) = b.write_ptr(stream);
                    raw[i] = p;
                    guards[i] = Some(g);
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "kernel `{}`: argument {ci} (`{}`) must be {}",
                        spec.name,
                        a.name,
                        match a.role {
                            Role::Scalar => "a scalar",
                            Role::In => "a buffer",
                            _ => "a mutable buffer (Arg::Out / &mut CudaSlice)",
                        }
                    )))
                }
            }
        }
        // Outputs the kernel accumulates into start at zero (see `ArgSpec::zero`).
        for (i, a) in spec.args.iter().enumerate() {
            if zero & (1 << i) != 0 {
                let bytes = need[i].max(0) as usize * a.ty.size();
                unsafe {
                    cudarc::driver::result::memset_d8_async(raw[i], 0, bytes, stream.cu_stream())
                }
                .map_err(|e| {
                    Error::driver(format!("zero-filling `{}` for `{}`", a.name, spec.name), e)
                })?;
            }
        }
        let r = if n_maps == 0 {
            unsafe { launch_raw(&self.func, &geometry, stream, &mut raw[..n_args]) }
        } else {
            // Tensor maps: encoded from the caller's buffer pointers into slots on this stack.
            let mut env = self.env;
            let base = spec.shape_slot();
            env[base..base + shape.len()].copy_from_slice(shape);
            let mut slots = [TensorMapSlot::ZERO; MAX_TENSOR_MAPS];
            let mut map_args = [0usize; MAX_TENSOR_MAPS];
            let n = encode_all(spec, &env, &raw[..n_args], &mut slots, &mut map_args)?;
            unsafe {
                launch_raw_maps(
                    &self.func,
                    &geometry,
                    stream,
                    &mut raw[..n_args],
                    &mut slots[..n],
                    &map_args[..n],
                )
            }
        };
        drop(guards);
        r.map_err(|e| Error::driver(format!("launching `{}` with {}", spec.name, self.config), e))
    }
}

fn check_buffer(
    spec: &KernelSpec,
    a: &crate::spec::ArgSpec,
    b: &dyn BufferArg,
    need: i64,
) -> Result<()> {
    if !b.holds(a.ty) {
        return Err(Error::InvalidArgument(format!(
            "kernel `{}`: argument `{}` must hold {}",
            spec.name,
            a.name,
            a.ty.name()
        )));
    }
    if (b.elems() as i64) < need {
        return Err(Error::InvalidArgument(format!(
            "kernel `{}`: argument `{}` has {} elements, the shape needs {need}",
            spec.name,
            a.name,
            b.elems()
        )));
    }
    Ok(())
}

/// How much a tuning run may spend.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Search strategy: `lfbo` (default), `random`, `pattern`, `exhaustive`.
    pub strategy: String,
    /// Most unique configs evaluated.
    pub max_evals: usize,
    /// Most seconds of tuning.
    pub max_time_s: Option<f64>,
    pub seed: u64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            strategy: "lfbo".into(),
            max_evals: 120,
            max_time_s: Some(60.0),
            seed: 1,
        }
    }
}

/// What a tuning run found (also stored in the cache).
#[derive(Clone, Debug)]
pub struct TuneReport {
    pub entry: Entry,
    /// The default config's median time, when it was measured.
    pub default_ms: Option<f64>,
    pub wall_s: f64,
    pub compiled: usize,
    /// Best-so-far after each evaluation: (seconds since the start, ms).
    pub curve: Vec<(f64, f64)>,
    /// Whether the search was cancelled through [`Hooks::cancel`] and the stored winner is the
    /// best of what was measured until then (its entry's strategy says `partial`).
    pub partial: bool,
}

struct Inner {
    gpu: Arc<Gpu>,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    mode: AtomicU8,
    plans: DashMap<TuningKey, Arc<Plan>, KeyHashBuilder>,
    tuning: DashMap<TuningKey, (), KeyHashBuilder>,
    /// Blocking mode's single flight: threads that miss one key queue on its gate, and those
    /// after the first find its winner installed instead of tuning the key again.
    blocking_gates: DashMap<TuningKey, Arc<parking_lot::Mutex<()>>, KeyHashBuilder>,
    tune: parking_lot::RwLock<TuneOptions>,
    swaps: AtomicUsize,
    /// Searches this tuner has run (`tune` and its variants, every mode).
    searches: AtomicUsize,
    /// NVRTC compilations this tuner caused (tuning and plans); 0 for a warm process.
    compiles: AtomicUsize,
    /// Where candidates run; `None`: by mode (isolated in `Background`, in process otherwise).
    isolation: parking_lot::RwLock<(Option<Isolation>, IsolationOptions)>,
    /// Background runs take turns: concurrent runs on one GPU would disturb each other's
    /// timings, and each isolated run holds a worker process with a CUDA context of its own
    /// (dozens of keys missing at once would otherwise start dozens of contexts).
    background_gate: parking_lot::Mutex<()>,
}

/// Tunes, caches and launches kernels on one GPU. Cheap to clone (shared inside).
///
/// ```no_run
/// use jitune::tuner::{Arg, Kernel, Mode, Tuner};
/// # fn main() -> jitune::Result<()> {
/// let tuner = Tuner::new(0, Mode::Blocking)?;
/// let kernel = Kernel::from_toml_file("kernels/sgemm.toml")?;
/// let stream = tuner.gpu().ctx.default_stream();
/// let (m, n, k) = (1024usize, 1024usize, 1024usize);
/// let a = stream.clone_htod(&vec![1.0f32; m * k]).unwrap();
/// let b = stream.clone_htod(&vec![1.0f32; k * n]).unwrap();
/// let mut c = stream.alloc_zeros::<f32>(m * n).unwrap();
/// tuner.launch(&kernel, &stream, &[m as i64, n as i64, k as i64],
///              &mut [Arg::from(&a), Arg::from(&b), Arg::from(&mut c), Arg::from(m as i32), Arg::from(n as i32), Arg::from(k as i32)])?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tuner {
    inner: Arc<Inner>,
}

static DEFAULT: OnceCell<Tuner> = OnceCell::new();

/// The process-wide tuner on device 0 (mode from `JITUNE_MODE`, default `Background`; cache
/// from `JITUNE_CACHE` or the platform cache directory).
pub fn default_tuner() -> Result<&'static Tuner> {
    DEFAULT.get_or_try_init(|| Tuner::new(0, Mode::from_env().unwrap_or(Mode::Background)))
}

/// Launches through the process-wide tuner; see [`Tuner::launch`].
pub fn launch(
    kernel: &Kernel,
    stream: &CudaStream,
    shape: &[i64],
    args: &mut [Arg<'_>],
) -> Result<()> {
    default_tuner()?.launch(kernel, stream, shape, args)
}

impl Tuner {
    /// A tuner on device `ordinal` with the default cache.
    pub fn new(ordinal: usize, mode: Mode) -> Result<Tuner> {
        let gpu = Gpu::new(ordinal)?;
        Tuner::with_parts(gpu, Cache::open(CacheOptions::default())?, mode)
    }

    /// A tuner over the caller's context and a given cache.
    pub fn with_context(ctx: Arc<CudaContext>, cache: Cache, mode: Mode) -> Result<Tuner> {
        Tuner::with_parts(Gpu::from_context(ctx)?, cache, mode)
    }

    fn with_parts(gpu: Gpu, cache: Cache, mode: Mode) -> Result<Tuner> {
        let mode = Mode::from_env().unwrap_or(mode);
        Ok(Tuner {
            inner: Arc::new(Inner {
                gpu: Arc::new(gpu),
                cache: Arc::new(cache),
                pool: Arc::new(CompilePool::default_sized()),
                mode: AtomicU8::new(mode.to_u8()),
                plans: DashMap::with_hasher(KeyHashBuilder::default()),
                tuning: DashMap::with_hasher(KeyHashBuilder::default()),
                blocking_gates: DashMap::with_hasher(KeyHashBuilder::default()),
                tune: parking_lot::RwLock::new(TuneOptions::default()),
                swaps: AtomicUsize::new(0),
                searches: AtomicUsize::new(0),
                compiles: AtomicUsize::new(0),
                isolation: parking_lot::RwLock::new((
                    Isolation::from_env(),
                    IsolationOptions::default(),
                )),
                background_gate: parking_lot::Mutex::new(()),
            }),
        })
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.inner.gpu
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.inner.mode.load(Ordering::Relaxed))
    }

    /// Changes the mode.
    pub fn set_mode(&self, mode: Mode) {
        self.inner.mode.store(mode.to_u8(), Ordering::Relaxed);
    }

    /// Chooses where candidates run: `Some` fixes it, `None` goes back to the default (isolated
    /// in `Background` mode, in process otherwise, unless `JITUNE_ISOLATION` says).
    pub fn set_isolation(&self, isolation: Option<Isolation>) {
        self.inner.isolation.write().0 = isolation.or_else(Isolation::from_env);
    }

    /// Where candidates of the next tuning run will run.
    pub fn isolation(&self) -> Isolation {
        match self.inner.isolation.read().0 {
            Some(i) => i,
            None if self.mode() == Mode::Background => Isolation::Process,
            None => Isolation::InProcess,
        }
    }

    /// Deadlines and the worker program of isolated tuning.
    pub fn set_isolation_options(&self, opts: IsolationOptions) {
        self.inner.isolation.write().1 = opts;
    }

    /// Sets the tuning budget and strategy.
    pub fn set_tune_options(&self, opts: TuneOptions) {
        *self.inner.tune.write() = opts;
    }

    /// How many tuned winners background tuning has swapped in.
    pub fn swaps(&self) -> usize {
        self.inner.swaps.load(Ordering::Relaxed)
    }

    /// Searches this tuner has run so far (explicit `tune` calls, Blocking misses, background
    /// runs). In Blocking mode each key is searched once however many threads miss it at once.
    pub fn searches(&self) -> usize {
        self.inner.searches.load(Ordering::Relaxed)
    }

    /// NVRTC compilations this tuner has caused so far (0 in a process that only hit the cache).
    pub fn nvrtc_compiles(&self) -> usize {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// Whether background tuning is still running for any key.
    pub fn tuning_in_progress(&self) -> usize {
        self.inner.tuning.len()
    }

    /// The tuning key of a launch.
    pub fn key(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuningKey> {
        let bucket = kernel.spec.bucket(shape).ok_or_else(|| {
            Error::Shape(format!(
                "kernel `{}` takes {} dims",
                kernel.spec.name,
                kernel.spec.dims.len()
            ))
        })?;
        Ok(TuningKey {
            kernel: kernel.spec.id(),
            shape: bucket,
            device: self.inner.gpu.fingerprint_hash,
        })
    }

    /// The plan launches of this shape use now, if any.
    pub fn plan(&self, kernel: &Kernel, shape: &[i64]) -> Option<Arc<Plan>> {
        let key = self.key(kernel, shape).ok()?;
        self.inner.plans.get(&key).map(|p| p.value().clone())
    }

    /// Launches `kernel` for `shape` on the caller's `stream` with the caller's `args` (in the
    /// spec's argument order), tuning on a miss as the mode says.
    pub fn launch(
        &self,
        kernel: &Kernel,
        stream: &CudaStream,
        shape: &[i64],
        args: &mut [Arg<'_>],
    ) -> Result<()> {
        let key = self.key(kernel, shape)?;
        // The hit path: one shard read, an Arc clone, the launch.
        let hit = self.inner.plans.get(&key).map(|p| p.value().clone());
        let plan = match hit {
            Some(p) => p,
            None => self.resolve_miss(kernel, key, shape)?,
        };
        plan.launch(&kernel.spec, stream, shape, args)
    }

    fn resolve_miss(&self, kernel: &Kernel, key: TuningKey, shape: &[i64]) -> Result<Arc<Plan>> {
        let spec = &kernel.spec;
        if let Some(entry) = self.inner.cache.lookup(&key)? {
            match self.plan_for_text(spec, &entry.config, shape, true) {
                Ok(plan) => return Ok(self.install(key, plan)),
                Err(e) => log::warn!(
                    "jitune: cached config `{}` for {} is unusable ({e}); retuning",
                    entry.config,
                    spec.name
                ),
            }
        }
        match self.mode() {
            Mode::CacheOnly => {
                let plan =
                    self.plan_for(spec, &self.fallback_config(spec, shape)?, shape, false)?;
                Ok(self.install(key, plan))
            }
            Mode::Blocking => {
                // Single flight: the first thread to miss tunes; the rest wait on the key's gate
                // and then launch its winner. (Held across the search: the waiters have nothing
                // better to launch in Blocking mode.)
                let gate = self.inner.blocking_gates.entry(key).or_default().clone();
                let _turn = gate.lock();
                if let Some(p) = self.inner.plans.get(&key) {
                    return Ok(p.value().clone());
                }
                let report = self.tune(kernel, shape)?;
                let plan = self.plan_for_text(spec, &report.entry.config, shape, true)?;
                Ok(self.install(key, plan))
            }
            Mode::Background => {
                let provisional = self.provisional_config(spec, key, shape)?;
                let provisional_plan = self.plan_for(spec, &provisional, shape, false)?;
                // If a winner was installed meanwhile (a background run of this key finished
                // since the lookup above), it stays: a provisional plan must never replace it.
                let plan = self
                    .inner
                    .plans
                    .entry(key)
                    .or_insert_with(|| Arc::new(provisional_plan))
                    .clone();
                self.spawn_background(kernel.clone(), key, shape.to_vec());
                Ok(plan)
            }
        }
    }

    fn install(&self, key: TuningKey, plan: Plan) -> Arc<Plan> {
        let plan = Arc::new(plan);
        self.inner.plans.insert(key, plan.clone());
        plan
    }

    /// The default config, or the first valid one when the default is invalid at this shape.
    fn fallback_config(&self, spec: &KernelSpec, shape: &[i64]) -> Result<Config> {
        let space = spec.space_for(shape, &self.inner.gpu.limits)?;
        if space.is_valid(&spec.default) {
            return Ok(spec.default.clone());
        }
        space
            .iter()
            .next()
            .ok_or_else(|| Error::Space("empty space".into()))
    }

    /// The nearest shape's tuned winner when it is valid here, else the fallback config.
    fn provisional_config(
        &self,
        spec: &KernelSpec,
        key: TuningKey,
        shape: &[i64],
    ) -> Result<Config> {
        let space = spec.space_for(shape, &self.inner.gpu.limits)?;
        if let Ok(Some(near)) = self.inner.cache.nearest(&key) {
            if let Ok(c) = space.parse_config_text(&near.config) {
                if space.is_valid(&c) {
                    return Ok(c);
                }
            }
        }
        self.fallback_config(spec, shape)
    }

    fn spawn_background(&self, kernel: Kernel, key: TuningKey, shape: Vec<i64>) {
        // Concurrent misses of one key: only the first starts a tuning run.
        if self.inner.tuning.insert(key, ()).is_some() {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("jitune-tune".into())
            .spawn(move || {
                // A panic inside tuning (a bug, or a library that panics) must neither leave the
                // key marked as tuning forever nor take anything else down: it becomes an error.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _turn = this.inner.background_gate.lock();
                    // A run of this key that finished between this launch's cache lookup and
                    // the claim above has stored its winner: use it rather than tune again.
                    // (A stored winner that cannot be used is tuned again, as on a miss.)
                    if let Ok(Some(entry)) = this.inner.cache.lookup(&key) {
                        if let Ok(plan) =
                            this.plan_for_text(&kernel.spec, &entry.config, &shape, true)
                        {
                            return Ok(plan);
                        }
                    }
                    let r = this.tune(&kernel, &shape)?;
                    this.plan_for_text(&kernel.spec, &r.entry.config, &shape, true)
                }))
                .unwrap_or_else(|_| Err(Error::Search("background tuning panicked".into())));
                match result {
                    Ok(plan) => {
                        this.install(key, plan);
                        this.inner.swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => log::warn!(
                        "jitune: background tuning of {} {:?} failed: {e}",
                        kernel.spec.name,
                        shape
                    ),
                }
                this.inner.tuning.remove(&key);
            });
        if let Err(e) = spawned {
            log::warn!("jitune: cannot start a background tuning thread: {e}");
            self.inner.tuning.remove(&key);
        }
    }

    fn plan_for_text(
        &self,
        spec: &KernelSpec,
        text: &str,
        shape: &[i64],
        tuned: bool,
    ) -> Result<Plan> {
        let space = spec.space_for(shape, &self.inner.gpu.limits)?;
        let config = space.parse_config_text(text)?;
        self.plan_for(spec, &config, shape, tuned)
    }

    /// Loads (from the binary table) or compiles the config and resolves its function.
    fn plan_for(
        &self,
        spec: &KernelSpec,
        config: &Config,
        shape: &[i64],
        tuned: bool,
    ) -> Result<Plan> {
        let gpu = &self.inner.gpu;
        let space = spec.space_for(shape, &gpu.limits)?;
        let text = space.config_text(config);
        let nvrtc = format!(
            "{}.{}",
            gpu.fingerprint.nvrtc_version.0, gpu.fingerprint.nvrtc_version.1
        );
        let bkey = BinaryKey {
            kernel: spec.id(),
            config: &text,
            arch: &gpu.arch,
            nvrtc: &nvrtc,
        };
        let image = match self.inner.cache.get_binary(&bkey) {
            Ok(Some(b)) => Image::from_bytes(b),
            _ => {
                self.inner.compiles.fetch_add(1, Ordering::Relaxed);
                let img = compile_in_process(&CompileRequest::new(spec, config, &gpu.arch))?
                    .map_err(Error::compile)?;
                if let Err(e) = self.inner.cache.put_binary(&bkey, &img.to_bytes()) {
                    log::warn!("jitune: could not store a CUBIN: {e}");
                }
                img
            }
        };
        let ctx = gpu.ctx.clone();
        let func = crate::gpu::guarded("loading a module", || {
            let m = ctx
                .load_module(image.to_ptx())
                .map_err(|e| Error::driver(format!("loading {}", spec.name), e))?;
            m.load_function(&spec.entry)
                .map_err(|e| Error::driver(format!("function `{}`", spec.entry), e))
        })?;
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| space.int_value(config, d))
            .collect();
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(&values, shape, &gpu.limits, &mut env);
        let g = spec.geometry_in(&env)?;
        allow_shared(&func, &g).map_err(|e| Error::driver("shared memory limit", e))?;
        Ok(Plan {
            func,
            env,
            memo: LaunchMemo::new(),
            config: text,
            tuned,
        })
    }

    /// Tunes `kernel` at `shape` now (whatever the mode), stores the winner and returns it.
    pub fn tune(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuneReport> {
        let opts = self.inner.tune.read().clone();
        self.tune_with(kernel, shape, &opts)
    }

    /// Tunes with explicit options.
    pub fn tune_with(
        &self,
        kernel: &Kernel,
        shape: &[i64],
        opts: &TuneOptions,
    ) -> Result<TuneReport> {
        self.tune_with_hooks(kernel, shape, opts, Hooks::default())
    }

    /// Tunes with explicit options and the search's [`Hooks`]: a progress callback after each
    /// batch, and a cancellation flag that ends the search after the batch in flight. A
    /// cancelled search still stores the best config measured so far (when one ran correctly),
    /// marked `partial` in the entry's strategy, with its honest evaluation count.
    pub fn tune_with_hooks(
        &self,
        kernel: &Kernel,
        shape: &[i64],
        opts: &TuneOptions,
        hooks: Hooks,
    ) -> Result<TuneReport> {
        let start = std::time::Instant::now();
        let spec = kernel.spec.clone();
        let gpu = self.inner.gpu.clone();
        let key = self.key(kernel, shape)?;
        self.inner.searches.fetch_add(1, Ordering::Relaxed);
        let mut eval = self.evaluator(kernel, shape)?;
        let space = spec.space_for(shape, &gpu.limits)?;
        let strategy = strategy_by_name(&opts.strategy).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown strategy `{}`", opts.strategy))
        })?;
        let mut sopts = SearchOptions::new(opts.seed, opts.max_evals);
        sopts.max_time_s = opts.max_time_s;
        sopts.hooks = hooks;
        // Warm start: the spec's default, then the nearest tuned shape's winner.
        sopts.start.push(spec.default.clone());
        if let Ok(Some(near)) = self.inner.cache.nearest(&key) {
            if let Ok(c) = space.parse_config_text(&near.config) {
                sopts.start.push(c);
            }
        }
        let result = strategy.search(eval.as_dyn(), &sopts);
        let compiled = eval.compiled();
        self.inner.compiles.fetch_add(compiled, Ordering::Relaxed);
        let result = result?;
        let (best, _) = result
            .best
            .clone()
            .ok_or_else(|| Error::Search(format!("no config of `{}` ran correctly", spec.name)))?;
        let obs = result.observations.iter().find(|o| o.config == best);
        let samples: Vec<f64> = obs.map(|o| o.samples.clone()).unwrap_or_default();
        let default_ms = result
            .observations
            .iter()
            .find(|o| o.config == spec.default)
            .and_then(|o| o.estimate());
        let mut curve = Vec::new();
        let mut best_so_far = f64::INFINITY;
        let n = result.observations.len().max(1) as f64;
        for (i, (_, t)) in result.trace().enumerate() {
            if let Some(t) = t {
                best_so_far = best_so_far.min(t);
            }
            curve.push((result.elapsed_s * (i + 1) as f64 / n, best_so_far));
        }
        let mut entry = Entry::new(
            spec.id(),
            key.shape,
            gpu.fingerprint.clone(),
            &spec.name,
            &space.config_text(&best),
            median(&samples),
        );
        entry.spread_ms = iqr(&samples);
        entry.samples = samples.len() as u32;
        entry.evaluated = result.observations.len() as u32;
        entry.strategy = if result.cancelled {
            format!("{} (partial: cancelled)", strategy.name())
        } else {
            strategy.name().to_string()
        };
        self.inner.cache.put(entry.clone())?;
        log::info!(
            "jitune: tuned {} {:?}: {} at {:.4} ms ({} configs, {:.1} s)",
            spec.name,
            shape,
            entry.config,
            entry.median_ms,
            entry.evaluated,
            start.elapsed().as_secs_f64()
        );
        Ok(TuneReport {
            entry,
            default_ms,
            wall_s: start.elapsed().as_secs_f64(),
            compiled,
            curve,
            partial: result.cancelled,
        })
    }

    /// The evaluator of a tuning run, isolated or not as [`Tuner::isolation`] says. When
    /// isolation was left to the default and no worker program can be found, tuning runs in
    /// process (with a warning); when it was asked for explicitly, that is an error.
    fn evaluator(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuningEvaluator> {
        let i = &self.inner;
        let (explicit, opts) = {
            let g = i.isolation.read();
            (g.0.is_some(), g.1.clone())
        };
        if self.isolation() == Isolation::Process {
            let isolated = IsolatedEvaluator::new(
                i.gpu.clone(),
                kernel.spec.clone(),
                shape,
                i.cache.clone(),
                i.pool.clone(),
                opts,
            );
            match isolated {
                Ok(e) => return Ok(TuningEvaluator::Isolated(Box::new(e))),
                Err(e) if explicit => return Err(e),
                Err(e) => log::warn!(
                    "jitune: tuning {} in process, not isolated: {e}",
                    kernel.spec.name
                ),
            }
        }
        Ok(TuningEvaluator::InProcess(Box::new(GpuEvaluator::new(
            i.gpu.clone(),
            kernel.spec.clone(),
            shape,
            i.cache.clone(),
            i.pool.clone(),
        )?)))
    }

    /// Tunes every shape not yet in the cache (ahead of serving), reporting progress through
    /// `log` and `progress(done, total, report)`; returns the reports of the shapes it tuned.
    pub fn warmup(
        &self,
        kernel: &Kernel,
        shapes: &[Vec<i64>],
        mut progress: impl FnMut(usize, usize, Option<&TuneReport>),
    ) -> Result<Vec<TuneReport>> {
        let mut reports = Vec::new();
        for (i, shape) in shapes.iter().enumerate() {
            let key = self.key(kernel, shape)?;
            if self.inner.cache.lookup(&key)?.is_some() {
                log::info!("jitune: warmup {} {:?}: cached", kernel.spec.name, shape);
                progress(i + 1, shapes.len(), None);
                continue;
            }
            let r = self.tune(kernel, shape)?;
            self.inner.plans.remove(&key);
            progress(i + 1, shapes.len(), Some(&r));
            reports.push(r);
        }
        Ok(reports)
    }
}

/// The two evaluators tuning can run on.
enum TuningEvaluator {
    InProcess(Box<GpuEvaluator>),
    Isolated(Box<IsolatedEvaluator>),
}

impl TuningEvaluator {
    fn as_dyn(&mut self) -> &mut dyn crate::search::evaluator::Evaluator {
        match self {
            TuningEvaluator::InProcess(e) => &mut **e,
            TuningEvaluator::Isolated(e) => &mut **e,
        }
    }

    fn compiled(&self) -> usize {
        match self {
            TuningEvaluator::InProcess(e) => e.compiled,
            TuningEvaluator::Isolated(e) => e.compiled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry_of(shape: &[i64]) -> Geometry {
        let x = shape[0] as u32;
        Geometry {
            grid: [x, x + 1, 1],
            block: [x * 2, 1, 1],
            shared_mem: x * 3,
        }
    }

    #[test]
    fn memo_returns_only_what_was_written_for_that_shape() {
        let m = LaunchMemo::new();
        let (mut need, mut zero) = ([0i64; MAX_ARGS], 0u64);
        assert!(
            m.read(&[5, 6], 2, &mut need, &mut zero).is_none(),
            "empty memo"
        );
        m.write(&[5, 6], &geometry_of(&[5]), &[50, 60], 0b10);
        assert_eq!(
            m.read(&[5, 6], 2, &mut need, &mut zero),
            Some(geometry_of(&[5]))
        );
        assert_eq!(&need[..2], &[50, 60]);
        assert_eq!(zero, 0b10);
        assert!(
            m.read(&[5, 7], 2, &mut need, &mut zero).is_none(),
            "another shape misses"
        );
    }

    #[test]
    fn memo_is_consistent_under_concurrent_writers_and_readers() {
        let m = Arc::new(LaunchMemo::new());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let (mut need, mut zero) = ([0i64; MAX_ARGS], 0u64);
                    let mut hits = 0;
                    for i in 0..20_000i64 {
                        // Each thread repeats a shape a few times, then moves on.
                        let x = 1 + ((i / 8) * 7 + t) % 13;
                        let shape = [x, x * 10];
                        match m.read(&shape, 2, &mut need, &mut zero) {
                            Some(g) => {
                                // A hit must be exactly what was written for this shape.
                                assert_eq!(g, geometry_of(&shape));
                                assert_eq!(&need[..2], &[x * 100, x * 1000]);
                                assert_eq!(zero, x as u64 % 3);
                                hits += 1;
                            }
                            None => m.write(
                                &shape,
                                &geometry_of(&shape),
                                &[x * 100, x * 1000],
                                x as u64 % 3,
                            ),
                        }
                    }
                    hits
                })
            })
            .collect();
        let hits: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(hits > 0);
    }
}
