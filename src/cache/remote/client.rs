//! [`Remote`]: the remote tier as the cache and the tuner use it, and its read side: lookups,
//! listings, failure records and tuning leases.
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
//!   once when the tier is up and queued when it is not (or when it fails them); a flusher
//!   thread pushes the queue when the tier is back. They live in [`super::writer`].
//! - Nothing here panics on what the server sends; a record that fails its checks is skipped
//!   with one log line and reported as [`Lookup::Rejected`].
//!
//! The state every clone shares and the gate every call goes through are in [`super::link`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{RemoteSettings, RemoteUrl};
use super::keys::Keys;
use super::link::{bump, Inner};
use super::record::{self, Rejection};
use super::secret::FleetKey;
use super::tier::{LeaseToken, RemoteError, RemoteTier};
use crate::cache::entry::Entry;
use crate::cache::store::{with_binary_key, BinaryKey, FailureRecord};
use crate::key::TuningKey;

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

/// The remote tier with verification, bounded waits, back-off and a write queue. Cheap to
/// clone (shared state).
#[derive(Clone)]
pub struct Remote {
    pub(super) inner: Arc<Inner>,
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
            inner: Arc::new(Inner::new(tier, settings, fleet)),
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
            Err(why) => return Lookup::Rejected(self.reject(&name, why)),
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
                self.reject(
                    &name,
                    Rejection::Invalid("binary is not the one the entry names".into()),
                );
                None
            }
            Err(why) => {
                self.reject(&name, why);
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
            Some(fields) => self.decode_failures(&name, key, fields).0,
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
        Ok(self.decode_failures(&name, key, fields))
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
                    self.reject(&name, why.clone());
                    out.rejected.push((name, why));
                }
            }
        }
        out.hits = hits.into_values().collect();
        Ok(out)
    }

    /// Counts and logs a rejected record; returns the reason.
    fn reject(&self, name: &str, why: Rejection) -> Rejection {
        bump(&self.inner.counters.rejected);
        log::warn!(
            "jitune: remote cache {}: skipping {name}: {why}",
            self.inner.tier.describe()
        );
        why
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
            match record::decode_failure(&bytes, key, &config, self.inner.fleet.as_ref()) {
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
}
