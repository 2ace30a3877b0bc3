//! What the tuner tells an operator: events (a miss and what was decided, a search starting and
//! finishing, a swap, a fallback, an error) delivered to callbacks, and counters.
//!
//! Why callbacks and counters, not logs: a server wants to export these (metrics, traces) and to
//! act on some (re-capture graphs when a swap is pending). Events are built and delivered only
//! off the hit path (misses, searches, swaps); a hit only adds one to a striped counter, so the
//! hit path stays allocation-free and takes no lock beyond the key map's shard read.
//!
//! Callbacks run synchronously on the thread where the event happens (a launch's thread on a
//! miss, possibly inside a graph capture; a background tuning thread otherwise). They must be
//! quick, must not launch through the tuner, and must make no CUDA call (one inside a capture
//! could invalidate it). A panicking callback is caught and logged once; the tuner carries on.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::key::TuningKey;

/// What a launch that found no plan for its key did.
#[derive(Clone, Debug, PartialEq)]
pub enum MissDecision {
    /// The cache had a winner for the key: its plan now serves (from the binary table or one
    /// compilation).
    Cached { config: String },
    /// Cache-only mode and nothing cached: the spec's default (or first valid) config.
    Default { config: String },
    /// Blocking mode: tuned before launching; the winner serves.
    TunedNow { config: String },
    /// Serving without a winner of its own (Background: while a background run tunes the key;
    /// cache-only: for good): `from` is the fallback step and the entry it comes from (another
    /// GPU model of the same compute capability, or the nearest tuned bucket here).
    Provisional {
        config: String,
        from: Option<(crate::cache::Decision, TuningKey)>,
    },
    /// The same GPU model's winner under another toolchain (`from`) serves, compiled here; in
    /// Background mode a short search seeded by it re-checks it.
    Inherited { config: String, from: TuningKey },
    /// Another launch was resolving the key: its plan served, or this launch waited for it.
    Joined,
    /// Inside a CUDA graph capture: an already-loaded plan of the nearest bucket (`from`) of
    /// the same kernel serves, and the key is resolved after the capture (nothing is loaded,
    /// compiled or tuned during it).
    Captured { config: String, from: TuningKey },
    /// Inside a capture with no loaded plan to launch: the launch failed ([`crate::Error::Capture`]).
    CaptureRefused,
}

/// Something the tuner did. Keys are [`TuningKey`]s (`key.display()` prints them); `kernel` is
/// the spec's name.
#[derive(Clone, Debug)]
pub enum Event {
    /// A launch found no plan for its key.
    Miss {
        key: TuningKey,
        kernel: String,
        shape: Vec<i64>,
        decision: MissDecision,
    },
    /// A search began (a Blocking miss, a background run, `tune`, `warmup`).
    TuneStarted {
        key: TuningKey,
        kernel: String,
        shape: Vec<i64>,
        /// Whether candidates run in a benchmark worker process.
        isolated: bool,
    },
    /// A search ended with a winner (stored in the cache).
    TuneFinished {
        key: TuningKey,
        kernel: String,
        shape: Vec<i64>,
        winner: String,
        /// The winner's time (the statistic that ranked it), ms.
        time_ms: f64,
        /// The spec's default config's time, ms, when it was measured.
        default_ms: Option<f64>,
        evaluations: usize,
        /// NVRTC compilations the search caused.
        compiled: usize,
        wall_s: f64,
        /// Cancelled: the winner is the best of what was measured until then.
        partial: bool,
    },
    /// A winner is ready and waits for [`Tuner::apply_swaps`](super::Tuner::apply_swaps)
    /// ([`SwapPolicy::OnRequest`](super::SwapPolicy::OnRequest)).
    SwapPending {
        key: TuningKey,
        kernel: String,
        config: String,
    },
    /// Launches of `key` now use `to` instead of `from`; `generation` is the tuner's generation
    /// after the swap (graphs captured before it still launch `from`).
    Swapped {
        key: TuningKey,
        kernel: String,
        from: String,
        to: String,
        generation: u64,
    },
    /// Something served or ran in a lesser way than asked: a capture launch used another
    /// bucket's plan, a failed background search left the provisional plan serving, a cached
    /// config could not be used, isolation was unavailable.
    Fallback {
        key: TuningKey,
        kernel: String,
        reason: String,
    },
    /// A miss, a search or a resolution failed (the launch's caller also gets the error when it
    /// was a launch's).
    Error {
        key: Option<TuningKey>,
        kernel: String,
        message: String,
    },
}

impl Event {
    /// A short name of the event's kind (`miss`, `tune_started`, ...), for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Miss { .. } => "miss",
            Event::TuneStarted { .. } => "tune_started",
            Event::TuneFinished { .. } => "tune_finished",
            Event::SwapPending { .. } => "swap_pending",
            Event::Swapped { .. } => "swapped",
            Event::Fallback { .. } => "fallback",
            Event::Error { .. } => "error",
        }
    }
}

/// A callback registered with [`Tuner::on_event`](super::Tuner::on_event).
pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// The registered callbacks.
#[derive(Default)]
pub struct Events {
    listeners: RwLock<Vec<Listener>>,
    /// Whether any listener is registered (events are not even built otherwise).
    any: AtomicBool,
    panicked: AtomicBool,
}

impl Events {
    pub fn add(&self, f: Listener) {
        self.listeners.write().push(f);
        self.any.store(true, Ordering::Release);
    }

    /// Delivers the event `make` builds to every listener, in registration order; `make` runs
    /// only when someone listens.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let event = make();
        let listeners: Vec<Listener> = self.listeners.read().clone();
        for l in listeners {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(&event)));
            if r.is_err() && !self.panicked.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "jitune: an event callback panicked (on a `{}` event); later panics are not logged",
                    event.kind()
                );
            }
        }
    }
}

/// Stripes of the hit counter: threads add to different cache lines, so hits from many threads
/// do not contend on one.
const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter many threads add to on a hot path: one relaxed add on this thread's stripe.
#[derive(Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

thread_local! {
    /// This thread's stripe (assigned round-robin at its first add).
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe of every striped counter (assigned round-robin at its first use).
pub(crate) fn thread_stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl StripedCounter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.add_on(thread_stripe(), n);
    }

    /// Adds on stripe `stripe` (this thread's, from [`thread_stripe`], kept by the caller: the
    /// launch hit path keeps it beside its recent hits, one thread-local access instead of two).
    #[inline]
    pub(crate) fn add_on(&self, stripe: usize, n: u64) {
        self.stripes[stripe % STRIPES]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The tuner's counters, as [`Tuner::stats`](super::Tuner::stats) reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Launches that found their key's plan (ready or provisional) at the first look.
    pub hits: u64,
    /// Launches that found none and resolved the key (or joined, or took the capture path).
    pub misses: u64,
    /// Misses inside a CUDA graph capture (served by a loaded plan or refused).
    pub capture_misses: u64,
    /// Fallback events (see [`Event::Fallback`]).
    pub fallbacks: u64,
    /// Swaps applied (at once, or by `apply_swaps`).
    pub swaps: u64,
    /// Winners waiting for `apply_swaps`.
    pub pending_swaps: usize,
    /// The generation (bumped by every swap applied; re-capture graphs when it changes).
    pub generation: u64,
    /// Searches run (every mode, `tune` and `warmup` included).
    pub searches: u64,
    /// NVRTC compilations caused (searches and plans).
    pub compiles: u64,
    /// Seconds the miss path spent compiling plans in this process (a search's compilations
    /// overlap its benchmarking in pool workers and are part of `tuning_s`).
    pub compile_s: f64,
    /// Wall seconds of searches, summed.
    pub tuning_s: f64,
    /// Errors (see [`Event::Error`]).
    pub errors: u64,
    /// Winners another process or host tuned, adopted instead of searching.
    pub adopted: u64,
    /// Misses resolved by this tuner, by what they served first (see
    /// [`crate::cache::Decision`]).
    pub misses_by_decision: DecisionCounts,
    /// Tuning leases taken over from a holder that died or let them go stale.
    pub lease_takeovers: u64,
    /// Captures noticed on launches without `begin_capture`/`pause_tuning` (process-wide).
    pub captures_detected: u64,
    /// Times jitune's GPU work waited for a capture to end (process-wide).
    pub waits_for_captures: u64,
}

/// Misses counted by the step of the fallback chain that served them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionCounts {
    /// The exact key was cached (this host, the fleet, or a shipped layer).
    pub hit: u64,
    /// The same GPU model's winner under another toolchain.
    pub inherited: u64,
    /// Another GPU model's winner of the same compute capability.
    pub provisional: u64,
    /// The nearest tuned shape bucket on this fingerprint.
    pub nearest: u64,
    /// The spec's default.
    pub default: u64,
}

/// A duration summed as nanoseconds in an atomic.
#[derive(Default)]
pub struct Seconds(AtomicU64);

impl Seconds {
    pub fn add(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn events_are_built_only_when_someone_listens_and_reach_listeners_in_order() {
        let e = Events::default();
        e.emit(|| panic!("built without a listener"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        for id in 0..2 {
            let seen = seen.clone();
            e.add(Arc::new(move |ev: &Event| {
                seen.lock().push((id, ev.kind()))
            }));
        }
        e.emit(|| Event::Error {
            key: None,
            kernel: "k".into(),
            message: "m".into(),
        });
        assert_eq!(*seen.lock(), [(0, "error"), (1, "error")]);
    }

    #[test]
    fn a_panicking_listener_does_not_stop_the_others() {
        let e = Events::default();
        let seen = Arc::new(AtomicU64::new(0));
        e.add(Arc::new(|_: &Event| panic!("listener bug")));
        let s = seen.clone();
        e.add(Arc::new(move |_: &Event| {
            s.fetch_add(1, Ordering::Relaxed);
        }));
        for _ in 0..3 {
            e.emit(|| Event::Error {
                key: None,
                kernel: "k".into(),
                message: "m".into(),
            });
        }
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn striped_counts_add_up_across_threads() {
        let c = Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), 80_000);
    }
}
