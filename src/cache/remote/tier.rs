//! The transport a remote tier offers: bytes under string keys, leases, listing.
//!
//! The trait is deliberately byte-level and small, so that a backend (Redis, the in-process
//! [`MemoryTier`](super::MemoryTier) of the tests) is only a transport: it never decodes or
//! trusts what it carries. Records, their verification, bounded waits, back-off and the write
//! queue live above it ([`Remote`](super::Remote)), once for every backend.
//!
//! Every call takes a deadline: the backend answers by then or fails with
//! [`RemoteError::Timeout`]. That is how a miss waits on the remote for a bounded time.

use std::fmt;
use std::time::{Duration, Instant};

/// Why a remote call did not get an answer. None of these are about the data (a record that
/// fails its checks is a [`Rejection`](super::Rejection), not an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteError {
    /// No answer by the deadline (connect, send or reply).
    Timeout(String),
    /// The server could not be reached or the connection broke.
    Unreachable(String),
    /// The server answered with an error (authentication, wrong type, out of memory, ...).
    Server(String),
    /// The tier is backing off after failures; nothing was sent.
    BackingOff,
    /// The remote tier is not usable as configured (a bad URL, a missing cargo feature).
    Config(String),
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Timeout(m) => write!(f, "remote cache timed out: {m}"),
            RemoteError::Unreachable(m) => write!(f, "remote cache unreachable: {m}"),
            RemoteError::Server(m) => write!(f, "remote cache server error: {m}"),
            RemoteError::BackingOff => {
                f.write_str("remote cache unavailable (backing off after failures)")
            }
            RemoteError::Config(m) => write!(f, "remote cache configuration: {m}"),
        }
    }
}

impl std::error::Error for RemoteError {}

/// A lease owner's secret: whoever holds it may renew or release the lease. 16 bytes, written
/// as 32 lower-case hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub [u8; 16]);

impl LeaseToken {
    /// A token no other process or call is likely to produce: blake3 of the process id, the
    /// time, a per-process counter, the thread and a per-process random seed (std's
    /// `RandomState`, seeded from the OS). Hand-written rather than a `getrandom` dependency:
    /// uniqueness is all a token needs, and blake3 is already here.
    pub fn new() -> LeaseToken {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = blake3::Hasher::new();
        h.update(b"jitune lease token");
        h.update(&std::process::id().to_le_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(&now.to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(format!("{:?}", std::thread::current().id()).as_bytes());
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u64(now as u64);
        h.update(&seed.finish().to_le_bytes());
        let mut t = [0u8; 16];
        t.copy_from_slice(&h.finalize().as_bytes()[..16]);
        LeaseToken(t)
    }

    /// The wire form: 32 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        LeaseToken::new()
    }
}

impl fmt::Debug for LeaseToken {
    /// Only a prefix: the token is what lets its holder release the lease.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({}..)", &self.to_hex()[..8])
    }
}

/// A remote key/value store with expiring, owner-checked leases.
///
/// Keys are built by [`Keys`](super::Keys); values are encoded records. Implementations must
/// be safe to call from many threads at once, must never block past `deadline` by more than a
/// scheduling delay, and must never panic on anything the server sends.
pub trait RemoteTier: Send + Sync {
    /// Where the tier lives, for log lines (no password).
    fn describe(&self) -> String;

    /// The value under `key`, `None` when absent.
    fn get(&self, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, RemoteError>;

    /// Sets `key` to `value` (replacing any value, no expiry).
    fn put(&self, key: &str, value: &[u8], deadline: Instant) -> Result<(), RemoteError>;

    /// Sets field `field` of the map under `key` (a Redis hash): for records kept per key and
    /// config, such as failures.
    fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        deadline: Instant,
    ) -> Result<(), RemoteError>;

    /// Every field of the map under `key` (empty when absent).
    fn fields(&self, key: &str, deadline: Instant) -> Result<Vec<(String, Vec<u8>)>, RemoteError>;

    /// Takes the lease `key` for `ttl` if nobody holds it (`SET key token NX PX ttl`): `true`
    /// when this call took it.
    fn try_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError>;

    /// Extends the lease to `ttl` from now if `token` still holds it (compare-and-pexpire):
    /// `false` when it expired or another holder has it.
    fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError>;

    /// Drops the lease if `token` holds it (compare-and-delete): `false` when it did not.
    fn release(
        &self,
        key: &str,
        token: &LeaseToken,
        deadline: Instant,
    ) -> Result<bool, RemoteError>;

    /// Every key starting with `prefix` (for listing and pulling; an incremental scan, so a
    /// large store is not blocked, but the answer may miss keys written meanwhile).
    fn scan(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, RemoteError>;
}
