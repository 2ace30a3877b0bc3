//! CUDA graph captures and jitune's own GPU work: who may use the context when.
//!
//! While a stream captures a graph, the driver forbids some calls on the context, in any thread
//! when the capture's mode is `GLOBAL` (PyTorch's default): a module load or unload, a
//! synchronous allocation or free, a synchronisation of the context. Such a call fails and
//! invalidates the capture. jitune makes those calls when it resolves a miss (loading a plan's
//! module) and when it tunes in this process (allocating buffers, loading and timing candidates).
//! So:
//!
//! - a launch on a capturing stream never resolves a miss by loading anything (the tuner's
//!   capture path launches an already-loaded plan or fails clearly);
//! - all of jitune's GPU work on the context takes a [`Permit`] from the process-wide
//!   [`CaptureGate`] first (the candidate pipeline per candidate, through the evaluator's
//!   `WorkGate` hook; buffer set-up and tear-down; plan loads). A permit waits while a capture
//!   is in progress;
//! - a capture is known to be in progress from an explicit pause ([`TuningPause`], taken by
//!   `Tuner::begin_capture` / `Tuner::pause_tuning`, which also waits for the candidate in
//!   flight to finish, so nothing of jitune's runs on the context once it returns), or,
//!   best-effort, from a jitune launch seen on a capturing stream (a lease renewed by every such
//!   launch and ended `lease` after the last one). A launch only asks the driver whether its
//!   stream captures on a miss, or while some tuning or resolution is active (the gate's
//!   `watching`), so a hit in a quiet server costs one relaxed atomic load for this.
//!
//! The gate is process-wide because the driver's rule is: a `GLOBAL` capture forbids those calls
//! in every thread of the process, whatever tuner or device they belong to.
//!
//! Benchmark worker processes (isolated tuning) have contexts of their own, which a capture in
//! this process does not constrain: they keep tuning during a capture. What their host side does
//! on this context (loading the winner's module for its plan) takes a permit like the rest.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{CudaGraph, CudaStream};
use once_cell::sync::Lazy;
use parking_lot::{Condvar, Mutex};

use crate::{Error, Result};

thread_local! {
    /// Pauses held by this thread: its misses take the capture path, and it may not wait for a
    /// permit (it would wait for itself).
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread holds a [`TuningPause`] (it is capturing through jitune).
pub fn held_here() -> bool {
    HELD.with(|h| h.get() > 0)
}

/// Whether `stream` is capturing a graph (or its capture was invalidated), asked of the driver
/// directly: cudarc's `capture_status` would first take any error cudarc stored for the context
/// (its `check_err`), which belongs to whoever calls cudarc next. A query that fails counts as
/// capturing: the safe side (nothing is loaded, the launch serves a loaded plan or fails).
pub fn stream_capturing(stream: &CudaStream) -> bool {
    use cudarc::driver::{result, sys::CUresult};
    let query = || unsafe { result::stream::is_capturing(stream.cu_stream()) };
    let status = match query() {
        // No context current on this thread (the legacy stream needs one): bind the stream's
        // and ask again.
        Err(e) if e.0 == CUresult::CUDA_ERROR_INVALID_CONTEXT => {
            unsafe { result::ctx::set_current(stream.context().cu_ctx()) }.and_then(|_| query())
        }
        r => r,
    };
    !matches!(
        status,
        Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}

/// The process-wide gate between captures and jitune's GPU work.
pub struct CaptureGate {
    /// Pauses alive (explicit captures).
    explicit: AtomicUsize,
    /// An auto-detected capture pauses work until this instant (ns since `epoch`; 0: none).
    lease_until: AtomicU64,
    lease_ns: AtomicU64,
    /// Permits alive (GPU work in progress).
    working: AtomicUsize,
    /// Tuning runs and miss resolutions in progress: while > 0, hits watch for captures.
    active: AtomicUsize,
    /// Captures noticed on launches (not announced by a pause).
    detected: AtomicU64,
    /// Permits that had to wait for a capture to end.
    waited: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
    epoch: Instant,
}

static GATE: Lazy<CaptureGate> = Lazy::new(CaptureGate::new);

/// The process's gate.
pub fn gate() -> &'static CaptureGate {
    &GATE
}

/// Default time an auto-detected capture pauses work after the last launch seen in it.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(100);

impl CaptureGate {
    pub fn new() -> CaptureGate {
        CaptureGate {
            explicit: AtomicUsize::new(0),
            lease_until: AtomicU64::new(0),
            lease_ns: AtomicU64::new(DEFAULT_LEASE.as_nanos() as u64),
            working: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            detected: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        // +1: 0 means "no lease".
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Sets how long an auto-detected capture pauses work after the last launch seen in it.
    pub fn set_lease(&self, lease: Duration) {
        self.lease_ns
            .store(lease.as_nanos().max(1) as u64, Ordering::Relaxed);
    }

    /// Whether GPU work must wait now.
    pub fn paused(&self) -> bool {
        self.explicit.load(Ordering::SeqCst) > 0
            || self.lease_until.load(Ordering::SeqCst) > self.now_ns()
    }

    /// Whether launches should look for captures (some tuning or resolution may do GPU work).
    #[inline]
    pub fn watching(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Counts a tuning run or miss resolution as active while the token lives.
    pub fn activity(&self) -> Activity<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Activity(self)
    }

    fn notify(&self) {
        let _g = self.lock.lock();
        self.cv.notify_all();
    }

    /// Waits until no capture is in progress, then counts GPU work as running until the permit
    /// drops. Fails on a thread that holds a pause (it would wait for itself).
    pub fn permit(&self) -> Result<Permit<'_>> {
        if held_here() {
            return Err(Error::Capture(
                "this thread is capturing a CUDA graph through jitune (a capture or tuning pause \
                 is held): jitune cannot load, compile or tune here until it ends"
                    .into(),
            ));
        }
        let mut waited = false;
        loop {
            if self.paused() {
                waited = true;
                let mut g = self.lock.lock();
                while self.paused() {
                    let until = self.lease_until.load(Ordering::SeqCst);
                    let now = self.now_ns();
                    let wait = if self.explicit.load(Ordering::SeqCst) == 0 && until > now {
                        Duration::from_nanos(until - now)
                    } else {
                        Duration::from_millis(50)
                    };
                    self.cv
                        .wait_for(&mut g, wait.min(Duration::from_millis(50)));
                }
            }
            // Announce the work, then look again: a capture that began meanwhile either sees
            // the work (and waits for it) or is seen here (and the work backs off).
            self.working.fetch_add(1, Ordering::SeqCst);
            if !self.paused() {
                if waited {
                    self.waited.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Permit(self));
            }
            self.working.fetch_sub(1, Ordering::SeqCst);
            self.notify();
        }
    }

    /// Waits until no GPU work of jitune's runs, at most `limit`; whether it got there.
    fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut g = self.lock.lock();
        while self.working.load(Ordering::SeqCst) > 0 {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                return self.working.load(Ordering::SeqCst) == 0;
            }
        }
        true
    }

    /// Pauses jitune's GPU work for a capture by this thread: new work waits, and this returns
    /// once the work in flight (one candidate at most per tuning run) has finished, or fails
    /// after `limit`.
    pub fn pause(&self, limit: Duration) -> Result<TuningPause<'_>> {
        self.explicit.fetch_add(1, Ordering::SeqCst);
        HELD.with(|h| h.set(h.get() + 1));
        let pause = TuningPause {
            gate: self,
            _thread: PhantomData,
        };
        if !self.drain(limit) {
            drop(pause);
            return Err(Error::Capture(format!(
                "jitune's tuning work did not pause within {:.1} s (a candidate still runs on the \
                 GPU); the capture was not started",
                limit.as_secs_f64()
            )));
        }
        Ok(pause)
    }

    /// A launch saw its stream capturing without a pause held: work pauses until `lease` after
    /// the last such launch. The first launch of a capture also waits (at most `limit`) for the
    /// work in flight; work that ran on the context since the capture began may already have
    /// invalidated it, which is why an explicit pause is the guarantee and this is best-effort.
    pub fn note_capture(&self, limit: Duration) {
        let now = self.now_ns();
        let until = now + self.lease_ns.load(Ordering::Relaxed);
        let before = self.lease_until.swap(until, Ordering::SeqCst);
        if before <= now {
            self.detected.fetch_add(1, Ordering::Relaxed);
            if !self.drain(limit) {
                log::warn!(
                    "jitune: a CUDA graph capture began while a tuning candidate was running; \
                     use Tuner::begin_capture (or pause_tuning) around captures"
                );
            }
        }
    }

    /// (captures detected on launches, permits that waited for a capture).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.detected.load(Ordering::Relaxed),
            self.waited.load(Ordering::Relaxed),
        )
    }
}

impl Default for CaptureGate {
    fn default() -> Self {
        CaptureGate::new()
    }
}

/// GPU work of jitune's in progress (see [`CaptureGate::permit`]).
pub struct Permit<'g>(&'g CaptureGate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Ordering::SeqCst);
        self.0.notify();
    }
}

/// A tuning run or miss resolution in progress (see [`CaptureGate::activity`]).
pub struct Activity<'g>(&'g CaptureGate);

impl Drop for Activity<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// jitune's GPU work is paused while this lives (taken by the thread that captures; not
/// `Send`, since the capture path of launches is chosen per thread).
pub struct TuningPause<'g> {
    gate: &'g CaptureGate,
    _thread: PhantomData<*const ()>,
}

impl Drop for TuningPause<'_> {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
        self.gate.explicit.fetch_sub(1, Ordering::SeqCst);
        self.gate.notify();
    }
}

/// A CUDA graph capture begun through [`Tuner::begin_capture`](super::Tuner::begin_capture):
/// jitune's GPU work is paused from before the capture began until it ends. End it with
/// [`Capture::end`]; dropped without that, it ends the capture and discards the graph (the
/// stream is not left capturing).
pub struct Capture {
    stream: Arc<CudaStream>,
    pause: Option<TuningPause<'static>>,
    open: bool,
}

impl Capture {
    pub(crate) fn begin(
        stream: &Arc<CudaStream>,
        mode: CUstreamCaptureMode,
        limit: Duration,
    ) -> Result<Capture> {
        let pause = gate().pause(limit)?;
        stream
            .begin_capture(mode)
            .map_err(|e| Error::driver("beginning a CUDA graph capture", e))?;
        Ok(Capture {
            stream: stream.clone(),
            pause: Some(pause),
            open: true,
        })
    }

    /// The capturing stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Ends the capture and instantiates the graph (no instantiation flags); `None` when the
    /// driver captured nothing. jitune's GPU work resumes.
    pub fn end(self) -> Result<Option<CudaGraph>> {
        self.end_with(CUgraphInstantiate_flags(0))
    }

    /// As [`Capture::end`], with `cuGraphInstantiate` flags.
    pub fn end_with(mut self, flags: CUgraphInstantiate_flags) -> Result<Option<CudaGraph>> {
        self.open = false;
        let graph = self.stream.end_capture(flags);
        self.pause.take();
        graph.map_err(|e| Error::driver("ending a CUDA graph capture", e))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.stream.end_capture(CUgraphInstantiate_flags(0)) {
                log::warn!("jitune: ending an abandoned CUDA graph capture failed: {e}");
            }
        }
    }
}

/// Drops `T` (an evaluator: its buffers and loaded candidates) while holding a permit, so the
/// frees and module unloads never land inside a capture.
pub struct GatedDrop<T> {
    inner: Option<T>,
}

impl<T> GatedDrop<T> {
    pub fn new(inner: T) -> GatedDrop<T> {
        GatedDrop { inner: Some(inner) }
    }
}

impl<T> std::ops::Deref for GatedDrop<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_ref().expect("present until dropped")
    }
}

impl<T> std::ops::DerefMut for GatedDrop<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner.as_mut().expect("present until dropped")
    }
}

impl<T> Drop for GatedDrop<T> {
    fn drop(&mut self) {
        // On a thread that holds a pause (it cannot get a permit) the value drops as it is.
        let _permit = gate().permit().ok();
        self.inner.take();
    }
}

impl crate::engine::WorkGate for CaptureGate {
    fn enter(&self) -> Result<()> {
        std::mem::forget(self.permit()?);
        Ok(())
    }

    fn leave(&self) {
        drop(Permit(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    // Each test uses a gate of its own (the process gate is shared by the tuner's tests).
    fn leaked() -> &'static CaptureGate {
        Box::leak(Box::new(CaptureGate::new()))
    }

    #[test]
    fn work_waits_while_a_capture_is_paused_and_resumes_after() {
        let g = leaked();
        let pause = g.pause(Duration::from_secs(1)).unwrap();
        assert!(held_here() && g.paused());
        assert!(
            g.permit().is_err(),
            "the capturing thread may not wait for itself"
        );
        let started = Arc::new(AtomicBool::new(false));
        let worker = {
            let started = started.clone();
            std::thread::spawn(move || {
                assert!(!held_here(), "a pause belongs to its thread");
                let _p = g.permit().unwrap();
                started.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!started.load(Ordering::SeqCst), "work ran during a capture");
        drop(pause);
        worker.join().unwrap();
        assert!(started.load(Ordering::SeqCst));
        assert!(!held_here() && !g.paused());
        assert_eq!(g.counts().1, 1, "one permit waited");
    }

    #[test]
    fn a_pause_waits_for_the_work_in_flight() {
        let g = leaked();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _p = g.permit().unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            Instant::now()
        });
        rx.recv().unwrap();
        let pause = g.pause(Duration::from_secs(5)).unwrap();
        let paused_at = Instant::now();
        let work_ended = worker.join().unwrap();
        assert!(
            paused_at >= work_ended,
            "the pause returned while a candidate still ran"
        );
        drop(pause);
    }

    #[test]
    fn a_pause_that_cannot_drain_fails_and_releases() {
        let g = leaked();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let _p = g.permit().unwrap();
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        });
        rx.recv().unwrap();
        let e = g.pause(Duration::from_millis(50)).err().unwrap();
        assert!(e.to_string().contains("did not pause"), "{e}");
        assert!(!held_here() && !g.paused(), "a failed pause holds nothing");
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn a_detected_capture_pauses_work_for_its_lease() {
        let g = leaked();
        g.set_lease(Duration::from_millis(150));
        assert!(!g.watching());
        {
            let _a = g.activity();
            assert!(g.watching());
        }
        assert!(!g.watching());
        g.note_capture(Duration::from_secs(1));
        assert!(g.paused() && !held_here());
        let t = Instant::now();
        let _p = g.permit().unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(100),
            "work resumed {waited:?} into a 150 ms lease"
        );
        assert_eq!(g.counts(), (1, 1));
    }

    #[test]
    fn the_work_gate_hook_counts_work_like_a_permit() {
        use crate::engine::WorkGate;
        let g = leaked();
        g.enter().unwrap();
        assert_eq!(g.working.load(Ordering::SeqCst), 1);
        assert!(
            g.pause(Duration::from_millis(30)).is_err(),
            "entered work blocks a pause"
        );
        g.leave();
        assert_eq!(g.working.load(Ordering::SeqCst), 0);
        assert!(g.pause(Duration::from_millis(30)).is_ok());
    }
}
