//! The state every clone of a [`Remote`](super::Remote) shares, and the one gate its calls go
//! through: the transport, the back-off, the counters, and the write queue with the flusher's
//! wake-up call.
//!
//! A file of its own because both sides of the remote tier stand on it: the reads and leases
//! ([`super::client`]) and the writes with their flusher ([`super::writer`]) each call the
//! server through [`Inner::call_result`], which skips the call while backing off, books its
//! outcome, and at the end of an outage (seen by any call) logs it and wakes the flusher so
//! queued writes land even if no further write comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::RemoteSettings;
use super::health::{Gate, Health};
use super::keys::Keys;
use super::queue::WriteQueue;
use super::secret::FleetKey;
use super::tier::{RemoteError, RemoteTier};

/// The counters behind [`RemoteStats`](super::RemoteStats).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) unavailable: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) queued: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) recoveries: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The flusher's wake-up call: shared with the thread, which must not keep the [`Inner`]
/// alive while it sleeps.
#[derive(Default)]
pub(super) struct Signal {
    pub(super) state: Mutex<SignalState>,
    pub(super) cv: Condvar,
}

#[derive(Default)]
pub(super) struct SignalState {
    /// A flusher thread exists.
    pub(super) running: bool,
    /// Something changed (the tier is back, new writes): look again now.
    pub(super) kicked: bool,
    /// The [`Remote`](super::Remote) is gone: exit.
    pub(super) shutdown: bool,
}

/// What every clone of a [`Remote`](super::Remote) shares.
pub(super) struct Inner {
    pub(super) tier: Arc<dyn RemoteTier>,
    pub(super) keys: Keys,
    pub(super) fleet: Option<FleetKey>,
    pub(super) settings: RemoteSettings,
    pub(super) health: Health,
    pub(super) queue: Mutex<WriteQueue>,
    /// Held while a write is sent (directly, by the flusher or by `flush`), so writes reach the
    /// server in the order they were made: a winner before the release of its lease, a newer
    /// winner after an older one of the same key.
    pub(super) send_lock: Mutex<()>,
    /// The queue dropped writes in this outage (warned once).
    pub(super) drop_warned: Mutex<bool>,
    pub(super) signal: Arc<Signal>,
    pub(super) counters: Counters,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut s = self.signal.state.lock();
        s.shutdown = true;
        self.signal.cv.notify_all();
    }
}

impl Inner {
    /// The shared state of a remote tier over `tier`, signed with `fleet` when given.
    pub(super) fn new(
        tier: Arc<dyn RemoteTier>,
        settings: RemoteSettings,
        fleet: Option<FleetKey>,
    ) -> Inner {
        Inner {
            tier,
            keys: Keys::new(&settings.namespace),
            fleet,
            health: Health::new(settings.backoff_min, settings.backoff_max),
            queue: Mutex::new(WriteQueue::new(settings.queue_capacity)),
            send_lock: Mutex::new(()),
            drop_warned: Mutex::new(false),
            settings,
            signal: Arc::default(),
            counters: Counters::default(),
        }
    }

    pub(super) fn call<T>(
        &self,
        budget: Duration,
        call: impl FnOnce(&dyn RemoteTier, Instant) -> Result<T, RemoteError>,
    ) -> Option<T> {
        self.call_result(budget, call).ok()
    }

    pub(super) fn call_result<T>(
        &self,
        budget: Duration,
        call: impl FnOnce(&dyn RemoteTier, Instant) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        if self.health.gate() == Gate::Skip {
            bump(&self.counters.unavailable);
            return Err(RemoteError::BackingOff);
        }
        match call(&*self.tier, Instant::now() + budget) {
            Ok(v) => {
                self.succeeded();
                Ok(v)
            }
            Err(e) => {
                bump(&self.counters.unavailable);
                self.health.failure(&self.tier.describe(), &e.to_string());
                Err(e)
            }
        }
    }

    /// Books a success; when it ends an outage, logs it and wakes the flusher.
    pub(super) fn succeeded(&self) {
        if let Some(outage) = self.health.success() {
            bump(&self.counters.recoveries);
            let pending = self.queue.lock().len();
            *self.drop_warned.lock() = false;
            log::info!(
                "jitune: remote cache {} is back after {:.1} s; pushing {pending} queued write(s)",
                self.tier.describe(),
                outage.as_secs_f64()
            );
            self.kick();
        }
    }

    fn kick(&self) {
        let mut s = self.signal.state.lock();
        s.kicked = true;
        self.signal.cv.notify_all();
    }
}
