//! The `Tuner` and `launch`: where an application meets jitune.
//!
//! A launch hashes the kernel id and the bucketed shape into a [`TuningKey`] (no allocation),
//! reads the plan for that key from one shard of the key map ([`state`]) and launches it on the
//! caller's stream with the caller's buffers ([`Plan::launch`]). That is the whole hit path.
//! On a miss the thread that claims the key builds its [`TuningJob`] once (key, space, shape),
//! consults the cache (memory, user file, the fleet's remote tier, shipped files), and then,
//! when nothing is tuned for the key, follows the fallback chain (an inherited winner of this
//! GPU model under another toolchain, a provisional one, the nearest shape's, the default; see
//! [`crate::cache::decide`]) per [`Mode`]:
//!
//! - `Blocking`: tune now (unless an inherited winner serves), store the winner, launch it
//!   (first-run warm-up). Threads that miss the key meanwhile wait for that winner, and other
//!   processes tuning it are waited for (see `shared`).
//! - `Background`: launch the best config known now (the cached winner of the nearest shape
//!   bucket, else the spec's default) and tune in a background thread; the winner's plan then
//!   replaces the provisional one atomically. Concurrent misses of one key are tuned once, and
//!   runs of different keys take turns (one at a time per tuner).
//! - `CacheOnly`: never tune; what the fallback chain picks on a miss.
//!
//! Tuning ([`tune`]) uses buffers of its own on a stream of its own: the caller's buffers are
//! never read or written by it. Where candidates run is the [`Isolation`]: by default in a
//! benchmark worker process in `Background` mode (a candidate that crashes or hangs takes down
//! only the worker; see [`crate::engine::isolate`]) and in this process in `Blocking` mode
//! (faster); `JITUNE_ISOLATION` or [`Tuner::set_isolation`] choose otherwise.
//!
//! Embedding in a server ([`capture`], [`swap`], [`events`]): a launch on a stream that captures
//! a CUDA graph never loads, compiles or tunes (a miss launches a plan already loaded, or fails
//! with [`Error::Capture`]); jitune's GPU work on the context pauses during captures
//! ([`Tuner::begin_capture`], [`Tuner::pause_tuning`], or detected on launches); winners can wait
//! for [`Tuner::apply_swaps`] ([`SwapPolicy::OnRequest`]) and [`Tuner::generation`] says when to
//! re-capture; [`Tuner::on_event`] and [`Tuner::stats`] show what the tuner does.

mod build;
pub mod capture;
mod captured;
mod closing;
pub mod device;
pub mod events;
mod miss;
mod plan;
mod preload;
mod recent;
mod runs;
mod shared;
pub(crate) mod state;
pub mod swap;
mod tune;

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::CUstreamCaptureMode;
use cudarc::driver::{CudaContext, CudaStream};
use once_cell::sync::OnceCell;

pub use crate::gpu::launch::{Arg, BufferArg, DeviceElem};
use build::Have;
pub use capture::{Capture, TuningPause};
pub use device::SimDevice;
pub use events::{Event, MissDecision, Stats};
pub use plan::Plan;
pub use preload::{Preload, PreloadReport};
pub use swap::SwapPolicy;
pub use tune::{TuneOptions, TuneReport};

use crate::cache::{Cache, CacheOptions};
use crate::engine::job::key_of;
use crate::engine::{Isolation, IsolationOptions, TuningJob};
use crate::gpu::device::Gpu;
use crate::gpu::pool::CompilePool;
use crate::key::{KernelId, ShapeRules, TuningKey};
use crate::space::Config;
use crate::spec::KernelSpec;
use crate::{Error, Result};
use capture::gate;
use device::Device;
use events::{Events, Seconds, StripedCounter};
use state::{Claim, KeyStates};
use swap::{Finished, Swaps};

/// What a launch does on a cache miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tune now (in process) and launch the winner. Threads that miss one key at once tune it
    /// once: the others wait for that search and launch its winner.
    Blocking,
    /// Launch the nearest tuned shape's winner (or the default) now; tune in the background
    /// (in an isolated worker process by default) and swap the winner in.
    Background,
    /// Never tune: launch the cached winner, else what the fallback chain picks (see
    /// [`crate::cache::decide`]).
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

/// A kernel ready to be launched through a [`Tuner`]: its spec, shared, and what a launch reads
/// to make its key (the spec's id and bucketing rules, here in the handle rather than behind the
/// spec's pointer: the hit path's memory reads cost more than its arithmetic).
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: Arc<KernelSpec>,
    id: KernelId,
    rules: Option<ShapeRules>,
    /// This handle's serial (its clones share it): what a thread's recent hits know it by.
    serial: u64,
}

impl Kernel {
    /// Wraps a spec.
    pub fn new(spec: KernelSpec) -> Kernel {
        Kernel {
            id: spec.id(),
            rules: ShapeRules::of(spec.dims.iter().map(|d| &d.bucketing)),
            spec: Arc::new(spec),
            serial: recent::serial(),
        }
    }

    /// The key of a launch at `shape` on the device whose fingerprint hash is `device`: the
    /// spec's bucketing, from the handle's copy of its rules.
    #[inline]
    fn key_on(&self, shape: &[i64], device: u64) -> Result<TuningKey> {
        let bucket = self
            .rules
            .and_then(|r| r.bucket(shape, |i| &self.spec.dims[i].bucketing));
        match bucket {
            Some(shape) => Ok(TuningKey {
                kernel: self.id,
                shape,
                device,
            }),
            // The error (or a spec past the rules' reach) from the spec itself.
            None => key_of(&self.spec, shape, device),
        }
    }

    /// Loads `kernels/NAME.toml`-style spec files.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Kernel> {
        Ok(Kernel::new(KernelSpec::from_toml_file(path)?))
    }
}

struct Inner {
    /// The GPU, or a simulated one (see [`device`]).
    device: Device,
    /// The device's fingerprint hash (every key's last part), here so a launch does not read
    /// the device's own allocation for it.
    fingerprint_hash: u64,
    /// This tuner's serial: what a thread's recent hits know it by.
    serial: u64,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    mode: AtomicU8,
    /// Every key's state: its plan, or who resolves it (see [`state`]).
    states: KeyStates<Plan>,
    tune: parking_lot::RwLock<TuneOptions>,
    /// The swap policy, the winners waiting for `apply_swaps`, the generation, the plans
    /// swapped out (kept loaded: a captured graph may still launch them).
    swaps: Swaps<Plan>,
    events: Events,
    /// Launches that found their plan at the first look (striped: every launch adds one).
    hits: StripedCounter,
    misses: AtomicU64,
    capture_misses: AtomicU64,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    compile_time: Seconds,
    tuning_time: Seconds,
    /// Kernel names by id, for events about keys (filled on misses and searches).
    names: dashmap::DashMap<crate::key::KernelId, String>,
    /// How long `begin_capture`/`pause_tuning` wait for a candidate in flight, ms.
    pause_limit_ms: AtomicU64,
    /// Searches this tuner has run (`tune` and its variants, every mode).
    searches: AtomicUsize,
    /// Winners of other processes (or hosts) this tuner adopted instead of searching.
    adopted: AtomicU64,
    /// Leases this tuner took over from a holder that died or let them go stale.
    takeovers: AtomicU64,
    /// Misses by what they served (indexed by [`crate::cache::Decision`]).
    decisions: [AtomicU64; 5],
    /// Strict mode: a cache-only miss serving anything but a hit or an inherited winner is an
    /// error (see [`miss`]).
    require_hit: std::sync::atomic::AtomicBool,
    /// NVRTC compilations this tuner caused (tuning and plans); 0 for a warm process.
    compiles: AtomicUsize,
    /// Where candidates run; `None`: by mode (isolated in `Background`, in process otherwise).
    isolation: parking_lot::RwLock<(Option<Isolation>, IsolationOptions)>,
    /// This tuner's searches take turns (a miss takes its turn before its key's lease, see
    /// [`shared`]): concurrent runs on one GPU would disturb each other's timings, and each
    /// isolated run holds a worker process with a CUDA context of its own (dozens of keys
    /// missing at once would otherwise start dozens of contexts).
    background_gate: parking_lot::Mutex<()>,
    /// Images compiled ahead of the launches that need them ([`Tuner::preload`]).
    preloads: preload::Preloads,
    /// The background threads running, and the flag that cancels every search at shutdown
    /// ([`Tuner::shutdown`]).
    closing: closing::Closing,
}

impl Drop for Inner {
    /// This thread's recent hits let go of the tuner's plans (other threads' slots do when
    /// overwritten or when those threads end).
    fn drop(&mut self) {
        recent::forget_tuner(self.serial);
    }
}

/// Tunes, caches and launches kernels on one GPU. Cheap to clone (shared inside).
///
/// ```no_run
/// use jitune::{Arg, Kernel, Mode, Tuner};
/// # fn main() -> jitune::Result<()> {
/// let tuner = Tuner::new(0, Mode::Blocking)?;
/// let kernel = Kernel::from_toml_file("kernels/sgemm.toml")?;
/// let stream = tuner.gpu().expect("a GPU tuner has a GPU").ctx.default_stream();
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
        Tuner::with_parts(
            Device::Gpu(Arc::new(gpu)),
            Cache::open(CacheOptions::from_env())?,
            mode,
        )
    }

    /// A tuner over the caller's context and a given cache.
    pub fn with_context(ctx: Arc<CudaContext>, cache: Cache, mode: Mode) -> Result<Tuner> {
        Tuner::with_parts(Device::Gpu(Arc::new(Gpu::from_context(ctx)?)), cache, mode)
    }

    /// A tuner of a simulated device (see [`device`]): the real miss path, cache, leases and
    /// searches, over recorded measurements. Its plans cannot launch; drive it with
    /// [`Tuner::resolve`]. Needs no GPU.
    pub fn simulated(device: SimDevice, cache: Cache, mode: Mode) -> Result<Tuner> {
        Tuner::with_parts(Device::Sim(Arc::new(device)), cache, mode)
    }

    fn with_parts(device: Device, cache: Cache, mode: Mode) -> Result<Tuner> {
        let mode = Mode::from_env().unwrap_or(mode);
        let cache = Arc::new(cache);
        cache.note_device(device.fingerprint());
        cache.start_remote_sync();
        Ok(Tuner {
            inner: Arc::new(Inner {
                fingerprint_hash: device.fingerprint_hash(),
                serial: recent::serial(),
                device,
                cache,
                pool: Arc::new(CompilePool::default_sized()),
                mode: AtomicU8::new(mode.to_u8()),
                states: KeyStates::default(),
                tune: parking_lot::RwLock::new(TuneOptions::default()),
                swaps: Swaps::default(),
                events: Events::default(),
                hits: StripedCounter::default(),
                misses: AtomicU64::new(0),
                capture_misses: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                compile_time: Seconds::default(),
                tuning_time: Seconds::default(),
                names: dashmap::DashMap::new(),
                pause_limit_ms: AtomicU64::new(10_000),
                searches: AtomicUsize::new(0),
                adopted: AtomicU64::new(0),
                takeovers: AtomicU64::new(0),
                decisions: Default::default(),
                require_hit: std::sync::atomic::AtomicBool::new(
                    std::env::var(miss::REQUIRE_HIT_ENV).is_ok_and(|v| v.trim() == "1"),
                ),
                compiles: AtomicUsize::new(0),
                isolation: parking_lot::RwLock::new((
                    Isolation::from_env(),
                    IsolationOptions::default(),
                )),
                background_gate: parking_lot::Mutex::new(()),
                preloads: preload::Preloads::default(),
                closing: closing::Closing::default(),
            }),
        })
    }

    /// The GPU.
    pub fn gpu(&self) -> Option<&Gpu> {
        self.inner.device.gpu().map(|g| &**g)
    }

    /// The fingerprint of the device this tuner tunes for.
    pub fn fingerprint(&self) -> &crate::key::DeviceFingerprint {
        self.inner.device.fingerprint()
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

    /// How many swaps have been applied (winners that replaced a plan launches used: at once
    /// under [`SwapPolicy::Immediate`], by [`Tuner::apply_swaps`] under `OnRequest`).
    pub fn swaps(&self) -> usize {
        self.inner.swaps.applied() as usize
    }

    /// Chooses when tuned winners replace the plans launches use (see [`SwapPolicy`]).
    pub fn set_swap_policy(&self, policy: SwapPolicy) {
        self.inner.swaps.set_policy(policy);
    }

    /// The swap policy.
    pub fn swap_policy(&self) -> SwapPolicy {
        self.inner.swaps.policy()
    }

    /// Applies every winner waiting under [`SwapPolicy::OnRequest`] (call it at a step
    /// boundary; every tensor-parallel rank at the same step). Returns how many were applied;
    /// when any were, [`Tuner::generation`] went up by one and graphs captured before should
    /// be captured again.
    pub fn apply_swaps(&self) -> usize {
        let applied = self.inner.swaps.apply(&self.inner.states);
        let generation = self.inner.swaps.generation();
        for a in &applied {
            self.inner.events.emit(|| Event::Swapped {
                key: a.key,
                kernel: self.name_of(&a.key),
                from: a.old.as_ref().map(|p| p.config.clone()).unwrap_or_default(),
                to: a.new.config.clone(),
                generation,
            });
        }
        applied.len()
    }

    /// Winners waiting for [`Tuner::apply_swaps`].
    pub fn pending_swaps(&self) -> usize {
        self.inner.swaps.pending()
    }

    /// Goes up by one whenever swaps are applied (under either policy): a CUDA graph captured at
    /// an older generation launches plans that have since been replaced, and should be
    /// captured again.
    pub fn generation(&self) -> u64 {
        self.inner.swaps.generation()
    }

    /// Calls `f` with every [`Event`] from now on (see [`events`] for where callbacks run and
    /// what they must not do). Callbacks add up; they are never called on a hit.
    pub fn on_event(&self, f: impl Fn(&Event) + Send + Sync + 'static) {
        self.inner.events.add(Arc::new(f));
    }

    /// Stops the tuner's background work before the process ends: every search in flight is
    /// cancelled (it ends after its batch in flight and stores the best it measured, which then
    /// serves), no new background search starts (a miss serves its provisional plan for good; a
    /// Blocking miss measures only its start configs), and the call waits up to `timeout` for
    /// the background threads to finish. Returns whether
    /// none is left. Launches keep working. Call it before returning from `main` in a program
    /// that tunes in the background: a process that exits while a search is inside the driver
    /// or NVRTC can abort in their exit handlers.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.closing.close(timeout)
    }

    /// The tuner's counters now.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let (captures_detected, waits_for_captures) = gate().counts();
        Stats {
            hits: i.hits.sum(),
            misses: i.misses.load(Ordering::Relaxed),
            capture_misses: i.capture_misses.load(Ordering::Relaxed),
            fallbacks: i.fallbacks.load(Ordering::Relaxed),
            swaps: i.swaps.applied(),
            pending_swaps: i.swaps.pending(),
            generation: i.swaps.generation(),
            searches: i.searches.load(Ordering::Relaxed) as u64,
            compiles: i.compiles.load(Ordering::Relaxed) as u64,
            compile_s: i.compile_time.get(),
            tuning_s: i.tuning_time.get(),
            errors: i.errors.load(Ordering::Relaxed),
            adopted: i.adopted.load(Ordering::Relaxed),
            misses_by_decision: events::DecisionCounts {
                hit: i.decisions[0].load(Ordering::Relaxed),
                inherited: i.decisions[1].load(Ordering::Relaxed),
                provisional: i.decisions[2].load(Ordering::Relaxed),
                nearest: i.decisions[3].load(Ordering::Relaxed),
                default: i.decisions[4].load(Ordering::Relaxed),
            },
            lease_takeovers: i.takeovers.load(Ordering::Relaxed),
            captures_detected,
            waits_for_captures,
        }
    }

    /// Pauses jitune's GPU work on the context (in-process tuning, plan loads) for a capture
    /// this thread makes by other means (a framework's own capture call): returns once the
    /// candidate in flight, if any, has finished; work resumes when the pause drops. While this
    /// thread holds it, its misses take the capture path. Process-wide: every tuner pauses.
    pub fn pause_tuning(&self) -> Result<TuningPause<'static>> {
        gate().pause(self.pause_limit())
    }

    /// Begins capturing a CUDA graph on `stream` with jitune's GPU work paused first (see
    /// [`Tuner::pause_tuning`]); end it with [`Capture::end`]. `mode` is the driver's capture
    /// mode (`GLOBAL`, PyTorch's default, is the strictest about other threads' calls).
    pub fn begin_capture(
        &self,
        stream: &Arc<CudaStream>,
        mode: CUstreamCaptureMode,
    ) -> Result<Capture> {
        Capture::begin(stream, mode, self.pause_limit())
    }

    /// How long [`Tuner::begin_capture`] and [`Tuner::pause_tuning`] wait for the candidate in
    /// flight (default 10 s), and how long a capture noticed on a launch (without them) pauses
    /// work after the last launch seen in it (process-wide; default 100 ms).
    pub fn set_capture_waits(&self, pause_limit: Duration, detected_lease: Duration) {
        self.inner
            .pause_limit_ms
            .store(pause_limit.as_millis() as u64, Ordering::Relaxed);
        gate().set_lease(detected_lease);
    }

    fn pause_limit(&self) -> Duration {
        Duration::from_millis(self.inner.pause_limit_ms.load(Ordering::Relaxed))
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

    /// Where the compile pool's time went so far (the tuning breakdown prints it).
    pub fn compile_pool_stats(&self) -> crate::gpu::pool::PoolStats {
        self.inner.pool.stats()
    }

    /// How many keys are being resolved or tuned now.
    pub fn tuning_in_progress(&self) -> usize {
        self.inner.states.busy()
    }

    /// The tuning key of a launch.
    pub fn key(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuningKey> {
        kernel.key_on(shape, self.inner.fingerprint_hash)
    }

    /// The plan launches of this shape use now, if any.
    pub fn plan(&self, kernel: &Kernel, shape: &[i64]) -> Option<Arc<Plan>> {
        let key = self.key(kernel, shape).ok()?;
        self.inner.states.plan(&key)
    }

    /// Launches `kernel` for `shape` on the caller's `stream` with the caller's `args` (in the
    /// spec's argument order), tuning on a miss as the mode says.
    ///
    /// On a stream that is capturing a CUDA graph (or on a thread holding
    /// [`Tuner::begin_capture`]'s or [`Tuner::pause_tuning`]'s pause) a hit is captured as
    /// usual, and a miss loads, compiles and tunes nothing: it launches a plan already loaded
    /// (the key's own, or the nearest bucket's of the same kernel) and the key is resolved
    /// after the capture, or it fails with [`Error::Capture`] when the kernel has none loaded.
    /// A hit costs a look at this thread's recent hits (or, the first time after any key's plan
    /// changed, one shard read of the key map) and a striped counter; while some tuning or
    /// resolution is active it also asks the driver whether the stream captures.
    pub fn launch(
        &self,
        kernel: &Kernel,
        stream: &CudaStream,
        shape: &[i64],
        args: &mut [Arg<'_>],
    ) -> Result<()> {
        self.on_plan(kernel, Some(stream), shape, |plan| {
            plan.launch(&kernel.spec, stream, shape, args)
        })
    }

    /// What a launch of `kernel` at `shape` does short of launching: the plan it would launch
    /// now, resolving a miss as the mode says (looking the key up, tuning, or waiting for the
    /// process tuning it). Warms a key ahead of its first launch, and drives a simulated
    /// device's tuner, whose plans cannot launch.
    pub fn resolve(&self, kernel: &Kernel, shape: &[i64]) -> Result<Arc<Plan>> {
        self.plan_to_launch(kernel, None, shape, None)
    }

    /// A launch's whole hit path but the driver call: the key, the plan, the counters, the
    /// arguments checked and laid out (raw pointers and scalars only), the table's first
    /// `out.len()` values copied to `out`. Needs no GPU (works on a simulated device's tuner),
    /// so the hit path's own cost is timed on any machine (`benches/hit_path.rs`).
    #[doc(hidden)]
    pub fn dry_launch(
        &self,
        kernel: &Kernel,
        shape: &[i64],
        args: &mut [Arg<'_>],
        out: &mut [u64],
    ) -> Result<()> {
        self.on_plan(kernel, None, shape, |plan| {
            plan.dry_launch(&kernel.spec, shape, args, out)
        })
    }

    /// The plan a launch of `kernel` at `shape` would launch now, found as a launch finds it
    /// (this thread's recent hits, then the key map; a miss resolves as the mode says). For
    /// tests of the hit path.
    #[doc(hidden)]
    pub fn launch_plan(&self, kernel: &Kernel, shape: &[i64]) -> Result<Arc<Plan>> {
        self.on_plan(kernel, None, shape, |plan| Ok(plan.clone()))
    }

    /// Calls `f` with the plan a launch on `stream` (none: a dry launch) uses now: this
    /// thread's recent hit if it is still valid (no lookup, no reference count), else the key
    /// map's plan or a miss's. The hit path.
    #[inline]
    fn on_plan<T>(
        &self,
        kernel: &Kernel,
        stream: Option<&CudaStream>,
        shape: &[i64],
        f: impl FnOnce(&Arc<Plan>) -> Result<T>,
    ) -> Result<T> {
        let probe = self.probe(kernel, shape);
        let mut go = Some(f);
        if let Some(r) = recent::with_hit(&probe, &mut go, |stripe| self.count_hit(stripe, stream))
        {
            return r;
        }
        let plan = self.plan_to_launch(kernel, stream, shape, Some(&probe))?;
        match go {
            Some(f) => f(&plan),
            // `with_hit` takes `f` only to run it.
            None => Err(Error::Search(format!(
                "kernel `{}`: a launch lost its closure (a bug in jitune)",
                kernel.spec.name
            ))),
        }
    }

    /// What this thread's recent hits know a launch of `kernel` at `shape` by, with the plan
    /// generation read first (before any lookup of the launch).
    #[inline]
    fn probe<'s>(&self, kernel: &Kernel, shape: &'s [i64]) -> recent::Probe<'s> {
        recent::Probe {
            generation: self.inner.states.generation(),
            tuner: self.inner.serial,
            kernel: kernel.serial,
            shape,
        }
    }

    /// Counts a hit (on this thread's counter stripe); on a stream, while some tuning or
    /// resolution is active, asks the driver whether it captures (see [`capture`]).
    #[inline]
    fn count_hit(&self, stripe: usize, stream: Option<&CudaStream>) {
        self.inner.hits.add_on(stripe, 1);
        if let Some(stream) = stream {
            if gate().watching() {
                watch_capture(stream, self.pause_limit());
            }
        }
    }

    /// The plan a launch on `stream` (none: a resolve) uses now, from the key map: one shard
    /// read, an Arc clone, a striped counter (and, while tuning is active, the capture query).
    /// A plan found there is remembered among this thread's recent hits under `probe`. (A miss's
    /// plan is not: the key map holds it, or, inside a capture, it is another key's stand-in.)
    #[inline]
    fn plan_to_launch(
        &self,
        kernel: &Kernel,
        stream: Option<&CudaStream>,
        shape: &[i64],
        probe: Option<&recent::Probe<'_>>,
    ) -> Result<Arc<Plan>> {
        let key = self.key(kernel, shape)?;
        match self.inner.states.plan(&key) {
            Some(p) => {
                self.count_hit(events::thread_stripe(), stream);
                if let Some(probe) = probe {
                    recent::remember(probe, &p);
                }
                Ok(p)
            }
            None => self.miss(kernel, key, stream, shape),
        }
    }

    /// A launch that found no plan. Inside a capture (the stream captures, or this thread holds
    /// a pause) nothing may be loaded: the capture path. Else the key is claimed and resolved,
    /// or waited for.
    #[cold]
    fn miss(
        &self,
        kernel: &Kernel,
        key: TuningKey,
        stream: Option<&CudaStream>,
        shape: &[i64],
    ) -> Result<Arc<Plan>> {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        self.remember_name(&kernel.spec);
        let held = capture::held_here();
        if held || stream.is_some_and(capture::stream_capturing) {
            if !held {
                gate().note_capture(self.pause_limit());
            }
            self.inner.capture_misses.fetch_add(1, Ordering::Relaxed);
            return self.resolve_in_capture(kernel, key, shape);
        }
        let states = &self.inner.states;
        loop {
            match states.claim(key) {
                Claim::Ready(p) | Claim::Provisional(p) => {
                    self.emit_miss(kernel, key, shape, MissDecision::Joined);
                    return Ok(p);
                }
                Claim::Wait(flight) => {
                    states.wait(&key, &flight, None);
                }
                Claim::Mine => {
                    let _active = gate().activity();
                    return match self.resolve_claimed(kernel, key, shape, true) {
                        Ok(p) => Ok(p),
                        Err(e) => {
                            self.release(&key);
                            self.emit_error(Some(key), &kernel.spec.name, &e);
                            Err(e)
                        }
                    };
                }
            }
        }
    }

    /// A key's resolution ends with `plan`: installed, swapped in, or queued as the swap policy
    /// says (see [`Swaps::finish`]). Returns the plan launches use now.
    pub(super) fn finish(&self, key: TuningKey, plan: Arc<Plan>) -> Arc<Plan> {
        match self
            .inner
            .swaps
            .finish(&self.inner.states, key, plan.clone())
        {
            Finished::Installed => plan,
            Finished::Swapped { old, generation } => {
                self.inner.events.emit(|| Event::Swapped {
                    key,
                    kernel: self.name_of(&key),
                    from: old.config.clone(),
                    to: plan.config.clone(),
                    generation,
                });
                plan
            }
            Finished::Queued { serving } => {
                self.inner.events.emit(|| Event::SwapPending {
                    key,
                    kernel: self.name_of(&key),
                    config: plan.config.clone(),
                });
                serving
            }
        }
    }

    /// Sets a provisional plan as the swap policy allows; returns the one serving now.
    fn provisional(&self, key: TuningKey, kernel: &str, plan: Arc<Plan>) -> Arc<Plan> {
        let (serving, swapped) =
            self.inner
                .swaps
                .provisional(&self.inner.states, &key, plan.clone());
        if let Some((old, generation)) = swapped {
            self.inner.events.emit(|| Event::Swapped {
                key,
                kernel: kernel.to_string(),
                from: old.config.clone(),
                to: serving.config.clone(),
                generation,
            });
        }
        serving
    }

    /// Ends a claim without a plan; a provisional plan it had is kept loaded (a graph may hold
    /// it).
    pub(super) fn release(&self, key: &TuningKey) {
        if let Some(p) = self.inner.states.release(key) {
            self.inner.swaps.retire(p);
        }
    }

    /// Remembers a kernel's name for events about its keys.
    pub(super) fn remember_name(&self, spec: &KernelSpec) {
        if !self.inner.names.contains_key(&spec.id()) {
            self.inner.names.insert(spec.id(), spec.name.clone());
        }
    }

    fn name_of(&self, key: &TuningKey) -> String {
        self.inner
            .names
            .get(&key.kernel)
            .map(|n| n.clone())
            .unwrap_or_else(|| key.kernel.short())
    }

    fn emit_miss(&self, kernel: &Kernel, key: TuningKey, shape: &[i64], decision: MissDecision) {
        self.inner.events.emit(|| Event::Miss {
            key,
            kernel: kernel.spec.name.clone(),
            shape: shape.to_vec(),
            decision,
        });
    }

    pub(super) fn emit_error(&self, key: Option<TuningKey>, kernel: &str, e: &Error) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        self.inner.events.emit(|| Event::Error {
            key,
            kernel: kernel.to_string(),
            message: e.to_string(),
        });
    }

    pub(super) fn fallback(&self, key: TuningKey, kernel: &str, reason: impl FnOnce() -> String) {
        self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.inner.events.emit(|| Event::Fallback {
            key,
            kernel: kernel.to_string(),
            reason: reason(),
        });
    }

    /// The job of `kernel` at `shape` on this tuner's device.
    pub(super) fn job(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuningJob> {
        let d = &self.inner.device;
        TuningJob::with_space(
            kernel.spec.clone(),
            shape,
            d.fingerprint_hash(),
            d.space(&kernel.spec, shape)?,
        )
    }

    /// The nearest shape's tuned winner when it is valid here (a warm start for the search and
    /// the provisional config of a background miss).
    fn nearest_config(&self, job: &TuningJob) -> Option<Config> {
        let near = self.inner.cache.nearest(&job.key).ok().flatten()?;
        let c = job.space.parse_config_text(&near.config).ok()?;
        job.space.is_valid(&c).then_some(c)
    }
}

/// Asks the driver whether a hit's stream captures (only while jitune may do GPU work); a capture
/// seen pauses that work (see [`capture`]).
#[cold]
#[inline(never)]
fn watch_capture(stream: &CudaStream, pause_limit: Duration) {
    if !capture::held_here() && capture::stream_capturing(stream) {
        gate().note_capture(pause_limit);
    }
}
