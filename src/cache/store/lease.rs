//! Tuning leases: which process tunes a key, so that the other processes sharing the cache
//! file wait for its winner instead of tuning the same key again (and measuring each other on
//! the same GPU, issue 14).
//!
//! A lease is a row of `leases` (schema v2) per tuning key: its owner (a process, see
//! [`LeaseOwner`]), when it was taken, its last heartbeat and its expiry, in unix milliseconds.
//! Every change runs in one `BEGIN IMMEDIATE` transaction, so two processes asking at once are
//! serialised by SQLite and exactly one gets [`LeaseState::Acquired`].
//!
//! A lease binds the others until it is released, or it is stale:
//! - its owner is dead: a process of this host (same boot and pid namespace) that `/proc` no
//!   longer shows, or whose pid now names a younger process. Such a lease is free at once, so
//!   a tuner killed with SIGKILL frees its keys the moment another process asks;
//! - it expired: the holder renews it (heartbeat, [`Store::renew_lease`]) well within its
//!   time to live; an owner on another host, in another container or of unknown liveness frees
//!   its keys only this way;
//! - its expiry lies more than [`MAX_LEASE_TTL`] in the future, which no holder can have
//!   written: the clock went back (or the writer's clock is ahead), and the lease counts as
//!   expired rather than binding everyone for as long as the jump. A clock that jumps forward
//!   just expires leases early: the next process tunes the key again, which costs time but
//!   never a wrong result.
//!
//! Waiting for the holder's winner ([`Store::wait_for_entry`]) polls `PRAGMA data_version`,
//! which changes exactly when another connection commits to the file and costs no read of the
//! database (in WAL mode it reads the shared-memory index header): the entry is only read again
//! after some commit, and the lease again at most every [`LEASE_RECHECK`] to notice a holder
//! that died or expired without committing anything. With the default poll of 50 ms a waiter
//! sees a winner within about 50 ms of its commit.

use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension, Row};

use super::process::{hostname, pid_scope, Liveness, ProcessId};
use super::records::{decode_key, encode_key};
use super::{store_err, Store};
use crate::cache::clock::unix_ms;
use crate::cache::entry::Entry;
use crate::key::TuningKey;
use crate::{Error, Result};

/// The longest time to live a lease may be given. An expiry further ahead than this cannot
/// have been written by a holder and means the clock went back.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);

/// How often a waiter re-reads the lease when nothing was committed, to notice a holder that
/// died or expired without a word.
pub const LEASE_RECHECK: Duration = Duration::from_millis(500);

/// Who holds a lease: one process, named so that another process can tell whether it still
/// runs. Two owners are the same process when scope, pid and start time agree (the host name
/// is only for people).
#[derive(Clone, Debug, Eq)]
pub struct LeaseOwner {
    /// Where `pid` names one process: boot id and pid namespace (Linux), empty where unknown.
    /// Owners of another scope (another host, another container) are judged by expiry only.
    pub scope: String,
    /// The host name, for `jitune ls` and log lines.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// Process start time in clock ticks since boot (Linux), 0 where unknown; tells a reused
    /// pid from the process that wrote the row.
    pub start: i64,
}

impl PartialEq for LeaseOwner {
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope && self.pid == other.pid && self.start == other.start
    }
}

impl LeaseOwner {
    /// This process.
    pub fn current() -> LeaseOwner {
        let me = ProcessId::current();
        LeaseOwner {
            scope: pid_scope().to_string(),
            host: hostname().to_string(),
            pid: me.pid,
            start: me.start,
        }
    }

    /// Whether the owner still runs: [`Liveness::Unknown`] unless it is of this process'
    /// scope (same boot, same pid namespace) and `/proc` can tell.
    pub fn liveness(&self) -> Liveness {
        if self.scope.is_empty() || self.scope != pid_scope() {
            return Liveness::Unknown;
        }
        ProcessId {
            pid: self.pid,
            start: self.start,
        }
        .liveness()
    }
}

impl std::fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {}", self.pid, self.host)
    }
}

/// One lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The key being tuned.
    pub key: TuningKey,
    /// Who tunes it.
    pub owner: LeaseOwner,
    /// When it was taken (unix ms).
    pub acquired_at_ms: i64,
    /// The owner's last heartbeat (unix ms).
    pub renewed_at_ms: i64,
    /// When it expires unless renewed (unix ms).
    pub expires_at_ms: i64,
}

/// Why a lease no longer binds anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Its owner, a process of this host, is gone.
    OwnerDead,
    /// It was not renewed in time.
    Expired,
    /// Its expiry is further ahead than any lease can be: the clock went back.
    ClockJump,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stale::OwnerDead => "its owner is no longer running",
            Stale::Expired => "it expired without a heartbeat",
            Stale::ClockJump => "its expiry is beyond the longest lease: the clock went back",
        })
    }
}

impl Lease {
    /// Why the lease no longer binds at `now_ms`, or `None` while it does.
    pub fn stale(&self, now_ms: i64) -> Option<Stale> {
        if self.expires_at_ms > now_ms.saturating_add(MAX_LEASE_TTL.as_millis() as i64) {
            Some(Stale::ClockJump)
        } else if self.owner.liveness() == Liveness::Dead {
            Some(Stale::OwnerDead)
        } else if self.expires_at_ms <= now_ms {
            Some(Stale::Expired)
        } else {
            None
        }
    }
}

/// A `leases` row before its key columns are decoded.
struct LeaseRow {
    kernel: String,
    shape: String,
    device: i64,
    owner: LeaseOwner,
    acquired_at_ms: i64,
    renewed_at_ms: i64,
    expires_at_ms: i64,
}

impl LeaseRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<LeaseRow> {
        Ok(LeaseRow {
            kernel: r.get(0)?,
            shape: r.get(1)?,
            device: r.get(2)?,
            owner: LeaseOwner {
                scope: r.get(3)?,
                host: r.get(4)?,
                pid: r.get(5)?,
                start: r.get(6)?,
            },
            acquired_at_ms: r.get(7)?,
            renewed_at_ms: r.get(8)?,
            expires_at_ms: r.get(9)?,
        })
    }

    /// The lease, for a row read by its (known) key.
    fn with_key(self, key: TuningKey) -> Lease {
        Lease {
            key,
            owner: self.owner,
            acquired_at_ms: self.acquired_at_ms,
            renewed_at_ms: self.renewed_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// What [`Store::try_lease`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// The caller holds the lease now (it was free, or already the caller's, or stale: then
    /// `took_over` is the stale lease and why it no longer bound).
    Acquired {
        /// The stale lease this one replaced.
        took_over: Option<(Lease, Stale)>,
    },
    /// Another live process holds it.
    HeldBy {
        /// The holder.
        owner: LeaseOwner,
        /// When the lease expires unless renewed (unix ms).
        expires_at_ms: i64,
    },
}

/// How a wait for a key's winner ended.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitOutcome {
    /// The winner is in the store.
    Landed(Box<Entry>),
    /// No winner, and nobody holds a live lease on the key any more (the holder released it,
    /// died or let it expire): the caller may take the lease and tune.
    Free,
    /// The deadline passed while the holder was still tuning.
    TimedOut,
}

const LEASE_COLS: &str = "kernel_id, shape, device_hash, owner_scope, owner_host, owner_pid, \
                          owner_start, acquired_at_ms, renewed_at_ms, expires_at_ms";

fn check_ttl(ttl: Duration) -> Result<i64> {
    if ttl.is_zero() || ttl > MAX_LEASE_TTL {
        return Err(Error::InvalidArgument(format!(
            "lease time to live {ttl:?} is not in (0, {MAX_LEASE_TTL:?}]"
        )));
    }
    Ok(ttl.as_millis() as i64)
}

impl Store {
    /// Takes the tuning lease of `key` for `owner` for `ttl` unless another live process holds
    /// it. Re-entrant: the owner's own lease is renewed. A stale lease (dead owner, expired,
    /// expiry beyond [`MAX_LEASE_TTL`]) is taken over and reported in
    /// [`LeaseState::Acquired::took_over`]. One IMMEDIATE transaction.
    pub fn try_lease(
        &self,
        key: &TuningKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<LeaseState> {
        let ttl_ms = check_ttl(ttl)?;
        let (k, s, d) = encode_key(key);
        let state = self.write(|tx| {
            let now = unix_ms();
            let held = tx
                .prepare_cached(&format!(
                    "SELECT {LEASE_COLS} FROM leases WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3"
                ))
                .and_then(|mut st| st.query_row(params![k, s, d], LeaseRow::from_row).optional())
                .map_err(|e| store_err(&self.path, e))?
                .map(|row| row.with_key(*key));
            let took_over = match held {
                Some(l) if l.owner == *owner => None,
                Some(l) => match l.stale(now) {
                    Some(why) => Some((l, why)),
                    None => {
                        return Ok(LeaseState::HeldBy {
                            owner: l.owner,
                            expires_at_ms: l.expires_at_ms,
                        })
                    }
                },
                None => None,
            };
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO leases ({LEASE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)"
            ))
            .and_then(|mut st| {
                st.execute(params![
                    k,
                    s,
                    d,
                    owner.scope,
                    owner.host,
                    owner.pid,
                    owner.start,
                    now,
                    now.saturating_add(ttl_ms)
                ])
            })
            .map_err(|e| store_err(&self.path, e))?;
            Ok(LeaseState::Acquired { took_over })
        })?;
        if let LeaseState::Acquired {
            took_over: Some((old, why)),
        } = &state
        {
            let line = format!(
                "jitune: took over the tuning lease of {} from {} ({why}; it expired at unix ms {})",
                key.display(),
                old.owner,
                old.expires_at_ms
            );
            if *why == Stale::ClockJump {
                log::warn!("{line}");
            } else {
                log::info!("{line}");
            }
        }
        Ok(state)
    }

    /// The heartbeat: moves the expiry of `owner`'s lease on `key` to `ttl` from now. False
    /// when the lease is no longer `owner`'s (released, or taken over after it went stale): the
    /// caller has lost it and should stop renewing.
    pub fn renew_lease(&self, key: &TuningKey, owner: &LeaseOwner, ttl: Duration) -> Result<bool> {
        let ttl_ms = check_ttl(ttl)?;
        let (k, s, d) = encode_key(key);
        self.write(|tx| {
            let now = unix_ms();
            tx.execute(
                "UPDATE leases SET renewed_at_ms = ?1, expires_at_ms = ?2
                 WHERE kernel_id = ?3 AND shape = ?4 AND device_hash = ?5
                   AND owner_scope = ?6 AND owner_pid = ?7 AND owner_start = ?8",
                params![
                    now,
                    now.saturating_add(ttl_ms),
                    k,
                    s,
                    d,
                    owner.scope,
                    owner.pid,
                    owner.start
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| store_err(&self.path, e))
        })
    }

    /// Releases `owner`'s lease on `key`; a lease of anyone else stays. True when one was
    /// released.
    pub fn release_lease(&self, key: &TuningKey, owner: &LeaseOwner) -> Result<bool> {
        let (k, s, d) = encode_key(key);
        self.write(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3
                   AND owner_scope = ?4 AND owner_pid = ?5 AND owner_start = ?6",
                params![k, s, d, owner.scope, owner.pid, owner.start],
            )
            .map(|n| n == 1)
            .map_err(|e| store_err(&self.path, e))
        })
    }

    /// Releases every lease of `owner` (a process shutting down); returns how many.
    pub fn release_leases_of(&self, owner: &LeaseOwner) -> Result<usize> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE owner_scope = ?1 AND owner_pid = ?2 AND owner_start = ?3",
                params![owner.scope, owner.pid, owner.start],
            )
            .map_err(|e| store_err(&self.path, e))
        })
    }

    /// The lease row of `key`, stale or not.
    pub fn lease(&self, key: &TuningKey) -> Result<Option<Lease>> {
        let (k, s, d) = encode_key(key);
        let conn = self.conn.lock();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {LEASE_COLS} FROM leases WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3"
            ))
            .and_then(|mut st| st.query_row(params![k, s, d], LeaseRow::from_row).optional())
            .map_err(|e| store_err(&self.path, e))?;
        Ok(row.map(|row| row.with_key(*key)))
    }

    /// Every lease row, stale or not, sorted by key (for `jitune ls` and tests; judge each with
    /// [`Lease::stale`]). Rows with an undecodable key are skipped with a warning.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(&format!(
                "SELECT {LEASE_COLS} FROM leases ORDER BY kernel_id, shape, device_hash"
            ))
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map([], LeaseRow::from_row)
            .map_err(|e| store_err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            let row = r.map_err(|e| store_err(&self.path, e))?;
            match decode_key(&row.kernel, &row.shape, row.device) {
                Some(key) => out.push(row.with_key(key)),
                None => log::warn!(
                    "{}: skipping lease row with bad key {:?}/{:?}",
                    self.path.display(),
                    row.kernel,
                    row.shape
                ),
            }
        }
        Ok(out)
    }

    /// `PRAGMA data_version`: changes whenever another connection (another process) has
    /// committed to the file since this connection last asked; this process' own commits do
    /// not change it. Reads no page of the database.
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .lock()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| store_err(&self.path, e))
    }

    /// Waits until the winner of `key` is in the store ([`WaitOutcome::Landed`]), nobody holds
    /// a live lease on it without a winner ([`WaitOutcome::Free`]), or `deadline` passes
    /// ([`WaitOutcome::TimedOut`]). Between checks it sleeps `poll` and asks only
    /// [`Store::data_version`]; see the module docs. The lease is read before the entry, so a
    /// holder that stored its winner and then released is seen as `Landed`, never as `Free`.
    pub fn wait_for_entry(
        &self,
        key: &TuningKey,
        deadline: Instant,
        poll: Duration,
    ) -> Result<WaitOutcome> {
        let mut seen_version = None;
        let mut last_check: Option<Instant> = None;
        loop {
            let version = self.data_version()?;
            let due = last_check.is_none_or(|t| t.elapsed() >= LEASE_RECHECK);
            if seen_version != Some(version) || due {
                seen_version = Some(version);
                last_check = Some(Instant::now());
                let free = match self.lease(key)? {
                    None => true,
                    Some(l) => l.stale(unix_ms()).is_some(),
                };
                if let Some(e) = self.get(key)? {
                    return Ok(WaitOutcome::Landed(Box::new(e)));
                }
                if free {
                    return Ok(WaitOutcome::Free);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(WaitOutcome::TimedOut);
            }
            std::thread::sleep(poll.min(left));
        }
    }
}
