//! The `Tuner` and `launch`: where an application meets jitune.
//!
//! A launch hashes the kernel id and the bucketed shape into a [`TuningKey`] (no allocation),
//! reads the plan for that key from one shard of the key map ([`state`]) and launches it on the
//! caller's stream with the caller's buffers ([`Plan::launch`]). That is the whole hit path.
//! On a miss the thread that claims the key builds its [`TuningJob`] once (key, space, shape),
//! consults the cache (memory, user file, shipped files), and then, per [`Mode`]:
//!
//! - `Blocking`: tune now, store the winner, launch it (first-run warm-up). Threads that miss
//!   the key meanwhile wait for that winner.
//! - `Background`: launch the best config known now (the cached winner of the nearest shape
//!   bucket, else the spec's default) and tune in a background thread; the winner's plan then
//!   replaces the provisional one atomically. Concurrent misses of one key are tuned once, and
//!   runs of different keys take turns (one at a time per tuner).
//! - `CacheOnly`: never tune; the default config on a miss.
//!
//! Tuning ([`tune`]) uses buffers of its own on a stream of its own: the caller's buffers are
//! never read or written by it. Where candidates run is the [`Isolation`]: by default in a
//! benchmark worker process in `Background` mode (a candidate that crashes or hangs takes down
//! only the worker; see [`crate::engine::isolate`]) and in this process in `Blocking` mode
//! (faster); `JITUNE_ISOLATION` or [`Tuner::set_isolation`] choose otherwise.

mod plan;
pub(crate) mod state;
mod tune;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use once_cell::sync::OnceCell;

pub use crate::gpu::launch::{Arg, BufferArg, DeviceElem};
pub use plan::Plan;
pub use tune::{TuneOptions, TuneReport};

use crate::cache::{Cache, CacheOptions};
use crate::engine::binaries::Binaries;
use crate::engine::job::key_of;
use crate::engine::{Isolation, IsolationOptions, TuningJob};
use crate::gpu::device::Gpu;
use crate::gpu::launch::load_function;
use crate::gpu::measure::Prepared;
use crate::gpu::pool::CompilePool;
use crate::key::TuningKey;
use crate::space::Config;
use crate::spec::{KernelSpec, MAX_VARS};
use crate::Result;
use state::{Claim, KeyStates};

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

struct Inner {
    gpu: Arc<Gpu>,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    mode: AtomicU8,
    /// Every key's state: its plan, or who resolves it (see [`state`]).
    states: KeyStates<Plan>,
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
/// use jitune::{Arg, Kernel, Mode, Tuner};
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
    /// A tuner on device `ordinal` with the default cache: the user cache, and the shipped
    /// layers `JITUNE_SHIPPED` names ([`CacheOptions::from_env`]).
    pub fn new(ordinal: usize, mode: Mode) -> Result<Tuner> {
        let gpu = Gpu::new(ordinal)?;
        Tuner::with_parts(gpu, Cache::open(CacheOptions::from_env())?, mode)
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
                states: KeyStates::default(),
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

    /// How many keys are being resolved or tuned now.
    pub fn tuning_in_progress(&self) -> usize {
        self.inner.states.busy()
    }

    /// The tuning key of a launch.
    pub fn key(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuningKey> {
        key_of(&kernel.spec, shape, self.inner.gpu.fingerprint_hash)
    }

    /// The plan launches of this shape use now, if any.
    pub fn plan(&self, kernel: &Kernel, shape: &[i64]) -> Option<Arc<Plan>> {
        let key = self.key(kernel, shape).ok()?;
        self.inner.states.plan(&key)
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
        let plan = match self.inner.states.plan(&key) {
            Some(p) => p,
            None => self.resolve_miss(kernel, key, shape)?,
        };
        plan.launch(&kernel.spec, stream, shape, args)
    }

    /// A launch that found no plan: claim the key and resolve it, or wait for whoever has.
    fn resolve_miss(&self, kernel: &Kernel, key: TuningKey, shape: &[i64]) -> Result<Arc<Plan>> {
        let states = &self.inner.states;
        loop {
            match states.claim(key) {
                Claim::Ready(p) | Claim::Provisional(p) => return Ok(p),
                Claim::Wait(flight) => {
                    states.wait(&key, &flight, None);
                }
                Claim::Mine => {
                    return match self.resolve_claimed(kernel, key, shape) {
                        Ok(p) => Ok(p),
                        Err(e) => {
                            states.release(&key);
                            Err(e)
                        }
                    }
                }
            }
        }
    }

    /// The claimer's side of a miss: build the job once, then the cache, then the mode.
    fn resolve_claimed(&self, kernel: &Kernel, key: TuningKey, shape: &[i64]) -> Result<Arc<Plan>> {
        let states = &self.inner.states;
        let job = TuningJob::new(kernel.spec.clone(), shape, &self.inner.gpu)?;
        if let Some(entry) = self.inner.cache.lookup(&key)? {
            match self.plan_for_text(&job, &entry.config, true) {
                Ok(plan) => return Ok(states.install(key, Arc::new(plan))),
                Err(e) => log::warn!(
                    "jitune: cached config `{}` for {} is unusable ({e}); retuning",
                    entry.config,
                    job.spec.name
                ),
            }
        }
        match self.mode() {
            Mode::CacheOnly => {
                let plan = self.plan_for(&job, &job.fallback_config()?, false, Have::Nothing)?;
                Ok(states.install(key, Arc::new(plan)))
            }
            Mode::Blocking => {
                let start = self.nearest_config(&job);
                let (plan, _) = self.tune_job_to_plan(&job, start)?;
                Ok(states.install(key, Arc::new(plan)))
            }
            Mode::Background => {
                let nearest = self.nearest_config(&job);
                let provisional = match &nearest {
                    Some(c) => c.clone(),
                    None => job.fallback_config()?,
                };
                let plan = Arc::new(self.plan_for(&job, &provisional, false, Have::Nothing)?);
                states.set_provisional(&key, plan.clone());
                self.spawn_background(job, nearest, plan.clone());
                Ok(plan)
            }
        }
    }

    /// The nearest shape's tuned winner when it is valid here (a warm start for the search and
    /// the provisional config of a background miss).
    fn nearest_config(&self, job: &TuningJob) -> Option<Config> {
        let near = self.inner.cache.nearest(&job.key).ok().flatten()?;
        let c = job.space.parse_config_text(&near.config).ok()?;
        job.space.is_valid(&c).then_some(c)
    }

    fn plan_for_text(&self, job: &TuningJob, text: &str, tuned: bool) -> Result<Plan> {
        let config = job.space.parse_config_text(text)?;
        self.plan_for(job, &config, tuned, Have::Nothing)
    }

    /// A plan of `config`, from what the caller has of it already (a winner the evaluator
    /// loaded, or its image), else from its image in the binary table, else compiled in this
    /// process (a single compilation: a pool worker would pay NVRTC's start-up first).
    fn plan_for(&self, job: &TuningJob, config: &Config, tuned: bool, have: Have) -> Result<Plan> {
        let gpu = &self.inner.gpu;
        let spec = &job.spec;
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| job.space.int_value(config, d))
            .collect();
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(&values, &job.shape, &gpu.limits, &mut env);
        let text = job.text(config);
        let image = match have {
            Have::Func(f) => return Ok(Plan::new(f, env, text, tuned)),
            Have::Image(img) => img,
            Have::Nothing => {
                let mut bin = Binaries::new(
                    gpu.clone(),
                    spec.clone(),
                    self.inner.cache.clone(),
                    self.inner.pool.clone(),
                );
                let img = bin.one(config, &text)?;
                self.inner
                    .compiles
                    .fetch_add(bin.compiled, Ordering::Relaxed);
                img
            }
        };
        let geometry = Prepared::resolve(spec, &env, &job.shape)?.geometry;
        let func = load_function(&gpu.ctx, &image, &spec.entry, &geometry)?;
        Ok(Plan::new(func, env, text, tuned))
    }
}

/// What a plan is built from.
enum Have {
    /// Nothing yet: the binary table, else a compilation.
    Nothing,
    /// The config's image (an isolated search's winner).
    Image(crate::gpu::compile::Image),
    /// The config loaded in this context (an in-process search's winner).
    Func(CudaFunction),
}
