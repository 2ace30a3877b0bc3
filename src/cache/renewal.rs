//! A thread that renews a lease every period until its owner drops it: the store's tuning
//! leases (`coord`) and the fleet's leases in the remote tier (`fleet`) both hold one.
//!
//! One mechanism because the stop is subtle: the flag is checked before every wait, so a stop
//! signalled before the thread first locks is not missed. The fleet's own copy missed it, and
//! a guard dropped right after it was taken then joined its thread for a whole period (10 s of
//! a 30-s lease).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The renewing thread; dropping this stops it and waits for it.
#[derive(Debug)]
pub(crate) struct Renewal {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Renewal {
    /// Starts a thread named `name` that calls `renew` every `every` until this is dropped or
    /// `renew` returns `false` (the lease is lost: nothing more to renew).
    pub fn start(
        name: &str,
        every: Duration,
        mut renew: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Renewal> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let (flag, cv) = &*stop2;
                loop {
                    // Sleep a period unless told to stop, the flag checked before waiting.
                    let next = Instant::now() + every;
                    let mut stopped = flag.lock();
                    while !*stopped && !cv.wait_until(&mut stopped, next).timed_out() {}
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    if !renew() {
                        return;
                    }
                }
            })?;
        Ok(Renewal {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock() = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn renews_every_period_and_stops_at_once_when_dropped() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = Arc::clone(&n);
        let r = Renewal::start("test-renewal", Duration::from_millis(10), move || {
            n2.fetch_add(1, Ordering::SeqCst);
            true
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(r);
        assert!(t.elapsed() < Duration::from_millis(500));
        let renewed = n.load(Ordering::SeqCst);
        assert!((3..=12).contains(&renewed), "{renewed} renewals in 100 ms");
    }

    #[test]
    fn a_drop_before_the_first_wait_is_not_missed() {
        for _ in 0..50 {
            let r = Renewal::start("test-renewal", Duration::from_secs(30), || true).unwrap();
            let t = Instant::now();
            drop(r);
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
    }

    #[test]
    fn a_lost_lease_ends_the_thread() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = Arc::clone(&n);
        let r = Renewal::start("test-renewal", Duration::from_millis(5), move || {
            n2.fetch_add(1, Ordering::SeqCst);
            false
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "no renewal after the lease was lost"
        );
        drop(r);
    }
}
