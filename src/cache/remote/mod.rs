//! The fleet-wide remote tier: tuned winners shared by every host of a fleet through Redis.
//!
//! A fleet of inference servers should tune each key once and share the winner. This module is
//! that tier as a self-contained layer: the tuner asks it on a miss (after the user store), it
//! answers within a bounded wait or not at all, and nothing it returns is trusted until checked.
//!
//! | file | concern |
//! |---|---|
//! | [`tier`] | the transport trait [`RemoteTier`] (bytes, leases, listing) and [`RemoteError`] |
//! | [`memory`] | [`MemoryTier`]: the trait in process memory, with faults on demand (tests) |
//! | `redis_tier` | [`RedisTier`]: the trait on Redis (cargo feature `redis`) |
//! | [`keys`] | namespaced key names (`jitune:v1:entry:<kernel>/<shape>/<device>`, ...) |
//! | [`record`] | the wire form of records and their checks ([`Rejection`]) |
//! | [`secret`] | the fleet key (`JITUNE_REMOTE_KEY`) and the MAC of records and binaries |
//! | [`check`] | [`check_config`]: is a remote config a point of the current spec's space? |
//! | [`config`] | the URL (`JITUNE_REMOTE`) and the outage settings |
//! | `health` | back-off after failures, one warning per outage |
//! | `queue` | the bounded queue of writes made while the server is away |
//! | `link` | what every clone of a [`Remote`] shares, and the back-off gate of every call |
//! | [`client`] | [`Remote`]: all of the above as the cache and the tuner use it; its reads and leases |
//! | `writer` | [`Remote`]'s writes: sent through, queued in an outage, pushed by a flusher thread |
//!
//! How the tuner is meant to use it (see [`Remote`]): on a miss in memory and the user store,
//! [`Remote::lookup`]; on [`Lookup::Hit`], [`check_config`] against the spec's space, store
//! the entry in the user store (so a restart without Redis still hits) and load the verified
//! binary or compile the config; on a miss, [`Remote::try_lease`] and tune if acquired
//! ([`Remote::renew`] while tuning, [`Remote::publish`] then [`Remote::release`] after),
//! otherwise wait for the holder's winner; [`Remote::publish_failure`] for failed configs.

pub mod check;
pub mod client;
pub mod config;
mod health;
pub mod keys;
mod link;
pub mod memory;
mod queue;
pub mod record;
#[cfg(feature = "redis")]
mod redis_tier;
pub mod secret;
pub mod tier;
mod writer;

use std::sync::Arc;

pub use check::check_config;
pub use client::{Lease, LeaseOutcome, Listing, Lookup, Remote, RemoteHit, RemoteStats};
pub use config::{RemoteChoice, RemoteSettings, RemoteUrl, REMOTE_ENV, REMOTE_WAIT_ENV};
pub use keys::Keys;
pub use memory::MemoryTier;
pub use record::{Rejection, RECORD_SCHEMA};
#[cfg(feature = "redis")]
pub use redis_tier::RedisTier;
pub use secret::{FleetKey, REMOTE_KEY_ENV};
pub use tier::{LeaseToken, RemoteError, RemoteTier};
pub use writer::Published;

/// The transport for `url`: Redis when built with the `redis` feature, otherwise an error
/// saying so. Makes no connection.
pub fn open_tier(url: &RemoteUrl) -> Result<Arc<dyn RemoteTier>, RemoteError> {
    #[cfg(feature = "redis")]
    {
        Ok(Arc::new(RedisTier::new(url)?))
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(RemoteError::Config(format!(
            "{url}: this jitune was built without the `redis` cargo feature"
        )))
    }
}
