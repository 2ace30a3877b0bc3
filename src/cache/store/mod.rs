//! The SQLite store behind the cache: tuned entries, compiled binaries, failed configs,
//! in-flight markers and tuning leases, in one file.
//!
//! A user cache is opened read-write in WAL mode and may be shared by many processes at once:
//! every write runs in a `BEGIN IMMEDIATE` transaction (so writers queue on the busy timeout
//! instead of failing mid-transaction on a lock upgrade), and the few lock waits SQLite's busy
//! handler does not cover (switching a fresh file to WAL, a stale WAL snapshot) are retried
//! with a jittered backoff within the same bound; a write that still fails returns an error,
//! which the [`Cache`](super::Cache) turns into one warning. Opening checks the file in one
//! read snapshot, so a file another process is creating is never mistaken for a foreign one.
//! Shipped caches are opened read-only and immutable, so using them can never change a byte of
//! the file. Corrupt files are moved aside, files from a newer jitune are only read: a cache
//! must never stop a program from running, and must never destroy data that someone else may
//! still want.
//!
//! Binaries (`binaries.rs`, schema v3) carry their size and last use, so a user store keeps
//! its winners' CUBINs and at most a capped number of bytes of the rest, least recently used
//! dropped first.
//!
//! Tuning leases ([`Store::try_lease`], schema v2) let processes sharing the file tune each key
//! once: a row per key names its owner (pid, start time and pid scope: boot id + pid
//! namespace), its heartbeat and its expiry. A lease binds the others until released, unless it
//! is stale: its owner is a dead process of this scope (free at once, checked through `/proc`),
//! it expired (owners elsewhere or of unknown liveness free their keys only so), or its expiry
//! lies more than [`MAX_LEASE_TTL`] ahead (the clock went back). [`Store::wait_for_entry`]
//! waits for the holder's winner by polling `PRAGMA data_version`, which changes when another
//! connection commits and reads no database page.

mod binaries;
mod lease;
mod open;
mod process;
mod records;
mod retry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::failure::FailureClass;
use crate::key::{KernelId, TuningKey};
use crate::{Error, Result};

use super::clock::unix_now;
use super::entry::Entry;

pub use super::clock::unix_ms;
pub use binaries::{parse_byte_size, Evicted, DEFAULT_BINARY_CAP, TOUCH_EVERY, TOUCH_WAIT};
pub use lease::{Lease, LeaseOwner, LeaseState, Stale, WaitOutcome, LEASE_RECHECK, MAX_LEASE_TTL};
pub use open::SCHEMA_VERSION;
pub use process::Liveness;
use process::ProcessId;
pub use records::{
    arch_of, nvrtc_of, with_binary_key, Access, BinaryKey, BinaryRecord, FailureRecord, OnConflict,
};
use records::{decode_key, encode_key, RawEntry, ENTRY_COLS, ENTRY_PARAMS};
pub(crate) use retry::is_busy;
use retry::{is_busy_error, Backoff};

/// How long a writer waits for another process' transaction before giving up. Tuning writes are
/// tiny and rare, so a long wait only ever happens under heavy contention, where waiting is right.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A jitune cache file.
///
/// ```no_run
/// use jitune::cache::store::Store;
/// let store = Store::open_rw("/tmp/jitune-cache.sqlite")?;
/// println!("{} entries", store.entry_count()?);
/// # Ok::<(), jitune::Error>(())
/// ```
pub struct Store {
    // rusqlite connections are `Send` but not `Sync`; one mutex per store is plenty since the hot
    // path never reaches the store (the memory tier answers it).
    conn: Mutex<Connection>,
    path: PathBuf,
    access: Access,
    version: i64,
    /// Bytes of non-winners' binaries kept (see [`Store::set_binary_cap`]); `None`: no cap.
    binary_cap: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("access", &self.access)
            .field("version", &self.version)
            .finish()
    }
}

/// A SQLite error about the file at `path`.
fn store_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::sqlite(path.display().to_string(), e)
}

/// A store problem SQLite did not report, about the file at `path`.
fn store_msg(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::store(format!("{}: {msg}", path.display()))
}

impl Store {
    /// The file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the store was opened.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether writes are possible.
    pub fn is_writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> i64 {
        self.version
    }

    fn check_writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(store_msg(&self.path, "opened read-only")),
            Access::NewerSchema => Err(Error::NewerSchema {
                path: self.path.clone(),
                found: self.version,
                supported: SCHEMA_VERSION,
            }),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a
    /// concurrent writer waits on the busy timeout instead of failing with a deadlock on upgrade.
    /// A transaction that still meets a lock (`SQLITE_BUSY` where SQLite's busy handler does not
    /// wait, such as a stale WAL snapshot) is rolled back and run again after a jittered backoff,
    /// for at most [`BUSY_TIMEOUT`] in all; then the busy error is returned (the
    /// [`Cache`](super::Cache) turns it into one warning). `f` may therefore run more than once
    /// and must only touch the transaction.
    fn write<T>(&self, mut f: impl FnMut(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let mut conn = self.conn.lock();
        let mut backoff = Backoff::new(BUSY_TIMEOUT);
        let out = loop {
            let attempt = (|| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| store_err(&self.path, e))?;
                let out = f(&tx)?;
                tx.commit().map_err(|e| store_err(&self.path, e))?;
                Ok(out)
            })();
            match attempt {
                Err(e) if is_busy_error(&e) => {
                    if !backoff.wait() {
                        break Err(e);
                    }
                    // The busy handler waits no longer than the retries may.
                    let _ = conn.busy_timeout(backoff.remaining().max(Duration::from_millis(1)));
                }
                r => break r,
            }
        };
        if backoff.retries > 0 {
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
            log::debug!(
                "{}: write retried {} times after SQLITE_BUSY ({})",
                self.path.display(),
                backoff.retries,
                if out.is_ok() {
                    "then succeeded"
                } else {
                    "gave up"
                }
            );
        }
        out
    }

    /// The entry stored for `key`.
    pub fn get(&self, key: &TuningKey) -> Result<Option<Entry>> {
        let k = encode_key(key);
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached(&format!("SELECT {ENTRY_COLS} FROM entries WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3"))
            .map_err(|e| store_err(&self.path, e))?;
        let raw = st
            .query_row(params![k.0, k.1, k.2], RawEntry::from_row)
            .optional()
            .map_err(|e| store_err(&self.path, e))?;
        raw.map(|r| r.into_entry(&self.path)).transpose()
    }

    /// Stores `entry`, replacing the one with the same key.
    pub fn put(&self, entry: &Entry) -> Result<()> {
        self.put_entries(std::slice::from_ref(entry), OnConflict::Replace)
            .map(|_| ())
    }

    /// Stores `entries` in one transaction; returns how many were written (with
    /// [`OnConflict::KeepFaster`], slower duplicates are not).
    pub fn put_entries(&self, entries: &[Entry], on_conflict: OnConflict) -> Result<usize> {
        for e in entries {
            e.validate()?;
        }
        self.write(|tx| {
            let sql = match on_conflict {
                OnConflict::Replace => format!("INSERT OR REPLACE INTO entries ({ENTRY_COLS}) VALUES ({ENTRY_PARAMS})"),
                OnConflict::KeepFaster => format!(
                    "INSERT INTO entries ({ENTRY_COLS}) VALUES ({ENTRY_PARAMS})
                     ON CONFLICT (kernel_id, shape, device_hash) DO UPDATE SET
                       device = excluded.device, kernel_name = excluded.kernel_name, config = excluded.config,
                       median_ms = excluded.median_ms, spread_ms = excluded.spread_ms, samples = excluded.samples,
                       evaluated = excluded.evaluated, strategy = excluded.strategy, created_at = excluded.created_at,
                       updated_at = excluded.updated_at, jitune_version = excluded.jitune_version
                     WHERE excluded.median_ms < entries.median_ms"
                ),
            };
            let mut st = tx.prepare_cached(&sql).map_err(|e| store_err(&self.path, e))?;
            let mut n = 0;
            for e in entries {
                n += st
                    .execute(params![
                        e.key.kernel.to_hex(),
                        e.key.shape.to_text(),
                        e.key.device as i64,
                        e.device.to_text(),
                        e.kernel_name,
                        e.config,
                        e.median_ms,
                        e.spread_ms,
                        e.samples,
                        e.evaluated,
                        e.strategy,
                        e.created_at,
                        e.updated_at,
                        e.jitune_version,
                    ])
                    .map_err(|e| store_err(&self.path, e))?;
            }
            Ok(n)
        })
    }

    /// Every entry, sorted by kernel, shape, device. Rows that cannot be decoded (a hand-edited
    /// file) are skipped with a warning rather than failing the whole listing.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        self.query_entries("", &[])
    }

    /// The entries of one kernel (any shape, any device).
    pub fn entries_for_kernel(&self, kernel: &KernelId) -> Result<Vec<Entry>> {
        self.query_entries("WHERE kernel_id = ?1", &[&kernel.to_hex()])
    }

    fn query_entries(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Entry>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries {filter} ORDER BY kernel_id, shape, device_hash"
            ))
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map(args, RawEntry::from_row)
            .map_err(|e| store_err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            match r
                .map_err(|e| store_err(&self.path, e))?
                .into_entry(&self.path)
            {
                Ok(e) => out.push(e),
                Err(e) => log::warn!("skipping undecodable cache row: {e}"),
            }
        }
        Ok(out)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> Result<u64> {
        let conn = self.conn.lock();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .map_err(|e| store_err(&self.path, e))?;
        Ok(n.max(0) as u64)
    }

    /// Records that `config` failed for `key` (the latest failure of a config replaces older ones).
    pub fn record_failure(
        &self,
        key: &TuningKey,
        config: &str,
        class: FailureClass,
        message: &str,
    ) -> Result<()> {
        let rec = FailureRecord {
            key: *key,
            config: config.into(),
            class,
            message: message.into(),
            at: unix_now(),
        };
        self.put_failures(std::slice::from_ref(&rec))
    }

    /// Stores failure records in one transaction (for import).
    pub fn put_failures(&self, failures: &[FailureRecord]) -> Result<()> {
        self.write(|tx| {
            for f in failures {
                insert_failure(tx, f).map_err(|e| store_err(&self.path, e))?;
            }
            Ok(())
        })
    }

    /// The configs that failed for `key`: `(config, class, message)`, sorted by config.
    pub fn failures_for(&self, key: &TuningKey) -> Result<Vec<(String, FailureClass, String)>> {
        let k = encode_key(key);
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT config, class, message FROM failures WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 ORDER BY config",
            )
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map(params![k.0, k.1, k.2], |r| {
                let class: String = r.get(1)?;
                Ok((r.get(0)?, FailureClass::from_stored(&class), r.get(2)?))
            })
            .map_err(|e| store_err(&self.path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| store_err(&self.path, e))
    }

    /// Every failure record (for export), sorted by key and config.
    pub fn failures(&self) -> Result<Vec<FailureRecord>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(
                "SELECT kernel_id, shape, device_hash, config, class, message, at FROM failures
                 ORDER BY kernel_id, shape, device_hash, config",
            )
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|e| store_err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            let (k, s, d, config, class, message, at) = r.map_err(|e| store_err(&self.path, e))?;
            match decode_key(&k, &s, d) {
                Some(key) => out.push(FailureRecord {
                    key,
                    config,
                    class: FailureClass::from_stored(&class),
                    message,
                    at,
                }),
                None => log::warn!(
                    "{}: skipping failure row with bad key {k:?}/{s:?}",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    /// Marks `config` as being evaluated for `key` by this process. Call it before the first
    /// launch of a new candidate, and [`Store::clear_inflight`] after; if the process dies in
    /// between, the next process finds the marker via [`Store::take_stale_inflight`].
    pub fn mark_inflight(&self, key: &TuningKey, config: &str) -> Result<()> {
        let k = encode_key(key);
        let me = ProcessId::current();
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO inflight (kernel_id, shape, device_hash, config, pid, pid_start, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![k.0, k.1, k.2, config, me.pid, me.start, unix_now()],
            )
            .map_err(|e| store_err(&self.path, e))?;
            Ok(())
        })
    }

    /// Removes the in-flight marker of `config` for `key` (the evaluation finished, either way).
    pub fn clear_inflight(&self, key: &TuningKey, config: &str) -> Result<()> {
        let k = encode_key(key);
        self.write(|tx| {
            tx.execute(
                "DELETE FROM inflight WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 AND config = ?4",
                params![k.0, k.1, k.2, config],
            )
            .map_err(|e| store_err(&self.path, e))?;
            Ok(())
        })
    }

    /// Turns the in-flight markers of `key` left by dead processes into failures of class
    /// [`FailureClass::Crashed`] and returns their configs (sorted). Markers of this process
    /// and of live processes stay. Liveness is checked through `/proc` on Linux (pid and process
    /// start time, so a recycled pid is not mistaken for the writer); elsewhere every marker of
    /// another process counts as stale.
    pub fn take_stale_inflight(&self, key: &TuningKey) -> Result<Vec<String>> {
        let me = ProcessId::current();
        self.write(|tx| {
            let k = encode_key(key);
            let markers: Vec<(String, i64, i64, i64)> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT config, pid, pid_start, at FROM inflight
                         WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 ORDER BY config",
                    )
                    .map_err(|e| store_err(&self.path, e))?;
                let rows = st
                    .query_map(params![k.0, k.1, k.2], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(|e| store_err(&self.path, e))?;
                rows.collect::<rusqlite::Result<_>>().map_err(|e| store_err(&self.path, e))?
            };
            let mut stale = Vec::new();
            for (config, pid, start, at) in markers {
                let owner = ProcessId { pid, start };
                if owner == me || owner.is_alive() {
                    continue;
                }
                let rec = FailureRecord {
                    key: *key,
                    config: config.clone(),
                    class: FailureClass::Crashed,
                    message: format!("process {pid} died while evaluating this config (marked in flight at unix time {at})"),
                    at: unix_now(),
                };
                insert_failure(tx, &rec).map_err(|e| store_err(&self.path, e))?;
                tx.execute(
                    "DELETE FROM inflight WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 AND config = ?4",
                    params![k.0, k.1, k.2, config],
                )
                .map_err(|e| store_err(&self.path, e))?;
                stale.push(config);
            }
            Ok(stale)
        })
    }

    /// Runs `PRAGMA integrity_check` and returns its report (`"ok"` when healthy).
    pub fn integrity_check(&self) -> Result<String> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| store_err(&self.path, e))?;
        let lines = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| store_err(&self.path, e))?;
        Ok(lines.join("\n"))
    }
}

fn insert_failure(tx: &rusqlite::Transaction<'_>, f: &FailureRecord) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO failures (kernel_id, shape, device_hash, config, class, message, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![f.key.kernel.to_hex(), f.key.shape.to_text(), f.key.device as i64, f.config, f.class.name(), f.message, f.at])
}
