//! Moving tuned results between caches: JSON export (reviewable in pull requests), SQLite export
//! (a self-contained file to ship as a read-only layer), import of either, and merging.
//!
//! The JSON form is `{"format": "jitune-cache", "version": 1, "entries": [..], "failures": [..]}`
//! with one object per entry, keys in a fixed order and entries sorted by kernel, shape and
//! device, so that re-exporting an unchanged cache gives an identical file and a re-tune shows as
//! a small diff. Binaries are left out of JSON (they are large and rebuilt on demand).
//! Merging keeps, for each key, the faster measured winner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::store::{BinaryRecord, FailureRecord, OnConflict, Store};
use super::{Cache, Entry};
use crate::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey};
use crate::{Error, Result};

/// The `format` field of JSON exports.
pub const JSON_FORMAT: &str = "jitune-cache";
/// The `version` field of JSON exports this build writes and reads.
pub const JSON_VERSION: i64 = 1;

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// Everything a cache holds (but its in-flight markers, which only mean something to the
/// processes that wrote them), in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Tuned entries, sorted by key.
    pub entries: Vec<Entry>,
    /// Failed configs, sorted by key and config.
    pub failures: Vec<FailureRecord>,
    /// Compiled binaries (never in JSON).
    pub binaries: Vec<BinaryRecord>,
}

/// What an import or merge wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries read from the source(s).
    pub entries_read: usize,
    /// Entries written (with [`OnConflict::KeepFaster`], slower duplicates are not).
    pub entries_written: usize,
    /// Failure records written.
    pub failures: usize,
    /// Binaries written.
    pub binaries: usize,
}

impl Snapshot {
    /// Everything in `store`.
    pub fn from_store(store: &Store) -> Result<Snapshot> {
        Ok(Snapshot {
            entries: store.entries()?,
            failures: store.failures()?,
            binaries: store.binaries()?,
        })
    }

    /// Everything `cache` knows: entries of all tiers (memory first), failures and binaries of
    /// its files.
    pub fn from_cache(cache: &Cache) -> Result<Snapshot> {
        let mut snap = Snapshot {
            entries: cache.entries()?,
            ..Snapshot::default()
        };
        for store in cache.layers() {
            let other = Snapshot {
                entries: Vec::new(),
                failures: store.failures()?,
                binaries: store.binaries()?,
            };
            // Earlier layers win, as for entries.
            snap = Snapshot::merge(&other, &snap);
        }
        Ok(snap)
    }

    /// Reads a JSON export or a SQLite cache file, telling them apart by content.
    pub fn load(path: impl AsRef<Path>) -> Result<Snapshot> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.starts_with(SQLITE_MAGIC) {
            // Live (not immutable) so a user cache's WAL is read too; fall back to immutable for
            // files in places where SQLite cannot create its shared-memory file.
            let store = match Store::open_read_only_live(path) {
                Ok(s) => s,
                Err(_) => Store::open_shipped(path)?,
            };
            return Snapshot::from_store(&store);
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::Json {
            what: path.display().to_string(),
            msg: format!("neither SQLite nor UTF-8 text: {e}"),
        })?;
        Snapshot::from_json_str(text, &path.display().to_string())
    }

    /// Parses the JSON form; `what` names the source in errors.
    pub fn from_json_str(text: &str, what: &str) -> Result<Snapshot> {
        let jerr = |msg: String| Error::Json {
            what: what.to_string(),
            msg,
        };
        let doc: Value = serde_json::from_str(text).map_err(|e| jerr(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| jerr("top level is not an object".into()))?;
        match obj.get("format").and_then(Value::as_str) {
            Some(JSON_FORMAT) => {}
            other => {
                return Err(jerr(format!(
                    "`format` is {other:?}, expected \"{JSON_FORMAT}\""
                )))
            }
        }
        match obj.get("version").and_then(Value::as_i64) {
            Some(JSON_VERSION) => {}
            Some(v) if v > JSON_VERSION => {
                return Err(jerr(format!(
                    "`version` {v} is newer than this jitune supports ({JSON_VERSION})"
                )))
            }
            other => {
                return Err(jerr(format!(
                    "`version` is {other:?}, expected {JSON_VERSION}"
                )))
            }
        }
        let list = |name: &str| -> Result<&Vec<Value>> {
            match obj.get(name) {
                None => Err(jerr(format!("missing `{name}`"))),
                Some(v) => v
                    .as_array()
                    .ok_or_else(|| jerr(format!("`{name}` is not an array"))),
            }
        };
        let mut snap = Snapshot::default();
        for (i, v) in list("entries")?.iter().enumerate() {
            snap.entries
                .push(entry_from_json(v).map_err(|m| jerr(format!("entries[{i}]: {m}")))?);
        }
        // Older hand-written files may omit failures.
        if obj.contains_key("failures") {
            for (i, v) in list("failures")?.iter().enumerate() {
                snap.failures
                    .push(failure_from_json(v).map_err(|m| jerr(format!("failures[{i}]: {m}")))?);
            }
        }
        snap.normalize();
        Ok(snap)
    }

    /// Sorts and de-duplicates (for a repeated key the faster entry, for a repeated failure the
    /// latest, for a repeated binary the first).
    pub fn normalize(&mut self) {
        let (e, f, b) = (
            std::mem::take(&mut self.entries),
            std::mem::take(&mut self.failures),
            std::mem::take(&mut self.binaries),
        );
        let mut entries: BTreeMap<TuningKey, Entry> = BTreeMap::new();
        for x in e {
            match entries.get(&x.key) {
                Some(old) if old.median_ms <= x.median_ms => {}
                _ => {
                    entries.insert(x.key, x);
                }
            }
        }
        let mut failures: BTreeMap<(TuningKey, String), FailureRecord> = BTreeMap::new();
        for x in f {
            match failures.get(&(x.key, x.config.clone())) {
                Some(old) if old.at >= x.at => {}
                _ => {
                    failures.insert((x.key, x.config.clone()), x);
                }
            }
        }
        let mut binaries: BTreeMap<(KernelId, String, String, String), BinaryRecord> =
            BTreeMap::new();
        for x in b {
            binaries
                .entry((x.kernel, x.config.clone(), x.arch.clone(), x.nvrtc.clone()))
                .or_insert(x);
        }
        self.entries = entries.into_values().collect();
        self.failures = failures.into_values().collect();
        self.binaries = binaries.into_values().collect();
    }

    /// The union of `a` and `b`; for a key in both, the entry with the lower `median_ms` (`a`'s
    /// on a tie).
    pub fn merge(a: &Snapshot, b: &Snapshot) -> Snapshot {
        let mut s = Snapshot {
            entries: a.entries.iter().chain(&b.entries).cloned().collect(),
            failures: a.failures.iter().chain(&b.failures).cloned().collect(),
            binaries: a.binaries.iter().chain(&b.binaries).cloned().collect(),
        };
        s.normalize();
        s
    }

    /// The JSON form (binaries left out).
    pub fn to_json(&self) -> Value {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|e| e.key);
        json!({
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "entries": entries.iter().map(entry_to_json).collect::<Vec<_>>(),
            "failures": self.failures.iter().map(failure_to_json).collect::<Vec<_>>(),
        })
    }

    /// Writes the JSON form, pretty-printed, atomically (a temp file renamed over `path`).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| Error::Json {
            what: path.display().to_string(),
            msg: e.to_string(),
        })?;
        text.push('\n');
        let tmp = temp_sibling(path);
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        rename_into_place(&tmp, path)
    }

    /// Writes a fresh, self-contained SQLite cache (rollback journal, usable as a shipped
    /// layer), atomically. An existing file at `path` is replaced.
    pub fn write_sqlite(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = temp_sibling(path);
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            let store = Store::create_export_file(&tmp)?;
            self.apply(&store, OnConflict::Replace)?;
            Ok::<_, Error>(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        rename_into_place(&tmp, path)
    }

    /// Drops every binary that is not a winner's (no entry of its kernel has its config), so a
    /// shipped file carries what the application loads and not the hundreds of candidates
    /// compiled while tuning; returns how many were dropped.
    pub fn retain_winner_binaries(&mut self) -> usize {
        let winners: std::collections::HashSet<(KernelId, &str)> = self
            .entries
            .iter()
            .map(|e| (e.key.kernel, e.config.as_str()))
            .collect();
        let before = self.binaries.len();
        let keep: Vec<bool> = self
            .binaries
            .iter()
            .map(|b| winners.contains(&(b.kernel, b.config.as_str())))
            .collect();
        let mut it = keep.into_iter();
        self.binaries.retain(|_| it.next().unwrap_or(false));
        before - self.binaries.len()
    }

    /// Writes everything into `into` (entries with `on_conflict`, failures and binaries replace).
    pub fn apply(&self, into: &Store, on_conflict: OnConflict) -> Result<ImportReport> {
        let entries_written = into.put_entries(&self.entries, on_conflict)?;
        into.put_failures(&self.failures)?;
        into.put_binaries(&self.binaries)?;
        Ok(ImportReport {
            entries_read: self.entries.len(),
            entries_written,
            failures: self.failures.len(),
            binaries: self.binaries.len(),
        })
    }
}

/// Writes `from` as pretty-printed JSON to `path`.
///
/// ```no_run
/// use jitune::cache::{export, store::Store};
/// let store = Store::open_rw("/tmp/cache.sqlite")?;
/// export::export_json(&store, "tuned.json")?;
/// # Ok::<(), jitune::Error>(())
/// ```
pub fn export_json(from: &Store, path: impl AsRef<Path>) -> Result<()> {
    Snapshot::from_store(from)?.write_json(path)
}

/// Writes `from` as a self-contained SQLite file (all tables but in-flight markers).
pub fn export_sqlite(from: &Store, path: impl AsRef<Path>) -> Result<()> {
    Snapshot::from_store(from)?.write_sqlite(path)
}

/// Imports a JSON export or SQLite cache into `into`; entries from the file replace those with
/// the same key.
pub fn import(file: impl AsRef<Path>, into: &Store) -> Result<ImportReport> {
    Snapshot::load(file)?.apply(into, OnConflict::Replace)
}

/// Merges two cache files (each JSON or SQLite) into `into`: the union of everything, and for
/// a key present in several places (including `into` itself) the faster measured winner.
pub fn merge(a: impl AsRef<Path>, b: impl AsRef<Path>, into: &Store) -> Result<ImportReport> {
    let merged = Snapshot::merge(&Snapshot::load(a)?, &Snapshot::load(b)?);
    merged.apply(into, OnConflict::KeepFaster)
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(path, e)
    })
}

fn entry_to_json(e: &Entry) -> Value {
    // serde_json's map keeps keys sorted (or in insertion order with `preserve_order`): either
    // way the output order is fixed.
    let mut m = Map::new();
    m.insert("kernel_id".into(), e.key.kernel.to_hex().into());
    m.insert("kernel_name".into(), e.kernel_name.clone().into());
    m.insert("shape".into(), e.key.shape.to_text().into());
    m.insert("device".into(), e.device.to_text().into());
    m.insert(
        "device_hash".into(),
        format!("{:016x}", e.key.device).into(),
    );
    m.insert("config".into(), e.config.clone().into());
    m.insert("median_ms".into(), e.median_ms.into());
    m.insert("spread_ms".into(), e.spread_ms.into());
    m.insert("samples".into(), e.samples.into());
    m.insert("evaluated".into(), e.evaluated.into());
    m.insert("strategy".into(), e.strategy.clone().into());
    m.insert("created_at".into(), e.created_at.into());
    m.insert("updated_at".into(), e.updated_at.into());
    m.insert("jitune_version".into(), e.jitune_version.clone().into());
    Value::Object(m)
}

fn failure_to_json(f: &FailureRecord) -> Value {
    let mut m = Map::new();
    m.insert("kernel_id".into(), f.key.kernel.to_hex().into());
    m.insert("shape".into(), f.key.shape.to_text().into());
    m.insert(
        "device_hash".into(),
        format!("{:016x}", f.key.device).into(),
    );
    m.insert("config".into(), f.config.clone().into());
    m.insert("class".into(), f.class.name().into());
    m.insert("message".into(), f.message.clone().into());
    m.insert("at".into(), f.at.into());
    Value::Object(m)
}

/// Field accessors that say which field was wrong.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> std::result::Result<&Value, String> {
        self.0.get(k).ok_or_else(|| format!("missing `{k}`"))
    }
    fn str(&self, k: &str) -> std::result::Result<&str, String> {
        self.get(k)?
            .as_str()
            .ok_or_else(|| format!("`{k}` is not a string"))
    }
    fn f64(&self, k: &str) -> std::result::Result<f64, String> {
        self.get(k)?
            .as_f64()
            .ok_or_else(|| format!("`{k}` is not a number"))
    }
    fn i64(&self, k: &str) -> std::result::Result<i64, String> {
        self.get(k)?
            .as_i64()
            .ok_or_else(|| format!("`{k}` is not an integer"))
    }
    fn u32(&self, k: &str) -> std::result::Result<u32, String> {
        self.get(k)?
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("`{k}` is not an integer in 0..2^32"))
    }
    fn key(&self) -> std::result::Result<TuningKey, String> {
        let k = self.str("kernel_id")?;
        let kernel = KernelId::from_hex(k)
            .ok_or_else(|| format!("`kernel_id` {k:?} is not 64 hex digits"))?;
        let s = self.str("shape")?;
        let shape = ShapeBucket::from_text(s)
            .ok_or_else(|| format!("`shape` {s:?} is not like 4096x4096"))?;
        let d = self.str("device_hash")?;
        let device =
            u64::from_str_radix(d, 16).map_err(|_| format!("`device_hash` {d:?} is not hex"))?;
        Ok(TuningKey {
            kernel,
            shape,
            device,
        })
    }
}

fn entry_from_json(v: &Value) -> std::result::Result<Entry, String> {
    let f = Fields(v.as_object().ok_or("not an object")?);
    let key = f.key()?;
    let d = f.str("device")?;
    let device = DeviceFingerprint::from_text(d)
        .ok_or_else(|| format!("`device` {d:?} is not a device fingerprint"))?;
    let e = Entry {
        key,
        kernel_name: f.str("kernel_name")?.into(),
        device,
        config: f.str("config")?.into(),
        median_ms: f.f64("median_ms")?,
        spread_ms: f.f64("spread_ms")?,
        samples: f.u32("samples")?,
        evaluated: f.u32("evaluated")?,
        strategy: f.str("strategy")?.into(),
        created_at: f.i64("created_at")?,
        updated_at: f.i64("updated_at")?,
        jitune_version: f.str("jitune_version")?.into(),
    };
    e.validate().map_err(|e| e.to_string())?;
    Ok(e)
}

fn failure_from_json(v: &Value) -> std::result::Result<FailureRecord, String> {
    let f = Fields(v.as_object().ok_or("not an object")?);
    Ok(FailureRecord {
        key: f.key()?,
        config: f.str("config")?.into(),
        class: crate::failure::FailureClass::from_stored(f.str("class")?),
        message: f.str("message")?.into(),
        at: f.i64("at")?,
    })
}
