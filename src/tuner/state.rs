//! One map from key to what a launch of that key does now, replacing the tuner's separate maps of
//! plans, keys being tuned and single-flight gates.
//!
//! A key is either `Ready` (its plan: a tuned winner, a cached entry, or the default in
//! cache-only mode) or `Busy`: one thread is resolving it (looking it up, compiling, tuning),
//! launches meanwhile use its provisional plan when there is one, and callers that must wait
//! (Blocking mode, or any miss before a provisional plan exists) wait on its [`Flight`]. A key
//! has one slot whatever happens to it, and a `Busy` slot becomes `Ready` or is removed when its
//! resolver ends, so nothing in the map grows without bound.
//!
//! The map is generic over the plan type so that `benches/cache_hit` measures the very lookup a
//! launch makes without a GPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

use crate::key::{KeyHashBuilder, TuningKey};

/// What waiters of a busy key wait on: a counter bumped at every change of the key's slot.
#[derive(Default)]
pub struct Flight {
    changes: Mutex<u64>,
    cv: Condvar,
}

impl Flight {
    /// The number of changes so far (read before looking at the slot, then wait past it).
    pub fn seen(&self) -> u64 {
        *self.changes.lock()
    }

    fn bump(&self) {
        *self.changes.lock() += 1;
        self.cv.notify_all();
    }

    /// Waits until the slot changed after `seen`, or until `deadline`; whether it changed.
    pub fn wait_past(&self, seen: u64, deadline: Option<Instant>) -> bool {
        let mut g = self.changes.lock();
        while *g == seen {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut g, d).timed_out() {
                        return *g != seen;
                    }
                }
                None => {
                    // Wake now and then regardless: a resolver that died without a word (it
                    // cannot, but a missed wake-up must not hang a launch) is noticed by the
                    // caller re-reading the slot.
                    let _ = self.cv.wait_for(&mut g, Duration::from_secs(1));
                }
            }
        }
        true
    }
}

/// One key's state.
pub enum Slot<P> {
    /// Launches use this plan.
    Ready(Arc<P>),
    /// A thread is resolving the key; launches use `provisional` meanwhile if there is one.
    Busy {
        provisional: Option<Arc<P>>,
        flight: Arc<Flight>,
    },
}

/// What [`KeyStates::claim`] found.
pub enum Claim<P> {
    /// The key was free: the caller resolves it and must end with [`KeyStates::install`] or
    /// [`KeyStates::release`].
    Mine,
    /// The key is ready.
    Ready(Arc<P>),
    /// Another thread resolves the key; this plan serves meanwhile.
    Provisional(Arc<P>),
    /// Another thread resolves the key and nothing can be launched yet.
    Wait(Arc<Flight>),
}

/// The map from key to [`Slot`].
pub struct KeyStates<P> {
    map: DashMap<TuningKey, Slot<P>, KeyHashBuilder>,
}

impl<P> Default for KeyStates<P> {
    fn default() -> Self {
        KeyStates {
            map: DashMap::with_hasher(KeyHashBuilder::default()),
        }
    }
}

impl<P> KeyStates<P> {
    /// The hit path: the plan a launch of `key` uses now (ready or provisional). One shard read
    /// lock and a reference count; no allocation.
    #[inline]
    pub fn plan(&self, key: &TuningKey) -> Option<Arc<P>> {
        match self.map.get(key)?.value() {
            Slot::Ready(p) => Some(p.clone()),
            Slot::Busy {
                provisional: Some(p),
                ..
            } => Some(p.clone()),
            Slot::Busy { .. } => None,
        }
    }

    /// Claims `key` for resolving, or says who has it.
    pub fn claim(&self, key: TuningKey) -> Claim<P> {
        use dashmap::mapref::entry::Entry;
        match self.map.entry(key) {
            Entry::Vacant(v) => {
                v.insert(Slot::Busy {
                    provisional: None,
                    flight: Arc::new(Flight::default()),
                });
                Claim::Mine
            }
            Entry::Occupied(o) => match o.get() {
                Slot::Ready(p) => Claim::Ready(p.clone()),
                Slot::Busy {
                    provisional: Some(p),
                    ..
                } => Claim::Provisional(p.clone()),
                Slot::Busy {
                    provisional: None,
                    flight,
                } => Claim::Wait(flight.clone()),
            },
        }
    }

    /// Waits for `key`'s slot to move on from "busy, nothing to launch" under `flight` (a
    /// [`Claim::Wait`]), or until `deadline`; whether it moved. Callers then claim again.
    pub fn wait(&self, key: &TuningKey, flight: &Arc<Flight>, deadline: Option<Instant>) -> bool {
        let seen = flight.seen();
        let still = matches!(
            self.map.get(key).as_deref(),
            Some(Slot::Busy { provisional: None, flight: f }) if Arc::ptr_eq(f, flight)
        );
        !still || flight.wait_past(seen, deadline)
    }

    /// Sets the plan launches use while the claimer goes on resolving `key`.
    pub fn set_provisional(&self, key: &TuningKey, plan: Arc<P>) {
        if let Some(mut s) = self.map.get_mut(key) {
            if let Slot::Busy {
                provisional,
                flight,
            } = s.value_mut()
            {
                *provisional = Some(plan);
                flight.bump();
            }
        }
    }

    /// Makes `plan` the key's plan (ending a claim, or replacing a ready plan) and wakes the
    /// key's waiters.
    pub fn install(&self, key: TuningKey, plan: Arc<P>) -> Arc<P> {
        if let Some(Slot::Busy { flight, .. }) = self.map.insert(key, Slot::Ready(plan.clone())) {
            flight.bump();
        }
        plan
    }

    /// Ends a claim without a plan (the resolver failed): the key is free again, and its waiters
    /// wake to claim it themselves.
    pub fn release(&self, key: &TuningKey) {
        if let Some((_, Slot::Busy { flight, .. })) = self
            .map
            .remove_if(key, |_, s| matches!(s, Slot::Busy { .. }))
        {
            flight.bump();
        }
    }

    /// Forgets a ready key (the next launch resolves it again).
    pub fn forget(&self, key: &TuningKey) {
        self.map.remove_if(key, |_, s| matches!(s, Slot::Ready(_)));
    }

    /// Keys being resolved now.
    pub fn busy(&self) -> usize {
        self.map
            .iter()
            .filter(|r| matches!(r.value(), Slot::Busy { .. }))
            .count()
    }

    /// Keys in the map.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KernelId, ShapeBucket};

    fn key(n: i64) -> TuningKey {
        TuningKey {
            kernel: KernelId([1; 32]),
            shape: ShapeBucket::new(&[n]).unwrap(),
            device: 7,
        }
    }

    #[test]
    fn a_key_goes_busy_provisional_ready_with_one_slot() {
        let s: KeyStates<&'static str> = KeyStates::default();
        let k = key(1);
        assert!(s.plan(&k).is_none());
        assert!(matches!(s.claim(k), Claim::Mine), "a free key is mine");
        let Claim::Wait(flight) = s.claim(k) else {
            panic!("a claimed key without a plan is waited for")
        };
        assert!(
            s.plan(&k).is_none(),
            "busy without a plan: nothing to launch"
        );
        let seen = flight.seen();
        s.set_provisional(&k, Arc::new("provisional"));
        assert!(flight.wait_past(seen, Some(Instant::now())));
        assert_eq!(s.plan(&k).as_deref(), Some(&"provisional"));
        assert!(matches!(s.claim(k), Claim::Provisional(_)));
        s.install(k, Arc::new("winner"));
        assert_eq!(s.plan(&k).as_deref(), Some(&"winner"));
        assert!(matches!(s.claim(k), Claim::Ready(_)));
        assert_eq!((s.len(), s.busy()), (1, 0));
        // A release only ends a claim; a ready plan stays.
        s.release(&k);
        assert_eq!(s.plan(&k).as_deref(), Some(&"winner"));
        s.forget(&k);
        assert!(s.is_empty());
    }

    #[test]
    fn waiters_wake_when_the_resolver_installs_or_gives_up() {
        let s: Arc<KeyStates<u32>> = Arc::new(KeyStates::default());
        let k = key(2);
        assert!(matches!(s.claim(k), Claim::Mine));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || loop {
                    match s.claim(k) {
                        Claim::Ready(p) => return Some(*p),
                        Claim::Mine => {
                            // The resolver gave up: this thread resolves it now.
                            s.install(k, Arc::new(9));
                            return None;
                        }
                        Claim::Provisional(_) => unreachable!("no provisional plan here"),
                        Claim::Wait(f) => {
                            s.wait(&k, &f, None);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        s.release(&k);
        let got: Vec<Option<u32>> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        // Exactly one waiter took the key over; the others launched its plan.
        assert_eq!(got.iter().filter(|g| g.is_none()).count(), 1, "{got:?}");
        assert!(got.iter().flatten().all(|p| *p == 9));
        assert_eq!((s.len(), s.busy()), (1, 0));
    }
}
