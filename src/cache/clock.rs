//! The cache's one clock: unix seconds for entries and records, milliseconds for leases.
//!
//! A file of its own so that every part of the cache (the entry type, the stores, the lease
//! table, the fleet tier) reads time the same way without reaching up to [`Cache`](super::Cache)
//! for it.

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    unix_ms() / 1000
}

/// The current time in unix milliseconds (0 if the clock is before 1970); leases keep time so.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
