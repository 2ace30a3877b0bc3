//! Waiting out another process' lock where SQLite's busy handler does not.
//!
//! SQLite waits for locks in its busy handler (`busy_timeout`) only where waiting cannot
//! deadlock: it does NOT wait when a connection that already holds a read lock asks for the
//! write lock, and it does not retry a `SQLITE_BUSY_SNAPSHOT`. `PRAGMA journal_mode=WAL` on a
//! file that is not yet in WAL mode is exactly such a case (`sqlite3BtreeSetVersion` opens a read
//! transaction, then upgrades it to an exclusive one): with several processes opening one fresh
//! cache at once, all but one got "database is locked" within milliseconds, whatever the busy
//! timeout. Those statements, and every write transaction as a safety net, are retried here with
//! a jittered backoff until a deadline.

use std::time::{Duration, Instant};

use rusqlite::ErrorCode;

use crate::rng::Rng;
use crate::Error;

/// Whether SQLite gave up because another connection holds a lock (`SQLITE_BUSY` and its
/// extended codes, or `SQLITE_LOCKED`): the same statement may succeed a moment later.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// [`is_busy`] for a store error that kept SQLite's error as its source.
pub(crate) fn is_busy_error(e: &Error) -> bool {
    matches!(e, Error::Store { source: Some(s), .. } if is_busy(s))
}

/// Jittered exponential backoff between retries: 1 ms doubling to 50 ms, each sleep a random
/// 50-100% of the step so processes that collided once do not collide again in lockstep.
pub(crate) struct Backoff {
    step: Duration,
    rng: Rng,
    deadline: Instant,
    /// Retries so far.
    pub(crate) retries: u32,
}

const FIRST_STEP: Duration = Duration::from_millis(1);
const MAX_STEP: Duration = Duration::from_millis(50);

impl Backoff {
    /// A backoff that allows retries until `budget` from now.
    pub(crate) fn new(budget: Duration) -> Backoff {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Backoff {
            step: FIRST_STEP,
            rng: Rng::new(nanos ^ ((std::process::id() as u64) << 32)),
            deadline: Instant::now() + budget,
            retries: 0,
        }
    }

    /// Time left before the deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps before the next retry and returns true, or returns false when the deadline has
    /// passed (the caller gives up).
    pub(crate) fn wait(&mut self) -> bool {
        let left = self.remaining();
        if left.is_zero() {
            return false;
        }
        let jitter = 0.5 + 0.5 * self.rng.next_f64();
        std::thread::sleep(self.step.mul_f64(jitter).min(left));
        self.step = (self.step * 2).min(MAX_STEP);
        self.retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stops_at_its_deadline() {
        let start = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(120));
        while b.wait() {}
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(120), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
        assert!(b.retries >= 3, "{} retries", b.retries);
    }

    #[test]
    fn busy_codes_are_recognised() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(is_busy(&busy));
        assert!(is_busy_error(&Error::sqlite("x", busy)));
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(!is_busy(&full));
    }
}
