//! One tuning at a time per physical GPU, across processes (issue 14): a timing taken while
//! another jitune tuner measures on the same GPU measures both, and the fleet keeps whichever
//! config happened to be timed on a quiet moment.
//!
//! The lock is an OS advisory lock on `<cache dir>/locks/gpu-<id>.lock`, where `<id>` is the
//! GPU's UUID or PCI bus id (the caller passes the string): the file is a tiny SQLite database
//! and the holder keeps a `BEGIN EXCLUSIVE` transaction open on it, which is SQLite's exclusive
//! file lock (`fcntl` record locks on Unix, `LockFileEx` on Windows). Why an OS lock and not a
//! lease row in the store:
//! - a physical GPU is shared only by processes of one host, which is exactly the scope of an
//!   OS lock: no host id, no clock, no expiry to tune, and it works across containers that
//!   share the cache directory but not a pid namespace (where a lease's owner could only expire);
//! - the kernel drops the lock the instant its holder dies, SIGKILL included, so a killed tuner
//!   never blocks the GPU, and a live one never loses the lock to a heartbeat that came late
//!   (a lease can expire under a tuner stalled by swapping; a lock cannot);
//! - waiting costs nothing in the cache file: no write transaction every few milliseconds.
//!
//! Why through SQLite rather than `std::fs::File::lock`: the std call needs Rust 1.89, and
//! raising `rust-version` from 1.85 turns on MSRV-gated clippy lints in code outside the cache;
//! SQLite (already linked, and it handles the pitfalls of POSIX record locks, such as a close of
//! another descriptor of the file dropping the lock) gives the same kernel lock on 1.85.
//! Switching to `File::try_lock` later changes only this file.
//!
//! SQLite keeps the locks of several connections of one process apart, so each guard excludes
//! the others of its own process too: one tuning per GPU, whoever asks. The lock file must be
//! writable by every process that shares the GPU (it is created with the process' umask); one
//! that cannot open it gets an error, which the [`Cache`](super::Cache) turns into one warning.
//! On a network file system the lock is as good as the server's lock support; put the cache on
//! a local disk if tuners share a GPU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::store::is_busy;
use crate::{Error, Result};

/// How often [`GpuLock::acquire`] tries again while another process holds the lock.
const POLL: Duration = Duration::from_millis(20);

/// The lock of one GPU; see the module docs. Its functions return a [`GpuLockGuard`] that holds
/// the lock until dropped.
pub struct GpuLock;

/// Holds a GPU's lock until dropped (or until the process dies).
#[derive(Debug)]
pub struct GpuLockGuard {
    /// The connection holding `BEGIN EXCLUSIVE` on the lock file; `None` for a degraded guard.
    conn: Option<Connection>,
    path: PathBuf,
    gpu_id: String,
}

impl GpuLockGuard {
    /// A guard that holds no lock: what a degraded [`Cache`](super::Cache) hands out when it
    /// cannot make the lock file (tuning goes on, unprotected, after one warning).
    pub(crate) fn unlocked(gpu_id: &str) -> GpuLockGuard {
        GpuLockGuard {
            conn: None,
            path: PathBuf::new(),
            gpu_id: gpu_id.to_string(),
        }
    }

    /// Whether this guard really holds the OS lock (false only for a degraded cache's guard).
    pub fn is_exclusive(&self) -> bool {
        self.conn.is_some()
    }

    /// The lock file (empty for a guard that holds no lock).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GPU id the lock is for.
    pub fn gpu_id(&self) -> &str {
        &self.gpu_id
    }
}

impl Drop for GpuLockGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Ending the (empty) transaction drops the lock; closing the connection would too.
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

impl GpuLock {
    /// The lock file of `gpu_id` under the cache directory `dir`: `dir/locks/gpu-<id>.lock`,
    /// with bytes other than ASCII letters, digits, `.`, `_` and `-` percent-encoded (a PCI bus
    /// id `0000:3b:00.0` becomes `gpu-0000%3A3b%3A00.0.lock`), and ids longer than 96 bytes
    /// replaced by their blake3 hash.
    pub fn path(dir: &Path, gpu_id: &str) -> Result<PathBuf> {
        if gpu_id.is_empty() {
            return Err(Error::InvalidArgument("GPU lock: empty GPU id".into()));
        }
        let mut name = String::with_capacity(gpu_id.len());
        for b in gpu_id.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        if name.len() > 96 {
            name = format!("h{}", &blake3::hash(gpu_id.as_bytes()).to_hex()[..32]);
        }
        Ok(dir.join("locks").join(format!("gpu-{name}.lock")))
    }

    /// Takes the lock of `gpu_id` if nobody holds it; `None` while someone does.
    pub fn try_acquire(dir: &Path, gpu_id: &str) -> Result<Option<GpuLockGuard>> {
        let path = Self::path(dir, gpu_id)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let err = |e| Error::sqlite(format!("GPU lock {}", path.display()), e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(err)?;
        // No busy timeout (rusqlite's default is 5 s): a held lock answers SQLITE_BUSY at once;
        // `acquire` does the waiting.
        conn.busy_timeout(Duration::ZERO).map_err(err)?;
        match conn.execute_batch("BEGIN EXCLUSIVE") {
            Ok(()) => Ok(Some(GpuLockGuard {
                conn: Some(conn),
                path,
                gpu_id: gpu_id.to_string(),
            })),
            Err(e) if is_busy(&e) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Takes the lock of `gpu_id`, waiting for its holder until `deadline`; `None` if the
    /// deadline passed first. Polls every 20 ms (a holder keeps the lock for a whole tuning
    /// run, seconds to minutes).
    pub fn acquire(dir: &Path, gpu_id: &str, deadline: Instant) -> Result<Option<GpuLockGuard>> {
        loop {
            if let Some(g) = Self::try_acquire(dir, gpu_id)? {
                return Ok(Some(g));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(left));
        }
    }

    /// Takes the lock of `gpu_id`, waiting for as long as its holder keeps it.
    pub fn wait(dir: &Path, gpu_id: &str) -> Result<GpuLockGuard> {
        loop {
            if let Some(g) = Self::try_acquire(dir, gpu_id)? {
                return Ok(g);
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_names_are_safe() {
        let d = Path::new("/c");
        assert_eq!(
            GpuLock::path(d, "GPU-5f3c0a2e-11aa").unwrap(),
            Path::new("/c/locks/gpu-GPU-5f3c0a2e-11aa.lock")
        );
        assert_eq!(
            GpuLock::path(d, "0000:3b:00.0").unwrap(),
            Path::new("/c/locks/gpu-0000%3A3b%3A00.0.lock")
        );
        let odd = GpuLock::path(d, "../../etc/passwd").unwrap();
        assert_eq!(odd.parent().unwrap(), Path::new("/c/locks"));
        let long = GpuLock::path(d, &"x".repeat(200)).unwrap();
        assert!(long.file_name().unwrap().len() < 60, "{long:?}");
        assert!(GpuLock::path(d, "").is_err());
    }
}
