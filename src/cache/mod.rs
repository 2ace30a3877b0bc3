//! The cache of tuned configs: a lock-sharded in-memory map in front of SQLite files and,
//! optionally, a fleet's Redis tier (`remote`, joined in by `fleet`).
//!
//! Launches do not come here: a launch reads its plan from the tuner's key map, and the cache
//! is asked on a miss (and by tools). The memory tier ([`Cache::get_memory`]) remembers what
//! the files gave or what was tuned in this process, so a repeated lookup is one `DashMap`
//! shard read. Behind it sit one writable user cache (shared by all processes of the user, see
//! [`store`]) and any number of read-only "shipped" caches (tuned results distributed with an
//! application). Lookups go memory → user → remote (when one is configured, its records
//! checked) → shipped; the first hit wins and is remembered in memory. The cache degrades instead of failing: if the user file cannot be written, results
//! live in memory for the life of the process, and a write that fails later (a lock held too
//! long, a full or read-only disk) keeps its data in memory and is one logged warning, never an
//! error of the launch that caused it.
//!
//! Processes sharing the user file coordinate through it (see `coord`): a tuning lease per key,
//! so one process tunes a key and the others adopt its winner ([`Cache::acquire_lease`],
//! [`Cache::wait_for_winner`]), and a lock per physical GPU ([`Cache::gpu_lock`],
//! [`gpu_lock`]), so no two tuners time kernels on one GPU at once.
//!
//! This file is [`Cache`] itself. Beside it: the entry every tier keeps ([`Entry`], `entry`),
//! how a cache is opened ([`CacheOptions`], [`UserCache`] and the environment, `options`), and
//! the clock of entries and leases (`clock`); all are re-exported here.

mod clock;
mod coord;
pub mod decide;
mod entry;
pub mod export;
pub mod fleet;
pub mod gpu_lock;
mod options;
pub mod remote;
mod renewal;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::key::{DeviceFingerprint, KernelId, KeyHashBuilder, TuningKey};
use crate::{Error, Result};

pub use clock::{unix_ms, unix_now};
pub use coord::{LeaseAttempt, LeaseGuard, WinnerWait, LEASE_TTL, WAIT_POLL};
pub use decide::{Decision, Explanation};
pub use entry::Entry;
pub use gpu_lock::{GpuLock, GpuLockGuard};
pub use options::{CacheOptions, UserCache, BINARY_CAP_ENV, CACHE_ENV, SHIPPED_ENV};
pub use store::{Access, BinaryKey, BinaryRecord, FailureRecord, OnConflict, Store};

/// The tuning cache: memory tier over a user store over shipped stores.
///
/// ```
/// use jitune::cache::{Cache, Entry};
/// use jitune::key::{DeviceFingerprint, KernelId, ShapeBucket};
/// let cache = Cache::memory_only();
/// let dev = DeviceFingerprint { name: "GPU".into(), compute_capability: (9, 0), sm_count: 132, nvrtc_version: (13, 0), driver_version: None };
/// let e = Entry::new(KernelId([1; 32]), ShapeBucket::new(&[1024]).unwrap(), dev, "k", "B=64", 1.5);
/// let key = e.key;
/// cache.put(e)?;
/// assert_eq!(cache.get_memory(&key).unwrap().config, "B=64");
/// # Ok::<(), jitune::Error>(())
/// ```
pub struct Cache {
    memory: DashMap<TuningKey, Arc<Entry>, KeyHashBuilder>,
    user: Option<Store>,
    /// The user file when it could only be opened read-only (degraded mode): still read.
    user_read_only: Option<Store>,
    shipped: Vec<Store>,
    degraded: Option<String>,
    /// The directory of the user cache (where the GPU locks live), also when it is degraded;
    /// `None` for a memory-only cache.
    dir: Option<PathBuf>,
    /// Writes to the user store that failed (after the store's own bounded retries).
    write_failures: Failures,
    /// Reads of a file layer that failed (the layer was skipped, as a miss).
    read_failures: Failures,
    /// Lease and GPU-lock operations that failed (each degraded to "go ahead and tune").
    coord_failures: Failures,
    /// The fleet-wide tier (see [`fleet`]).
    remote: Option<remote::Remote>,
    /// Device fingerprints by hash (failure records travel to the remote tier with theirs).
    devices: DashMap<u64, DeviceFingerprint>,
    /// The last winner published to the remote tier (the sync thread's canary).
    canary: parking_lot::Mutex<Option<TuningKey>>,
    sync_started: std::sync::atomic::AtomicBool,
}

/// Failures of one kind: counted; the first is logged as a warning, the rest at debug level, so
/// a broken disk gives one clear line instead of one per launch.
#[derive(Debug, Default)]
struct Failures(AtomicU64);

impl Failures {
    fn note(&self, msg: &str) {
        if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!("{msg} (further failures of this kind are logged at debug level)");
        } else {
            log::debug!("{msg}");
        }
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("memory_entries", &self.memory.len())
            .field("user", &self.user)
            .field("user_read_only", &self.user_read_only)
            .field("shipped", &self.shipped)
            .field("degraded", &self.degraded)
            .field("write_failures", &self.write_failures.count())
            .finish()
    }
}

/// Shards of the memory tier: more shards than threads keeps two miss-path threads on one
/// shard's lock word (a shared cache line, even for readers) rare.
const SHARDS: usize = 256;

impl Cache {
    /// Opens the cache. Never fails because of the files: an unwritable user cache gives a
    /// memory-only cache (with a warning; [`Cache::degraded`] says why), a corrupt one is moved
    /// aside, an unreadable shipped cache is skipped with a warning.
    pub fn open(opts: CacheOptions) -> Result<Cache> {
        let mut cache = Cache::memory_only();
        if let Some(path) = opts.resolve_user_path() {
            cache.dir = Some(
                path.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            );
            match open_user(&path) {
                Ok(store) if store.is_writable() => {
                    store.set_binary_cap(opts.resolve_binary_cap());
                    cache.user = Some(store);
                }
                Ok(store) => {
                    cache.degraded = Some(format!(
                        "{} is read-only ({:?})",
                        path.display(),
                        store.access()
                    ));
                    cache.user_read_only = Some(store);
                }
                Err(e) => {
                    log::warn!("jitune: cannot use cache file {} ({e}); keeping tuning results in memory only", path.display());
                    cache.degraded = Some(e.to_string());
                    // The file may still be readable even though we cannot write it. A WAL file
                    // on a read-only disk cannot be read live (SQLite cannot create its `-shm`
                    // there); nothing can change it there either, so it is read as immutable.
                    if path.is_file() {
                        cache.user_read_only = Store::open_read_only_live(&path)
                            .or_else(|_| Store::open_shipped(&path))
                            .ok();
                    }
                }
            }
        }
        for p in &opts.shipped {
            match Store::open_shipped(p) {
                Ok(s) => cache.shipped.push(s),
                Err(e) => log::warn!("jitune: skipping shipped cache {} ({e})", p.display()),
            }
        }
        match opts.remote.resolve() {
            None => {}
            Some(Ok(url)) => match remote::Remote::open(&url, remote::RemoteSettings::from_env()) {
                Ok(r) => cache.remote = Some(r),
                Err(e) => log::warn!(
                    "jitune: no remote tier at {} ({e}); tuning results stay on this host",
                    url.secret_url()
                ),
            },
            Some(Err(e)) => {
                log::warn!("jitune: no remote tier ({e}); tuning results stay on this host")
            }
        }
        Ok(cache)
    }

    /// A cache without any file.
    pub fn memory_only() -> Cache {
        Cache {
            memory: DashMap::with_capacity_and_hasher_and_shard_amount(
                0,
                KeyHashBuilder::default(),
                SHARDS,
            ),
            user: None,
            user_read_only: None,
            shipped: Vec::new(),
            degraded: None,
            dir: None,
            write_failures: Failures::default(),
            read_failures: Failures::default(),
            coord_failures: Failures::default(),
            remote: None,
            devices: DashMap::new(),
            canary: parking_lot::Mutex::new(None),
            sync_started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Why the cache runs without a writable user file although one was asked for, if it does.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// The writable user store, if any.
    pub fn user_store(&self) -> Option<&Store> {
        self.user.as_ref()
    }

    /// The read-only shipped stores, in lookup order.
    pub fn shipped_stores(&self) -> &[Store] {
        &self.shipped
    }

    /// Number of entries in the memory tier.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// The entry for `key` if it is in the memory tier. One shard read lock, no allocation, no
    /// I/O.
    #[inline]
    pub fn get_memory(&self, key: &TuningKey) -> Option<Arc<Entry>> {
        self.memory.get(key).map(|r| Arc::clone(r.value()))
    }

    /// Read layers behind memory, in lookup order.
    fn layers(&self) -> impl Iterator<Item = &Store> {
        self.user
            .iter()
            .chain(self.user_read_only.iter())
            .chain(self.shipped.iter())
    }

    /// The entry for `key`: memory, then the user store, then shipped stores; a hit from a file
    /// is remembered in memory. On a total miss the reason is logged at debug level (see
    /// [`Cache::explain_miss`]). A file that cannot be read is skipped as a miss, with one
    /// warning per cache: a launch never fails because a cache file misbehaves.
    pub fn lookup(&self, key: &TuningKey) -> Result<Option<Arc<Entry>>> {
        if let Some(e) = self.lookup_local(key)? {
            return Ok(Some(e));
        }
        self.lookup_shipped(key)
    }

    /// Memory, then the user store (a hit from the file is remembered in memory).
    fn lookup_local(&self, key: &TuningKey) -> Result<Option<Arc<Entry>>> {
        if let Some(e) = self.get_memory(key) {
            return Ok(Some(e));
        }
        Ok(self.lookup_in(key, self.user.iter().chain(self.user_read_only.iter())))
    }

    /// The shipped layers (a hit is remembered in memory); a miss is explained at debug level.
    fn lookup_shipped(&self, key: &TuningKey) -> Result<Option<Arc<Entry>>> {
        if let Some(e) = self.lookup_in(key, self.shipped.iter()) {
            return Ok(Some(e));
        }
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("jitune cache miss: {}", self.explain_miss(key));
        }
        Ok(None)
    }

    fn lookup_in<'a>(
        &self,
        key: &TuningKey,
        stores: impl Iterator<Item = &'a Store>,
    ) -> Option<Arc<Entry>> {
        for store in stores {
            let found = match store.get(key) {
                Ok(found) => found,
                Err(e) => {
                    self.store_read_failed(store, &e);
                    None
                }
            };
            if let Some(e) = found {
                // Another thread may have put a fresher entry meanwhile: keep it.
                let e = self
                    .memory
                    .entry(*key)
                    .or_insert_with(|| Arc::new(e))
                    .clone();
                return Some(e);
            }
        }
        None
    }

    /// Every entry of `kernel` known to any tier (memory first, then user, then shipped; the
    /// first occurrence of a key wins).
    fn kernel_entries(&self, kernel: &KernelId) -> Result<BTreeMap<TuningKey, Arc<Entry>>> {
        let mut out = BTreeMap::new();
        for r in self.memory.iter() {
            if r.key().kernel == *kernel {
                out.insert(*r.key(), Arc::clone(r.value()));
            }
        }
        for store in self.layers() {
            for e in store.entries_for_kernel(kernel)? {
                out.entry(e.key).or_insert_with(|| Arc::new(e));
            }
        }
        Ok(out)
    }

    /// The entry of the same kernel and device with the nearest shape bucket (by
    /// [`ShapeBucket::distance`](crate::key::ShapeBucket::distance)); the exact key if present.
    /// Useful to launch something good while the exact bucket is being tuned.
    pub fn nearest(&self, key: &TuningKey) -> Result<Option<Arc<Entry>>> {
        if let Some(e) = self.get_memory(key) {
            return Ok(Some(e));
        }
        let all = self.kernel_entries(&key.kernel)?;
        Ok(all
            .into_values()
            .filter(|e| e.key.device == key.device)
            .map(|e| (key.shape.distance(&e.key.shape), e))
            .filter(|(d, _)| d.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, e)| e))
    }

    /// Says why `key` is not in the cache, by comparing it with the nearest entries: the shape
    /// bucket differs (naming the nearest tuned bucket), the device differs (both fingerprints),
    /// or the kernel id is unknown (its spec or source changed, or it was never tuned).
    pub fn explain_miss(&self, key: &TuningKey) -> String {
        match self.try_explain_miss(key) {
            Ok(s) => s,
            Err(e) => format!(
                "{}: cannot explain the miss, reading the cache failed: {e}",
                key.display()
            ),
        }
    }

    fn try_explain_miss(&self, key: &TuningKey) -> Result<String> {
        let all = self.kernel_entries(&key.kernel)?;
        if all.contains_key(key) {
            return Ok(format!(
                "{}: not a miss, the entry is cached",
                key.display()
            ));
        }
        if all.is_empty() {
            return Ok(format!(
                "{}: kernel id {} is unknown to the cache (never tuned, or its spec/source changed so its id changed)",
                key.display(),
                key.kernel.short()
            ));
        }
        let mut parts = Vec::new();
        let same_device: Vec<&Arc<Entry>> = all
            .values()
            .filter(|e| e.key.device == key.device)
            .collect();
        if let Some((d, near)) = same_device
            .iter()
            .map(|e| (key.shape.distance(&e.key.shape), e))
            .min_by(|a, b| a.0.total_cmp(&b.0))
        {
            let dist = if d.is_finite() {
                format!("distance {d:.2}")
            } else {
                "different number of dimensions".into()
            };
            parts.push(format!(
                "shape bucket {} not tuned on this device; nearest tuned bucket is {} ({dist}, {} bucket(s) tuned for `{}` here)",
                key.shape.to_text(),
                near.key.shape.to_text(),
                same_device.len(),
                near.kernel_name
            ));
        }
        let other_devices: Vec<&Arc<Entry>> = all
            .values()
            .filter(|e| e.key.device != key.device && e.key.shape == key.shape)
            .collect();
        if !other_devices.is_empty() {
            let this = self
                .fingerprint_of(key.device)?
                .map(|f| f.to_text())
                .unwrap_or_else(|| {
                    format!(
                        "device hash {:016x}, fingerprint not in the cache",
                        key.device
                    )
                });
            let others: Vec<String> = other_devices.iter().map(|e| e.device.to_text()).collect();
            parts.push(format!(
                "shape bucket {} is tuned only on other device(s): this device is `{this}`, tuned on `{}`",
                key.shape.to_text(),
                others.join("`, `")
            ));
        }
        if parts.is_empty() {
            // Same kernel, but neither this device nor this shape.
            let devices: std::collections::BTreeSet<String> =
                all.values().map(|e| e.device.to_text()).collect();
            let shapes: std::collections::BTreeSet<String> =
                all.values().map(|e| e.key.shape.to_text()).collect();
            parts.push(format!(
                "kernel is tuned only for other devices (`{}`) and other shapes ({})",
                devices.into_iter().collect::<Vec<_>>().join("`, `"),
                shapes.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(format!("{}: {}", key.display(), parts.join("; ")))
    }

    /// A fingerprint with hash `device` seen in any entry (to show it in explanations).
    fn fingerprint_of(&self, device: u64) -> Result<Option<DeviceFingerprint>> {
        for r in self.memory.iter() {
            if r.key().device == device {
                return Ok(Some(r.value().device.clone()));
            }
        }
        for store in self.layers() {
            if let Some(e) = store
                .entries()?
                .into_iter()
                .find(|e| e.key.device == device)
            {
                return Ok(Some(e.device));
            }
        }
        Ok(None)
    }

    /// Stores a tuned winner: in the user store (one IMMEDIATE transaction replacing the row of
    /// that key), then in memory. Without a writable user store, in memory only. If the store
    /// write fails (after the store's bounded retries: a lock held too long, a full or
    /// read-only disk) the entry is still put in memory, so this process keeps using it, and
    /// the failure becomes one logged warning and a count ([`Cache::store_write_failures`]):
    /// a launch never fails because the cache file could not be written. Only an invalid entry
    /// is an error.
    pub fn put(&self, entry: Entry) -> Result<()> {
        entry.validate()?;
        self.write_user("a tuned winner", |s| s.put(&entry));
        self.publish_entry(&entry);
        self.memory.insert(entry.key, Arc::new(entry));
        Ok(())
    }

    /// How many writes to the user store failed since the cache was opened (each one's data
    /// stayed in memory). A command that must know its results persisted checks this.
    pub fn store_write_failures(&self) -> u64 {
        self.write_failures.count()
    }

    /// Runs the write `f` on the user store: its result, or `None` without a user store or
    /// when it failed (counted by [`Cache::store_write_failed`]: a launch never fails because
    /// the cache file could not be written).
    fn write_user<T>(&self, what: &str, f: impl FnOnce(&Store) -> Result<T>) -> Option<T> {
        let store = self.user.as_ref()?;
        f(store).map_err(|e| self.store_write_failed(what, &e)).ok()
    }

    /// Counts a failed user-store write; the first one is a warning, the rest debug lines.
    fn store_write_failed(&self, what: &str, e: &Error) {
        let path = self.user.as_ref().map(|s| s.path().display().to_string());
        self.write_failures.note(&format!(
            "jitune: could not write {what} to cache file {} ({e}); this process keeps its \
             results in memory and carries on",
            path.as_deref().unwrap_or("(none)")
        ));
    }

    /// Counts a failed read of a file layer; the first one is a warning, the rest debug lines.
    fn store_read_failed(&self, store: &Store, e: &Error) {
        self.read_failures.note(&format!(
            "jitune: could not read cache file {} ({e}); treating it as a miss",
            store.path().display()
        ));
    }

    /// Drops the memory tier (files are untouched); the next lookups read the files again.
    pub fn clear_memory(&self) {
        self.memory.clear();
    }

    /// Every entry: memory, user, shipped; for a key present in several, the first wins.
    /// Sorted by key.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out: BTreeMap<TuningKey, Entry> = BTreeMap::new();
        for r in self.memory.iter() {
            out.insert(*r.key(), (**r.value()).clone());
        }
        for store in self.layers() {
            for e in store.entries()? {
                out.entry(e.key).or_insert(e);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Stores a compiled binary in the user store (nothing without one; a failed write is one
    /// warning, see [`Cache::put`]). The store then drops the least recently used binaries that
    /// are not winners' beyond its cap ([`CacheOptions::with_binary_cap`]).
    pub fn put_binary(&self, key: &BinaryKey<'_>, cubin: &[u8]) -> Result<()> {
        self.write_user("a compiled binary", |s| s.put_binary(key, cubin));
        Ok(())
    }

    /// The compiled binary for `key`, from the user store or a shipped one. A miss-path read:
    /// the user store records the use for its least-recently-used order.
    pub fn get_binary(&self, key: &BinaryKey<'_>) -> Result<Option<Vec<u8>>> {
        for store in self.layers() {
            if let Some(b) = store.get_binary(key)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Whether any file layer holds the binary for `key` (a cheap existence check that does not
    /// count as a use; an unreadable file counts as not holding it).
    pub fn has_binary(&self, key: &BinaryKey<'_>) -> bool {
        self.layers().any(|s| s.has_binary(key).unwrap_or(false))
    }

    /// Records a failed config in the user store (nothing without one; a failed write is one
    /// warning, see [`Cache::put`]).
    pub fn record_failure(
        &self,
        key: &TuningKey,
        config: &str,
        class: crate::failure::FailureClass,
        message: &str,
    ) -> Result<()> {
        self.write_user("a failure record", |s| {
            s.record_failure(key, config, class, message)
        });
        self.publish_failure(key, config, class, message);
        Ok(())
    }

    /// Failed configs for `key`: `(config, class, message)` from the user store and shipped
    /// stores (first occurrence of a config wins).
    pub fn failures_for(
        &self,
        key: &TuningKey,
    ) -> Result<Vec<(String, crate::failure::FailureClass, String)>> {
        let mut out: BTreeMap<String, (String, crate::failure::FailureClass, String)> =
            BTreeMap::new();
        for store in self.layers() {
            for f in store.failures_for(key)? {
                out.entry(f.0.clone()).or_insert(f);
            }
        }
        for f in self.remote_failures(key) {
            out.entry(f.config.clone())
                .or_insert((f.config, f.class, f.message));
        }
        Ok(out.into_values().collect())
    }

    /// See [`Store::mark_inflight`]; nothing without a user store (a failed write is one
    /// warning, see [`Cache::put`]).
    pub fn mark_inflight(&self, key: &TuningKey, config: &str) -> Result<()> {
        self.write_user("an in-flight marker", |s| s.mark_inflight(key, config));
        Ok(())
    }

    /// See [`Store::clear_inflight`]; nothing without a user store (a failed write is one
    /// warning, see [`Cache::put`]).
    pub fn clear_inflight(&self, key: &TuningKey, config: &str) -> Result<()> {
        self.write_user("an in-flight marker", |s| s.clear_inflight(key, config));
        Ok(())
    }

    /// See [`Store::take_stale_inflight`]; empty without a user store, or when the store
    /// cannot be written (one warning, see [`Cache::put`]).
    pub fn take_stale_inflight(&self, key: &TuningKey) -> Result<Vec<String>> {
        Ok(self
            .write_user("stale in-flight markers", |s| s.take_stale_inflight(key))
            .unwrap_or_default())
    }
}

/// Creates the user cache's directory and opens it.
fn open_user(path: &Path) -> Result<Store> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Store::open_rw(path)
}
