//! The candidate pipeline, in this process, behind the search's [`Evaluator`] interface:
//! image ([`Binaries`]: handed in, binary table or compile pool) → load → correctness check →
//! timing → failure records ([`FailureBook`]).
//!
//! A batch's images stream in as they are ready, so benchmarking overlaps the rest of the
//! batch's compilation. Each new candidate is checked against the reference output before it is
//! timed: a wrong config is a failure, never a winner. The reference output stays on the device
//! and the comparison runs there (`gpu::compare`); only a reference the caller hands in as host
//! values ([`GpuEvaluator::set_reference`]) is compared on the host. Timing is adaptive
//! (`gpu::sampling::decide`): a few runs for a stable kernel, more for a noisy one, and a
//! candidate clearly slower than the best so far stops after its first runs (racing).
//!
//! The search's guesses at its next batch ([`Evaluator::prefetch`]) are compiled by the pool's
//! idle workers meanwhile, so the next batch finds their images ready.
//!
//! Where the time goes is counted per candidate ([`EvalStats`]): waiting for images, module
//! loads, correctness checks, timing (and the kernel's own share of it), store writes. Before a candidate's first launch an
//! in-flight marker is written to the store; if the candidate kills the process, the marker
//! survives, and the next process records the config as crashed and never tries it again.
//!
//! The isolated evaluator's benchmark worker runs this same pipeline (fed the host's images), so
//! measurement and the correctness gate are one code in both modes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::CudaFunction;

use super::binaries::{Binaries, Next};
use super::failures::{complete, FailureBook};
use super::job::TuningJob;
use crate::cache::Cache;
use crate::failure::FailureClass;
use crate::gpu::compare::Comparison;
use crate::gpu::compile::Image;
use crate::gpu::device::Gpu;
use crate::gpu::fault::LaunchFailure;
use crate::gpu::launch::load_function;
use crate::gpu::measure::Bench;
use crate::gpu::pool::CompilePool;
use crate::gpu::prepared::Prepared;
use crate::gpu::sampling::{median, median_ci, Sampling, Stop};
use crate::key::TuningKey;
use crate::search::evaluator::{Evaluator, Failure, Measurement, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// Knobs of the measurement: the sampling rule itself (see `gpu::sampling::decide` for how
/// they combine).
pub type MeasureOptions = Sampling;

/// Holds the candidate pipeline's GPU work back while it must pause (the tuner's capture gate:
/// an application is capturing a CUDA graph, during which loads, allocations and
/// synchronisations on the context can invalidate the capture). `enter` returns when a candidate
/// may run (or fails: the search stops); the work counts as running until `leave`.
pub trait WorkGate: Send + Sync {
    fn enter(&self) -> Result<()>;
    fn leave(&self);
}

/// One candidate's GPU work, inside the gate (if any) until dropped.
struct Entered(Option<&'static dyn WorkGate>);

impl Entered {
    fn new(gate: Option<&'static dyn WorkGate>) -> Result<Entered> {
        if let Some(g) = gate {
            g.enter()?;
        }
        Ok(Entered(gate))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.leave();
        }
    }
}

/// Where one candidate's time went, in seconds (see [`EvalStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CandidateCost {
    /// Waiting for its image (binary table or compile pool) after the previous candidate.
    pub image_wait_s: f64,
    /// Loading the module (and resolving the config).
    pub load_s: f64,
    /// The correctness run and the comparison with the reference.
    pub check_s: f64,
    /// Timing, wall clock (flushes, launches, synchronisations and the runs themselves).
    pub timing_s: f64,
    /// The kernel's own timed runs (sum of the samples).
    pub kernel_s: f64,
    /// In-flight markers and failure records written to the store.
    pub store_s: f64,
    /// Samples drawn.
    pub samples: usize,
}

impl CandidateCost {
    /// Everything but the kernel's own timed runs.
    pub fn overhead_s(&self) -> f64 {
        self.image_wait_s
            + self.load_s
            + self.check_s
            + (self.timing_s - self.kernel_s).max(0.0)
            + self.store_s
    }

    fn add(&mut self, o: &CandidateCost) {
        self.image_wait_s += o.image_wait_s;
        self.load_s += o.load_s;
        self.check_s += o.check_s;
        self.timing_s += o.timing_s;
        self.kernel_s += o.kernel_s;
        self.store_s += o.store_s;
        self.samples += o.samples;
    }
}

/// Where an evaluator's time went: per new candidate (in evaluation order) and in total, plus
/// the reference run and re-measurements. Counting is a few clock reads per candidate.
#[derive(Clone, Debug, Default)]
pub struct EvalStats {
    /// Making the synthetic inputs and the buffers (host generation and upload).
    pub setup_s: f64,
    /// One entry per config of a batch (loaded and checked, timed, or failed on the way), in
    /// order.
    pub candidates: Vec<CandidateCost>,
    /// The reference config's run and its first timing (part of the first batch).
    pub reference: CandidateCost,
    /// Re-measurements asked for by the search (wall clock).
    pub remeasure_s: f64,
    /// Candidates whose timing stopped early because they were clearly slower (racing).
    pub raced: usize,
    /// Images compiled by a batch's own NVRTC calls.
    pub compiled: usize,
    /// Images found ready: in the binary table or a finished prefetch.
    pub reused: usize,
    /// Prefetches (the search's guesses at its next batch) that finished with an image.
    pub prefetched: usize,
    /// Batch configs whose image came from a prefetch (finished, or joined in flight).
    pub prefetch_hits: usize,
    /// Batch configs left unfinished when their batch stopped waiting for its compile
    /// stragglers (each led a later batch, or the search ended first).
    pub deferred: usize,
}

impl EvalStats {
    /// The candidates' costs added up (the reference's not included).
    pub fn total(&self) -> CandidateCost {
        let mut t = CandidateCost::default();
        for c in &self.candidates {
            t.add(c);
        }
        t
    }
}

/// The reference outputs candidates are checked against.
enum Reference {
    /// Not known yet: the reference config runs first.
    None,
    /// Kept on the device by the bench.
    Device,
    /// Given by the caller on the host (one vector per output).
    Host(Vec<Vec<f64>>),
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
    reference: Reference,
    loaded: HashMap<Config, Loaded>,
    /// Images handed in by the caller (an isolated worker gets them from its host), used
    /// instead of the binary table or a compilation.
    supplied: HashMap<Config, Image>,
    /// The config whose outputs are the reference, when the caller chose it.
    reference_config: Option<Config>,
    /// The best median so far and the upper end of its confidence interval (for racing).
    best: Option<(f64, f64)>,
    start: Instant,
    /// The cost of the candidate being processed.
    cost: CandidateCost,
    stats: EvalStats,
    pub options: MeasureOptions,
    /// Entered around each candidate's GPU work (see [`WorkGate`]).
    gate: Option<&'static dyn WorkGate>,
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
        let job = TuningJob::new(spec, shape, gpu.fingerprint_hash, &gpu.limits)?;
        GpuEvaluator::for_job(gpu, &job, cache, pool)
    }

    /// The evaluator of a job built by the tuner.
    pub fn for_job(
        gpu: Arc<Gpu>,
        job: &TuningJob,
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
    ) -> Result<GpuEvaluator> {
        // A search's first batch should not wait for worker processes to start (one-off
        // compilations, which also use `Binaries`, do not warm the pool).
        pool.warm(&gpu.arch);
        // The comparison kernels of its output types, compiled by the pool while the first
        // candidates compile (see `compare::compile_ahead`).
        let outputs: Vec<_> = job
            .spec
            .args
            .iter()
            .filter(|a| matches!(a.role, crate::spec::Role::Out | crate::spec::Role::InOut))
            .map(|a| a.ty)
            .collect();
        crate::gpu::compare::compile_ahead(pool.clone(), &gpu.arch, &outputs);
        let spec = &job.spec;
        let t = Instant::now();
        let bench = Bench::new(&gpu, spec, &job.shape, 0x5EED ^ spec.id().0[0] as u64)?;
        let stats = EvalStats {
            setup_s: t.elapsed().as_secs_f64(),
            ..EvalStats::default()
        };
        Ok(GpuEvaluator {
            binaries: Binaries::new(gpu.clone(), spec.clone(), cache.clone(), pool),
            failures: FailureBook::load(cache.clone(), job.key, &spec.name),
            gpu,
            job: job.clone(),
            cache,
            bench,
            reference: Reference::None,
            loaded: HashMap::new(),
            supplied: HashMap::new(),
            reference_config: None,
            best: None,
            start: Instant::now(),
            cost: CandidateCost::default(),
            stats,
            options: MeasureOptions::default(),
            gate: None,
        })
    }

    /// Uses these outputs (one vector per `out`/`inout` argument, in order) as the reference
    /// instead of the default config's. They stay on the host: each candidate's outputs are
    /// then copied to the host and compared there (the only case that copies outputs).
    pub fn set_reference(&mut self, outputs: Vec<Vec<f64>>) {
        self.reference = Reference::Host(outputs);
    }

    /// Where this evaluator's time went so far.
    pub fn stats(&self) -> &EvalStats {
        &self.stats
    }

    /// Whether timed runs are preceded by an L2 flush (not when a run evicts L2 by itself).
    pub fn flushes_l2(&self) -> bool {
        self.bench.flushes()
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

    /// Makes each candidate's GPU work (load, check, timing) wait at `gate` first.
    pub fn set_work_gate(&mut self, gate: &'static dyn WorkGate) {
        self.gate = Some(gate);
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
        let t = Instant::now();
        let text = self.job.text(config);
        self.failures.record(&text, class, &detail);
        self.cost.store_s += t.elapsed().as_secs_f64();
        Outcome::Failed(Failure { class, detail })
    }

    /// Loads an image and checks the config's output; `Ok(None)` when it passed.
    fn load_and_check(&mut self, config: &Config, image: Image) -> Result<Option<Outcome>> {
        let t = Instant::now();
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
        self.cost.load_s += t.elapsed().as_secs_f64();
        let text = self.job.text(config);
        let t = Instant::now();
        self.cache.mark_inflight(&self.job.key, &text)?;
        self.cost.store_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let checked = self.check(&func, &prepared)?;
        self.cost.check_s += t.elapsed().as_secs_f64();
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
            Ok(None) => None,
            Ok(Some((comparisons, what))) => {
                let tolerance = self.job.spec.tolerance;
                let bad: u64 = comparisons.iter().map(|c| c.nonfinite).sum();
                let worst = comparisons
                    .iter()
                    .map(Comparison::relative_error)
                    .fold(0.0f64, |a, e| if e.is_nan() || e > a { e } else { a });
                let max_abs = comparisons.iter().map(|c| c.max_abs).fold(0.0, f64::max);
                if comparisons.iter().all(|c| c.passes(tolerance)) {
                    None
                } else {
                    let detail = if bad > 0 {
                        format!("NaN, infinity or unwritten elements ({bad} of them)")
                    } else {
                        format!("relative error {worst:.3e}, largest difference {max_abs:.3e}")
                    };
                    Some(self.fail(
                        config,
                        FailureClass::WrongResult,
                        format!("{detail} (tolerance {tolerance:.1e}, {what} reference)"),
                    ))
                }
            }
        };
        let t = Instant::now();
        self.cache.clear_inflight(&self.job.key, &text)?;
        self.cost.store_s += t.elapsed().as_secs_f64();
        if outcome.is_none() {
            self.loaded
                .insert(config.clone(), Loaded { func, prepared });
        }
        Ok(outcome)
    }

    /// The correctness run: the first one becomes the reference (kept on the device), later
    /// ones are compared with it. `Ok(None)`: it became the reference; `Ok(Some(..))`: one
    /// comparison per output and where the reference lives.
    #[allow(clippy::type_complexity)]
    fn check(
        &mut self,
        func: &CudaFunction,
        prepared: &Prepared,
    ) -> Result<std::result::Result<Option<(Vec<Comparison>, &'static str)>, LaunchFailure>> {
        if let Err(f) = self.bench.run_for_check(func, prepared)? {
            return Ok(Err(f));
        }
        match &self.reference {
            Reference::None => {
                if let Err(f) = self.bench.keep_reference()? {
                    return Ok(Err(f));
                }
                self.reference = Reference::Device;
                Ok(Ok(None))
            }
            Reference::Device => Ok(self
                .bench
                .compare_with_reference()?
                .map(|c| Some((c, "device")))),
            Reference::Host(reference) => {
                let outputs = match self.bench.read_outputs()? {
                    Ok(o) => o,
                    Err(f) => return Ok(Err(f)),
                };
                let mut c: Vec<Comparison> = outputs
                    .iter()
                    .zip(reference)
                    .map(|(o, r)| Comparison::of_host(o, r))
                    .collect();
                if reference.len() != outputs.len() {
                    // A reference for other outputs than the kernel's never passes.
                    c.push(Comparison {
                        nonfinite: 1,
                        ..Comparison::default()
                    });
                }
                Ok(Ok(Some((c, "host"))))
            }
        }
    }

    /// Times a loaded config adaptively: a first run (abandoned as too slow when far slower
    /// than the best), then rounds until the median is stable, the budget is spent, or the
    /// config is clearly slower than the best (racing).
    fn time(&mut self, config: &Config) -> Result<Outcome> {
        let Some(l) = self.loaded.get(config) else {
            return Err(Error::Search("timing a config that was not loaded".into()));
        };
        let (func, p) = (l.func.clone(), l.prepared.clone());
        let rule = self.options;
        let t = Instant::now();
        let sampled = self.bench.sample(&func, &p, &rule, self.best)?;
        self.cost.timing_s += t.elapsed().as_secs_f64();
        let sampled = match sampled {
            Ok(s) => s,
            Err(LaunchFailure::Invalid(m)) => {
                return Ok(self.fail(config, FailureClass::Launch, m))
            }
            Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
        };
        let samples = sampled.samples;
        self.cost.kernel_s += samples.iter().sum::<f64>() / 1e3;
        self.cost.samples += samples.len();
        let m = median(&samples);
        match sampled.stop {
            Stop::TooSlow => {
                let best = self.best.map_or(f64::NAN, |b| b.0);
                let detail = format!(
                    "too slow: {:.3} ms against a best of {best:.3} ms",
                    samples.first().copied().unwrap_or(f64::NAN)
                );
                return Ok(self.fail(config, FailureClass::TooSlow, detail));
            }
            Stop::Raced => self.stats.raced += 1,
            _ => {
                if self.best.is_none_or(|(b, _)| m < b) {
                    self.best = Some((m, median_ci(&samples).1));
                }
            }
        }
        Ok(Outcome::Measured(Measurement {
            time_ms: m,
            samples,
        }))
    }

    /// Makes sure the reference exists: the reference config (the spec's default unless it is
    /// known to fail here) is loaded and run first.
    fn ensure_reference(&mut self) -> Result<()> {
        if !matches!(self.reference, Reference::None) {
            return Ok(());
        }
        let default = match &self.reference_config {
            Some(c) => c.clone(),
            None => self
                .failures
                .reference_config(&self.job.spec, &self.job.space)?,
        };
        let outcomes = self.evaluate_inner(std::slice::from_ref(&default), false)?;
        if matches!(self.reference, Reference::None) {
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
        // The reference config's time is the yardstick for "too slow" and racing until
        // something faster is measured (batches finish compiling in any order, so the first
        // timed candidate may be a slow one).
        if self.loaded.contains_key(&default) {
            let _work = Entered::new(self.gate)?;
            let _ = self.time(&default)?;
        }
        // The reference's costs are its own, not a candidate's.
        if let Some(c) = self.stats.candidates.pop() {
            self.stats.reference = c;
        }
        self.stats.reference.add(&std::mem::take(&mut self.cost));
        Ok(())
    }

    /// Loads and checks a new image (when given), then times the config. Its costs become one
    /// entry of [`EvalStats::candidates`].
    fn process(&mut self, c: &Config, image: Option<Image>, timed: bool) -> Result<Outcome> {
        let out = self.process_inner(c, image, timed);
        let cost = std::mem::take(&mut self.cost);
        self.stats.candidates.push(cost);
        out
    }

    fn process_inner(&mut self, c: &Config, image: Option<Image>, timed: bool) -> Result<Outcome> {
        let _work = Entered::new(self.gate)?;
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
        Ok(complete(
            self.evaluate_some_inner(batch, timed, false)?,
            FailureClass::Compile,
        ))
    }

    /// Evaluates `batch`; with `defer`, returns once the stragglers are clearly that (see
    /// [`DEFER_AFTER`]), `None` for each config not finished (its compilation goes on).
    fn evaluate_some_inner(
        &mut self,
        batch: &[Config],
        timed: bool,
        defer: bool,
    ) -> Result<Vec<Option<Outcome>>> {
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
        let t = Instant::now();
        let mut fetch = self.binaries.fetch(wanted);
        let mut waited = t.elapsed().as_secs_f64();
        let compiling = fetch.compiling();
        // Images at hand come out first; the deadline counts compiled ones only.
        let mut not_compiled = fetch.ready_now();
        let mut arrived = 0;
        // Set once half of the batch's compilations have arrived.
        let mut deadline: Option<Instant> = None;
        for i in at_hand {
            out[i] = Some(self.process(&batch[i], None, timed)?);
        }
        loop {
            let t_wait = Instant::now();
            let (i, r) = match fetch.next_until(&mut self.binaries, deadline) {
                Next::Image(i, r) => (i, r),
                Next::TimedOut => {
                    // Waiting for images all the same: the next candidate measured carries it.
                    self.cost.image_wait_s += waited + t_wait.elapsed().as_secs_f64();
                    break;
                }
                Next::End => break,
            };
            self.cost.image_wait_s += waited + t_wait.elapsed().as_secs_f64();
            waited = 0.0;
            out[i] = Some(match r? {
                Ok(image) => self.process(&batch[i], Some(image), timed)?,
                Err(log) => {
                    let o = self.fail(&batch[i], FailureClass::Compile, log);
                    let cost = std::mem::take(&mut self.cost);
                    self.stats.candidates.push(cost);
                    o
                }
            });
            if not_compiled > 0 {
                not_compiled -= 1;
            } else {
                arrived += 1;
            }
            if defer
                && deadline.is_none()
                && compiling >= DEFER_MIN_BATCH
                && 2 * arrived >= compiling
                && out.iter().any(|o| o.is_some())
            {
                deadline = Some(t + t.elapsed().mul_f64(DEFER_AFTER));
            }
        }
        self.stats.deferred += out.iter().filter(|o| o.is_none()).count();
        Ok(out)
    }
}

/// A batch stops waiting for its stragglers once this many times the time its first half of
/// compilations took has passed: compile times of one kernel's configs spread widely (SGEMM on
/// the H200: 0.25-2 s of CPU each, the longest of a batch of 16 up to 4.5 s in a tuning run)
/// and the workers that finished early would sit idle until the slowest ends. The stragglers
/// go on compiling and lead the next batch.
const DEFER_AFTER: f64 = 1.5;

/// Batches with fewer compilations than this wait for all of them.
const DEFER_MIN_BATCH: usize = 4;

impl Evaluator for GpuEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.job.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.compile_ahead_of_reference(batch);
        self.ensure_reference()?;
        let out = self.evaluate_inner(batch, true);
        self.note_binaries();
        out
    }

    /// As `evaluate`, returning before the batch's compile stragglers are done (see
    /// [`DEFER_AFTER`]).
    fn evaluate_some(&mut self, batch: &[Config]) -> Result<Vec<Option<Outcome>>> {
        self.compile_ahead_of_reference(batch);
        self.ensure_reference()?;
        let out = self.evaluate_some_inner(batch, true, true);
        self.note_binaries();
        out
    }

    /// Compiles the configs not loaded, supplied or known to fail with the pool's idle
    /// workers (see [`Binaries::prefetch`]).
    fn prefetch(&self, configs: &[Config]) {
        let new = configs
            .iter()
            .filter(|c| !self.loaded.contains_key(*c) && !self.supplied.contains_key(*c));
        self.binaries
            .prefetch_unknown(new, &self.job, &self.failures);
    }

    /// The compile pool's parallelism: a batch that fills it costs about what a smaller one
    /// does (see [`Binaries::parallelism`]).
    fn parallelism(&self) -> usize {
        self.binaries.parallelism()
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        let t = Instant::now();
        let out = self.remeasure_inner(batch, samples);
        self.stats.remeasure_s += t.elapsed().as_secs_f64();
        out
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

impl GpuEvaluator {
    /// Before the reference exists, the first batch's compilations start on the pool's idle
    /// workers (as prefetches, which the batch then joins): the reference config compiles and
    /// runs alone first, and SGEMM's took 1.2 s with one core of 16 busy (call Q).
    fn compile_ahead_of_reference(&self, batch: &[Config]) {
        if matches!(self.reference, Reference::None) && batch.len() > 1 {
            self.prefetch(batch);
        }
    }

    fn note_binaries(&mut self) {
        let b = &self.binaries;
        (self.stats.compiled, self.stats.reused) = (b.compiled, b.reused);
        (self.stats.prefetched, self.stats.prefetch_hits) = (b.prefetched(), b.prefetch_hits);
    }

    fn remeasure_inner(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
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
                let _work = Entered::new(self.gate)?;
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
}
