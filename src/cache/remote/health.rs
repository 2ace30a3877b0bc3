//! Whether the remote tier is worth asking right now: back-off after failures, one warning per
//! outage.
//!
//! A server that is down or slow must not cost every miss its full wait, nor fill the log. So
//! after a failure the tier is "down": calls fail at once without touching the network until the
//! retry time, when exactly one caller probes (the others still fail fast); a failed probe
//! doubles the delay up to a cap, a success ends the outage. The change to down logs one
//! warning, the change back one info line with the outage's length.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What a caller may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// The tier is up: go ahead.
    Go,
    /// The tier is down and this caller is the one to probe it (report the result).
    Probe,
    /// The tier is down and backing off: do not touch the network.
    Skip,
}

#[derive(Debug)]
struct State {
    /// When the outage began; `None` while up.
    down_since: Option<Instant>,
    retry_at: Instant,
    delay: Duration,
    probing: bool,
}

/// Back-off state of one remote tier.
#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    min: Duration,
    max: Duration,
}

impl Health {
    pub(crate) fn new(min: Duration, max: Duration) -> Health {
        let min = min.max(Duration::from_millis(1));
        Health {
            state: Mutex::new(State {
                down_since: None,
                retry_at: Instant::now(),
                delay: min,
                probing: false,
            }),
            min,
            max: max.max(min),
        }
    }

    /// Whether to call the tier now.
    pub(crate) fn gate(&self) -> Gate {
        let mut s = self.state.lock();
        if s.down_since.is_none() {
            return Gate::Go;
        }
        if !s.probing && Instant::now() >= s.retry_at {
            s.probing = true;
            return Gate::Probe;
        }
        Gate::Skip
    }

    /// When a call would next be allowed (now while up).
    pub(crate) fn retry_at(&self) -> Instant {
        let s = self.state.lock();
        if s.down_since.is_none() {
            Instant::now()
        } else {
            s.retry_at
        }
    }

    /// Whether the tier is in an outage.
    pub(crate) fn is_down(&self) -> bool {
        self.state.lock().down_since.is_some()
    }

    /// A call succeeded. Returns the length of the outage it ended, if it ended one (the
    /// caller logs the recovery, knowing what it has queued).
    pub(crate) fn success(&self) -> Option<Duration> {
        let mut s = self.state.lock();
        let since = s.down_since.take()?;
        s.delay = self.min;
        s.probing = false;
        Some(since.elapsed())
    }

    /// A call failed with `error` (text for the log). Logs the one warning of the outage when
    /// this failure begins it; a failed probe doubles the back-off.
    pub(crate) fn failure(&self, what: &str, error: &str) {
        let mut s = self.state.lock();
        let now = Instant::now();
        match s.down_since {
            None => {
                s.down_since = Some(now);
                s.delay = self.min;
                s.retry_at = now + s.delay;
                s.probing = false;
                log::warn!(
                    "jitune: remote cache {what} unavailable ({error}); misses go on locally, writes are queued and pushed when it is back; retrying with back-off up to {:?}",
                    self.max
                );
            }
            Some(_) if s.probing => {
                s.delay = (s.delay * 2).min(self.max);
                s.retry_at = now + s.delay;
                s.probing = false;
            }
            // A call that began before the outage was noticed: nothing new to learn.
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_with_a_cap_and_one_prober() {
        let h = Health::new(Duration::from_millis(10), Duration::from_millis(40));
        assert_eq!(h.gate(), Gate::Go);
        h.failure("test", "refused");
        assert!(h.is_down());
        assert_eq!(h.gate(), Gate::Skip);
        let mut delays = Vec::new();
        for _ in 0..4 {
            let wait = h.retry_at().saturating_duration_since(Instant::now());
            delays.push(wait);
            std::thread::sleep(wait + Duration::from_millis(1));
            assert_eq!(h.gate(), Gate::Probe);
            // Only one caller probes at a time.
            assert_eq!(h.gate(), Gate::Skip);
            h.failure("test", "refused");
        }
        assert!(delays[0] <= Duration::from_millis(10), "{delays:?}");
        let last = h.retry_at().saturating_duration_since(Instant::now());
        assert!(
            last > Duration::from_millis(25) && last <= Duration::from_millis(40),
            "{last:?}"
        );
        assert!(h.success().is_some());
        assert_eq!(h.gate(), Gate::Go);
        assert!(h.success().is_none());
    }
}
