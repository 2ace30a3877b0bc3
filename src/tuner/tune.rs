//! Tuning runs: a search over a [`TuningJob`] on the evaluator the isolation asks for, the
//! winner stored with the statistic that ranked it, and the winner's plan built from what the
//! evaluator already holds (its loaded function, or its image) rather than read back.
//!
//! A spec that declares its work (`bytes`, `flops`) has a roofline at each shape (the time the
//! device's copy bandwidth and FP32 peak allow); the search stops once its best is within
//! [`TuneOptions::roofline_stop`] of it (through `SearchOptions::target_ms`: the strategies
//! know nothing of it, and the result is a normal finish, not a partial one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::capture::{gate, GatedDrop};
use super::device::Device;
use super::{Have, Plan, Tuner};
use crate::cache::Entry;
use crate::engine::sim::SimEvaluator;
use crate::engine::{EvalStats, GpuEvaluator, IsolatedEvaluator, Isolation, TuningJob};
use crate::gpu::roofline::Roofline;
use crate::gpu::sampling::iqr;
use crate::search::evaluator::Evaluator;
use crate::search::{strategy_by_name, Hooks, SearchOptions};
use crate::space::Config;
use crate::tuner::Kernel;
use crate::{Error, Result};

/// How much a tuning run may spend.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Search strategy: `lfbo` (default), `random`, `pattern`, `exhaustive`.
    pub strategy: String,
    /// Most unique configs evaluated.
    pub max_evals: usize,
    /// Most seconds of tuning.
    pub max_time_s: Option<f64>,
    pub seed: u64,
    /// Stop tuning a key once its best config reaches this fraction of the roofline (the
    /// time floor of the spec's `bytes`/`flops` at the device's copy bandwidth / FP32 peak);
    /// `None`, or a spec that declares no work: never. Default 0.95.
    pub roofline_stop: Option<f64>,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            strategy: "lfbo".into(),
            max_evals: 120,
            max_time_s: Some(60.0),
            seed: 1,
            roofline_stop: Some(0.95),
        }
    }
}

/// What a tuning run found (also stored in the cache).
#[derive(Clone, Debug)]
pub struct TuneReport {
    pub entry: Entry,
    /// The default config's time (the statistic that ranks), when it was measured.
    pub default_ms: Option<f64>,
    pub wall_s: f64,
    pub compiled: usize,
    /// Best-so-far after each evaluation: (seconds since the start, ms).
    pub curve: Vec<(f64, f64)>,
    /// Whether the search was cancelled through [`Hooks::cancel`] and the stored winner is the
    /// best of what was measured until then (its entry's strategy says `partial`).
    pub partial: bool,
    /// The roofline at this shape (ms): the least time the spec's declared work takes on this
    /// device; `None` when the spec declares none or the device's figures are unknown.
    pub roofline_ms: Option<f64>,
    /// Whether the search ended because its best reached [`TuneOptions::roofline_stop`] of the
    /// roofline.
    pub roofline_stop: bool,
    /// Where the evaluator's time went, per candidate (in-process tuning; `None` isolated).
    pub stats: Option<EvalStats>,
    /// Seconds spent storing the winner.
    pub store_s: f64,
}

/// A finished run: the report, and what the evaluator holds of the winner.
pub(super) struct Tuned {
    pub report: TuneReport,
    pub winner: Config,
    pub have: Have,
}

/// The two evaluators tuning can run on.
enum TuningEvaluator {
    InProcess(Box<GpuEvaluator>),
    Isolated(Box<IsolatedEvaluator>),
    /// A simulated device's (recorded measurements).
    Sim(Box<SimEvaluator>),
}

impl TuningEvaluator {
    fn as_dyn(&mut self) -> &mut dyn Evaluator {
        match self {
            TuningEvaluator::InProcess(e) => &mut **e,
            TuningEvaluator::Isolated(e) => &mut **e,
            TuningEvaluator::Sim(e) => &mut **e,
        }
    }

    fn compiled(&self) -> usize {
        match self {
            TuningEvaluator::InProcess(e) => e.compiled(),
            TuningEvaluator::Isolated(e) => e.compiled(),
            TuningEvaluator::Sim(_) => 0,
        }
    }

    fn stats(&self) -> Option<EvalStats> {
        match self {
            TuningEvaluator::InProcess(e) => Some(e.stats().clone()),
            TuningEvaluator::Isolated(_) | TuningEvaluator::Sim(_) => None,
        }
    }

    /// What the evaluator holds of `config`: its function loaded in this context (in process)
    /// or its image (isolated).
    fn winner(&self, config: &Config) -> Have {
        let have = match self {
            TuningEvaluator::InProcess(e) => e.loaded_function(config).map(Have::Func),
            TuningEvaluator::Isolated(e) => e.image(config).cloned().map(Have::Image),
            TuningEvaluator::Sim(_) => None,
        };
        have.unwrap_or(Have::Nothing)
    }
}

impl Tuner {
    /// Tunes `kernel` at `shape` now (whatever the mode), stores the winner and returns it.
    pub fn tune(&self, kernel: &Kernel, shape: &[i64]) -> Result<TuneReport> {
        let opts = self.inner.tune.read().clone();
        self.tune_with(kernel, shape, &opts)
    }

    /// Tunes with explicit options.
    pub fn tune_with(
        &self,
        kernel: &Kernel,
        shape: &[i64],
        opts: &TuneOptions,
    ) -> Result<TuneReport> {
        self.tune_with_hooks(kernel, shape, opts, Hooks::default())
    }

    /// Tunes with explicit options and the search's [`Hooks`]: a progress callback after each
    /// batch, and a cancellation flag that ends the search after the batch in flight. A
    /// cancelled search still stores the best config measured so far (when one ran correctly),
    /// marked `partial` in the entry's strategy, with its honest evaluation count.
    pub fn tune_with_hooks(
        &self,
        kernel: &Kernel,
        shape: &[i64],
        opts: &TuneOptions,
        hooks: Hooks,
    ) -> Result<TuneReport> {
        let job = self.job(kernel, shape)?;
        let nearest = self.nearest_config(&job);
        // No other jitune search measures on this GPU meanwhile (see `shared`).
        let _gpu = self.gpu_turn();
        Ok(self.tune_job(&job, nearest, opts, hooks)?.report)
    }

    /// Tunes a job with the tuner's options and builds the winner's plan.
    pub(super) fn tune_job_to_plan(
        &self,
        job: &TuningJob,
        nearest: Option<Config>,
        short: bool,
    ) -> Result<(Plan, TuneReport)> {
        let mut opts = self.inner.tune.read().clone();
        if short {
            // A re-check of an inherited winner: a quarter of the budget.
            opts.max_evals = (opts.max_evals / 4).max(8);
            opts.max_time_s = opts.max_time_s.map(|t| t / 4.0);
        }
        // Cancelled by `shutdown` (then the best measured so far is stored and served).
        let hooks = Hooks {
            cancel: Some(self.inner.closing.flag()),
            progress: None,
        };
        let t = self.tune_job(job, nearest, &opts, hooks)?;
        let plan = self.plan_for(job, &t.winner, true, t.have)?;
        Ok((plan, t.report))
    }

    /// A search, announced and accounted for (events, tuning time; see [`Tuner::observed`]).
    pub(super) fn tune_job(
        &self,
        job: &TuningJob,
        nearest: Option<Config>,
        opts: &TuneOptions,
        hooks: Hooks,
    ) -> Result<Tuned> {
        self.observed(job, || self.search_job(job, nearest, opts, hooks))
    }

    /// The search: the spec's default first, then the nearest shape's winner (`nearest`), then
    /// the strategy's choices; the winner is stored with the statistic that ranked it.
    fn search_job(
        &self,
        job: &TuningJob,
        nearest: Option<Config>,
        opts: &TuneOptions,
        hooks: Hooks,
    ) -> Result<Tuned> {
        let start = std::time::Instant::now();
        let spec = &job.spec;
        self.inner.searches.fetch_add(1, Ordering::Relaxed);
        // Dropped (buffers freed, candidates unloaded) outside any capture.
        let mut eval = GatedDrop::new(self.evaluator(job)?);
        let strategy = strategy_by_name(&opts.strategy).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown strategy `{}`", opts.strategy))
        })?;
        let mut sopts = SearchOptions::new(opts.seed, opts.max_evals);
        sopts.max_time_s = opts.max_time_s;
        sopts.hooks = hooks;
        let roofline_ms = self.roofline_ms(job);
        sopts.target_ms = roofline_ms
            .zip(opts.roofline_stop.filter(|f| *f > 0.0 && *f <= 1.0))
            .map(|(t, f)| t / f);
        sopts.start.push(spec.default.clone());
        sopts.start.extend(nearest);
        sopts.priors = self.cache_priors(job);
        let result = strategy.search(eval.as_dyn(), &sopts);
        let compiled = eval.compiled();
        self.inner.compiles.fetch_add(compiled, Ordering::Relaxed);
        let result = result?;
        let (best, best_ms) = result
            .best
            .clone()
            .ok_or_else(|| Error::Search(format!("no config of `{}` ran correctly", spec.name)))?;
        let samples: Vec<f64> = result
            .observations
            .iter()
            .find(|o| o.config == best)
            .map(|o| o.samples.clone())
            .unwrap_or_default();
        let default_ms = result
            .observations
            .iter()
            .find(|o| o.config == spec.default)
            .and_then(|o| o.estimate());
        let mut curve = Vec::new();
        let mut best_so_far = f64::INFINITY;
        let n = result.observations.len().max(1) as f64;
        for (i, (_, t)) in result.trace().enumerate() {
            if let Some(t) = t {
                best_so_far = best_so_far.min(t);
            }
            curve.push((result.elapsed_s * (i + 1) as f64 / n, best_so_far));
        }
        // The time stored is the search's own estimate of the winner: the statistic that
        // ranked it, not another summary of its samples.
        let mut entry = Entry::new(
            spec.id(),
            job.key.shape,
            self.inner.device.fingerprint().clone(),
            &spec.name,
            &job.text(&best),
            best_ms,
        );
        entry.spread_ms = iqr(&samples);
        entry.samples = samples.len() as u32;
        entry.evaluated = result.observations.len() as u32;
        entry.strategy = if result.cancelled {
            format!("{} (partial: cancelled)", strategy.name())
        } else {
            strategy.name().to_string()
        };
        let t = std::time::Instant::now();
        self.inner.cache.put(entry.clone())?;
        let store_s = t.elapsed().as_secs_f64();
        if let Some(floor) = roofline_ms.filter(|f| best_ms < 0.8 * f) {
            log::warn!(
                "jitune: {} {:?} ran in {best_ms:.4} ms, under 80% of its roofline ({floor:.4} ms): \
                 its `bytes`/`flops` overstate the work (or count tensor-core operations), so \
                 the roofline stop ends its tuning too soon",
                spec.name,
                job.shape
            );
        }
        log::info!(
            "jitune: tuned {} {:?}: {} at {:.4} ms ({} configs, {:.1} s)",
            spec.name,
            job.shape,
            entry.config,
            entry.median_ms,
            entry.evaluated,
            start.elapsed().as_secs_f64()
        );
        let have = eval.winner(&best);
        Ok(Tuned {
            report: TuneReport {
                entry,
                default_ms,
                wall_s: start.elapsed().as_secs_f64(),
                compiled,
                curve,
                partial: result.cancelled,
                roofline_ms,
                roofline_stop: sopts.target_ms.is_some_and(|t| best_ms <= t),
                stats: eval.stats(),
                store_s,
            },
            winner: best,
            have,
        })
    }

    /// The roofline of `job` (ms), when its spec declares its work and the device's figures for
    /// it are known (the copy bandwidth is measured at the first call of the process).
    fn roofline_ms(&self, job: &TuningJob) -> Option<f64> {
        let gpu = self.inner.device.gpu()?;
        let (bytes, flops) = match job.spec.work(&job.shape, &gpu.limits) {
            Ok(w) => w,
            Err(e) => {
                log::warn!("jitune: no roofline for {}: {e}", job.spec.name);
                return None;
            }
        };
        Roofline::for_work(gpu, bytes, flops).floor_ms(bytes, flops)
    }

    /// The evaluator of a tuning run, isolated or not as [`Tuner::isolation`] says. When
    /// isolation was left to the default and no worker program can be found, tuning runs in
    /// process (with a warning); when it was asked for explicitly, that is an error.
    fn evaluator(&self, job: &TuningJob) -> Result<TuningEvaluator> {
        let i = &self.inner;
        let gpu = match &i.device {
            Device::Gpu(g) => g.clone(),
            Device::Sim(s) => {
                let seed = self.inner.tune.read().seed ^ job.key.device;
                return Ok(TuningEvaluator::Sim(Box::new(SimEvaluator::new(
                    job,
                    s.data.clone(),
                    i.cache.clone(),
                    s.time_scale,
                    seed,
                ))));
            }
        };
        let (explicit, opts) = {
            let g = i.isolation.read();
            (g.0.is_some(), g.1.clone())
        };
        if self.isolation() == Isolation::Process {
            let isolated =
                IsolatedEvaluator::for_job(gpu.clone(), job, i.cache.clone(), i.pool.clone(), opts);
            match isolated {
                Ok(e) => return Ok(TuningEvaluator::Isolated(Box::new(e))),
                Err(e) if explicit => return Err(e),
                Err(e) => {
                    log::warn!(
                        "jitune: tuning {} in process, not isolated: {e}",
                        job.spec.name
                    );
                    self.fallback(job.key, &job.spec.name, || {
                        format!("tuning in process, not isolated: {e}")
                    });
                }
            }
        }
        // Its buffers are allocated outside any capture, and each candidate's GPU work waits
        // for captures to end (the capture gate).
        let mut e = {
            let _permit = gate().permit()?;
            GpuEvaluator::for_job(gpu, job, i.cache.clone(), i.pool.clone())?
        };
        e.set_work_gate(gate());
        Ok(TuningEvaluator::InProcess(Box::new(e)))
    }

    /// Tunes every shape not yet in the cache (ahead of serving), reporting progress through
    /// `log` and `progress(done, total, report)`; returns the reports of the shapes it tuned.
    pub fn warmup(
        &self,
        kernel: &Kernel,
        shapes: &[Vec<i64>],
        mut progress: impl FnMut(usize, usize, Option<&TuneReport>),
    ) -> Result<Vec<TuneReport>> {
        let mut reports = Vec::new();
        let opts = self.inner.tune.read().clone();
        for (i, shape) in shapes.iter().enumerate() {
            let job = self.job(kernel, shape)?;
            if self.inner.cache.lookup(&job.key)?.is_some() {
                log::info!("jitune: warmup {} {:?}: cached", kernel.spec.name, shape);
                progress(i + 1, shapes.len(), None);
                continue;
            }
            let nearest = self.nearest_config(&job);
            let r = {
                let _gpu = self.gpu_turn();
                self.tune_job(&job, nearest, &opts, Hooks::default())?
                    .report
            };
            // The next launch of the key picks the stored winner up (as a swap, when the key
            // has a plan launches used).
            self.offer_stored(&job);
            progress(i + 1, shapes.len(), Some(&r));
            reports.push(r);
        }
        Ok(reports)
    }

    /// Tunes `job` in a background thread and swaps the winner's plan in for `provisional`,
    /// which serves the key meanwhile (and for good if tuning fails).
    pub(super) fn spawn_background(
        &self,
        job: TuningJob,
        nearest: Option<Config>,
        provisional: Arc<Plan>,
        short: bool,
    ) {
        let key = job.key;
        if self.inner.closing.is_closing() {
            // Shut down: nothing new starts; the provisional plan serves for good.
            self.inner.states.install(key, provisional);
            return;
        }
        let this = self.clone();
        let fallback = provisional.clone();
        let spawned = std::thread::Builder::new()
            .name("jitune-tune".into())
            .spawn(move || {
                // Counted until this thread ends, so `shutdown` can wait for it.
                let Some(_running) = this.inner.closing.enter() else {
                    this.inner.states.install(key, provisional);
                    return;
                };
                // A panic inside tuning (a bug, or a library that panics) must neither leave the
                // key busy forever nor take anything else down: it becomes an error.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _active = gate().activity();
                    // Searched here once across processes, or adopted (see `shared`).
                    this.tune_shared(&job, nearest, None, short)
                }))
                .unwrap_or_else(|_| Err(Error::Search("background tuning panicked".into())));
                match result {
                    Ok(plan) => {
                        this.finish(key, Arc::new(plan));
                    }
                    Err(e) => {
                        log::warn!(
                            "jitune: background tuning of {} {:?} failed: {e}",
                            job.spec.name,
                            job.shape
                        );
                        this.emit_error(Some(key), &job.spec.name, &e);
                        this.fallback(key, &job.spec.name, || {
                            format!(
                                "background tuning failed; {} serves for good",
                                provisional.config
                            )
                        });
                        this.inner.states.install(key, provisional);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("jitune: cannot start a background tuning thread: {e}");
            self.inner.states.install(key, fallback);
        }
    }
}
