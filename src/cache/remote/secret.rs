//! The fleet secret: proof that a record (above all a compiled binary) was written by a member
//! of the fleet and not altered since.
//!
//! A CUBIN is machine code the process will load and run, so one from the wire is loaded only
//! when its keyed blake3 MAC verifies under a key derived from `JITUNE_REMOTE_KEY`. Without the
//! secret, binaries are neither sent nor accepted (configs still travel and are compiled
//! locally). The secret itself never leaves the process: a MAC key is derived from it with
//! `blake3::derive_key` under a context string of its own, so the same secret used elsewhere
//! gives unrelated keys.

use std::fmt;

/// Environment variable holding the fleet secret (any non-empty text; 32 random bytes in hex
/// or base64 is what it should be).
pub const REMOTE_KEY_ENV: &str = "JITUNE_REMOTE_KEY";

/// blake3 `derive_key` context of the MAC key: application, date, purpose, version.
const MAC_CONTEXT: &str = "jitune 2026-12-01 remote cache record MAC v1";

/// Secrets shorter than this are accepted with a warning.
const SHORT_SECRET: usize = 16;

/// The MAC key of a fleet.
#[derive(Clone)]
pub struct FleetKey {
    mac_key: [u8; 32],
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// The key of `secret`; `None` for an empty secret.
    pub fn from_secret(secret: &[u8]) -> Option<FleetKey> {
        if secret.is_empty() {
            return None;
        }
        if secret.len() < SHORT_SECRET {
            log::warn!(
                "jitune: {REMOTE_KEY_ENV} is only {} bytes; use at least {SHORT_SECRET} random bytes",
                secret.len()
            );
        }
        Some(FleetKey {
            mac_key: blake3::derive_key(MAC_CONTEXT, secret),
        })
    }

    /// The key of `$JITUNE_REMOTE_KEY`, `None` when unset or empty.
    pub fn from_env() -> Option<FleetKey> {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            std::env::var_os(REMOTE_KEY_ENV).and_then(|v| FleetKey::from_secret(v.as_bytes()))
        }
        #[cfg(not(unix))]
        {
            std::env::var(REMOTE_KEY_ENV)
                .ok()
                .and_then(|v| FleetKey::from_secret(v.as_bytes()))
        }
    }

    /// The MAC of `bytes`.
    pub fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, bytes).as_bytes()
    }

    /// Whether `mac` is the MAC of `bytes`, compared in constant time (`blake3::Hash`'s
    /// equality).
    pub fn verify(&self, bytes: &[u8], mac: &[u8]) -> bool {
        let Ok(mac) = <[u8; 32]>::try_from(mac) else {
            return false;
        };
        blake3::keyed_hash(&self.mac_key, bytes) == blake3::Hash::from(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_depend_on_secret_and_bytes() {
        assert!(FleetKey::from_secret(b"").is_none());
        let a = FleetKey::from_secret(b"0123456789abcdef0123").unwrap();
        let b = FleetKey::from_secret(b"0123456789abcdef0124").unwrap();
        let m = a.mac(b"cubin");
        assert!(a.verify(b"cubin", &m));
        assert!(!a.verify(b"cubiN", &m));
        assert!(!b.verify(b"cubin", &m));
        assert!(!a.verify(b"cubin", &m[..31]));
        // The MAC key is derived, not the secret itself used as a key.
        let mut raw = [0u8; 32];
        raw[..20].copy_from_slice(b"0123456789abcdef0123");
        assert_ne!(m, *blake3::keyed_hash(&raw, b"cubin").as_bytes());
        assert_eq!(format!("{a:?}"), "FleetKey(..)");
    }
}
