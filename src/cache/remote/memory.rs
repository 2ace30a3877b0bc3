//! An in-process remote tier: the same contract as Redis, in a map, with faults on demand.
//!
//! It exists so that the layers above the transport (records, back-off, the write queue,
//! leases as the tuner uses them) can be tested without a server, and so that a test can make
//! the "server" go away, come back, or answer slowly at an exact moment. Leases expire on the
//! monotonic clock like Redis's `PX`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::tier::{LeaseToken, RemoteError, RemoteTier};

#[derive(Default)]
struct State {
    values: BTreeMap<String, Vec<u8>>,
    maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    leases: HashMap<String, (LeaseToken, Instant)>,
}

/// A remote tier in this process's memory.
#[derive(Default)]
pub struct MemoryTier {
    name: String,
    state: Mutex<State>,
    down: AtomicBool,
    latency_us: AtomicU64,
    calls: AtomicU64,
}

impl MemoryTier {
    /// An empty, reachable tier.
    pub fn new() -> MemoryTier {
        MemoryTier::default()
    }

    /// An empty tier that [`describe`](RemoteTier::describe)s itself as `name` (tests tell
    /// their log lines apart by it).
    pub fn with_name(name: &str) -> MemoryTier {
        MemoryTier {
            name: name.to_string(),
            ..MemoryTier::default()
        }
    }

    /// Makes every call fail as unreachable (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes every call take `latency` (a call whose deadline comes first times out at it).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// Calls made so far (including failed ones): lets tests check that a path did not touch
    /// the tier.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Number of plain values stored.
    pub fn len(&self) -> usize {
        self.state.lock().values.len()
    }

    /// Whether no plain value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Models one round trip: counts it, waits the latency (up to the deadline), fails when
    /// down.
    fn round_trip(&self, deadline: Instant) -> Result<(), RemoteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let latency = Duration::from_micros(self.latency_us.load(Ordering::SeqCst));
        if !latency.is_zero() {
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(latency.min(left));
            if latency > left {
                return Err(RemoteError::Timeout(format!(
                    "in-process tier answers in {latency:?}"
                )));
            }
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(RemoteError::Unreachable("in-process tier is down".into()));
        }
        Ok(())
    }

    /// Runs `act` if `token` holds the live lease `key` (compare-and-act): whether it did.
    fn as_owner(
        &self,
        key: &str,
        token: &LeaseToken,
        deadline: Instant,
        act: impl FnOnce(&mut State),
    ) -> Result<bool, RemoteError> {
        self.round_trip(deadline)?;
        let mut st = self.state.lock();
        if MemoryTier::live_lease(&mut st, key) != Some(*token) {
            return Ok(false);
        }
        act(&mut st);
        Ok(true)
    }

    /// The live lease on `key` (expired ones are dropped).
    fn live_lease(st: &mut State, key: &str) -> Option<LeaseToken> {
        match st.leases.get(key) {
            Some((t, until)) if *until > Instant::now() => Some(*t),
            Some(_) => {
                st.leases.remove(key);
                None
            }
            None => None,
        }
    }
}

impl RemoteTier for MemoryTier {
    fn describe(&self) -> String {
        if self.name.is_empty() {
            "in-process tier".into()
        } else {
            format!("in-process tier `{}`", self.name)
        }
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, RemoteError> {
        self.round_trip(deadline)?;
        Ok(self.state.lock().values.get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8], deadline: Instant) -> Result<(), RemoteError> {
        self.round_trip(deadline)?;
        self.state
            .lock()
            .values
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        deadline: Instant,
    ) -> Result<(), RemoteError> {
        self.round_trip(deadline)?;
        self.state
            .lock()
            .maps
            .entry(key.to_string())
            .or_default()
            .insert(field.to_string(), value.to_vec());
        Ok(())
    }

    fn fields(&self, key: &str, deadline: Instant) -> Result<Vec<(String, Vec<u8>)>, RemoteError> {
        self.round_trip(deadline)?;
        Ok(self
            .state
            .lock()
            .maps
            .get(key)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn try_lease(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        self.round_trip(deadline)?;
        let mut st = self.state.lock();
        if MemoryTier::live_lease(&mut st, key).is_some() {
            return Ok(false);
        }
        st.leases
            .insert(key.to_string(), (*token, Instant::now() + ttl));
        Ok(true)
    }

    fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        self.as_owner(key, token, deadline, |st| {
            st.leases
                .insert(key.to_string(), (*token, Instant::now() + ttl));
        })
    }

    fn release(
        &self,
        key: &str,
        token: &LeaseToken,
        deadline: Instant,
    ) -> Result<bool, RemoteError> {
        self.as_owner(key, token, deadline, |st| {
            st.leases.remove(key);
        })
    }

    fn scan(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, RemoteError> {
        self.round_trip(deadline)?;
        let st = self.state.lock();
        let mut out: Vec<String> = st
            .values
            .keys()
            .chain(st.maps.keys())
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        out.extend(st.leases.keys().filter(|k| k.starts_with(prefix)).cloned());
        Ok(out)
    }
}
