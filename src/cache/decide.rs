//! What a lookup falls back to when the exact key is not cached, and why.
//!
//! A cache shipped with a release was tuned on some GPU under some toolchain; the machine that
//! runs it may have another NVRTC or driver, or another GPU of the same compute capability, or
//! ask for a shape nobody tuned. Each of those still knows something, in this order:
//!
//! 1. `hit`: the exact key (this kernel, shape bucket, GPU model and toolchain);
//! 2. `inherited`: the same GPU model under another toolchain: its winner is very likely still
//!    the winner. Its config is used (compiled here: a binary built by another toolchain is
//!    never loaded), and in Background mode re-checked by a short search seeded by it;
//! 3. `provisional`: another GPU model of the same compute capability: its winner is a good
//!    first guess that seeds the search;
//! 4. `nearest`: the nearest shape bucket tuned on this very fingerprint;
//! 5. `default`: the spec's default config.
//!
//! [`Cache::explain`] returns the decision, the entry it comes from, every candidate it
//! considered at each step and a one-paragraph explanation; the tuner logs it once per key on a
//! miss and `jitune explain` prints it. The cache does not know the spec, so the tuner checks
//! that a chosen config is valid in the current space and, if not, goes on down the chain.

use std::sync::Arc;

use super::{Cache, Entry};
use crate::key::{DeviceFingerprint, TuningKey};
use crate::Result;

/// Where the config a miss launches comes from (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    Hit,
    Inherited,
    Provisional,
    Nearest,
    Default,
}

impl Decision {
    /// `hit`, `inherited`, `provisional`, `nearest` or `default`.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Hit => "hit",
            Decision::Inherited => "inherited",
            Decision::Provisional => "provisional",
            Decision::Nearest => "nearest",
            Decision::Default => "default",
        }
    }
}

/// Everything [`Cache::explain`] found for a key.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub key: TuningKey,
    /// The fingerprint the key is for.
    pub device: DeviceFingerprint,
    /// The first step of the chain that has an entry (`Default` when none has).
    pub decision: Decision,
    /// The entry behind the decision (`None` for `Default`).
    pub from: Option<Arc<Entry>>,
    /// Every usable entry, each at its step, best first within a step: the tuner walks this
    /// list when an entry's config is not valid in the current space.
    pub chain: Vec<(Decision, Arc<Entry>)>,
    /// Entries of the kernel seen and why they do not serve (another shape on another
    /// fingerprint, ...).
    pub others: usize,
}

impl Explanation {
    /// One paragraph: what a launch would do and why.
    pub fn text(&self) -> String {
        let what = format!(
            "{} on `{}`",
            self.key.shape.to_text(),
            self.device.to_text()
        );
        let name = self
            .from
            .as_ref()
            .map(|e| e.kernel_name.clone())
            .unwrap_or_else(|| format!("kernel {}", self.key.kernel.short()));
        let rest = match (self.decision, &self.from) {
            (Decision::Hit, Some(e)) => format!(
                "hit: the entry tuned here ({}, {:.4} ms)",
                e.config, e.median_ms
            ),
            (Decision::Inherited, Some(e)) => format!(
                "inherited: no entry for this toolchain; the same GPU model under `{}` tuned {} \
                 ({:.4} ms there); its config is compiled here (never its binary), and re-checked \
                 by a short search seeded by it in Background mode",
                e.device.toolchain_text(),
                e.config,
                e.median_ms
            ),
            (Decision::Provisional, Some(e)) => format!(
                "provisional: nothing for this GPU model; `{}` (same compute capability) tuned {} \
                 ({:.4} ms there); launched meanwhile and seeding the search",
                e.device.model_text(),
                e.config,
                e.median_ms
            ),
            (Decision::Nearest, Some(e)) => format!(
                "nearest: this shape bucket is not tuned for this GPU and toolchain, nor on \
                 another; the nearest tuned bucket here is {} ({}, {:.4} ms)",
                e.key.shape.to_text(),
                e.config,
                e.median_ms
            ),
            _ => {
                if self.others == 0 {
                    "default: the cache knows nothing of this kernel (never tuned, or its spec or \
                     source changed, and so its id)"
                        .to_string()
                } else {
                    format!(
                        "default: the cache holds {} entr{} of this kernel, none for this shape on \
                         this GPU model or compute capability, nor another shape on this \
                         fingerprint",
                        self.others,
                        if self.others == 1 { "y" } else { "ies" }
                    )
                }
            }
        };
        format!("{name} {what}: {rest}")
    }
}

impl Cache {
    /// Decides what a launch of `key` on `device` (`key.device` is `device.hash64()`) uses, and
    /// why; see the module docs. Reads every tier (memory, user, shipped); writes nothing but
    /// the memory tier's copy of an exact hit.
    pub fn explain(&self, key: &TuningKey, device: &DeviceFingerprint) -> Result<Explanation> {
        let mut ex = Explanation {
            key: *key,
            device: device.clone(),
            decision: Decision::Default,
            from: None,
            chain: Vec::new(),
            others: 0,
        };
        if let Some(e) = self.lookup(key)? {
            ex.decision = Decision::Hit;
            ex.from = Some(e.clone());
            ex.chain.push((Decision::Hit, e));
            return Ok(ex);
        }
        let all = self.kernel_entries(&key.kernel)?;
        let same_shape = |e: &Entry| e.key.shape == key.shape;
        let mut inherited: Vec<Arc<Entry>> = all
            .values()
            .filter(|e| same_shape(e) && e.key.device != key.device && e.device.same_model(device))
            .cloned()
            .collect();
        // Closest toolchain first (the same NVRTC, then the same NVRTC major), then the newest.
        inherited.sort_by_key(|e| {
            (
                e.device.nvrtc_version != device.nvrtc_version,
                e.device.nvrtc_version.0 != device.nvrtc_version.0,
                std::cmp::Reverse(e.updated_at),
            )
        });
        let mut provisional: Vec<Arc<Entry>> = all
            .values()
            .filter(|e| {
                same_shape(e)
                    && !e.device.same_model(device)
                    && e.device.compute_capability == device.compute_capability
            })
            .cloned()
            .collect();
        // The most similar GPU first (closest SM count), then the newest.
        provisional.sort_by_key(|e| {
            (
                (e.device.sm_count as i64 - device.sm_count as i64).abs(),
                std::cmp::Reverse(e.updated_at),
            )
        });
        let mut nearest: Vec<(f64, Arc<Entry>)> = all
            .values()
            .filter(|e| e.key.device == key.device && !same_shape(e))
            .map(|e| (key.shape.distance(&e.key.shape), e.clone()))
            .filter(|(d, _)| d.is_finite())
            .collect();
        nearest.sort_by(|a, b| a.0.total_cmp(&b.0));
        ex.chain
            .extend(inherited.into_iter().map(|e| (Decision::Inherited, e)));
        ex.chain
            .extend(provisional.into_iter().map(|e| (Decision::Provisional, e)));
        ex.chain
            .extend(nearest.into_iter().map(|(_, e)| (Decision::Nearest, e)));
        ex.others = all.len() - ex.chain.len();
        if let Some((d, e)) = ex.chain.first() {
            ex.decision = *d;
            ex.from = Some(e.clone());
        }
        Ok(ex)
    }

    /// What other toolchains, GPU models and shapes measured for `key`'s kernel, to seed a
    /// search as its prior: the entries [`Cache::explain`]'s chain considered (this shape under
    /// another toolchain or on another model of the same compute capability, other shapes on
    /// this fingerprint), each with its step.
    pub fn priors(
        &self,
        key: &TuningKey,
        device: &DeviceFingerprint,
    ) -> Result<Vec<(Decision, Arc<Entry>)>> {
        let ex = self.explain(key, device)?;
        Ok(ex
            .chain
            .into_iter()
            .filter(|(d, _)| *d != Decision::Hit)
            .collect())
    }
}
