//! How a tuning run is seen from outside (its events, the tuning time, the capture gate's
//! "some GPU work may happen" flag), and how a winner stored by `warmup` reaches launches: as a
//! swap under the tuner's policy when the key already has a plan, rather than by dropping that
//! plan (a graph may still launch it) and reloading on the next miss.

use std::time::Instant;

use super::capture::gate;
use super::events::Event;
use super::tune::Tuned;
use super::Tuner;
use crate::engine::{Isolation, TuningJob};
use crate::Result;

impl Tuner {
    /// Runs `search` (a tuning run of `job`) announced by `TuneStarted` and closed by
    /// `TuneFinished` or `Error`, its wall time added to the tuner's tuning time, with launches
    /// watching for captures meanwhile.
    pub(super) fn observed(
        &self,
        job: &TuningJob,
        search: impl FnOnce() -> Result<Tuned>,
    ) -> Result<Tuned> {
        if super::capture::held_here() {
            // Nothing of a search may run on a thread that is capturing a graph.
            return Err(crate::Error::Capture(format!(
                "cannot tune `{}` on a thread that is capturing a CUDA graph through jitune",
                job.spec.name
            )));
        }
        let _active = gate().activity();
        self.remember_name(&job.spec);
        self.inner.events.emit(|| Event::TuneStarted {
            key: job.key,
            kernel: job.spec.name.clone(),
            shape: job.shape.clone(),
            isolated: self.isolation() == Isolation::Process,
        });
        let t = Instant::now();
        let r = search();
        self.inner.tuning_time.add(t.elapsed());
        match &r {
            Ok(t) => self.inner.events.emit(|| Event::TuneFinished {
                key: job.key,
                kernel: job.spec.name.clone(),
                shape: job.shape.clone(),
                winner: t.report.entry.config.clone(),
                time_ms: t.report.entry.median_ms,
                default_ms: t.report.default_ms,
                evaluations: t.report.entry.evaluated as usize,
                compiled: t.report.compiled,
                wall_s: t.report.wall_s,
                partial: t.report.partial,
            }),
            Err(e) => self.emit_error(Some(job.key), &job.spec.name, e),
        }
        r
    }

    /// After `warmup` stored a winner for `job`: if launches of the key have a plan, the
    /// stored winner's plan replaces it as the swap policy says (at once, or queued for
    /// `apply_swaps`); otherwise the next miss of the key loads it from the cache.
    pub(super) fn offer_stored(&self, job: &TuningJob) {
        if self.inner.states.plan(&job.key).is_none() {
            return;
        }
        let stored = match self.inner.cache.lookup(&job.key) {
            Ok(Some(e)) => e,
            _ => return,
        };
        match self.plan_for_text(job, &stored.config, true) {
            Ok(plan) => {
                self.finish(job.key, std::sync::Arc::new(plan));
            }
            Err(e) => {
                log::warn!(
                    "jitune: the winner stored for {} {:?} cannot be loaded: {e}",
                    job.spec.name,
                    job.shape
                );
                self.emit_error(Some(job.key), &job.spec.name, &e);
            }
        }
    }
}
