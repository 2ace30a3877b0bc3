//! A thread's recent hits: the plans this thread launched lately, by tuner, kernel handle and
//! shape, so that a repeated launch finds its plan without the key map.
//!
//! Why: after the driver's `cuLaunchKernel` (3-4 us of its own work) a launch's memory comes
//! back from the outer caches, and every dependent load on the way to the plan costs a miss.
//! The key map's path is long (the handle's bucketing rules, the hash, the shard's lock word,
//! the table's control bytes, a 112-byte key, the plan's reference count, taken and given back);
//! this one is short (this thread's slot, then the plan) and writes nothing shared.
//!
//! A slot is valid while its tuner's plan generation ([`super::state::KeyStates::generation`])
//! is the one it was filled under: every change of what a key launches (a winner installed, a
//! provisional plan set, a key forgotten or released) bumps it, so a slot never serves a plan
//! the map has moved on from. The generation is read before the map is (see [`remember`]), so a
//! change racing with a fill leaves the slot stale, never wrong. Tuners and kernel handles are
//! told apart by serial numbers that are never reused (an address could be).
//!
//! The slots hold their plans (`Arc`) until overwritten or until the thread ends: a few dozen
//! plans per thread at most, whose modules stay loaded that long.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::events::thread_stripe;
use super::plan::Plan;
use crate::key::MAX_DIMS;

/// Slots per thread (direct-mapped): a serving thread cycles through a few dozen kernels and
/// shapes per step.
const SLOTS: usize = 64;

/// What a launch looks for: its tuner, kernel handle, shape, and the tuner's plan generation
/// read now (before anything else of the launch).
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub tuner: u64,
    pub kernel: u64,
    pub generation: u64,
    pub shape: &'a [i64],
}

struct Slot {
    tuner: u64,
    kernel: u64,
    generation: u64,
    len: usize,
    shape: [i64; MAX_DIMS],
    plan: Option<Arc<Plan>>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        tuner: 0,
        kernel: 0,
        generation: 0,
        len: 0,
        shape: [0; MAX_DIMS],
        plan: None,
    };

    #[inline]
    fn holds(&self, p: &Probe<'_>) -> bool {
        self.tuner == p.tuner
            && self.kernel == p.kernel
            && self.generation == p.generation
            && self.len == p.shape.len()
            && self.shape.iter().zip(p.shape).all(|(a, b)| a == b)
    }
}

/// A thread's slots, and its stripe of the tuners' hit counters (kept here: one thread-local
/// access on a hit instead of two).
struct Recent {
    slots: [Slot; SLOTS],
    stripe: Cell<usize>,
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent {
            slots: [const { Slot::EMPTY }; SLOTS],
            stripe: Cell::new(usize::MAX),
        })
    };
}

/// Serial numbers of tuners and kernel handles (0 is never given: an empty slot's).
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A serial number no tuner or kernel handle had before.
pub fn serial() -> u64 {
    SERIALS.fetch_add(1, Ordering::Relaxed)
}

#[inline]
fn slot_of(p: &Probe<'_>) -> usize {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (p.kernel ^ p.tuner.rotate_left(32)).wrapping_mul(K);
    for d in p.shape {
        h = (h ^ *d as u64).wrapping_mul(K);
    }
    (h >> (64 - SLOTS.trailing_zeros())) as usize
}

/// Runs `before` (with this thread's counter stripe, see [`thread_stripe`]), then `f` (taken
/// out of its `Option`), with the plan this thread launched last for `p` if its slot is still
/// valid, and returns what `f` returned; `None` (and `f` left in place) otherwise. Reads no
/// shared memory but the plan itself.
#[inline]
pub fn with_hit<T, F: FnOnce(&Arc<Plan>) -> T>(
    p: &Probe<'_>,
    f: &mut Option<F>,
    before: impl FnOnce(usize),
) -> Option<T> {
    // A shape of more than MAX_DIMS dims is never remembered, so no slot holds it.
    let i = slot_of(p);
    RECENT
        .try_with(|r| {
            // A launch never launches again from inside `f`; a busy cell (or a thread ending)
            // is a miss, not an error.
            let r = r.try_borrow().ok()?;
            let s = &r.slots[i];
            match (&s.plan, s.holds(p)) {
                (Some(plan), true) => f.take().map(|f| {
                    let mut stripe = r.stripe.get();
                    if stripe == usize::MAX {
                        stripe = first_stripe(&r.stripe);
                    }
                    before(stripe);
                    f(plan)
                }),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

#[cold]
fn first_stripe(c: &Cell<usize>) -> usize {
    let s = thread_stripe();
    c.set(s);
    s
}

/// Remembers `plan` as what a launch of `p` uses (`p.generation` read before the map lookup that
/// found `plan`). Cold: once per key, thread and plan change.
#[inline(never)]
pub fn remember(p: &Probe<'_>, plan: &Arc<Plan>) {
    if p.shape.len() > MAX_DIMS {
        return;
    }
    let i = slot_of(p);
    let mut shape = [0i64; MAX_DIMS];
    shape[..p.shape.len()].copy_from_slice(p.shape);
    let new = Slot {
        tuner: p.tuner,
        kernel: p.kernel,
        generation: p.generation,
        len: p.shape.len(),
        shape,
        plan: Some(plan.clone()),
    };
    // The old slot's plan is dropped after the cell is let go (its drop may unload a module).
    let _old = RECENT
        .try_with(|r| {
            r.try_borrow_mut()
                .ok()
                .map(|mut r| std::mem::replace(&mut r.slots[i], new))
        })
        .ok()
        .flatten();
}

/// Empties this thread's slots of `tuner` (when it is dropped: its plans need not outlive it on
/// this thread).
pub fn forget_tuner(tuner: u64) {
    let _old: Vec<Option<Arc<Plan>>> = RECENT
        .try_with(|r| {
            r.try_borrow_mut()
                .map(|mut r| {
                    r.slots
                        .iter_mut()
                        .filter(|s| s.tuner == tuner)
                        .map(|s| std::mem::replace(s, Slot::EMPTY).plan)
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
}
