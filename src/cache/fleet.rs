//! The remote tier in the cache (issue 15): a fleet of hosts shares winners, failure records and
//! tuning leases through [`Remote`] (Redis), behind the same calls the tuner's miss path makes
//! for processes of one host.
//!
//! - Lookups ([`Cache::lookup_with`]) go memory → user store → remote → shipped layers; a remote
//!   winner must pass the caller's check (its config is valid in the current spec's space)
//!   before it is used, and is then written into the user store (a restart without Redis still
//!   hits), its binary only when it came with a valid MAC (a fleet key is set). Launch hits
//!   never come here.
//! - Winners ([`Cache::put`]) and failure records are written through; the winner's binary goes
//!   with it when a fleet key is set.
//! - A key's fleet-wide lease ([`Cache::remote_lease`]) is taken after the host's own lease, so
//!   one process per host asks Redis; it is renewed while tuning and released after the
//!   winner is published (the remote client sends writes in order).
//! - Outages never fail anything: every call is bounded, the client backs off and queues
//!   writes. A sync thread ([`Cache::start_remote_sync`]) notices when Redis came back without
//!   this host's winners (it restarted empty) and publishes them again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::remote::{Lease, LeaseOutcome, Lookup, Remote};
use super::renewal::Renewal;
use super::store::{with_binary_key, FailureRecord};
use super::{unix_now, Cache, Entry};
use crate::failure::FailureClass;
use crate::key::{DeviceFingerprint, TuningKey};
use crate::Result;

/// What [`Cache::remote_lease`] found.
pub enum RemoteTurn {
    /// This process tunes the key for the fleet (`None`: there is no remote tier, or it did not
    /// answer: tune locally, as a host of one).
    Mine(Option<RemoteLeaseGuard>),
    /// A process on another host tunes it: wait for its winner.
    Elsewhere,
}

/// A fleet-wide lease: renewed every third of its time to live until dropped, then released.
pub struct RemoteLeaseGuard {
    remote: Remote,
    lease: Option<Lease>,
    renewal: Option<Renewal>,
}

impl Drop for RemoteLeaseGuard {
    fn drop(&mut self) {
        // The renewal stops (its thread joined) before the lease goes.
        drop(self.renewal.take());
        if let Some(l) = self.lease.take() {
            // After the winner's write in the client's queue: a waiter that sees the lease
            // go finds the winner there.
            self.remote.release(l);
        }
    }
}

impl Cache {
    /// The remote tier, if one is configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Tells the cache what a device hash stands for (failure records travel with it).
    pub fn note_device(&self, device: &DeviceFingerprint) {
        self.devices
            .entry(device.hash64())
            .or_insert_with(|| device.clone());
    }

    /// The entry for `key`: memory, the user store, the remote tier (its winner only if
    /// `accept` takes it, then written into the user store), the shipped layers.
    pub fn lookup_with(
        &self,
        key: &TuningKey,
        accept: &dyn Fn(&Entry) -> bool,
    ) -> Result<Option<Arc<Entry>>> {
        if let Some(e) = self.lookup_local(key)? {
            return Ok(Some(e));
        }
        if let Some(e) = self.remote_winner(key, accept) {
            return Ok(Some(e));
        }
        self.lookup_shipped(key)
    }

    /// The remote tier's winner of `key` when it passes `accept`: remembered in memory and
    /// written into the user store (with its verified binary).
    fn remote_winner(
        &self,
        key: &TuningKey,
        accept: &dyn Fn(&Entry) -> bool,
    ) -> Option<Arc<Entry>> {
        let remote = self.remote.as_ref()?;
        let hit = match remote.lookup(key) {
            Lookup::Hit(h) => h,
            Lookup::Miss | Lookup::Rejected(_) | Lookup::Unavailable => return None,
        };
        if hit.entry.key != *key || !accept(&hit.entry) {
            log::warn!(
                "jitune: the remote tier's winner of {} (config `{}`) is not valid for this \
                 spec here; skipped",
                key.display(),
                hit.entry.config
            );
            return None;
        }
        if let Some(bin) = &hit.binary {
            self.write_user("a binary from the remote tier", |s| {
                with_binary_key(&hit.entry, |bk| s.put_binary(bk, bin))
            });
        }
        self.write_user("a winner from the remote tier", |s| s.put(&hit.entry));
        let e = self
            .memory
            .entry(*key)
            .or_insert_with(|| Arc::new(hit.entry))
            .clone();
        Some(e)
    }

    /// Writes a winner through to the remote tier, with its binary when a fleet key is set.
    pub(super) fn publish_entry(&self, entry: &Entry) {
        let Some(remote) = &self.remote else { return };
        self.note_device(&entry.device);
        let binary = if remote.has_fleet_key() {
            with_binary_key(entry, |bk| self.get_binary(bk))
                .ok()
                .flatten()
        } else {
            None
        };
        remote.publish(entry, binary.as_deref());
        *self.canary.lock() = Some(entry.key);
    }

    /// Writes a failure record through (when the device behind its key is known).
    pub(super) fn publish_failure(
        &self,
        key: &TuningKey,
        config: &str,
        class: FailureClass,
        message: &str,
    ) {
        let Some(remote) = &self.remote else { return };
        let Some(device) = self.devices.get(&key.device).map(|d| d.clone()) else {
            return;
        };
        let rec = FailureRecord {
            key: *key,
            config: config.to_string(),
            class,
            message: message.to_string(),
            at: unix_now(),
        };
        remote.publish_failure(&rec, &device);
    }

    /// Failure records other hosts published for `key` (empty without a remote tier).
    pub(super) fn remote_failures(&self, key: &TuningKey) -> Vec<FailureRecord> {
        self.remote
            .as_ref()
            .map(|r| r.failures(key))
            .unwrap_or_default()
    }

    /// Takes `key`'s fleet-wide lease (see the module docs).
    pub fn remote_lease(&self, key: &TuningKey, ttl: Duration) -> RemoteTurn {
        let Some(remote) = &self.remote else {
            return RemoteTurn::Mine(None);
        };
        let lease = match remote.try_lease(key, ttl) {
            LeaseOutcome::Acquired(l) => l,
            LeaseOutcome::Held => return RemoteTurn::Elsewhere,
            LeaseOutcome::Unavailable => return RemoteTurn::Mine(None),
        };
        let (r2, l2) = (remote.clone(), lease.clone());
        let every = (ttl / 3).max(Duration::from_millis(10));
        // Err: the tier is unreachable now, try again next period; Ok(false): lost (expired,
        // taken over): the winner is published anyway.
        let renewal = Renewal::start("jitune-remote-lease", every, move || {
            !matches!(r2.renew(&l2), Ok(false))
        })
        .ok();
        RemoteTurn::Mine(Some(RemoteLeaseGuard {
            remote: remote.clone(),
            lease: Some(lease),
            renewal,
        }))
    }

    /// Starts the thread that publishes this host's winners again when the remote tier came
    /// back without them (see the module docs). It holds the cache weakly and ends with it.
    pub fn start_remote_sync(self: &Arc<Self>) {
        if self.remote.is_none() || self.sync_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Cache> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("jitune-remote-sync".into())
            .spawn(move || remote_sync(weak));
    }

    /// This host's winners of the devices it knows, published again (after the remote tier
    /// lost them).
    fn republish(&self) -> usize {
        let Some(store) = &self.user else { return 0 };
        let Ok(entries) = store.entries() else {
            return 0;
        };
        let mut n = 0;
        for e in entries
            .iter()
            .filter(|e| self.devices.contains_key(&e.key.device))
        {
            self.publish_entry(e);
            n += 1;
        }
        n
    }
}

/// How often the sync thread checks the remote tier for this host's last published winner.
const SYNC_EVERY: Duration = Duration::from_secs(2);

fn remote_sync(cache: Weak<Cache>) {
    let mut last_recoveries = None;
    loop {
        std::thread::sleep(SYNC_EVERY);
        let Some(cache) = cache.upgrade() else { return };
        let Some(remote) = cache.remote.clone() else {
            return;
        };
        let recoveries = remote.stats().recoveries;
        let came_back = last_recoveries.is_some_and(|r| r != recoveries);
        last_recoveries = Some(recoveries);
        // The canary: the last winner this cache published. Missing from a remote that
        // answers: it lost this host's winners (restarted empty).
        let canary = *cache.canary.lock();
        let lost = match canary {
            Some(key) => matches!(remote.lookup(&key), Lookup::Miss),
            None => false,
        };
        if came_back || lost {
            let n = cache.republish();
            if n > 0 {
                log::info!(
                    "jitune: published {n} winner(s) again to {} (it {})",
                    remote.describe(),
                    if lost { "had lost them" } else { "came back" }
                );
            }
        }
    }
}
