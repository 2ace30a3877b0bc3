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

use std::sync::atomic::{AtomicU64, Ordering};
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
                    // Wake now and then to look at the counter again: cheap insurance against
                    // a missed wake-up (every change notifies under the lock, so none is
                    // expected).
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
    /// Bumped after every change of what some key launches (see [`KeyStates::generation`]).
    generation: Generation,
}

/// The plan generation, on a cache line of its own: every launch reads it, changes are rare, and
/// no other write may evict it from the readers' caches.
#[repr(align(64))]
#[derive(Default)]
struct Generation(AtomicU64);

impl<P> Default for KeyStates<P> {
    fn default() -> Self {
        KeyStates {
            map: DashMap::with_hasher(KeyHashBuilder::default()),
            generation: Generation::default(),
        }
    }
}

impl<P> KeyStates<P> {
    /// The plan generation: it changes after any key's plan does (installed, provisional, or
    /// gone). A plan found in the map after reading generation `g` is what the key launches for
    /// as long as the generation is still `g`, which lets a thread keep it ([`super::recent`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.0.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.0.fetch_add(1, Ordering::AcqRel);
    }

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

    /// Sets the plan launches use while the claimer goes on resolving `key`; returns the
    /// provisional plan it replaces, if any.
    pub fn set_provisional(&self, key: &TuningKey, plan: Arc<P>) -> Option<Arc<P>> {
        let mut s = self.map.get_mut(key)?;
        if let Slot::Busy {
            provisional,
            flight,
        } = s.value_mut()
        {
            let old = provisional.replace(plan);
            flight.bump();
            drop(s);
            self.changed();
            return old;
        }
        None
    }

    /// Makes `plan` the key's plan (ending a claim, or replacing a ready plan) and wakes the
    /// key's waiters; returns the plan launches used before (a ready plan or a provisional one),
    /// which the caller keeps alive while a graph captured with it may still launch it.
    pub fn install(&self, key: TuningKey, plan: Arc<P>) -> Option<Arc<P>> {
        let before = self.map.insert(key, Slot::Ready(plan));
        self.changed();
        match before? {
            Slot::Ready(old) => Some(old),
            Slot::Busy {
                provisional,
                flight,
            } => {
                flight.bump();
                provisional
            }
        }
    }

    /// Ends a claim without a plan (the resolver failed): the key is free again, and its waiters
    /// wake to claim it themselves. Returns the provisional plan the key had, if any.
    pub fn release(&self, key: &TuningKey) -> Option<Arc<P>> {
        let removed = self
            .map
            .remove_if(key, |_, s| matches!(s, Slot::Busy { .. }));
        if removed.is_some() {
            self.changed();
        }
        match removed {
            Some((
                _,
                Slot::Busy {
                    provisional,
                    flight,
                },
            )) => {
                flight.bump();
                provisional
            }
            _ => None,
        }
    }

    /// Forgets a ready key (the next launch resolves it again); returns its plan.
    pub fn forget(&self, key: &TuningKey) -> Option<Arc<P>> {
        let removed = self.map.remove_if(key, |_, s| matches!(s, Slot::Ready(_)));
        if removed.is_some() {
            self.changed();
        }
        match removed {
            Some((_, Slot::Ready(p))) => Some(p),
            _ => None,
        }
    }

    /// The launchable plans (ready or provisional) of other shape buckets of `key`'s kernel on
    /// `key`'s device, nearest bucket first (by [`ShapeBucket::distance`]): what a launch
    /// inside a CUDA graph capture may use for a key that has none, since their binaries are
    /// loaded already. Walks the whole map: for misses only.
    ///
    /// [`ShapeBucket::distance`]: crate::key::ShapeBucket::distance
    pub fn loaded_near(&self, key: &TuningKey) -> Vec<(TuningKey, Arc<P>)> {
        let mut near: Vec<(f64, TuningKey, Arc<P>)> = self
            .map
            .iter()
            .filter(|r| {
                let k = r.key();
                k.kernel == key.kernel && k.device == key.device && k.shape != key.shape
            })
            .filter_map(|r| {
                let p = match r.value() {
                    Slot::Ready(p) => p.clone(),
                    Slot::Busy {
                        provisional: Some(p),
                        ..
                    } => p.clone(),
                    Slot::Busy { .. } => return None,
                };
                let d = key.shape.distance(&r.key().shape);
                d.is_finite().then_some((d, *r.key(), p))
            })
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        near.into_iter().map(|(_, k, p)| (k, p)).collect()
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
pub(crate) mod tests {
    use super::*;
    use crate::key::{KernelId, ShapeBucket};

    /// A key of kernel 1 on device 7 with the one-dimensional bucket `n`.
    pub(crate) fn key(n: i64) -> TuningKey {
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
    fn replaced_plans_are_handed_back() {
        let s: KeyStates<&'static str> = KeyStates::default();
        let k = key(3);
        assert!(matches!(s.claim(k), Claim::Mine));
        assert!(s.set_provisional(&k, Arc::new("p0")).is_none());
        assert_eq!(
            s.set_provisional(&k, Arc::new("p1")).as_deref(),
            Some(&"p0")
        );
        // Ending the claim hands back the provisional plan that served.
        assert_eq!(s.install(k, Arc::new("w0")).as_deref(), Some(&"p1"));
        assert_eq!(s.install(k, Arc::new("w1")).as_deref(), Some(&"w0"));
        assert!(
            s.set_provisional(&k, Arc::new("x")).is_none(),
            "ready: no claim"
        );
        assert_eq!(s.plan(&k).as_deref(), Some(&"w1"));
        assert_eq!(s.forget(&k).as_deref(), Some(&"w1"));
        assert!(matches!(s.claim(k), Claim::Mine));
        s.set_provisional(&k, Arc::new("p2"));
        assert_eq!(s.release(&k).as_deref(), Some(&"p2"));
        assert!(s.is_empty());
    }

    #[test]
    fn loaded_near_lists_other_buckets_of_the_kernel_nearest_first() {
        let s: KeyStates<&'static str> = KeyStates::default();
        let other_kernel = TuningKey {
            kernel: KernelId([2; 32]),
            ..key(64)
        };
        let other_device = TuningKey {
            device: 8,
            ..key(64)
        };
        s.install(key(1024), Arc::new("far"));
        s.install(key(64), Arc::new("near"));
        s.install(other_kernel, Arc::new("other kernel"));
        s.install(other_device, Arc::new("other device"));
        // A busy key serves its provisional plan; one without a plan is skipped.
        assert!(matches!(s.claim(key(256)), Claim::Mine));
        s.set_provisional(&key(256), Arc::new("provisional"));
        assert!(matches!(s.claim(key(8)), Claim::Mine));
        let near: Vec<&str> = s
            .loaded_near(&key(128))
            .into_iter()
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(near.len(), 3, "{near:?}");
        // 64 and 256 are one octave from 128; 1024 three.
        assert_eq!(near[2], "far");
        assert!(near[..2].contains(&"near") && near[..2].contains(&"provisional"));
        assert!(
            s.loaded_near(&key(64)).iter().all(|(k, _)| *k != key(64)),
            "the key itself is not its own neighbour"
        );
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
