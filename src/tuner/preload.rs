//! Preloading: the images a kernel's first launches will need, compiled in the background
//! before those launches come, so that no serving thread waits for NVRTC.
//!
//! [`Tuner::preload`] takes the spec's default config and the winners already known for the
//! kernel on this device (any shape bucket: a miss launches the nearest bucket's winner while it
//! tunes), fetches their images as tuning does (binary table, else the compile pool, storing
//! what it compiles in the binary table, so defaults persist there too) and keeps them in
//! memory, one slot per (kernel, config). A plan that needs an image looks for its slot first:
//! ready, it is used at once; in flight, the launch waits for it rather than compile the same
//! image a second time; absent, the plan compiles as before.
//!
//! Slots are registered before the background thread starts, so a launch right after
//! `preload` already finds them; every slot is filled (with an image or a failure) whatever
//! happens to that thread, so no launch waits for ever.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

use super::{Kernel, Tuner};
use crate::engine::binaries::Binaries;
use crate::gpu::compile::Image;
use crate::key::KernelId;
use crate::space::Config;

/// Most configs one preload compiles (the default and the most recent winners).
const MAX_CONFIGS: usize = 32;
/// Longest a plan waits for a preload in flight before it compiles the image itself.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// One image being preloaded, or preloaded.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<Option<std::result::Result<Image, String>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, r: std::result::Result<Image, String>) {
        let mut g = self.state.lock();
        if g.is_none() {
            *g = Some(r);
        }
        self.ready.notify_all();
    }

    /// The image once it is there (`None`: the preload failed, or took longer than `limit`).
    pub(crate) fn wait(&self, limit: Duration) -> Option<Image> {
        let deadline = Instant::now() + limit;
        let mut g = self.state.lock();
        while g.is_none() {
            if self.ready.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        g.as_ref().and_then(|r| r.as_ref().ok()).cloned()
    }
}

/// The tuner's preloaded images, by kernel id and config text.
#[derive(Default)]
pub(crate) struct Preloads {
    slots: DashMap<(KernelId, String), Arc<Slot>>,
}

impl Preloads {
    /// The slot of `config` (canonical text) of `kernel`, if a preload registered one.
    pub(crate) fn slot(&self, kernel: KernelId, config: &str) -> Option<Arc<Slot>> {
        self.slots
            .get(&(kernel, config.to_string()))
            .map(|s| s.clone())
    }

    /// A new slot for `config`; `None` when it has one already (preloaded or in flight).
    fn register(&self, kernel: KernelId, config: &str) -> Option<Arc<Slot>> {
        use dashmap::mapref::entry::Entry;
        match self.slots.entry((kernel, config.to_string())) {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => Some(v.insert(Arc::new(Slot::default())).clone()),
        }
    }
}

/// What a preload did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreloadReport {
    /// Configs it fetched images for (those preloaded before are not counted again).
    pub configs: usize,
    /// Of those, compiled by NVRTC now.
    pub compiled: usize,
    /// Of those, found in the binary table.
    pub from_table: usize,
    /// Of those, that do not compile (their launches compile and fail as before).
    pub failed: usize,
    /// Seconds from `preload` to the last image.
    pub wall_s: f64,
}

/// A preload running in the background; [`Preload::wait`] for its report, or drop it to let it
/// finish on its own.
pub struct Preload {
    thread: Option<std::thread::JoinHandle<PreloadReport>>,
}

impl Preload {
    /// Waits until every image of the preload is ready (or failed).
    pub fn wait(mut self) -> PreloadReport {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Tuner {
    /// Compiles, in the background, the images `kernel`'s first launches will need: its
    /// default config and the winners already known for it on this device. A launch that
    /// needs one of them uses it (waiting for it while it compiles) instead of compiling on the
    /// launching thread. Images go to the binary table as well.
    pub fn preload(&self, kernel: &Kernel) -> Preload {
        let start = Instant::now();
        let spec = kernel.spec.clone();
        // A simulated device compiles nothing.
        let Some(gpu) = self.inner.device.gpu().cloned() else {
            return Preload { thread: None };
        };
        let mut configs: Vec<(Config, String)> = Vec::new();
        let mut add = |c: Config, text: String| {
            if configs.len() < MAX_CONFIGS && !configs.iter().any(|(_, t)| *t == text) {
                configs.push((c, text));
            }
        };
        // The default, named as the space names it (any shape's space gives the same text).
        let ones = vec![1i64; spec.dims.len()];
        if let Ok(space) = spec.space_for(&ones, &gpu.limits) {
            add(spec.default.clone(), space.config_text(&spec.default));
        }
        // Winners known for this kernel on this device, most recently tuned first.
        let mut known: Vec<_> = self
            .inner
            .cache
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.key.kernel == spec.id() && e.key.device == gpu.fingerprint_hash)
            .collect();
        known.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
        for e in known {
            let parsed = spec
                .space_for(e.key.shape.dims(), &gpu.limits)
                .and_then(|s| s.parse_config_text(&e.config).map(|c| (s, c)));
            if let Ok((space, c)) = parsed {
                add(c.clone(), space.config_text(&c));
            }
        }
        // Slots first, so a launch from now on waits for them rather than compiling.
        let mine: Vec<(Config, String, Arc<Slot>)> = configs
            .into_iter()
            .filter_map(|(c, t)| {
                let slot = self.inner.preloads.register(spec.id(), &t)?;
                Some((c, t, slot))
            })
            .collect();
        let this = self.clone();
        let slots: Vec<Arc<Slot>> = mine.iter().map(|(_, _, s)| s.clone()).collect();
        let spawned = std::thread::Builder::new()
            .name("jitune-preload".into())
            .spawn(move || {
                let mut report = PreloadReport {
                    configs: mine.len(),
                    ..PreloadReport::default()
                };
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut bin = Binaries::new(
                        gpu.clone(),
                        spec.clone(),
                        this.inner.cache.clone(),
                        this.inner.pool.clone(),
                    );
                    let wanted = mine
                        .iter()
                        .enumerate()
                        .map(|(i, (c, t, _))| (i, c, t.clone(), None))
                        .collect();
                    let mut fetch = bin.fetch(wanted);
                    while let Some((i, r)) = fetch.next_image(&mut bin) {
                        let r = match r {
                            Ok(r) => r,
                            Err(e) => Err(e.to_string()),
                        };
                        if r.is_err() {
                            report.failed += 1;
                        }
                        mine[i].2.fill(r);
                    }
                    report.compiled = bin.compiled;
                    report.from_table = bin.reused;
                    this.inner
                        .compiles
                        .fetch_add(bin.compiled, Ordering::Relaxed);
                }));
                // Whatever happened, no slot stays empty.
                for (_, _, slot) in &mine {
                    slot.fill(Err("the preload ended without this image".into()));
                }
                if run.is_err() {
                    log::warn!("jitune: preloading {} panicked", spec.name);
                }
                report.wall_s = start.elapsed().as_secs_f64();
                report
            });
        match spawned {
            Ok(t) => Preload { thread: Some(t) },
            Err(e) => {
                log::warn!("jitune: cannot start a preload thread: {e}");
                for s in slots {
                    s.fill(Err("no preload thread".into()));
                }
                Preload { thread: None }
            }
        }
    }

    /// The preloaded image of `config` (canonical text) of `kernel`, waiting for it while a
    /// preload compiles it; `None` when no preload has it.
    pub(super) fn preloaded(&self, kernel: KernelId, config: &str) -> Option<Image> {
        self.inner
            .preloads
            .slot(kernel, config)
            .and_then(|s| s.wait(WAIT_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_hands_its_image_to_waiters_and_never_hangs() {
        let p = Preloads::default();
        let k = KernelId([7; 32]);
        let slot = p.register(k, "A=1").expect("a new slot");
        assert!(p.register(k, "A=1").is_none(), "registered twice");
        assert!(p.slot(k, "A=2").is_none());
        // A waiter blocks until the image arrives from another thread.
        let waiter = {
            let s = p.slot(k, "A=1").unwrap();
            std::thread::spawn(move || s.wait(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(50));
        slot.fill(Ok(Image::Cubin(vec![1, 2, 3])));
        assert_eq!(waiter.join().unwrap(), Some(Image::Cubin(vec![1, 2, 3])));
        // The first fill wins; later fills (the "no slot stays empty" sweep) change nothing.
        slot.fill(Err("late".into()));
        assert_eq!(
            slot.wait(Duration::from_millis(1)),
            Some(Image::Cubin(vec![1, 2, 3]))
        );
        // A failed preload gives no image (the launch compiles, and fails, as before).
        let bad = p.register(k, "A=3").unwrap();
        bad.fill(Err("does not compile".into()));
        assert_eq!(bad.wait(Duration::from_secs(1)), None);
        // An empty slot is waited for at most the limit.
        let empty = p.register(k, "A=4").unwrap();
        let t = Instant::now();
        assert_eq!(empty.wait(Duration::from_millis(50)), None);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
