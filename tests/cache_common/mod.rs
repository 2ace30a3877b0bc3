//! Helpers shared by the `cache_*` integration tests: temporary directories, sample entries,
//! a log capture (to check that warnings are emitted) and file hashing.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use jitune::cache::Entry;
use jitune::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey};

/// A directory removed on drop (no `tempfile` dependency needed for this).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "jitune-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn dev(name: &str) -> DeviceFingerprint {
    DeviceFingerprint {
        name: name.into(),
        compute_capability: (9, 0),
        sm_count: 132,
        nvrtc_version: (13, 0),
        driver_version: None,
    }
}

pub fn kernel(n: u8) -> KernelId {
    KernelId(*blake3::hash(&[n]).as_bytes())
}

pub fn key(k: u8, dims: &[i64], device: &DeviceFingerprint) -> TuningKey {
    TuningKey {
        kernel: kernel(k),
        shape: ShapeBucket::new(dims).unwrap(),
        device: device.hash64(),
    }
}

pub fn entry(
    k: u8,
    dims: &[i64],
    device: &DeviceFingerprint,
    config: &str,
    median_ms: f64,
) -> Entry {
    let mut e = Entry::new(
        kernel(k),
        ShapeBucket::new(dims).unwrap(),
        device.clone(),
        &format!("kernel{k}"),
        config,
        median_ms,
    );
    e.spread_ms = median_ms / 10.0;
    e.samples = 30;
    e.evaluated = 120;
    e.strategy = "lfbo".into();
    e
}

pub fn file_hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

/// Captures log records so tests can check that a warning was emitted.
struct Capture;

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGGER: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LOGS.lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (idempotent).
pub fn capture_logs() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
}

/// Captured warnings containing `needle`.
pub fn warnings_with(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("WARN") && l.contains(needle))
        .cloned()
        .collect()
}
