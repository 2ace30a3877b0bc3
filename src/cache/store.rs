//! The SQLite store behind the cache: tuned entries, compiled binaries, failed configs and
//! in-flight markers, in one file.
//!
//! A user cache is opened read-write in WAL mode and may be shared by many processes at once:
//! every write runs in a `BEGIN IMMEDIATE` transaction (so writers queue on the busy timeout
//! instead of failing mid-transaction on a lock upgrade). Shipped caches are opened read-only and
//! immutable, so using them can never change a byte of the file. Corrupt files are moved aside,
//! files from a newer jitune are only read: a cache must never stop a program from running, and
//! must never destroy data that someone else may still want.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};

use crate::failure::FailureClass;
use crate::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey};
use crate::{Error, Result};

use super::{unix_now, Entry};

/// The schema version this build writes; files with a higher version are only read.
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of jitune cache files ("jitn"), so `file(1)`-like tools and our own
/// open can tell a jitune cache from some other SQLite database.
const APPLICATION_ID: i64 = 0x6a69_746e;

/// How long a writer waits for another process' transaction before giving up. Tuning writes are
/// tiny and rare, so a long wait only ever happens under heavy contention, where waiting is right.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations: `MIGRATIONS[i]` takes a file from version `i` to `i + 1`. To change the
/// schema, append a migration and bump [`SCHEMA_VERSION`]; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS entries (
        kernel_id TEXT NOT NULL,
        shape TEXT NOT NULL,
        device_hash INTEGER NOT NULL,
        device TEXT NOT NULL,
        kernel_name TEXT NOT NULL,
        config TEXT NOT NULL,
        median_ms REAL NOT NULL,
        spread_ms REAL NOT NULL,
        samples INTEGER NOT NULL,
        evaluated INTEGER NOT NULL,
        strategy TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        jitune_version TEXT NOT NULL,
        PRIMARY KEY (kernel_id, shape, device_hash)
    );
    CREATE TABLE IF NOT EXISTS binaries (
        kernel_id TEXT NOT NULL,
        config TEXT NOT NULL,
        arch TEXT NOT NULL,
        nvrtc TEXT NOT NULL,
        cubin BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (kernel_id, config, arch, nvrtc)
    );
    CREATE TABLE IF NOT EXISTS failures (
        kernel_id TEXT NOT NULL,
        shape TEXT NOT NULL,
        device_hash INTEGER NOT NULL,
        config TEXT NOT NULL,
        class TEXT NOT NULL,
        message TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (kernel_id, shape, device_hash, config)
    );
    CREATE TABLE IF NOT EXISTS inflight (
        kernel_id TEXT NOT NULL,
        shape TEXT NOT NULL,
        device_hash INTEGER NOT NULL,
        config TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_start INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (kernel_id, shape, device_hash, config)
    );",
];

/// How a store was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The user cache: read and written.
    ReadWrite,
    /// Only read (a shipped cache, or a file being imported).
    ReadOnly,
    /// Only read because a newer jitune wrote it; we must not touch a schema we do not know.
    NewerSchema,
}

/// One failed config, as listed for export.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// The tuning key the config was evaluated for.
    pub key: TuningKey,
    /// The config, canonical text.
    pub config: String,
    /// Why it failed.
    pub class: FailureClass,
    /// What went wrong.
    pub message: String,
    /// When (unix seconds).
    pub at: i64,
}

/// Identifies one compiled binary: the same source and config compiled for the same
/// architecture by the same NVRTC gives the same CUBIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryKey<'a> {
    /// The kernel.
    pub kernel: KernelId,
    /// The config, canonical text.
    pub config: &'a str,
    /// Target architecture, e.g. `sm_90`.
    pub arch: &'a str,
    /// NVRTC version text, e.g. `13.0`.
    pub nvrtc: &'a str,
}

/// One compiled binary, as listed for export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryRecord {
    /// The kernel.
    pub kernel: KernelId,
    /// The config, canonical text.
    pub config: String,
    /// Target architecture, e.g. `sm_90`.
    pub arch: String,
    /// NVRTC version text, e.g. `13.0`.
    pub nvrtc: String,
    /// The CUBIN.
    pub cubin: Vec<u8>,
    /// When it was stored (unix seconds).
    pub created_at: i64,
}

impl BinaryRecord {
    /// The lookup key of this binary.
    pub fn key(&self) -> BinaryKey<'_> {
        BinaryKey {
            kernel: self.kernel,
            config: &self.config,
            arch: &self.arch,
            nvrtc: &self.nvrtc,
        }
    }
}

/// Architecture text `sm_90` of a device.
pub fn arch_of(device: &DeviceFingerprint) -> String {
    format!(
        "sm_{}{}",
        device.compute_capability.0, device.compute_capability.1
    )
}

/// NVRTC version text `13.0` of a device fingerprint.
pub fn nvrtc_of(device: &DeviceFingerprint) -> String {
    format!("{}.{}", device.nvrtc_version.0, device.nvrtc_version.1)
}

/// What to do when a written entry's key is already in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// The written entry replaces the stored one.
    Replace,
    /// The entry with the lower `median_ms` stays (a measured winner is only beaten by a faster one).
    KeepFaster,
}

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

/// Why opening read-write did not work out.
enum OpenFail {
    /// The file is not a (healthy) jitune cache.
    Corrupt(String),
    /// A newer jitune wrote it.
    Newer(i64),
    /// Anything else (permissions, I/O, locks).
    Other(Error),
}

impl From<rusqlite::Error> for OpenFail {
    fn from(e: rusqlite::Error) -> Self {
        if is_corruption(&e) {
            OpenFail::Corrupt(e.to_string())
        } else {
            OpenFail::Other(e.into())
        }
    }
}

/// Whether SQLite says the file is not a database or is damaged.
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
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
    /// Opens (creating if needed) the user cache at `path` for reading and writing.
    ///
    /// Degrades instead of failing where it safely can: a corrupt or non-jitune file is renamed
    /// to `<path>.corrupt-<unix time>` with a warning and a fresh cache is created in its place; a
    /// file written by a newer schema is opened read-only with a warning ([`Store::access`] says
    /// [`Access::NewerSchema`]). Permission and I/O problems are returned as errors (the
    /// [`Cache`](super::Cache) turns those into memory-only mode).
    pub fn open_rw(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        match Self::try_open_rw(path) {
            Ok(s) => Ok(s),
            Err(OpenFail::Other(e)) => Err(e),
            Err(OpenFail::Newer(found)) => {
                log::warn!(
                    "jitune cache {} has schema version {found}, newer than this jitune ({SCHEMA_VERSION}); \
                     using it read-only and keeping new results in memory",
                    path.display()
                );
                let mut s = Self::open_read_only(path, false)?;
                s.access = Access::NewerSchema;
                Ok(s)
            }
            Err(OpenFail::Corrupt(why)) => {
                let aside = move_aside(path)?;
                log::warn!(
                    "jitune cache {} is unusable ({why}); moved it to {} and started a fresh cache",
                    path.display(),
                    aside.display()
                );
                match Self::try_open_rw(path) {
                    Ok(s) => Ok(s),
                    Err(OpenFail::Other(e)) => Err(e),
                    Err(OpenFail::Corrupt(why)) => {
                        Err(store_msg(path, format!("fresh cache is unusable: {why}")))
                    }
                    Err(OpenFail::Newer(found)) => Err(Error::NewerSchema {
                        path: path.to_path_buf(),
                        found,
                        supported: SCHEMA_VERSION,
                    }),
                }
            }
        }
    }

    /// Like [`Store::open_rw`] but never degrades: a newer schema is [`Error::NewerSchema`] and a
    /// corrupt file is [`Error::Store`], and the database file is left untouched in both cases.
    pub fn open_rw_strict(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        match Self::try_open_rw(path) {
            Ok(s) => Ok(s),
            Err(OpenFail::Other(e)) => Err(e),
            Err(OpenFail::Newer(found)) => Err(Error::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            }),
            Err(OpenFail::Corrupt(why)) => {
                Err(store_msg(path, format!("not a usable jitune cache: {why}")))
            }
        }
    }

    /// Opens a shipped (read-only) cache. The file is opened `immutable`: SQLite takes no locks and
    /// writes nothing, not even a `-wal` or `-shm` file, so the file stays byte-identical.
    /// (Consequence: a shipped file must be self-contained, i.e. not a WAL database with a pending
    /// `-wal`; [`export_sqlite`](super::export::export_sqlite) writes such files.)
    pub fn open_shipped(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_read_only(path.as_ref(), true)
    }

    /// Opens any cache file read-only without `immutable`, so a live WAL cache is read with its
    /// latest commits (used for imports). Writes nothing to the database itself.
    pub fn open_read_only_live(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_read_only(path.as_ref(), false)
    }

    fn open_read_only(path: &Path, immutable: bool) -> Result<Store> {
        // SQLite would report a missing file as a vague CANTOPEN; say what it is.
        if let Err(e) = std::fs::metadata(path) {
            return Err(Error::io(path, e));
        }
        let uri = format!(
            "{}?mode=ro{}",
            file_uri(path),
            if immutable { "&immutable=1" } else { "" }
        );
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&uri, flags).map_err(|e| store_err(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| store_err(path, e))?;
        let version = match check_file(&conn) {
            Ok(v) => v,
            Err(OpenFail::Corrupt(why)) => {
                return Err(store_msg(path, format!("not a usable jitune cache: {why}")))
            }
            Err(OpenFail::Other(e)) => return Err(e),
            Err(OpenFail::Newer(v)) => v,
        };
        if version == 0 {
            return Err(store_msg(path, "not a jitune cache (no schema)"));
        }
        let access = if version > SCHEMA_VERSION {
            log::warn!(
                "jitune cache {} has schema version {version}, newer than this jitune ({SCHEMA_VERSION}); reading what we can",
                path.display()
            );
            Access::NewerSchema
        } else {
            Access::ReadOnly
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            access,
            version,
        })
    }

    fn try_open_rw(path: &Path) -> std::result::Result<Store, OpenFail> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| OpenFail::Other(store_err(path, e)))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // SQLite silently opens a write-protected file read-only; we want to know now, not at the
        // first put.
        if conn.is_readonly("main")? {
            return Err(OpenFail::Other(store_msg(path, "file is read-only")));
        }
        let version = check_file(&conn)?;
        // WAL: readers never block the writer and a killed writer never damages committed data.
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("jitune cache {}: WAL not available (journal_mode={mode}); concurrent use will be slower", path.display());
        }
        // In WAL mode NORMAL is still safe against process crashes, only an OS crash may lose the
        // last commits, which for a cache just means re-tuning.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version = if version < SCHEMA_VERSION {
            migrate(&mut conn)?
        } else {
            version
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            access: Access::ReadWrite,
            version,
        })
    }

    /// Creates a new, self-contained cache file (rollback journal, not WAL) for export; `path`
    /// must not exist yet.
    pub(crate) fn create_export_file(path: &Path) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(|e| store_err(path, e))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| store_err(path, e))?;
        let version = match migrate(&mut conn) {
            Ok(v) => v,
            Err(OpenFail::Other(e)) => return Err(e),
            Err(_) => return Err(store_msg(path, "could not create schema")),
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            access: Access::ReadWrite,
            version,
        })
    }

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
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_err(&self.path, e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| store_err(&self.path, e))?;
        Ok(out)
    }

    /// The entry stored for `key`.
    pub fn get(&self, key: &TuningKey) -> Result<Option<Entry>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached(&format!("SELECT {ENTRY_COLS} FROM entries WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3"))
            .map_err(|e| store_err(&self.path, e))?;
        let raw = st
            .query_row(
                params![key.kernel.to_hex(), key.shape.to_text(), key.device as i64],
                RawEntry::from_row,
            )
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

    /// Stores a compiled binary (replacing an older one for the same key).
    pub fn put_binary(&self, key: &BinaryKey<'_>, cubin: &[u8]) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO binaries (kernel_id, config, arch, nvrtc, cubin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.kernel.to_hex(), key.config, key.arch, key.nvrtc, cubin, unix_now()],
            )
            .map_err(|e| store_err(&self.path, e))?;
            Ok(())
        })
    }

    /// The compiled binary for `key`, if stored.
    pub fn get_binary(&self, key: &BinaryKey<'_>) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached("SELECT cubin FROM binaries WHERE kernel_id = ?1 AND config = ?2 AND arch = ?3 AND nvrtc = ?4")
            .map_err(|e| store_err(&self.path, e))?;
        st.query_row(
            params![key.kernel.to_hex(), key.config, key.arch, key.nvrtc],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store_err(&self.path, e))
    }

    /// Every binary (for export).
    pub fn binaries(&self) -> Result<Vec<BinaryRecord>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare("SELECT kernel_id, config, arch, nvrtc, cubin, created_at FROM binaries ORDER BY kernel_id, config, arch, nvrtc")
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(|e| store_err(&self.path, e))?;
        let mut out = Vec::new();
        for r in rows {
            let (k, config, arch, nvrtc, cubin, created_at) =
                r.map_err(|e| store_err(&self.path, e))?;
            match KernelId::from_hex(&k) {
                Some(kernel) => out.push(BinaryRecord {
                    kernel,
                    config,
                    arch,
                    nvrtc,
                    cubin,
                    created_at,
                }),
                None => log::warn!(
                    "{}: skipping binary with bad kernel id {k:?}",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    /// Stores binaries in one transaction (for import).
    pub fn put_binaries(&self, binaries: &[BinaryRecord]) -> Result<()> {
        self.write(|tx| {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO binaries (kernel_id, config, arch, nvrtc, cubin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| store_err(&self.path, e))?;
            for b in binaries {
                st.execute(params![b.kernel.to_hex(), b.config, b.arch, b.nvrtc, b.cubin, b.created_at])
                    .map_err(|e| store_err(&self.path, e))?;
            }
            Ok(())
        })
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
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT config, class, message FROM failures WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 ORDER BY config",
            )
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map(
                params![key.kernel.to_hex(), key.shape.to_text(), key.device as i64],
                |r| {
                    let class: String = r.get(1)?;
                    Ok((r.get(0)?, FailureClass::from_stored(&class), r.get(2)?))
                },
            )
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
        let me = ProcessId::current();
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO inflight (kernel_id, shape, device_hash, config, pid, pid_start, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![key.kernel.to_hex(), key.shape.to_text(), key.device as i64, config, me.pid, me.start, unix_now()],
            )
            .map_err(|e| store_err(&self.path, e))?;
            Ok(())
        })
    }

    /// Removes the in-flight marker of `config` for `key` (the evaluation finished, either way).
    pub fn clear_inflight(&self, key: &TuningKey, config: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM inflight WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3 AND config = ?4",
                params![key.kernel.to_hex(), key.shape.to_text(), key.device as i64, config],
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
            let k = (key.kernel.to_hex(), key.shape.to_text(), key.device as i64);
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

/// Checks that `conn` holds a healthy jitune cache (or an empty file) and returns its schema
/// version (0 for an empty file). Never writes.
fn check_file(conn: &Connection) -> std::result::Result<i64, OpenFail> {
    // quick_check reads every page: it catches non-SQLite files (NOTADB at the header) and
    // truncated or damaged files, which otherwise only fail at some later query.
    let report: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if report != "ok" {
        return Err(OpenFail::Corrupt(format!("quick_check: {report}")));
    }
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(OpenFail::Corrupt(format!(
            "not a jitune cache (application_id {app_id:#x})"
        )));
    }
    let version = read_version(conn)?;
    if version == 0 {
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 {
            return Err(OpenFail::Corrupt(
                "a SQLite database without jitune's schema".into(),
            ));
        }
    }
    if version > SCHEMA_VERSION {
        return Err(OpenFail::Newer(version));
    }
    Ok(version)
}

/// The schema version recorded in `meta`, 0 when there is no `meta` table.
fn read_version(conn: &Connection) -> std::result::Result<i64, OpenFail> {
    let has_meta: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if has_meta == 0 {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match v.as_deref().map(str::parse::<i64>) {
        Some(Ok(v)) if v >= 1 => Ok(v),
        _ => Err(OpenFail::Corrupt(format!(
            "meta.schema_version is missing or invalid ({v:?})"
        ))),
    }
}

/// Brings the file up to [`SCHEMA_VERSION`] in one IMMEDIATE transaction; concurrent openers
/// serialize here and the later ones find nothing left to do.
fn migrate(conn: &mut Connection) -> std::result::Result<i64, OpenFail> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = read_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(OpenFail::Newer(found));
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(sql)?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION.to_string()],
    )?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

/// Renames a corrupt cache (and its `-wal`/`-shm`, which must not be replayed into the fresh
/// file) to `<file>.corrupt-<unix time>[.<n>]`.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let ts = unix_now();
    let base = path.as_os_str().to_os_string();
    let mut n = 0;
    let aside = loop {
        let mut cand = base.clone();
        cand.push(format!(".corrupt-{ts}"));
        if n > 0 {
            cand.push(format!(".{n}"));
        }
        let cand = PathBuf::from(cand);
        if !cand.exists() {
            break cand;
        }
        n += 1;
        if n > 1000 {
            return Err(store_msg(
                path,
                "cannot find a free name to move the corrupt cache aside",
            ));
        }
    };
    std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = base.clone();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            let mut to = aside.as_os_str().to_os_string();
            to.push(suffix);
            if let Err(e) = std::fs::rename(&side, PathBuf::from(to)) {
                // A stale WAL next to the fresh database would be replayed into it: better gone.
                log::warn!("could not move {} aside ({e}); removing it", side.display());
                std::fs::remove_file(&side).map_err(|e| Error::io(&side, e))?;
            }
        }
    }
    Ok(aside)
}

/// `file:` URI of a path, percent-encoding everything that could be read as URI syntax.
fn file_uri(path: &Path) -> String {
    let mut out = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_key(kernel: &str, shape: &str, device: i64) -> Option<TuningKey> {
    Some(TuningKey {
        kernel: KernelId::from_hex(kernel)?,
        shape: ShapeBucket::from_text(shape)?,
        device: device as u64,
    })
}

const ENTRY_COLS: &str = "kernel_id, shape, device_hash, device, kernel_name, config, median_ms, spread_ms, samples, evaluated, \
                          strategy, created_at, updated_at, jitune_version";
const ENTRY_PARAMS: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14";

/// An `entries` row before its text columns are decoded.
struct RawEntry {
    kernel: String,
    shape: String,
    device_hash: i64,
    device: String,
    kernel_name: String,
    config: String,
    median_ms: f64,
    spread_ms: f64,
    samples: i64,
    evaluated: i64,
    strategy: String,
    created_at: i64,
    updated_at: i64,
    jitune_version: String,
}

impl RawEntry {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawEntry> {
        Ok(RawEntry {
            kernel: r.get(0)?,
            shape: r.get(1)?,
            device_hash: r.get(2)?,
            device: r.get(3)?,
            kernel_name: r.get(4)?,
            config: r.get(5)?,
            median_ms: r.get(6)?,
            spread_ms: r.get(7)?,
            samples: r.get(8)?,
            evaluated: r.get(9)?,
            strategy: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            jitune_version: r.get(13)?,
        })
    }

    fn into_entry(self, path: &Path) -> Result<Entry> {
        let bad = |what: &str, v: &dyn std::fmt::Debug| {
            store_msg(path, format!("bad {what} {v:?} in entries"))
        };
        let key = decode_key(&self.kernel, &self.shape, self.device_hash)
            .ok_or_else(|| bad("key", &(&self.kernel, &self.shape)))?;
        let device = DeviceFingerprint::from_text(&self.device)
            .ok_or_else(|| bad("device", &self.device))?;
        Ok(Entry {
            key,
            kernel_name: self.kernel_name,
            device,
            config: self.config,
            median_ms: self.median_ms,
            spread_ms: self.spread_ms,
            samples: u32::try_from(self.samples).map_err(|_| bad("samples", &self.samples))?,
            evaluated: u32::try_from(self.evaluated)
                .map_err(|_| bad("evaluated", &self.evaluated))?,
            strategy: self.strategy,
            created_at: self.created_at,
            updated_at: self.updated_at,
            jitune_version: self.jitune_version,
        })
    }
}

/// A process, identified by pid and start time (so a recycled pid is a different process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcessId {
    pid: i64,
    /// Start time in clock ticks since boot (Linux), 0 where unknown.
    start: i64,
}

impl ProcessId {
    fn current() -> ProcessId {
        let pid = std::process::id() as i64;
        ProcessId {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    #[cfg(target_os = "linux")]
    fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        match parse_stat(&stat) {
            // Zombies and dead tasks are not evaluating anything any more.
            Some((state, _)) if state == "Z" || state == "X" => false,
            Some((_, start)) => self.start == 0 || start == self.start,
            None => true,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn is_alive(&self) -> bool {
        false
    }
}

/// State and start time from a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, i64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // Field 22 overall is the start time; `state` was field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn process_start(pid: i64) -> Option<i64> {
    if cfg!(target_os = "linux") {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat).map(|(_, s)| s)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_escapes_specials() {
        assert_eq!(
            file_uri(Path::new("/a b/c?d#e%f.sqlite")),
            "file:/a%20b/c%3Fd%23e%25f.sqlite"
        );
    }

    #[test]
    fn stat_parsing_handles_odd_names() {
        let line = "123 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20";
        assert_eq!(parse_stat(line), Some(("S", 4242)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(ProcessId::current().is_alive() || !cfg!(target_os = "linux"));
    }
}
