//! [`Remote`]: the remote tier as the cache and the tuner use it.
//!
//! It joins a transport ([`RemoteTier`]) with the record checks, the bounded wait of a miss,
//! the back-off, and the write queue, so that the caller's code reads as if the remote never
//! failed:
//!
//! - It is only called on a miss (hits are served from memory and never reach it). A lookup or
//!   lease attempt waits at most [`RemoteSettings::wait`] (20 ms by default) and otherwise says
//!   [`Lookup::Unavailable`] / [`LeaseOutcome::Unavailable`]: go on locally.
//! - After a failure the tier backs off (exponential, capped): calls fail at once without
//!   network traffic until the next probe. One warning per outage, one info line at its end.
//! - Writes ([`Remote::publish`], [`Remote::publish_failure`], [`Remote::release`]) are sent at
//!   once when the tier is up and queued when it is not (or when it fails them). Queued writes
//!   are pushed, oldest first, by a background flusher thread that exists only while the queue
//!   is non-empty: it sleeps until the back-off allows a probe, and is also woken early by any
//!   other call that finds the tier back. So winners tuned during an outage land when the
//!   server returns even if no further miss happens.
//! - Nothing here panics on what the server sends; a record that fails its checks is skipped
//!   with one log line and reported as [`Lookup::Rejected`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::{RemoteSettings, RemoteUrl};
use super::health::{Gate, Health};
use super::keys::Keys;
use super::queue::{Write, WriteQueue};
use super::record::{self, Rejection};
use super::secret::FleetKey;
use super::tier::{LeaseToken, RemoteError, RemoteTier};
use crate::cache::entry::Entry;
use crate::cache::store::{arch_of, nvrtc_of, BinaryKey, FailureRecord};
use crate::key::{DeviceFingerprint, TuningKey};

/// A remote winner that passed every check of its record.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteHit {
    /// The winner. Its config is still to be checked against the current spec's space with
    /// [`check_config`](super::check_config) before use.
    pub entry: Entry,
    /// The winner's CUBIN, present only with a fleet key and only once its MAC, its binding to
    /// kernel, config, arch and NVRTC version, and its hash (named by the entry) verified.
    pub binary: Option<Vec<u8>>,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// A verified winner (boxed: the other answers are small).
    Hit(Box<RemoteHit>),
    /// The remote has no winner for the key.
    Miss,
    /// The remote has a record for the key but it failed its checks (logged): treat as a miss.
    Rejected(Rejection),
    /// The remote did not answer within the wait, or is backing off: go on locally.
    Unavailable,
}

/// A tuning lease held in the remote tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The key it is for.
    pub key: TuningKey,
    /// Its holder's token.
    pub token: LeaseToken,
    /// How long it lives without renewal.
    pub ttl: Duration,
}

/// What a lease attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This process holds the key: tune it, renew the lease while tuning, release it after
    /// publishing the winner.
    Acquired(Lease),
    /// Another process holds it: wait for its winner (or tune locally, the caller's choice).
    Held,
    /// The remote did not answer within the wait, or is backing off.
    Unavailable,
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The server has it.
    Written,
    /// Queued: pushed when the server is back.
    Queued,
}

/// Every verified entry of the remote tier, and the records that failed their checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    /// Verified winners, sorted by key.
    pub hits: Vec<RemoteHit>,
    /// Keys whose record was rejected, and why.
    pub rejected: Vec<(String, Rejection)>,
}

/// Counters of one [`Remote`], for tests, benches and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Lookups answered with a verified winner.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Records rejected by their checks (entries, binaries, failures).
    pub rejected: u64,
    /// Calls that did not reach the server (timeout, error, back-off).
    pub unavailable: u64,
    /// Writes the server took (directly or from the queue).
    pub written: u64,
    /// Writes queued.
    pub queued: u64,
    /// Queued writes dropped because the queue was full.
    pub dropped: u64,
    /// Outages that ended. A server that came back may have come back empty (a restart
    /// without persistence): a caller that wants the fleet to keep what this process tuned
    /// before the outage re-publishes its local winners when this grows.
    pub recoveries: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    unavailable: AtomicU64,
    written: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    recoveries: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The flusher's wake-up call: shared with the thread, which must not keep the [`Inner`]
/// alive while it sleeps.
#[derive(Default)]
struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Default)]
struct SignalState {
    /// A flusher thread exists.
    running: bool,
    /// Something changed (the tier is back, new writes): look again now.
    kicked: bool,
    /// The [`Remote`] is gone: exit.
    shutdown: bool,
}

struct Inner {
    tier: Arc<dyn RemoteTier>,
    keys: Keys,
    fleet: Option<FleetKey>,
    settings: RemoteSettings,
    health: Health,
    queue: Mutex<WriteQueue>,
    /// Held while a write is sent (directly, by the flusher or by `flush`), so writes reach the
    /// server in the order they were made: a winner before the release of its lease, a newer
    /// winner after an older one of the same key.
    send_lock: Mutex<()>,
    /// The queue dropped writes in this outage (warned once).
    drop_warned: Mutex<bool>,
    signal: Arc<Signal>,
    counters: Counters,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut s = self.signal.state.lock();
        s.shutdown = true;
        self.signal.cv.notify_all();
    }
}

/// The remote tier with verification, bounded waits, back-off and a write queue. Cheap to
/// clone (shared state).
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("tier", &self.inner.tier.describe())
            .field("fleet_key", &self.inner.fleet.is_some())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl Remote {
    /// The remote tier over `tier`. With `fleet`, every record written carries a MAC and
    /// binaries travel; every record read must carry a valid MAC.
    pub fn new(
        tier: Arc<dyn RemoteTier>,
        settings: RemoteSettings,
        fleet: Option<FleetKey>,
    ) -> Remote {
        Remote {
            inner: Arc::new(Inner {
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
            }),
        }
    }

    /// The Redis tier at `url`, with the fleet key of `$JITUNE_REMOTE_KEY`. Connects lazily:
    /// this does no network I/O, so it never fails for an unreachable server. Without the
    /// `redis` cargo feature, an error saying so.
    pub fn open(url: &RemoteUrl, settings: RemoteSettings) -> Result<Remote, RemoteError> {
        let tier = super::open_tier(url)?;
        Ok(Remote::new(tier, settings, FleetKey::from_env()))
    }

    /// Where the tier lives (no password).
    pub fn describe(&self) -> String {
        self.inner.tier.describe()
    }

    /// Whether a fleet key is configured (binaries travel, records are authenticated).
    pub fn has_fleet_key(&self) -> bool {
        self.inner.fleet.is_some()
    }

    /// The settings in force.
    pub fn settings(&self) -> &RemoteSettings {
        &self.inner.settings
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Whether the tier is in an outage (backing off).
    pub fn is_down(&self) -> bool {
        self.inner.health.is_down()
    }

    /// The counters so far.
    pub fn stats(&self) -> RemoteStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            hits: l(&c.hits),
            misses: l(&c.misses),
            rejected: l(&c.rejected),
            unavailable: l(&c.unavailable),
            written: l(&c.written),
            queued: l(&c.queued),
            dropped: l(&c.dropped),
            recoveries: l(&c.recoveries),
        }
    }

    /// Writes waiting for the server.
    pub fn pending_writes(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Runs `call` if the back-off allows, with a deadline `budget` from now, and books its
    /// outcome with the back-off state. `None`: skipped or failed (counted, logged once per
    /// outage).
    fn call<T>(
        &self,
        budget: Duration,
        call: impl FnOnce(&dyn RemoteTier, Instant) -> Result<T, RemoteError>,
    ) -> Option<T> {
        self.inner.call(budget, call)
    }

    /// The winner of `key` from the remote tier, waiting at most [`RemoteSettings::wait`]
    /// for the entry and its binary together.
    pub fn lookup(&self, key: &TuningKey) -> Lookup {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.settings.wait;
        let name = inner.keys.entry(key);
        let bytes = match self.call(inner.settings.wait, |t, d| t.get(&name, d)) {
            None => return Lookup::Unavailable,
            Some(None) => {
                bump(&inner.counters.misses);
                return Lookup::Miss;
            }
            Some(Some(b)) => b,
        };
        let rec = match record::decode_entry(&bytes, key, inner.fleet.as_ref()) {
            Ok(r) => r,
            Err(why) => return Lookup::Rejected(inner.reject(&name, why)),
        };
        let binary = match (rec.binary_hash, &inner.fleet) {
            (Some(hash), Some(fleet)) => self.fetch_binary(&rec.entry, hash, fleet, deadline),
            _ => None,
        };
        bump(&inner.counters.hits);
        Lookup::Hit(Box::new(RemoteHit {
            entry: rec.entry,
            binary,
        }))
    }

    /// The binary `hash` of `entry`'s winner, verified, or `None` (logged when rejected).
    fn fetch_binary(
        &self,
        entry: &Entry,
        hash: [u8; 32],
        fleet: &FleetKey,
        deadline: Instant,
    ) -> Option<Vec<u8>> {
        with_binary_key(entry, |bkey| {
            self.fetch_binary_of(bkey, hash, fleet, deadline)
        })
    }

    fn fetch_binary_of(
        &self,
        bkey: &BinaryKey<'_>,
        hash: [u8; 32],
        fleet: &FleetKey,
        deadline: Instant,
    ) -> Option<Vec<u8>> {
        let inner = &*self.inner;
        let name = inner.keys.binary(bkey);
        let budget = deadline.saturating_duration_since(Instant::now());
        if budget.is_zero() {
            // The wait is spent: the config is compiled locally instead. Not the server's
            // fault, so not a failure for the back-off.
            return None;
        }
        let bytes = self.call(budget, |t, d| t.get(&name, d))??;
        match record::decode_binary(&bytes, bkey, Some(fleet)) {
            Ok(cubin) if *blake3::hash(&cubin).as_bytes() == hash => Some(cubin),
            Ok(_) => {
                inner.reject(
                    &name,
                    Rejection::Invalid("binary is not the one the entry names".into()),
                );
                None
            }
            Err(why) => {
                inner.reject(&name, why);
                None
            }
        }
    }

    /// Failed configs of `key` known to the fleet (records that fail their checks are skipped
    /// and logged). Waits at most [`RemoteSettings::io_timeout`]; empty when unavailable.
    pub fn failures(&self, key: &TuningKey) -> Vec<FailureRecord> {
        let inner = &*self.inner;
        let name = inner.keys.failures(key);
        match self.call(inner.settings.io_timeout, |t, d| t.fields(&name, d)) {
            Some(fields) => inner.decode_failures(&name, key, fields).0,
            None => Vec::new(),
        }
    }

    /// Failed configs of `key`, verified as [`Remote::failures`] verifies them, with the
    /// records that failed their checks (name and reason), without the back-off: for one-shot
    /// commands (`jitune pull`, `jitune export --remote`) that want the error.
    #[allow(clippy::type_complexity)]
    pub fn fetch_failures(
        &self,
        key: &TuningKey,
        timeout: Duration,
    ) -> Result<(Vec<FailureRecord>, Vec<(String, Rejection)>), RemoteError> {
        let inner = &*self.inner;
        let name = inner.keys.failures(key);
        let fields = inner.tier.fields(&name, Instant::now() + timeout)?;
        Ok(inner.decode_failures(&name, key, fields))
    }

    /// Tries to take the tuning lease of `key` for `ttl`, waiting at most
    /// [`RemoteSettings::wait`].
    pub fn try_lease(&self, key: &TuningKey, ttl: Duration) -> LeaseOutcome {
        let token = LeaseToken::new();
        let name = self.inner.keys.lease(key);
        match self.call(self.inner.settings.wait, |t, d| {
            t.try_lease(&name, &token, ttl, d)
        }) {
            Some(true) => LeaseOutcome::Acquired(Lease {
                key: *key,
                token,
                ttl,
            }),
            Some(false) => LeaseOutcome::Held,
            None => LeaseOutcome::Unavailable,
        }
    }

    /// Extends `lease` by its ttl from now. `Ok(false)`: it was lost (expired, taken over);
    /// `Err`: the server could not be asked (the lease may still be held; retry, and keep
    /// tuning: the winner will be published either way).
    pub fn renew(&self, lease: &Lease) -> Result<bool, RemoteError> {
        let name = self.inner.keys.lease(&lease.key);
        self.inner
            .call_result(self.inner.settings.io_timeout, |t, d| {
                t.renew(&name, &lease.token, lease.ttl, d)
            })
    }

    /// Gives `lease` up (compare-and-delete: only if still held by it). Queued, after any
    /// queued writes, when the server is away; the lease expires by itself in any case.
    pub fn release(&self, lease: Lease) -> Published {
        let key = self.inner.keys.lease(&lease.key);
        self.inner.write(vec![Write::Release {
            key,
            token: lease.token,
        }])
    }

    /// Writes a tuned winner through to the remote tier (see the module docs for when it is
    /// queued). `binary`, the winner's CUBIN, is sent only with a fleet key, before the entry
    /// that names it, and with its MAC.
    pub fn publish(&self, entry: &Entry, binary: Option<&[u8]>) -> Published {
        self.inner.write(self.inner.entry_writes(entry, binary))
    }

    /// Writes a failure record through (measured on `device`, whose hash is the key's).
    pub fn publish_failure(&self, rec: &FailureRecord, device: &DeviceFingerprint) -> Published {
        self.inner
            .write(vec![self.inner.failure_write(rec, device)])
    }

    /// Writes a failure record now, without the back-off or the queue (for `jitune push`): the
    /// error says why it did not land.
    pub fn push_failure(
        &self,
        rec: &FailureRecord,
        device: &DeviceFingerprint,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let w = self.inner.failure_write(rec, device);
        send(&*self.inner.tier, &w, Instant::now() + timeout)
    }

    /// Writes a winner now, without the back-off or the queue (for `jitune push`): the error
    /// says why it did not land.
    pub fn push(
        &self,
        entry: &Entry,
        binary: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let deadline = Instant::now() + timeout;
        for w in self.inner.entry_writes(entry, binary) {
            send(&*self.inner.tier, &w, deadline)?;
        }
        Ok(())
    }

    /// Pushes queued writes now, from this thread, for at most `timeout` (at exit, in tests).
    /// Returns how many are still queued.
    pub fn flush(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let inner = &*self.inner;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let sending = inner.send_lock.lock();
            let Some(w) = inner.queue.lock().pop() else {
                break;
            };
            let budget = inner.settings.io_timeout.min(deadline - now);
            let res = inner.call_result(budget, |t, d| send(t, &w, d));
            if res.is_err() {
                inner.queue.lock().requeue(w);
            }
            drop(sending);
            match res {
                Ok(()) => bump(&inner.counters.written),
                Err(_) => {
                    std::thread::sleep(
                        inner
                            .health
                            .retry_at()
                            .saturating_duration_since(Instant::now())
                            .min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
        self.pending_writes()
    }

    /// Every winner in the remote tier (for `jitune ls --remote` and `pull`), verified like a
    /// lookup; with `binaries`, each hit's binary too (fleet key only). The whole listing has
    /// `timeout`; it does not use the back-off (a one-shot command wants the error).
    pub fn list(&self, timeout: Duration, binaries: bool) -> Result<Listing, RemoteError> {
        let inner = &*self.inner;
        let deadline = Instant::now() + timeout;
        let tier = &*inner.tier;
        let mut names = tier.scan(&inner.keys.entry_prefix(), deadline)?;
        names.sort();
        names.dedup();
        let mut out = Listing::default();
        let mut hits = BTreeMap::new();
        for name in names {
            let Some(key) = inner.keys.parse_entry(&name) else {
                out.rejected.push((
                    name.clone(),
                    Rejection::Malformed("not an entry key of this layout".into()),
                ));
                continue;
            };
            let Some(bytes) = tier.get(&name, deadline)? else {
                continue; // deleted since the scan
            };
            match record::decode_entry(&bytes, &key, inner.fleet.as_ref()) {
                Ok(rec) => {
                    let binary = match (binaries, rec.binary_hash, &inner.fleet) {
                        (true, Some(h), Some(f)) => self.fetch_binary(&rec.entry, h, f, deadline),
                        _ => None,
                    };
                    hits.insert(
                        key,
                        RemoteHit {
                            entry: rec.entry,
                            binary,
                        },
                    );
                }
                Err(why) => {
                    inner.reject(&name, why.clone());
                    out.rejected.push((name, why));
                }
            }
        }
        out.hits = hits.into_values().collect();
        Ok(out)
    }
}

/// Runs `f` on the binary key of `entry`'s winner (its toolchain from the fingerprint).
fn with_binary_key<R>(entry: &Entry, f: impl FnOnce(&BinaryKey<'_>) -> R) -> R {
    let (arch, nvrtc) = (arch_of(&entry.device), nvrtc_of(&entry.device));
    f(&BinaryKey {
        kernel: entry.key.kernel,
        config: &entry.config,
        arch: &arch,
        nvrtc: &nvrtc,
    })
}

/// Sends one write.
fn send(tier: &dyn RemoteTier, w: &Write, deadline: Instant) -> Result<(), RemoteError> {
    match w {
        Write::Put { key, value } => tier.put(key, value, deadline),
        Write::Field { key, field, value } => tier.put_field(key, field, value, deadline),
        Write::Release { key, token } => tier.release(key, token, deadline).map(|_| ()),
    }
}

impl Inner {
    fn call<T>(
        &self,
        budget: Duration,
        call: impl FnOnce(&dyn RemoteTier, Instant) -> Result<T, RemoteError>,
    ) -> Option<T> {
        self.call_result(budget, call).ok()
    }

    fn call_result<T>(
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
    fn succeeded(&self) {
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

    /// Counts and logs a rejected record; returns the reason.
    fn reject(&self, name: &str, why: Rejection) -> Rejection {
        bump(&self.counters.rejected);
        log::warn!(
            "jitune: remote cache {}: skipping {name}: {why}",
            self.tier.describe()
        );
        why
    }

    /// The write that publishes a failure record (measured on `device`).
    fn failure_write(&self, rec: &FailureRecord, device: &DeviceFingerprint) -> Write {
        Write::Field {
            key: self.keys.failures(&rec.key),
            field: rec.config.clone(),
            value: record::encode_failure(rec, device, self.fleet.as_ref()),
        }
    }

    /// The failure records of the map `name` (of `key`) that pass their checks, and those that
    /// did not (each logged), with why.
    #[allow(clippy::type_complexity)]
    fn decode_failures(
        &self,
        name: &str,
        key: &TuningKey,
        fields: Vec<(String, Vec<u8>)>,
    ) -> (Vec<FailureRecord>, Vec<(String, Rejection)>) {
        let mut ok = Vec::new();
        let mut rejected = Vec::new();
        for (config, bytes) in fields {
            match record::decode_failure(&bytes, key, &config, self.fleet.as_ref()) {
                Ok(f) => ok.push(f),
                Err(why) => {
                    let what = format!("{name} [{config}]");
                    let why = self.reject(&what, why);
                    rejected.push((what, why));
                }
            }
        }
        (ok, rejected)
    }

    /// The writes that publish `entry` (and its binary, with a fleet key), binary first.
    fn entry_writes(&self, entry: &Entry, binary: Option<&[u8]>) -> Vec<Write> {
        let mut writes = Vec::with_capacity(2);
        let mut hash = None;
        if let (Some(cubin), Some(fleet)) = (binary, &self.fleet) {
            hash = Some(*blake3::hash(cubin).as_bytes());
            writes.push(with_binary_key(entry, |bkey| Write::Put {
                key: self.keys.binary(bkey),
                value: record::encode_binary(bkey, cubin, fleet),
            }));
        }
        writes.push(Write::Put {
            key: self.keys.entry(&entry.key),
            value: record::encode_entry(entry, hash, self.fleet.as_ref()),
        });
        writes
    }

    /// Sends `writes` in order now if the tier is up and nothing is queued before them;
    /// otherwise (or from the first that fails) queues them and makes sure a flusher runs.
    fn write(self: &Arc<Self>, writes: Vec<Write>) -> Published {
        let mut rest = writes.into_iter().peekable();
        let sending = self.send_lock.lock();
        if self.queue.lock().is_empty() {
            while let Some(w) = rest.peek() {
                let ok = self
                    .call_result(self.settings.io_timeout, |t, d| send(t, w, d))
                    .is_ok();
                if !ok {
                    break;
                }
                bump(&self.counters.written);
                rest.next();
            }
        }
        let mut any = false;
        {
            let mut q = self.queue.lock();
            for w in rest {
                any = true;
                bump(&self.counters.queued);
                let dropped = q.push(w);
                if dropped > 0 {
                    self.counters
                        .dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    let mut warned = self.drop_warned.lock();
                    if !*warned {
                        *warned = true;
                        log::warn!(
                            "jitune: remote cache {}: write queue full ({} writes); dropping the oldest (they stay in the local cache)",
                            self.tier.describe(),
                            self.settings.queue_capacity
                        );
                    }
                }
            }
        }
        // Released only now: a write made meanwhile by another thread goes after these.
        drop(sending);
        if !any {
            return Published::Written;
        }
        self.ensure_flusher();
        Published::Queued
    }

    /// Starts the flusher thread unless one runs; wakes it either way.
    fn ensure_flusher(self: &Arc<Self>) {
        let mut s = self.signal.state.lock();
        s.kicked = true;
        self.signal.cv.notify_all();
        if s.running || s.shutdown {
            return;
        }
        s.running = true;
        drop(s);
        let weak = Arc::downgrade(self);
        let signal = Arc::clone(&self.signal);
        let spawned = std::thread::Builder::new()
            .name("jitune-remote-flush".into())
            .spawn(move || flusher(weak, signal));
        if let Err(e) = spawned {
            // Writes stay queued; the next write or `flush` tries again.
            log::warn!("jitune: cannot start the remote cache flusher thread: {e}");
            self.signal.state.lock().running = false;
        }
    }
}

/// The flusher thread: pushes queued writes when the back-off allows, sleeps otherwise, and
/// exits when the queue is empty or the [`Remote`] is gone.
fn flusher(weak: Weak<Inner>, signal: Arc<Signal>) {
    loop {
        let sleep_until = {
            let Some(inner) = weak.upgrade() else {
                break;
            };
            let sending = inner.send_lock.lock();
            let mut q = inner.queue.lock();
            if q.is_empty() {
                // Decided under the queue lock: a writer that queues after this sees
                // `running == false` and starts a new flusher.
                signal.state.lock().running = false;
                return;
            }
            match inner.health.gate() {
                Gate::Skip => Some(inner.health.retry_at()),
                Gate::Go | Gate::Probe => {
                    let Some(w) = q.pop() else {
                        continue;
                    };
                    drop(q);
                    let res = send(&*inner.tier, &w, Instant::now() + inner.settings.io_timeout);
                    if res.is_err() {
                        inner.queue.lock().requeue(w);
                    }
                    drop(sending);
                    match res {
                        Ok(()) => {
                            bump(&inner.counters.written);
                            inner.succeeded();
                            None
                        }
                        Err(e) => {
                            bump(&inner.counters.unavailable);
                            inner.health.failure(&inner.tier.describe(), &e.to_string());
                            Some(inner.health.retry_at())
                        }
                    }
                }
            }
        };
        if let Some(until) = sleep_until {
            let mut s = signal.state.lock();
            if s.shutdown {
                break;
            }
            if !s.kicked {
                let _ = signal.cv.wait_until(&mut s, until);
            }
            s.kicked = false;
            if s.shutdown {
                break;
            }
        }
    }
    signal.state.lock().running = false;
}
