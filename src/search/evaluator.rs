//! The interface between the search and whatever measures configs.
//!
//! A strategy proposes a batch of configs; an [`Evaluator`] measures them and returns, for each,
//! a [`Measurement`] (a time with the samples behind it) or a [`Failure`] with its class. The GPU
//! engine and the replay evaluator over recorded Kernel Tuner data both implement it, so a
//! strategy never knows (and cannot depend on) which one it is talking to. Evaluators also draw
//! more samples of a config on request (the fidelity ladder against noisy measurements) and report
//! the time spent so far, real or simulated, so searches can run on a time budget. A strategy may
//! hint at its next likely configs ([`Evaluator::prefetch`]) so compilation overlaps the batch
//! being measured; a hint never changes an outcome.

use crate::space::{Config, SearchSpace};
use crate::Result;

pub use crate::failure::FailureClass;

/// A failed evaluation: its class and a human-readable detail (compiler log, CUDA error, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What kind of failure.
    pub class: FailureClass,
    /// Details for logs.
    pub detail: String,
}

/// A successful measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// The evaluator's summary of `samples`, in milliseconds (lower is better).
    pub time_ms: f64,
    /// The individual run times in milliseconds this measurement consists of (at least one).
    pub samples: Vec<f64>,
}

impl Measurement {
    /// A measurement summarised by [`estimate`](fn@super::estimate) (the median, the statistic
    /// the search ranks by); `None` if there are no samples or any is not a finite,
    /// non-negative number.
    pub fn from_samples(samples: Vec<f64>) -> Option<Measurement> {
        if samples.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return None;
        }
        let time_ms = super::estimate(&samples)?;
        Some(Measurement { time_ms, samples })
    }
}

/// What an evaluation of one config gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It ran correctly; here is its time.
    Measured(Measurement),
    /// It failed.
    Failed(Failure),
}

impl Outcome {
    /// The measured time, if any.
    pub fn time_ms(&self) -> Option<f64> {
        match self {
            Outcome::Measured(m) => Some(m.time_ms),
            Outcome::Failed(_) => None,
        }
    }
}

/// Measures configs of one search space. The returned outer `Err` is for failures of the
/// measuring machinery itself (the GPU went away, a data file is unreadable): the search stops.
/// A config that does not work is not an `Err` but an [`Outcome::Failed`].
pub trait Evaluator {
    /// The space the configs belong to.
    fn space(&self) -> &SearchSpace;

    /// Measures every config of `batch` (a short first measurement) and returns one outcome per
    /// config, in order.
    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>>;

    /// Draws `samples` further samples of each config of `batch` (interleaved across the batch
    /// where the evaluator can, so drifting clocks hit all configs alike). The measurements hold
    /// only the new samples; callers pool them with the earlier ones.
    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>>;

    /// Seconds spent measuring so far: wall-clock on a GPU, simulated in replay.
    fn elapsed_s(&self) -> f64;

    /// A hint: these configs are the strategy's next best guesses, likely in a coming batch.
    /// An evaluator that compiles may start compiling them with capacity that would otherwise
    /// sit idle (the GPU engine does), so the next batch finds their images ready. Only a hint:
    /// it must never change what [`Evaluator::evaluate`] returns. The default does nothing
    /// (replay and simulated evaluators have nothing to compile).
    fn prefetch(&self, _configs: &[Config]) {}

    /// How many configs it works on at once: the GPU engine compiles a batch on its pool's
    /// worker processes in parallel, so a batch smaller than the pool leaves workers idle while
    /// the batch waits for its slowest compilation. Strategies may size their batches to it.
    /// 1 by default (replay and simulation: recorded costs are sequential, and their batches
    /// stay what the strategy's parameters say).
    fn parallelism(&self) -> usize {
        1
    }

    /// Like [`Evaluator::evaluate`], but it may return before the slowest of the batch are
    /// done: `None` for a config it has not finished (its compilation goes on), which the
    /// session hands back in its next batch. A batch that waits for its slowest compilation
    /// leaves the compile workers idle meanwhile: the GPU engine returns once most of a batch
    /// is measured and the rest are stragglers, so the next batch's compilations start beside
    /// theirs. At least one config of a batch is finished. The default finishes them all.
    fn evaluate_some(&mut self, batch: &[Config]) -> Result<Vec<Option<Outcome>>> {
        Ok(self.evaluate(batch)?.into_iter().map(Some).collect())
    }
}
