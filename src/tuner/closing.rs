//! Shutting the tuner's background work down before the process ends.
//!
//! Background searches run on detached threads that hold the tuner (and the CUDA context) alive.
//! A process that returns from `main` while one of them is inside the driver or NVRTC runs the
//! libraries' exit handlers under a live call: on the H200 that ended a test binary that had
//! passed with `free(): invalid size` (abort) at exit. [`Closing`] is how
//! [`Tuner::shutdown`](super::Tuner::shutdown) avoids it: one flag that every search of the tuner
//! takes as its cancellation (a cancelled search ends after its batch in flight and stores the
//! best it measured, so nothing tuned is lost), a count of the background threads still running,
//! and a condition variable to wait for that count to reach zero. Once closing, no new background
//! search starts: a miss serves its provisional plan for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(super) struct Closing {
    /// Set once by `close`; the cancellation flag of every search this tuner runs.
    flag: Arc<AtomicBool>,
    /// Background threads running.
    running: Mutex<usize>,
    idle: Condvar,
}

/// One background thread, counted until dropped (also when it unwinds).
pub(super) struct Running<'a>(&'a Closing);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut n = self.0.running.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Closing {
    /// The flag to hand to a search as its cancellation.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    pub fn is_closing(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Counts one background thread in; `None` once closing (start nothing new).
    pub fn enter(&self) -> Option<Running<'_>> {
        let mut n = self.running.lock();
        if self.is_closing() {
            return None;
        }
        *n += 1;
        Some(Running(self))
    }

    /// Sets the flag and waits up to `timeout` for the background threads to finish; whether
    /// none is left.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.running.lock();
        self.flag.store(true, Ordering::Release);
        while *n > 0 {
            if self.idle.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }

    /// Background threads running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        *self.running.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_waits_for_running_threads_and_refuses_new_ones() {
        let c = Arc::new(Closing::default());
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _r = c2.enter().expect("not closing yet");
            tx.send(()).unwrap();
            // Works until cancelled, as a search does between batches.
            while !c2.flag().load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        rx.recv().unwrap();
        assert_eq!(c.running(), 1);
        let t0 = Instant::now();
        assert!(c.close(Duration::from_secs(5)), "the thread finished");
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "close waited for it"
        );
        assert_eq!(c.running(), 0);
        assert!(c.enter().is_none(), "nothing new starts once closing");
        t.join().unwrap();
    }

    #[test]
    fn close_gives_up_at_its_timeout() {
        let c = Closing::default();
        let _r = c.enter().unwrap();
        let t0 = Instant::now();
        assert!(!c.close(Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(c.is_closing());
    }
}
