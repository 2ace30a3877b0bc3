//! The candidate pipeline, in this process, behind the search's [`Evaluator`] interface:
//! image ([`Binaries`]: handed in, binary table or compile pool) → load → correctness check →
//! timing → failure records ([`FailureBook`]).
//!
//! A batch's images stream in as they are ready, so benchmarking overlaps the rest of the
//! batch's compilation. Each new candidate is checked against the reference output before it is
//! timed: a wrong config is a failure, never a winner. Before a candidate's first launch an
//! in-flight marker is written to the store; if the candidate kills the process, the marker
//! survives, and the next process records the config as crashed and never tries it again.
//!
//! The isolated evaluator's benchmark worker runs this same pipeline (fed the host's images), so
//! measurement and the correctness gate are one code in both modes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::CudaFunction;

use super::binaries::Binaries;
use super::failures::{complete, FailureBook};
use super::job::TuningJob;
use crate::cache::Cache;
use crate::failure::FailureClass;
use crate::gpu::compile::Image;
use crate::gpu::device::Gpu;
use crate::gpu::launch::load_function;
use crate::gpu::measure::{median, relative_error, Bench, LaunchFailure, Prepared};
use crate::gpu::pool::CompilePool;
use crate::key::TuningKey;
use crate::search::evaluator::{Evaluator, Failure, Measurement, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// Knobs of the measurement.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Time budget of a first measurement, milliseconds of kernel time.
    pub first_budget_ms: f64,
    pub min_reps: usize,
    pub max_reps: usize,
    /// A candidate slower than this many times the best so far stops being timed.
    pub too_slow_factor: f64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            first_budget_ms: 20.0,
            min_reps: 5,
            max_reps: 50,
            too_slow_factor: 10.0,
        }
    }
}

/// A candidate that passed the correctness check: ready to be timed, remeasured, or served.
struct Loaded {
    func: CudaFunction,
    prepared: Prepared,
}

/// Compiles, checks and times configs of one spec at one shape on one GPU.
pub struct GpuEvaluator {
    gpu: Arc<Gpu>,
    job: TuningJob,
    cache: Arc<Cache>,
    binaries: Binaries,
    failures: FailureBook,
    bench: Bench,
    reference: Option<Vec<Vec<f64>>>,
    loaded: HashMap<Config, Loaded>,
    /// Images handed in by the caller (an isolated worker gets them from its host), used
    /// instead of the binary table or a compilation.
    supplied: HashMap<Config, Image>,
    /// The config whose outputs are the reference, when the caller chose it.
    reference_config: Option<Config>,
    best_ms: f64,
    start: Instant,
    pub options: MeasureOptions,
}

impl GpuEvaluator {
    /// Prepares synthetic inputs for `spec` at `shape`; configs the store knows to have failed
    /// (stale in-flight markers included) are failures without being run again.
    pub fn new(
        gpu: Arc<Gpu>,
        spec: Arc<KernelSpec>,
        shape: &[i64],
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
    ) -> Result<GpuEvaluator> {
        let job = TuningJob::new(spec, shape, &gpu)?;
        GpuEvaluator::for_job(gpu, &job, cache, pool)
    }

    /// The evaluator of a job built by the tuner.
    pub fn for_job(
        gpu: Arc<Gpu>,
        job: &TuningJob,
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
    ) -> Result<GpuEvaluator> {
        let spec = &job.spec;
        let bench = Bench::new(&gpu, spec, &job.shape, 0x5EED ^ spec.id().0[0] as u64)?;
        Ok(GpuEvaluator {
            binaries: Binaries::new(gpu.clone(), spec.clone(), cache.clone(), pool),
            failures: FailureBook::load(cache.clone(), job.key, &spec.name),
            gpu,
            job: job.clone(),
            cache,
            bench,
            reference: None,
            loaded: HashMap::new(),
            supplied: HashMap::new(),
            reference_config: None,
            best_ms: f64::INFINITY,
            start: Instant::now(),
            options: MeasureOptions::default(),
        })
    }

    /// Uses these outputs (one vector per `out`/`inout` argument, in order) as the reference
    /// instead of the default config's.
    pub fn set_reference(&mut self, outputs: Vec<Vec<f64>>) {
        self.reference = Some(outputs);
    }

    /// Uses `image` for `config` the next time it has to be loaded, instead of the binary table
    /// or NVRTC (an isolated benchmark worker receives its images from the host this way).
    pub fn supply_image(&mut self, config: Config, image: Image) {
        self.supplied.insert(config, image);
    }

    /// Runs `config` for the reference outputs instead of the one the failure records pick
    /// (an isolated worker runs the reference its host picked).
    pub fn set_reference_config(&mut self, config: Config) {
        self.reference_config = Some(config);
    }

    /// Whether `config` has been loaded and checked (so it can be timed or remeasured).
    pub fn is_loaded(&self, config: &Config) -> bool {
        self.loaded.contains_key(config)
    }

    /// The loaded function of a checked config (the tuner serves the winner with it rather than
    /// load its image again).
    pub fn loaded_function(&self, config: &Config) -> Option<CudaFunction> {
        self.loaded.get(config).map(|l| l.func.clone())
    }

    /// The tuning key this evaluator measures for.
    pub fn key(&self) -> TuningKey {
        self.job.key
    }

    /// Configs compiled by NVRTC so far (not found in the binary table).
    pub fn compiled(&self) -> usize {
        self.binaries.compiled
    }

    /// Configs whose image came from the binary table so far.
    pub fn binaries_reused(&self) -> usize {
        self.binaries.reused
    }

    fn fail(&mut self, config: &Config, class: FailureClass, detail: String) -> Outcome {
        let text = self.job.text(config);
        self.failures.record(&text, class, &detail);
        Outcome::Failed(Failure { class, detail })
    }

    /// Loads an image and checks the config's output; `Ok(None)` when it passed.
    fn load_and_check(&mut self, config: &Config, image: Image) -> Result<Option<Outcome>> {
        let spec = &self.job.spec;
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| self.job.space.int_value(config, d))
            .collect();
        let prepared = match Prepared::for_config(spec, &values, &self.job.shape, &self.gpu.limits)
        {
            Ok(p) => p,
            Err(e) => return Ok(Some(self.fail(config, FailureClass::Launch, e.to_string()))),
        };
        let func = match load_function(&self.gpu.ctx, &image, &spec.entry, &prepared.geometry) {
            Ok(f) => f,
            Err(e) => return Ok(Some(self.fail(config, FailureClass::Launch, e.to_string()))),
        };
        let text = self.job.text(config);
        self.cache.mark_inflight(&self.job.key, &text)?;
        let checked = self.bench.run_checked(&func, &prepared)?;
        let outcome = match checked {
            Err(LaunchFailure::Invalid(m)) => Some(self.fail(config, FailureClass::Launch, m)),
            Err(LaunchFailure::Sticky(m)) => {
                // The context is unusable: record the config as crashed and stop the search.
                self.failures.record(&text, FailureClass::Crashed, &m);
                let _ = self.cache.clear_inflight(&self.job.key, &text);
                return Err(Error::cuda(format!(
                    "config {text} broke the CUDA context: {m}"
                )));
            }
            Ok(outputs) => match &self.reference {
                None => {
                    self.reference = Some(outputs);
                    None
                }
                Some(reference) => {
                    let mut worst = 0.0f64;
                    let mut bad = false;
                    for (o, r) in outputs.iter().zip(reference) {
                        match relative_error(o, r) {
                            Some(e) => worst = worst.max(e),
                            None => bad = true,
                        }
                    }
                    let tolerance = self.job.spec.tolerance;
                    if bad || worst > tolerance {
                        let what = if bad {
                            "NaN, infinity or unwritten elements".to_string()
                        } else {
                            format!("relative error {worst:.3e}")
                        };
                        Some(self.fail(
                            config,
                            FailureClass::WrongResult,
                            format!("{what} (tolerance {tolerance:.1e})"),
                        ))
                    } else {
                        None
                    }
                }
            },
        };
        self.cache.clear_inflight(&self.job.key, &text)?;
        if outcome.is_none() {
            self.loaded
                .insert(config.clone(), Loaded { func, prepared });
        }
        Ok(outcome)
    }

    /// Times a loaded config: a first look, abandoned if far slower than the best, then runs to
    /// fill the budget.
    fn time(&mut self, config: &Config) -> Result<Outcome> {
        let Some(l) = self.loaded.get(config) else {
            return Err(Error::Search("timing a config that was not loaded".into()));
        };
        let (func, p) = (l.func.clone(), l.prepared.clone());
        let probe = match self.bench.time(&func, &p, 1)? {
            Ok(s) => s,
            Err(LaunchFailure::Invalid(m)) => {
                return Ok(self.fail(config, FailureClass::Launch, m))
            }
            Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
        };
        if probe[0] > self.options.too_slow_factor * self.best_ms {
            let detail = format!(
                "too slow: {:.3} ms against a best of {:.3} ms",
                probe[0], self.best_ms
            );
            return Ok(self.fail(config, FailureClass::TooSlow, detail));
        }
        let o = &self.options;
        let samples =
            match self
                .bench
                .time_budgeted(&func, &p, o.first_budget_ms, o.min_reps, o.max_reps)?
            {
                Ok(s) => s,
                Err(LaunchFailure::Invalid(m)) => {
                    return Ok(self.fail(config, FailureClass::Launch, m))
                }
                Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
            };
        let m = median(&samples);
        self.best_ms = self.best_ms.min(m);
        Ok(Outcome::Measured(Measurement {
            time_ms: m,
            samples,
        }))
    }

    /// Makes sure the reference exists: the reference config (the spec's default unless it is
    /// known to fail here) is loaded and run first.
    fn ensure_reference(&mut self) -> Result<()> {
        if self.reference.is_some() {
            return Ok(());
        }
        let default = match &self.reference_config {
            Some(c) => c.clone(),
            None => self
                .failures
                .reference_config(&self.job.spec, &self.job.space)?,
        };
        let outcomes = self.evaluate_inner(std::slice::from_ref(&default), false)?;
        if self.reference.is_none() {
            return Err(Error::Search(format!(
                "kernel `{}`: the reference config {} failed ({:?}); nothing to check candidates against",
                self.job.spec.name,
                self.job.text(&default),
                outcomes.first().and_then(|o| match o {
                    Outcome::Failed(f) => Some(f.detail.lines().next().unwrap_or("").to_string()),
                    _ => None,
                })
            )));
        }
        // The reference config's time is the yardstick for "too slow" until something faster
        // is measured (batches finish compiling in any order, so the first timed candidate may
        // be a slow one).
        if let Some(l) = self.loaded.get(&default) {
            let (func, p) = (l.func.clone(), l.prepared.clone());
            match self.bench.time(&func, &p, 3)? {
                Ok(s) => self.best_ms = self.best_ms.min(median(&s)),
                Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
                Err(LaunchFailure::Invalid(_)) => {}
            }
        }
        Ok(())
    }

    /// Loads and checks a new image (when given), then times the config.
    fn process(&mut self, c: &Config, image: Option<Image>, timed: bool) -> Result<Outcome> {
        if let Some(img) = image {
            if let Some(f) = self.load_and_check(c, img)? {
                return Ok(f);
            }
        }
        if timed {
            self.time(c)
        } else {
            Ok(Outcome::Measured(Measurement {
                time_ms: f64::NAN,
                samples: vec![],
            }))
        }
    }

    fn evaluate_inner(&mut self, batch: &[Config], timed: bool) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut wanted = Vec::new();
        let mut at_hand = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let text = self.job.text(c);
            if let Some(known) = self.failures.known_outcome(&text) {
                out[i] = Some(known);
            } else if self.loaded.contains_key(c) {
                at_hand.push(i); // loaded and checked: only timing left
            } else {
                let supplied = self.supplied.remove(c);
                wanted.push((i, c, text, supplied));
            }
        }
        let mut fetch = self.binaries.fetch(wanted);
        for i in at_hand {
            out[i] = Some(self.process(&batch[i], None, timed)?);
        }
        while let Some((i, r)) = fetch.next_image(&mut self.binaries) {
            out[i] = Some(match r? {
                Ok(image) => self.process(&batch[i], Some(image), timed)?,
                Err(log) => self.fail(&batch[i], FailureClass::Compile, log),
            });
        }
        Ok(complete(out, FailureClass::Compile))
    }
}

impl Evaluator for GpuEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.job.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.ensure_reference()?;
        self.evaluate_inner(batch, true)
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        // Interleaved: one run of each config per round, so clock drift hits all alike.
        let mut collected: Vec<Vec<f64>> = vec![Vec::new(); batch.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; batch.len()];
        for _ in 0..samples.max(1) {
            for (i, c) in batch.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                let Some(l) = self.loaded.get(c) else {
                    failed[i] = Some(Outcome::Failed(Failure {
                        class: FailureClass::Launch,
                        detail: "not measured before".into(),
                    }));
                    continue;
                };
                let (func, p) = (l.func.clone(), l.prepared.clone());
                match self.bench.time(&func, &p, 1)? {
                    Ok(s) => collected[i].extend(s),
                    Err(LaunchFailure::Invalid(m)) => {
                        failed[i] = Some(self.fail(c, FailureClass::Launch, m))
                    }
                    Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
                }
            }
        }
        Ok(collected
            .into_iter()
            .zip(failed)
            .map(|(s, f)| {
                f.unwrap_or_else(|| {
                    Outcome::Measured(Measurement {
                        time_ms: median(&s),
                        samples: s,
                    })
                })
            })
            .collect())
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
