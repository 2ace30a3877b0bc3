//! [`Entry`]: one tuned winner, the record every tier of the cache keeps and hands out.
//!
//! The entry type stands apart from [`Cache`](super::Cache) because everything below the cache
//! speaks it too: the stores write and read it, the remote tier encodes it, exports carry it.
//! Here it is built ([`Entry::new`]) and checked ([`Entry::validate`]) in one place.

use super::clock::unix_now;
use crate::key::{DeviceFingerprint, KernelId, TuningKey};
use crate::{Error, Result};

/// One tuned winner: which config to launch for a kernel, shape bucket and device, and how it
/// measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What the entry is for; `key.device` is `device.hash64()`.
    pub key: TuningKey,
    /// Human-readable kernel name (the id is what counts).
    pub kernel_name: String,
    /// The device the winner was measured on.
    pub device: DeviceFingerprint,
    /// The winner config, canonical text `name=value,name=value` in parameter order.
    pub config: String,
    /// Median time of the winner in milliseconds.
    pub median_ms: f64,
    /// Interquartile range of the winner's samples, milliseconds.
    pub spread_ms: f64,
    /// Number of timing samples of the winner.
    pub samples: u32,
    /// Configs evaluated during the search.
    pub evaluated: u32,
    /// The search strategy that found it.
    pub strategy: String,
    /// First tuned (unix seconds).
    pub created_at: i64,
    /// Last updated (unix seconds).
    pub updated_at: i64,
    /// The jitune version that wrote it.
    pub jitune_version: String,
}

impl Entry {
    /// An entry measured now by this jitune version; `key.device` is taken from `device`.
    ///
    /// ```
    /// use jitune::cache::Entry;
    /// use jitune::key::{DeviceFingerprint, KernelId, ShapeBucket};
    /// let dev = DeviceFingerprint { name: "NVIDIA H200".into(), compute_capability: (9, 0), sm_count: 132, nvrtc_version: (13, 0), driver_version: None };
    /// let e = Entry::new(KernelId([7; 32]), ShapeBucket::new(&[4096, 4096]).unwrap(), dev, "gemm", "BM=128,BN=64", 0.42);
    /// assert_eq!(e.key.device, e.device.hash64());
    /// ```
    pub fn new(
        kernel: KernelId,
        shape: crate::key::ShapeBucket,
        device: DeviceFingerprint,
        kernel_name: &str,
        config: &str,
        median_ms: f64,
    ) -> Entry {
        let now = unix_now();
        Entry {
            key: TuningKey {
                kernel,
                shape,
                device: device.hash64(),
            },
            kernel_name: kernel_name.into(),
            device,
            config: config.into(),
            median_ms,
            spread_ms: 0.0,
            samples: 0,
            evaluated: 0,
            strategy: String::new(),
            created_at: now,
            updated_at: now,
            jitune_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Checks what the store and merging rely on: the key's device hash matches the fingerprint
    /// and the timings are finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if self.key.device != self.device.hash64() {
            return Err(Error::InvalidArgument(format!(
                "entry {}: key device hash {:016x} is not the hash of `{}` ({:016x})",
                self.key.display(),
                self.key.device,
                self.device.to_text(),
                self.device.hash64()
            )));
        }
        for (what, v) in [("median_ms", self.median_ms), ("spread_ms", self.spread_ms)] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "entry {}: {what} = {v} is not a finite time",
                    self.key.display()
                )));
            }
        }
        Ok(())
    }
}
