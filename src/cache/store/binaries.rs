//! The binary table: compiled CUBINs per kernel, config, architecture and NVRTC version, and
//! the cap that keeps it from growing without bound (issue 16).
//!
//! Tuning compiles hundreds of candidates and stores each one, so that another search (or
//! another process) loads instead of compiling again; only the winners' binaries are needed to
//! launch. Left alone the table grows by every candidate ever compiled. So a user store may
//! carry a cap ([`Store::set_binary_cap`], 256 MiB by default through
//! [`CacheOptions`](crate::cache::CacheOptions)): after every write, in the same `BEGIN
//! IMMEDIATE` transaction, the least recently used binaries that are not a winner's (no entry
//! of the same kernel id has that config) are dropped until the table is under the cap. A
//! winner's binary is never dropped, even when the winners alone exceed the cap.
//!
//! Schema v3 gives each row what that needs without reading a blob: `bytes` (its size) and
//! `used_at` (unix milliseconds of its last use). A binary counts as used when it is written
//! and when [`Store::get_binary`] returns it; that is a miss-path read (compiling or tuning),
//! never a launch hit, and the touch is one small best-effort write that is skipped when the row
//! was touched less than [`TOUCH_EVERY`] ago or when another process holds the write lock for
//! longer than [`TOUCH_WAIT`] (a read must not wait ten seconds to record that it happened).
//! Shipped stores (any schema version, opened immutable) are only read.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{store_err, Access, BinaryKey, BinaryRecord, Store, BUSY_TIMEOUT};
use crate::cache::clock::unix_ms;
use crate::key::KernelId;
use crate::Result;

/// The default cap of a user store's binaries that are not winners': 256 MiB.
pub const DEFAULT_BINARY_CAP: u64 = 256 << 20;

/// A binary read again within this time of its last use is not touched again (LRU order at
/// this granularity is plenty, and a burst of reads costs one write).
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// How long a touch waits for another process' write lock before it is skipped.
pub const TOUCH_WAIT: Duration = Duration::from_millis(50);

/// What a cap enforcement dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Binaries dropped.
    pub binaries: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Parses a byte size: a number of bytes, optionally with a `K`, `M` or `G` suffix (powers of
/// 1024; `KiB`, `MB` and lower case accepted). `None` when it is not one.
///
/// ```
/// use jitune::cache::store::parse_byte_size;
/// assert_eq!(parse_byte_size("256M"), Some(256 << 20));
/// assert_eq!(parse_byte_size("1g"), Some(1 << 30));
/// assert_eq!(parse_byte_size("4096"), Some(4096));
/// assert_eq!(parse_byte_size("lots"), None);
/// ```
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match body.chars().last()? {
        'K' => (&body[..body.len() - 1], 10),
        'M' => (&body[..body.len() - 1], 20),
        'G' => (&body[..body.len() - 1], 30),
        _ => (body, 0),
    };
    let digits = digits.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The columns `binaries` rows are written with (schema v3).
const INSERT_BINARY: &str = "INSERT OR REPLACE INTO binaries (kernel_id, config, arch, nvrtc, cubin, created_at, used_at, bytes)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

impl Store {
    /// Caps the bytes of binaries that are not a winner's (`None`: no cap, the default of a bare
    /// store; [`Cache`](crate::cache::Cache) sets its user store's cap). Checked at the next
    /// write.
    pub fn set_binary_cap(&self, cap: Option<u64>) {
        *self.binary_cap.lock() = cap;
    }

    /// The cap in force, if any.
    pub fn binary_cap(&self) -> Option<u64> {
        *self.binary_cap.lock()
    }

    /// Stores a compiled binary (replacing an older one for the same key), then drops the least
    /// recently used non-winners' binaries beyond the cap, in the same transaction.
    pub fn put_binary(&self, key: &BinaryKey<'_>, cubin: &[u8]) -> Result<()> {
        let cap = self.binary_cap();
        self.write(|tx| {
            let now = unix_ms();
            tx.prepare_cached(INSERT_BINARY)
                .and_then(|mut st| {
                    st.execute(params![
                        key.kernel.to_hex(),
                        key.config,
                        key.arch,
                        key.nvrtc,
                        cubin,
                        now / 1000,
                        now,
                        cubin.len() as i64
                    ])
                })
                .map_err(|e| store_err(&self.path, e))?;
            self.enforce_cap(tx, cap)
        })
        .map(|_| ())
    }

    /// Stores binaries in one transaction (for import), then enforces the cap as
    /// [`Store::put_binary`] does.
    pub fn put_binaries(&self, binaries: &[BinaryRecord]) -> Result<()> {
        let cap = self.binary_cap();
        self.write(|tx| {
            let now = unix_ms();
            {
                let mut st = tx
                    .prepare_cached(INSERT_BINARY)
                    .map_err(|e| store_err(&self.path, e))?;
                for b in binaries {
                    st.execute(params![
                        b.kernel.to_hex(),
                        b.config,
                        b.arch,
                        b.nvrtc,
                        b.cubin,
                        b.created_at,
                        now,
                        b.cubin.len() as i64
                    ])
                    .map_err(|e| store_err(&self.path, e))?;
                }
            }
            self.enforce_cap(tx, cap)
        })
        .map(|_| ())
    }

    /// Drops the least recently used binaries that are not a winner's until the table holds at
    /// most `cap` bytes (nothing without a cap).
    fn enforce_cap(&self, tx: &rusqlite::Transaction<'_>, cap: Option<u64>) -> Result<Evicted> {
        let Some(cap) = cap else {
            return Ok(Evicted::default());
        };
        let err = |e| store_err(&self.path, e);
        let total: i64 = tx
            .query_row("SELECT COALESCE(SUM(bytes), 0) FROM binaries", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let mut total = total.max(0) as u64;
        if total <= cap {
            return Ok(Evicted::default());
        }
        let victims: Vec<(i64, i64)> = {
            let mut st = tx
                .prepare_cached(
                    "SELECT b.rowid, b.bytes FROM binaries b
                     WHERE NOT EXISTS (SELECT 1 FROM entries e
                                       WHERE e.kernel_id = b.kernel_id AND e.config = b.config)
                     ORDER BY b.used_at, b.rowid",
                )
                .map_err(err)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                if total <= cap {
                    break;
                }
                let (rowid, bytes): (i64, i64) = r.map_err(err)?;
                total = total.saturating_sub(bytes.max(0) as u64);
                out.push((rowid, bytes));
            }
            out
        };
        let mut evicted = Evicted::default();
        let mut del = tx
            .prepare_cached("DELETE FROM binaries WHERE rowid = ?1")
            .map_err(err)?;
        for (rowid, bytes) in victims {
            del.execute([rowid]).map_err(err)?;
            evicted.binaries += 1;
            evicted.bytes += bytes.max(0) as u64;
        }
        if evicted.binaries > 0 {
            log::debug!(
                "{}: dropped {} least recently used binaries ({} bytes) to stay under the cap of {cap} bytes{}",
                self.path.display(),
                evicted.binaries,
                evicted.bytes,
                if total > cap {
                    " (the winners' binaries alone exceed it)"
                } else {
                    ""
                }
            );
        }
        Ok(evicted)
    }

    /// Whether a binary for `key` is stored (no blob read, no touch: not a use).
    pub fn has_binary(&self, key: &BinaryKey<'_>) -> Result<bool> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare_cached("SELECT 1 FROM binaries WHERE kernel_id = ?1 AND config = ?2 AND arch = ?3 AND nvrtc = ?4")
            .map_err(|e| store_err(&self.path, e))?;
        st.exists(params![
            key.kernel.to_hex(),
            key.config,
            key.arch,
            key.nvrtc
        ])
        .map_err(|e| store_err(&self.path, e))
    }

    /// The compiled binary for `key`, if stored. In a writable store this counts as a use of
    /// the binary (see the module docs).
    pub fn get_binary(&self, key: &BinaryKey<'_>) -> Result<Option<Vec<u8>>> {
        let k = key.kernel.to_hex();
        let args = params![k, key.config, key.arch, key.nvrtc];
        let mut conn = self.conn.lock();
        if self.access != Access::ReadWrite {
            // Shipped and newer-schema files: read only, whatever their columns.
            let mut st = conn
                .prepare_cached("SELECT cubin FROM binaries WHERE kernel_id = ?1 AND config = ?2 AND arch = ?3 AND nvrtc = ?4")
                .map_err(|e| store_err(&self.path, e))?;
            return st
                .query_row(args, |r| r.get(0))
                .optional()
                .map_err(|e| store_err(&self.path, e));
        }
        let found: Option<(Vec<u8>, i64)> = conn
            .prepare_cached("SELECT cubin, used_at FROM binaries WHERE kernel_id = ?1 AND config = ?2 AND arch = ?3 AND nvrtc = ?4")
            .and_then(|mut st| st.query_row(args, |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(|e| store_err(&self.path, e))?;
        let Some((cubin, used_at)) = found else {
            return Ok(None);
        };
        let now = unix_ms();
        if now.saturating_sub(used_at) >= TOUCH_EVERY.as_millis() as i64 {
            // Best effort: a touch that cannot get the write lock soon is skipped.
            let _ = conn.busy_timeout(TOUCH_WAIT);
            let touched = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE binaries SET used_at = ?5 WHERE kernel_id = ?1 AND config = ?2 AND arch = ?3 AND nvrtc = ?4",
                    params![k, key.config, key.arch, key.nvrtc, now],
                )?;
                tx.commit()
            })();
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
            if let Err(e) = touched {
                log::debug!(
                    "{}: binary use not recorded ({e}); its LRU age stays as it was",
                    self.path.display()
                );
            }
        }
        Ok(Some(cubin))
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

    /// The bytes of every stored binary (the figure the cap bounds, winners' included).
    pub fn binary_bytes(&self) -> Result<u64> {
        let conn = self.conn.lock();
        let sql = if self.access == Access::ReadWrite {
            "SELECT COALESCE(SUM(bytes), 0) FROM binaries"
        } else {
            "SELECT COALESCE(SUM(length(cubin)), 0) FROM binaries"
        };
        let n: i64 = conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(|e| store_err(&self.path, e))?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_byte_size("0"), Some(0));
        assert_eq!(parse_byte_size(" 512K "), Some(512 << 10));
        assert_eq!(parse_byte_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_byte_size("256mb"), Some(256 << 20));
        assert_eq!(parse_byte_size("2G"), Some(2 << 30));
        for bad in ["", "M", "-1", "1.5G", "12T", "1 2", "99999999999999999999G"] {
            assert_eq!(parse_byte_size(bad), None, "{bad}");
        }
    }
}
