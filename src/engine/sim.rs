//! The evaluator of a simulated device: recorded measurements ([`ReplayEvaluator`]) behind the
//! same failure records as the GPU pipeline ([`FailureBook`]: configs known to fail are not
//! "run" again, new failures go to the store), each evaluation taking real time (its recorded
//! cost, scaled), so that searches on simulated devices overlap, wait and race as GPU searches
//! of many processes do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failures::{complete, FailureBook};
use super::job::TuningJob;
use crate::cache::Cache;
use crate::replay::{Cachefile, ReplayEvaluator};
use crate::search::evaluator::{Evaluator, Outcome};
use crate::space::{Config, SearchSpace};
use crate::Result;

/// Replays a recorded space for one job, sleeping each evaluation's scaled cost.
pub struct SimEvaluator {
    job: TuningJob,
    replay: ReplayEvaluator,
    failures: FailureBook,
    time_scale: f64,
    /// Replay's simulated seconds already slept.
    slept_s: f64,
    start: Instant,
}

impl SimEvaluator {
    /// The evaluator of `job` over `data`; `seed` picks the recorded samples drawn.
    pub fn new(
        job: &TuningJob,
        data: Arc<Cachefile>,
        cache: Arc<Cache>,
        time_scale: f64,
        seed: u64,
    ) -> SimEvaluator {
        SimEvaluator {
            failures: FailureBook::load(cache, job.key, &job.spec.name),
            job: job.clone(),
            replay: ReplayEvaluator::new(data, seed),
            time_scale,
            slept_s: 0.0,
            start: Instant::now(),
        }
    }

    /// Sleeps what the replay charged since the last call, scaled.
    fn pay(&mut self) {
        let owed = (self.replay.elapsed_s() - self.slept_s).max(0.0);
        self.slept_s = self.replay.elapsed_s();
        let d = owed * self.time_scale;
        if d > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(d.min(60.0)));
        }
    }
}

impl Evaluator for SimEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.job.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut todo = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            match self.failures.known_outcome(&self.job.text(c)) {
                Some(known) => out[i] = Some(known),
                None => todo.push(i),
            }
        }
        let configs: Vec<Config> = todo.iter().map(|&i| batch[i].clone()).collect();
        let replayed = self.replay.evaluate(&configs)?;
        self.pay();
        for (i, o) in todo.into_iter().zip(replayed) {
            if let Outcome::Failed(f) = &o {
                self.failures
                    .record(&self.job.text(&batch[i]), f.class, &f.detail);
            }
            out[i] = Some(o);
        }
        Ok(complete(out, crate::failure::FailureClass::Launch))
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        let out = self.replay.remeasure(batch, samples)?;
        self.pay();
        Ok(out)
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
