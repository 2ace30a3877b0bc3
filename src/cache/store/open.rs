//! Opening a cache file: read-write (creating and migrating it), read-only, or immutable for
//! shipped caches; checking that it is a healthy jitune cache; moving a corrupt one aside.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::retry::{is_busy, Backoff};
use super::{store_err, store_msg, Access, Store, BUSY_TIMEOUT};
use crate::cache::clock::unix_now;
use crate::{Error, Result};

/// The schema version this build writes; files with a higher version are only read.
pub const SCHEMA_VERSION: i64 = 3;

/// `PRAGMA application_id` of jitune cache files ("jitn"), so `file(1)`-like tools and our own
/// open can tell a jitune cache from some other SQLite database.
const APPLICATION_ID: i64 = 0x6a69_746e;

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
    // v2: tuning leases (store/lease.rs), one row per key being tuned; times in unix ms.
    "CREATE TABLE IF NOT EXISTS leases (
        kernel_id TEXT NOT NULL,
        shape TEXT NOT NULL,
        device_hash INTEGER NOT NULL,
        owner_scope TEXT NOT NULL,
        owner_host TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        acquired_at_ms INTEGER NOT NULL,
        renewed_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (kernel_id, shape, device_hash)
    );",
    // v3: what the binary cap (store/binaries.rs) needs without reading a blob: each binary's
    // size and last use (unix ms; rows written before count as used when they were created),
    // an index to drop the least recently used first, and one to tell winners' binaries.
    "ALTER TABLE binaries ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE binaries ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE binaries SET used_at = created_at * 1000, bytes = length(cubin);
    CREATE INDEX IF NOT EXISTS binaries_by_use ON binaries (used_at);
    CREATE INDEX IF NOT EXISTS entries_by_config ON entries (kernel_id, config);",
];

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
        let mut seen = file_id(path);
        let mut first = Self::try_open_rw(path);
        // Another process may have moved the same corrupt file aside and started a fresh cache
        // since we opened it: then the file at `path` is not the one we judged, and moving it
        // aside would take that process' fresh cache (and its rows) away. Open the new one.
        for _ in 0..3 {
            if !matches!(first, Err(OpenFail::Corrupt(_))) || file_id(path) == seen {
                break;
            }
            seen = file_id(path);
            first = Self::try_open_rw(path);
        }
        match first {
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
        Ok(Store::wrap(conn, path, access, version))
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
        enable_wal(&conn, path)?;
        // In WAL mode NORMAL is still safe against process crashes, only an OS crash may lose the
        // last commits, which for a cache just means re-tuning.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version = if version < SCHEMA_VERSION {
            migrate(&mut conn)?
        } else {
            version
        };
        Ok(Store::wrap(conn, path, Access::ReadWrite, version))
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
        Ok(Store::wrap(conn, path, Access::ReadWrite, version))
    }

    /// A store around an open connection (no binary cap until the cache sets one).
    fn wrap(conn: Connection, path: &Path, access: Access, version: i64) -> Store {
        Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            access,
            version,
            binary_cap: Mutex::new(None),
        }
    }
}

/// Checks that `conn` holds a healthy jitune cache (or an empty file) and returns its schema
/// version (0 for an empty file). Never writes.
///
/// All of it reads one snapshot (one read transaction): read statement by statement, a file that
/// another process migrated in between looked like "a SQLite database without jitune's schema"
/// (no `meta` table at the first read, tables at the next) and a fresh, healthy cache was moved
/// aside under the processes using it.
fn check_file(conn: &Connection) -> std::result::Result<i64, OpenFail> {
    let tx = conn.unchecked_transaction()?;
    let version = check_snapshot(&tx)?;
    tx.commit()?;
    Ok(version)
}

fn check_snapshot(conn: &Connection) -> std::result::Result<i64, OpenFail> {
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

/// Switches the file to WAL (readers never block the writer, and a killed writer never damages
/// committed data). A file already in WAL mode needs nothing: the check's read opened its WAL.
/// On a file not yet in WAL mode, SQLite writes the header under a read lock upgraded to an
/// exclusive one and does not wait in the busy handler for that upgrade, so with several
/// processes opening one fresh file at once the losers get `SQLITE_BUSY` at once; they retry
/// here, within [`BUSY_TIMEOUT`] (see [`super::retry`]).
fn enable_wal(conn: &Connection, path: &Path) -> std::result::Result<(), OpenFail> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let mut backoff = Backoff::new(BUSY_TIMEOUT);
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Ok(m) => break m,
            Err(e) if is_busy(&e) && backoff.wait() => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if backoff.retries > 0 {
        log::debug!(
            "jitune cache {}: switched to WAL after {} retries (another process held the lock)",
            path.display(),
            backoff.retries
        );
    }
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("jitune cache {}: WAL not available (journal_mode={mode}); concurrent use will be slower", path.display());
    }
    Ok(())
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

/// Which file `path` names now (device and inode), to tell whether it was replaced meanwhile;
/// `None` where it does not exist (or off Unix, where the check is skipped).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
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
}
