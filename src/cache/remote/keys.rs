//! Where each record lives in the remote store: namespaced key names.
//!
//! `<ns>:v1:entry:<kernel id>/<shape>/<device hash>` holds a tuned winner, `<ns>:v1:fail:<same>`
//! a map of failed configs (field = config text), `<ns>:v1:lease:<same>` the key's tuning lease
//! and `<ns>:v1:bin:<kernel id>/<arch>/<nvrtc>/<blake3 of the config>` a compiled binary
//! (binaries are per config and toolchain, shared by every shape that picked the config). The
//! namespace (default `jitune`) lets several fleets share one server; `v1` is the layout's
//! version, so a later layout can live beside this one during a rolling upgrade.

use crate::cache::store::BinaryKey;
use crate::key::{KernelId, ShapeBucket, TuningKey};

/// The default namespace of key names.
pub const DEFAULT_NAMESPACE: &str = "jitune";

/// The version of the key layout.
const LAYOUT: &str = "v1";

/// Builds and parses key names under one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `<ns>:v1:`
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_NAMESPACE)
    }
}

impl Keys {
    /// Key names under `namespace`.
    pub fn new(namespace: &str) -> Keys {
        Keys {
            prefix: format!("{namespace}:{LAYOUT}:"),
        }
    }

    fn tuning(key: &TuningKey) -> String {
        format!(
            "{}/{}/{:016x}",
            key.kernel.to_hex(),
            key.shape.to_text(),
            key.device
        )
    }

    /// The tuned winner of `key`.
    pub fn entry(&self, key: &TuningKey) -> String {
        format!("{}entry:{}", self.prefix, Keys::tuning(key))
    }

    /// The failed configs of `key` (a map: config text → record).
    pub fn failures(&self, key: &TuningKey) -> String {
        format!("{}fail:{}", self.prefix, Keys::tuning(key))
    }

    /// The tuning lease of `key`.
    pub fn lease(&self, key: &TuningKey) -> String {
        format!("{}lease:{}", self.prefix, Keys::tuning(key))
    }

    /// A compiled binary. The config is hashed: config texts can be long and contain any
    /// character, key names should not.
    pub fn binary(&self, key: &BinaryKey<'_>) -> String {
        let config = blake3::hash(key.config.as_bytes());
        format!(
            "{}bin:{}/{}/{}/{}",
            self.prefix,
            key.kernel.to_hex(),
            key.arch,
            key.nvrtc,
            &config.to_hex()[..32]
        )
    }

    /// The prefix every entry key starts with (for [`RemoteTier::scan`](super::RemoteTier::scan)).
    pub fn entry_prefix(&self) -> String {
        format!("{}entry:", self.prefix)
    }

    /// The tuning key an entry key names, `None` when `name` is not an entry key of this
    /// namespace or is malformed (a foreign or damaged key is skipped, never guessed at).
    pub fn parse_entry(&self, name: &str) -> Option<TuningKey> {
        let rest = name.strip_prefix(&self.entry_prefix())?;
        let mut parts = rest.split('/');
        let kernel = KernelId::from_hex(parts.next()?)?;
        let shape = ShapeBucket::from_text(parts.next()?)?;
        let device = parts.next()?;
        if device.len() != 16 || parts.next().is_some() {
            return None;
        }
        let device = u64::from_str_radix(device, 16).ok()?;
        let key = TuningKey {
            kernel,
            shape,
            device,
        };
        // Only the canonical spelling: `0x`-less, lower case, no leading `+` in the shape.
        (self.entry(&key) == name).then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_round_trip_and_reject_foreign_names() {
        let keys = Keys::default();
        let k = TuningKey {
            kernel: KernelId([0xab; 32]),
            shape: ShapeBucket::new(&[4096, 1, 11008]).unwrap(),
            device: 0x0123_4567_89ab_cdef,
        };
        let name = keys.entry(&k);
        assert_eq!(
            name,
            format!(
                "jitune:v1:entry:{}/4096x1x11008/0123456789abcdef",
                "ab".repeat(32)
            )
        );
        assert_eq!(keys.parse_entry(&name), Some(k));
        assert_eq!(Keys::new("other").parse_entry(&name), None);
        assert_eq!(keys.parse_entry(&name.replace("cdef", "CDEF")), None);
        assert_eq!(keys.parse_entry(&format!("{name}/x")), None);
        assert_eq!(keys.parse_entry(&keys.lease(&k)), None);
        assert!(keys.lease(&k).starts_with("jitune:v1:lease:"));
        assert!(keys.failures(&k).starts_with("jitune:v1:fail:"));
        let b = BinaryKey {
            kernel: k.kernel,
            config: "BM=64,BN=128",
            arch: "sm_90",
            nvrtc: "13.0",
        };
        let bin = keys.binary(&b);
        assert!(bin.starts_with(&format!("jitune:v1:bin:{}/sm_90/13.0/", "ab".repeat(32))));
        assert_ne!(
            bin,
            keys.binary(&BinaryKey {
                config: "BM=64,BN=64",
                ..b
            })
        );
    }
}
