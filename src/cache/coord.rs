//! Processes sharing one cache (issue 14): who tunes a key, how the others get its winner, and
//! one tuning at a time per GPU. These are the calls of the tuner's miss path.
//!
//! A miss asks [`Cache::acquire_lease`]. [`LeaseAttempt::Held`]: this process tunes the key; the
//! [`LeaseGuard`] renews the lease in the background every third of its time to live (the
//! heartbeat) and releases it when dropped, after the winner is stored. Because a winner may
//! have landed between the miss and the lease, the holder looks the key up once more
//! (`Cache::lookup_with`, once it has its GPU's lock) before tuning. [`LeaseAttempt::HeldBy`]: another live process tunes it;
//! launch the provisional plan and adopt its winner through [`Cache::wait_for_winner`], which
//! returns [`WinnerWait::Landed`] within about [`WAIT_POLL`] of the winner's commit,
//! [`WinnerWait::Free`] when the holder released the key without a winner, died or let the
//! lease expire (then ask for the lease again), or [`WinnerWait::TimedOut`] (a Blocking caller
//! then tunes itself). How the store keeps leases (owner, heartbeat, expiry, dead owners, clocks
//! that jump) is described in [`store`](super::store).
//!
//! Before measuring, the holder takes the GPU's lock ([`Cache::gpu_lock`], see
//! [`gpu_lock`](super::gpu_lock)), so no two tuners time kernels on one GPU at once; processes
//! on different GPUs of one model share a device fingerprint, hence keys and leases, and so
//! divide the keys between them.
//!
//! Everything here degrades like the rest of the cache. A memory-only cache grants every lease
//! (single flight inside the process is the tuner's own business) and has no winners from
//! elsewhere to wait for. A store that fails (a lock held too long, a full or read-only disk)
//! gives one warning and the answer that keeps the program going: the lease is granted, the
//! wait ends as `Free`, the GPU lock is granted without an OS lock. The worst outcome is a key
//! tuned twice, never a failed launch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use super::gpu_lock::{GpuLock, GpuLockGuard};
use super::renewal::Renewal;
use super::store::{Lease, LeaseOwner, LeaseState, Stale, WaitOutcome};
use super::{Cache, Entry};
use crate::key::TuningKey;
use crate::Result;

/// A lease's time to live when the tuner has no reason to pick another: long enough that a
/// heartbeat every 10 s survives a stall of 20 s, short enough that a tuner on another host
/// that vanished frees its keys within half a minute.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often [`Cache::wait_for_winner`] asks the store whether another process committed.
pub const WAIT_POLL: Duration = Duration::from_millis(50);

/// This process as a lease owner (computed once: pid, start time and scope do not change).
static OWNER: Lazy<LeaseOwner> = Lazy::new(LeaseOwner::current);

/// What [`Cache::acquire_lease`] got.
#[derive(Debug)]
pub enum LeaseAttempt {
    /// This process tunes the key; the guard keeps the lease alive until dropped.
    Held(Box<LeaseGuard>),
    /// Another live process tunes it.
    HeldBy {
        /// The holder.
        owner: LeaseOwner,
        /// When its lease expires unless renewed (unix ms).
        expires_at_ms: i64,
    },
}

/// How [`Cache::wait_for_winner`] ended.
#[derive(Clone, Debug)]
pub enum WinnerWait {
    /// The winner is stored; it is now in the memory tier too.
    Landed(Arc<Entry>),
    /// Nobody holds a live lease on the key and there is no winner: take the lease and tune.
    Free,
    /// The deadline passed while the holder was still tuning.
    TimedOut,
}

/// A held tuning lease: renewed by a heartbeat thread while alive, released when dropped.
#[derive(Debug)]
pub struct LeaseGuard {
    cache: Arc<Cache>,
    key: TuningKey,
    took_over: Option<(Lease, Stale)>,
    heartbeat: Option<Heartbeat>,
}

#[derive(Debug)]
struct Heartbeat {
    /// Dropped (stopped and joined) before the lease is released.
    _renewal: Renewal,
    lost: Arc<AtomicBool>,
}

impl LeaseGuard {
    /// The key this lease is for.
    pub fn key(&self) -> &TuningKey {
        &self.key
    }

    /// The stale lease this one replaced (its owner died, it expired, or the clock jumped):
    /// a takeover, which the fleet counts.
    pub fn took_over(&self) -> Option<&(Lease, Stale)> {
        self.took_over.as_ref()
    }

    /// Whether a heartbeat found the lease taken by another process (it went stale, say after
    /// this process was stopped for longer than the time to live). The tuning may finish and
    /// store its winner; the other tuner's winner replaces it if stored later.
    pub fn lost(&self) -> bool {
        self.heartbeat
            .as_ref()
            .is_some_and(|h| h.lost.load(Ordering::Relaxed))
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // The heartbeat stops (its thread joined) before the lease goes.
        drop(self.heartbeat.take());
        self.cache.release_lease(&self.key);
    }
}

impl Cache {
    /// This process as a lease owner.
    pub fn lease_owner(&self) -> &'static LeaseOwner {
        &OWNER
    }

    /// Takes the tuning lease of `key` for this process for `ttl` (at most
    /// [`MAX_LEASE_TTL`](super::store::MAX_LEASE_TTL)), unless another live process holds it.
    /// Without a writable user store, or when the store fails (one warning), the lease is
    /// granted: the caller tunes.
    pub fn try_lease(&self, key: &TuningKey, ttl: Duration) -> LeaseState {
        let granted = LeaseState::Acquired { took_over: None };
        let Some(store) = &self.user else {
            return granted;
        };
        match store.try_lease(key, &OWNER, ttl) {
            Ok(s) => s,
            Err(e) => {
                self.coord_failed("take the tuning lease", key, &e);
                granted
            }
        }
    }

    /// The heartbeat of a lease taken with [`Cache::try_lease`]: false when the lease is no
    /// longer this process' (see [`LeaseGuard::lost`]). True without a store, and when the
    /// store fails (one warning): a missed heartbeat at worst lets the lease expire.
    pub fn renew_lease(&self, key: &TuningKey, ttl: Duration) -> bool {
        let Some(store) = &self.user else {
            return true;
        };
        store.renew_lease(key, &OWNER, ttl).unwrap_or_else(|e| {
            self.coord_failed("renew the tuning lease", key, &e);
            true
        })
    }

    /// Releases this process' lease on `key` (a lease of another process stays). A store
    /// failure is one warning: the lease then frees itself when this process exits (same host)
    /// or expires.
    pub fn release_lease(&self, key: &TuningKey) {
        if let Some(store) = &self.user {
            if let Err(e) = store.release_lease(key, &OWNER) {
                self.coord_failed("release the tuning lease", key, &e);
            }
        }
    }

    /// [`Cache::try_lease`] with a heartbeat: when granted, a thread renews the lease every
    /// `ttl / 3` until the returned guard is dropped, and the drop releases it. Never fails
    /// (see [`Cache::try_lease`]).
    pub fn acquire_lease(self: &Arc<Self>, key: &TuningKey, ttl: Duration) -> LeaseAttempt {
        let took_over = match self.try_lease(key, ttl) {
            LeaseState::HeldBy {
                owner,
                expires_at_ms,
            } => {
                return LeaseAttempt::HeldBy {
                    owner,
                    expires_at_ms,
                }
            }
            LeaseState::Acquired { took_over } => took_over,
        };
        let heartbeat = if self.user.is_some() {
            self.start_heartbeat(key, ttl)
        } else {
            None
        };
        LeaseAttempt::Held(Box::new(LeaseGuard {
            cache: Arc::clone(self),
            key: *key,
            took_over,
            heartbeat,
        }))
    }

    fn start_heartbeat(self: &Arc<Self>, key: &TuningKey, ttl: Duration) -> Option<Heartbeat> {
        let lost = Arc::new(AtomicBool::new(false));
        let (cache, key) = (Arc::clone(self), *key);
        let lost2 = Arc::clone(&lost);
        let every = (ttl / 3).max(Duration::from_millis(1));
        let spawned = Renewal::start("jitune-lease", every, move || {
            if cache.renew_lease(&key, ttl) {
                return true;
            }
            log::warn!(
                "jitune: the tuning lease of {} was taken by another process (it went stale); finishing this tuning anyway",
                key.display()
            );
            lost2.store(true, Ordering::Relaxed);
            false
        });
        match spawned {
            Ok(renewal) => Some(Heartbeat {
                _renewal: renewal,
                lost,
            }),
            Err(e) => {
                self.coord_failures.note(&format!(
                    "jitune: cannot start the lease heartbeat thread ({e}); the lease of {} will expire after {ttl:?}",
                    key.display()
                ));
                None
            }
        }
    }

    /// Waits until another process' winner for `key` lands (it is then put in the memory
    /// tier), nobody holds a live lease on it any more, or `deadline` passes. A winner already
    /// in memory or in the user store is returned at once. Without a user store, or when the
    /// store fails (one warning), the answer is `Free`: there is nobody to wait for.
    pub fn wait_for_winner(&self, key: &TuningKey, deadline: Instant) -> WinnerWait {
        if let Some(e) = self.get_memory(key) {
            return WinnerWait::Landed(e);
        }
        let Some(store) = &self.user else {
            return WinnerWait::Free;
        };
        match store.wait_for_entry(key, deadline, WAIT_POLL) {
            Ok(WaitOutcome::Landed(e)) => {
                let e = self
                    .memory
                    .entry(*key)
                    .or_insert_with(|| Arc::from(e))
                    .clone();
                WinnerWait::Landed(e)
            }
            Ok(WaitOutcome::Free) => WinnerWait::Free,
            Ok(WaitOutcome::TimedOut) => WinnerWait::TimedOut,
            Err(e) => {
                self.coord_failed("wait for another process' winner of", key, &e);
                WinnerWait::Free
            }
        }
    }

    /// Every lease row of the user store, stale or not (for `jitune ls` and tests); empty
    /// without a user store.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        match &self.user {
            Some(s) => s.leases(),
            None => Ok(Vec::new()),
        }
    }

    /// The directory whose `locks/` holds the GPU locks: the user cache's directory, or for a
    /// memory-only cache `<temp dir>/jitune` (two memory-only servers on one GPU must not time
    /// each other either).
    pub fn lock_dir(&self) -> std::path::PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("jitune"))
    }

    /// Takes the tuning lock of the GPU `gpu_id` (UUID or PCI bus id), waiting for another
    /// tuner on it until `deadline`; `None` if it still holds the GPU then. When the lock file
    /// cannot be made (one warning) the guard is granted without a lock
    /// ([`GpuLockGuard::is_exclusive`] is false).
    pub fn gpu_lock(&self, gpu_id: &str, deadline: Instant) -> Option<GpuLockGuard> {
        match GpuLock::acquire(&self.lock_dir(), gpu_id, deadline) {
            Ok(g) => g,
            Err(e) => {
                self.coord_failures.note(&format!(
                    "jitune: cannot take the tuning lock of GPU {gpu_id} ({e}); tuning without it, \
                     so another tuner on this GPU may disturb the timings"
                ));
                Some(GpuLockGuard::unlocked(gpu_id))
            }
        }
    }

    /// How many lease and GPU-lock operations failed and were degraded (see the module docs).
    pub fn coordination_failures(&self) -> u64 {
        self.coord_failures.count()
    }

    fn coord_failed(&self, what: &str, key: &TuningKey, e: &crate::Error) {
        self.coord_failures.note(&format!(
            "jitune: could not {what} {} ({e}); going ahead as if this process held it",
            key.display()
        ));
    }
}
