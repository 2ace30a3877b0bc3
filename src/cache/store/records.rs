//! The rows of the store as Rust values: failure records, binaries and their keys, and the
//! decoding of `entries` rows (text columns checked, a bad row named).

use std::path::Path;

use rusqlite::Row;

use super::store_msg;
use crate::cache::entry::Entry;
use crate::failure::FailureClass;
use crate::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey};
use crate::Result;

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

/// Runs `f` on the binary key of `entry`'s winner (its toolchain from the fingerprint).
pub fn with_binary_key<R>(entry: &Entry, f: impl FnOnce(&BinaryKey<'_>) -> R) -> R {
    let (arch, nvrtc) = (arch_of(&entry.device), nvrtc_of(&entry.device));
    f(&BinaryKey {
        kernel: entry.key.kernel,
        config: &entry.config,
        arch: &arch,
        nvrtc: &nvrtc,
    })
}

/// What to do when a written entry's key is already in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// The written entry replaces the stored one.
    Replace,
    /// The entry with the lower `median_ms` stays (a measured winner is only beaten by a faster one).
    KeepFaster,
}

/// A key as the store's three key columns (kernel id hex, shape text, device hash); the
/// inverse of [`decode_key`].
pub(super) fn encode_key(key: &TuningKey) -> (String, String, i64) {
    (key.kernel.to_hex(), key.shape.to_text(), key.device as i64)
}

pub(super) fn decode_key(kernel: &str, shape: &str, device: i64) -> Option<TuningKey> {
    Some(TuningKey {
        kernel: KernelId::from_hex(kernel)?,
        shape: ShapeBucket::from_text(shape)?,
        device: device as u64,
    })
}

pub(super) const ENTRY_COLS: &str = "kernel_id, shape, device_hash, device, kernel_name, config, median_ms, spread_ms, samples, evaluated, \
                          strategy, created_at, updated_at, jitune_version";
pub(super) const ENTRY_PARAMS: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14";

/// An `entries` row before its text columns are decoded.
pub(super) struct RawEntry {
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
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<RawEntry> {
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

    pub(super) fn into_entry(self, path: &Path) -> Result<Entry> {
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
