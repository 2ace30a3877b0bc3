//! When a key's plan may change under an application: the swap policy, the queue of winners
//! waiting for [`Tuner::apply_swaps`](super::Tuner::apply_swaps), the generation counter that
//! tells when a CUDA graph must be re-captured, and the plans swapped out.
//!
//! Why a policy: a CUDA graph holds the kernels it captured. A background winner swapped in
//! after a capture is invisible to that graph until the application captures again, and
//! tensor-parallel ranks that swap at different steps run different kernels for a while. With
//! [`SwapPolicy::OnRequest`] a finished winner waits here until the application applies the
//! swaps at a step boundary (every rank at the same step), and the generation bump tells it to
//! re-capture. [`SwapPolicy::Immediate`] swaps as soon as a winner is ready (and still bumps the
//! generation).
//!
//! Why plans are kept after a swap: a graph captured before the swap launches the old plan's
//! function, so its module must stay loaded (unloading it would also be a driver call that can
//! break a capture in progress). Swapped-out plans are kept for the tuner's lifetime; there are
//! at most a few per key.
//!
//! Generic over the plan type so that the policy is tested without a GPU.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::state::KeyStates;
use crate::key::TuningKey;

/// When a tuned winner replaces the plan launches of its key use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SwapPolicy {
    /// As soon as it is ready (and the generation goes up).
    #[default]
    Immediate,
    /// When the application calls [`Tuner::apply_swaps`](super::Tuner::apply_swaps) (at a step
    /// boundary); until then launches keep the plan they had.
    OnRequest,
}

/// What became of a plan handed to [`Swaps::finish`].
pub enum Finished<P> {
    /// The key had no plan: this is its first (not a swap).
    Installed,
    /// It replaced `old` at once; the generation is now `generation`.
    Swapped { old: Arc<P>, generation: u64 },
    /// It waits for [`Swaps::apply`]; launches keep `serving`.
    Queued { serving: Arc<P> },
}

/// One swap applied by [`Swaps::apply`].
pub struct Applied<P> {
    pub key: TuningKey,
    pub old: Option<Arc<P>>,
    pub new: Arc<P>,
}

/// The policy, the queue, the generation and the swapped-out plans of one tuner.
pub struct Swaps<P> {
    policy: AtomicU8,
    generation: AtomicU64,
    applied: AtomicU64,
    /// Winners waiting for `apply`, at most one per key (a newer winner replaces an older one).
    /// Also serialises every change of a key's plan made through here.
    pending: Mutex<Vec<(TuningKey, Arc<P>)>>,
    retired: Mutex<Vec<Arc<P>>>,
}

impl<P> Default for Swaps<P> {
    fn default() -> Self {
        Swaps {
            policy: AtomicU8::new(0),
            generation: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
        }
    }
}

impl<P> Swaps<P> {
    pub fn policy(&self) -> SwapPolicy {
        match self.policy.load(Ordering::Relaxed) {
            0 => SwapPolicy::Immediate,
            _ => SwapPolicy::OnRequest,
        }
    }

    pub fn set_policy(&self, p: SwapPolicy) {
        self.policy.store(p as u8, Ordering::Relaxed);
    }

    /// Bumped whenever a plan that launches may have used (and a graph captured) is replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Swaps applied so far (at once or on request).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Winners waiting for [`Swaps::apply`].
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Keeps a plan that launches used (and a graph may hold) loaded.
    pub fn retire(&self, plan: Arc<P>) {
        self.retired.lock().push(plan);
    }

    /// Plans kept after being replaced.
    pub fn retired(&self) -> usize {
        self.retired.lock().len()
    }

    /// A key's resolution ends with `plan` (a tuned winner, a cached entry, a default): it
    /// becomes the key's plan now, unless the key already serves a plan and the policy is
    /// `OnRequest`, in which case the serving plan becomes the key's ready plan (waking any
    /// waiters) and `plan` waits for [`Swaps::apply`].
    pub fn finish(&self, states: &KeyStates<P>, key: TuningKey, plan: Arc<P>) -> Finished<P> {
        let mut pending = self.pending.lock();
        if self.policy() == SwapPolicy::OnRequest {
            if let Some(serving) = states.plan(&key) {
                if !Arc::ptr_eq(&serving, &plan) {
                    states.install(key, serving.clone());
                    pending.retain(|(k, _)| *k != key);
                    pending.push((key, plan));
                    return Finished::Queued { serving };
                }
            }
        }
        match states.install(key, plan.clone()) {
            Some(old) if !Arc::ptr_eq(&old, &plan) => {
                drop(pending);
                self.retire(old.clone());
                self.applied.fetch_add(1, Ordering::Relaxed);
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                Finished::Swapped { old, generation }
            }
            _ => Finished::Installed,
        }
    }

    /// A provisional plan for a key being resolved: set unless the key serves one already and
    /// the policy is `OnRequest` (then the one serving stays, and `plan` is kept loaded
    /// unused). Returns the plan launches use now, and the plan it replaced with the new
    /// generation when it replaced one (a swap).
    pub fn provisional(
        &self,
        states: &KeyStates<P>,
        key: &TuningKey,
        plan: Arc<P>,
    ) -> (Arc<P>, Option<(Arc<P>, u64)>) {
        let _serialised = self.pending.lock();
        if self.policy() == SwapPolicy::OnRequest {
            if let Some(serving) = states.plan(key) {
                self.retire(plan);
                return (serving, None);
            }
        }
        if let Some(old) = states.set_provisional(key, plan.clone()) {
            self.retire(old.clone());
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            return (plan, Some((old, generation)));
        }
        (plan, None)
    }

    /// Applies every queued winner (in the order they were queued) and bumps the generation
    /// once if any was applied. Returns what was applied.
    pub fn apply(&self, states: &KeyStates<P>) -> Vec<Applied<P>> {
        let mut pending = self.pending.lock();
        let done: Vec<Applied<P>> = pending
            .drain(..)
            .map(|(key, new)| {
                let old = states.install(key, new.clone());
                Applied { key, old, new }
            })
            .collect();
        if !done.is_empty() {
            self.applied.fetch_add(done.len() as u64, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        drop(pending);
        let mut retired = self.retired.lock();
        retired.extend(done.iter().filter_map(|a| a.old.clone()));
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuner::state::tests::key;
    use crate::tuner::state::Claim;

    /// A key in background tuning: claimed, serving a provisional plan.
    fn provisional(s: &KeyStates<&'static str>, k: TuningKey, p: &'static str) {
        assert!(matches!(s.claim(k), Claim::Mine));
        s.set_provisional(&k, Arc::new(p));
    }

    #[test]
    fn immediate_swaps_at_once_and_bumps_the_generation() {
        let (s, w) = (KeyStates::default(), Swaps::default());
        provisional(&s, key(1), "default");
        assert!(matches!(
            w.finish(&s, key(1), Arc::new("winner")),
            Finished::Swapped { generation: 1, .. }
        ));
        assert_eq!(s.plan(&key(1)).as_deref(), Some(&"winner"));
        assert_eq!((w.generation(), w.applied(), w.retired()), (1, 1, 1));
        // A key's first plan is no swap.
        assert!(matches!(s.claim(key(2)), Claim::Mine));
        assert!(matches!(
            w.finish(&s, key(2), Arc::new("cached")),
            Finished::Installed
        ));
        assert_eq!((w.generation(), w.applied()), (1, 1));
        assert!(w.apply(&s).is_empty(), "nothing queued");
        assert_eq!(w.generation(), 1);
    }

    #[test]
    fn on_request_winners_wait_for_apply_and_bump_the_generation_once() {
        let (s, w) = (KeyStates::default(), Swaps::default());
        w.set_policy(SwapPolicy::OnRequest);
        provisional(&s, key(1), "p1");
        provisional(&s, key(2), "p2");
        assert!(matches!(
            w.finish(&s, key(1), Arc::new("w1")),
            Finished::Queued { .. }
        ));
        // The key is ready (waiters wake) with the plan it served; nothing changed for launches.
        assert!(matches!(s.claim(key(1)), Claim::Ready(p) if *p == "p1"));
        assert_eq!(s.busy(), 1, "key 2 still busy");
        w.finish(&s, key(2), Arc::new("w2-old"));
        // A newer winner of the same key replaces the queued one.
        w.finish(&s, key(2), Arc::new("w2"));
        assert_eq!((w.pending(), w.generation(), w.applied()), (2, 0, 0));
        assert_eq!(s.plan(&key(2)).as_deref(), Some(&"p2"));
        let applied = w.apply(&s);
        let got: Vec<(TuningKey, &str, &str)> = applied
            .iter()
            .map(|a| (a.key, *a.old.clone().unwrap(), *a.new))
            .collect();
        assert_eq!(got, [(key(1), "p1", "w1"), (key(2), "p2", "w2")]);
        assert_eq!(s.plan(&key(1)).as_deref(), Some(&"w1"));
        assert_eq!(s.plan(&key(2)).as_deref(), Some(&"w2"));
        assert_eq!(
            (w.pending(), w.generation(), w.applied(), w.retired()),
            (0, 1, 2, 2)
        );
        assert!(w.apply(&s).is_empty());
        assert_eq!(w.generation(), 1, "an empty apply changes nothing");
    }

    #[test]
    fn on_request_first_plans_are_not_held_back() {
        let (s, w) = (KeyStates::default(), Swaps::default());
        w.set_policy(SwapPolicy::OnRequest);
        assert!(matches!(s.claim(key(1)), Claim::Mine));
        assert!(matches!(
            w.finish(&s, key(1), Arc::new("first")),
            Finished::Installed
        ));
        assert_eq!(s.plan(&key(1)).as_deref(), Some(&"first"));
        assert_eq!((w.pending(), w.generation()), (0, 0));
    }

    #[test]
    fn a_provisional_plan_is_kept_under_on_request_and_replaced_under_immediate() {
        let (s, w) = (KeyStates::default(), Swaps::default());
        w.set_policy(SwapPolicy::OnRequest);
        provisional(&s, key(1), "from capture");
        let (serving, swapped) = w.provisional(&s, &key(1), Arc::new("compiled default"));
        assert_eq!(*serving, "from capture");
        assert!(swapped.is_none());
        assert_eq!(w.generation(), 0);
        w.set_policy(SwapPolicy::Immediate);
        let (serving, swapped) = w.provisional(&s, &key(1), Arc::new("compiled default"));
        assert_eq!(*serving, "compiled default");
        let (old, generation) = swapped.expect("it replaced the plan from the capture");
        assert_eq!((*old, generation), ("from capture", 1));
        assert_eq!(s.plan(&key(1)).as_deref(), Some(&"compiled default"));
        assert_eq!(w.generation(), 1, "a launched plan changed");
        // A key without a provisional plan just gets one.
        assert!(matches!(s.claim(key(2)), Claim::Mine));
        assert!(w.provisional(&s, &key(2), Arc::new("p")).1.is_none());
        assert_eq!(w.generation(), 1);
    }

    #[test]
    fn apply_races_with_finish_without_losing_a_winner() {
        let s: Arc<KeyStates<u32>> = Arc::new(KeyStates::default());
        let w: Arc<Swaps<u32>> = Arc::new(Swaps::default());
        w.set_policy(SwapPolicy::OnRequest);
        for i in 0..200 {
            assert!(matches!(s.claim(key(i + 1)), Claim::Mine));
            s.set_provisional(&key(i + 1), Arc::new(0));
        }
        let finisher = {
            let (s, w) = (s.clone(), w.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    w.finish(&s, key(i + 1), Arc::new(i as u32 + 1));
                }
            })
        };
        let mut applied = 0;
        while applied < 200 {
            applied += w.apply(&s).len();
            std::thread::yield_now();
        }
        finisher.join().unwrap();
        for i in 0..200 {
            assert_eq!(s.plan(&key(i + 1)).as_deref(), Some(&(i as u32 + 1)));
        }
        assert_eq!(w.applied(), 200);
        assert!(w.generation() >= 1 && w.generation() <= 200);
    }
}
