//! Search strategies over a [`SearchSpace`], and the bookkeeping they share.
//!
//! Every strategy is batch-based and deterministic for a seed. It talks to an [`Evaluator`]
//! only through a [`Session`], which owns what all strategies must get right the same way:
//! the budget counts unique configs (re-measurements are free of budget), a config is measured
//! once, failures are never a winner, configs are ranked by one statistic (the median of their
//! samples, [`estimate()`], which is also the time a tuner stores), the fidelity ladder
//! re-measures configs close to the best so one lucky sample cannot win, and a final
//! interleaved shootout of the top few picks the winner.
//!
//! The session also holds the [`prior`]s (times of this space's configs measured on another GPU
//! model, toolchain or shape), checked against the space, and judges how far to trust them from
//! what it measures; every strategy starts with [`Session::evaluate_start`] (the caller's start
//! configs, the priors' fastest, a short polish of the best), LFBO also learns from them. A
//! tuner passes cache entries of other keys as `SearchOptions::priors`, one [`Prior`] per source
//! whose times are comparable (one GPU, toolchain and shape), with a weight for how close the
//! source is, and reads back how far each was trusted in [`SearchResult::prior_trust`].
//!
//! The session is also where a caller's [`Hooks`] act, so that no strategy has to know about
//! them: after every batch the progress callback hears how far the search is (evaluations of
//! the budget, best so far), and once the cancellation flag is set the session reports no budget
//! left, so every strategy ends after the batch in flight and returns the best found so far
//! (with [`SearchResult::cancelled`] set). The hooks are plain closures and flags: the search
//! layer knows nothing of terminals or progress bars.

pub mod estimate;
pub mod evaluator;
pub mod exhaustive;
pub mod forest;
pub mod lfbo;
pub mod pattern;
pub mod prior;
pub mod random;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use estimate::estimate;
pub use evaluator::{Evaluator, Failure, FailureClass, Measurement, Outcome};
pub use exhaustive::Exhaustive;
pub use lfbo::{Lfbo, LfboParams};
pub use pattern::PatternSearch;
pub use prior::{Prior, PriorParams, PriorState};
pub use random::RandomSearch;

use crate::space::{Config, SearchSpace};
use crate::{Error, Result};

/// The noise-handling ladder: a short first measurement, more samples for configs near the best,
/// a final shootout of the top few.
#[derive(Clone, Debug)]
pub struct Fidelity {
    /// Configs whose estimate is within this factor of the best estimate are re-measured.
    pub remeasure_within: f64,
    /// Samples a config near the best is brought up to (counting its first measurement's).
    pub near_best_samples: usize,
    /// How many of the best configs enter the final shootout (0 or 1 disables it).
    pub shootout_top: usize,
    /// Rounds of the shootout; each round draws one more sample of every finalist, interleaved.
    pub shootout_rounds: usize,
}

impl Default for Fidelity {
    fn default() -> Self {
        Fidelity {
            remeasure_within: 1.5,
            near_best_samples: 3,
            shootout_top: 4,
            shootout_rounds: 3,
        }
    }
}

impl Fidelity {
    /// No re-measurement at all: every config keeps its first measurement.
    pub fn off() -> Self {
        Fidelity {
            remeasure_within: 0.0,
            near_best_samples: 0,
            shootout_top: 0,
            shootout_rounds: 0,
        }
    }
}

/// What every strategy is given.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Seed; a strategy's proposals are a function of the seed and the outcomes it sees.
    pub seed: u64,
    /// Most unique configs to evaluate.
    pub max_evals: usize,
    /// The time budget in seconds the evaluator reports (real or simulated): a search runs no
    /// batch, or no part of one, that it expects to end past it (estimated from the last
    /// batch's time, per wave of [`Evaluator::parallelism`] configs), so it ends within its
    /// budget instead of one batch after it.
    pub max_time_s: Option<f64>,
    /// Configs to evaluate first: the spec's default config, then warm-start configs (from other
    /// shapes or devices). Invalid ones are skipped.
    pub start: Vec<Config>,
    /// The noise-handling ladder.
    pub fidelity: Fidelity,
    /// Cancellation flag and progress callback (none by default).
    pub hooks: Hooks,
    /// Stop proposing once the best estimate is at or below this many ms (a roofline: nothing
    /// can be much faster). Not a cancellation: the search finishes normally.
    pub target_ms: Option<f64>,
    /// Times measured elsewhere (another GPU model, toolchain or shape), one [`Prior`] per
    /// source: the search evaluates their fastest configs first and (LFBO) trains on them,
    /// trusting each less as this GPU's measurements arrive and disagree (see [`prior`]).
    pub priors: Vec<Prior>,
    /// How priors are used.
    pub prior_params: PriorParams,
}

/// How far a search is, reported after each batch (see [`Hooks::progress`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Unique configs evaluated so far (failures included).
    pub evaluated: usize,
    /// The most that will be evaluated: the evaluation budget, or the number of valid configs
    /// when the space is smaller. A time budget or convergence can end the search sooner.
    pub budget: usize,
    /// The best estimate so far in ms (`None` until a config ran correctly).
    pub best_ms: Option<f64>,
    /// Seconds the evaluator reports spent (real or simulated).
    pub elapsed_s: f64,
}

/// A progress callback; cheap to clone (shared).
#[derive(Clone)]
pub struct ProgressHook(Arc<dyn Fn(&Progress) + Send + Sync>);

impl ProgressHook {
    /// Wraps a callback. It runs on the searching thread between batches, so it should be quick.
    pub fn new(f: impl Fn(&Progress) + Send + Sync + 'static) -> ProgressHook {
        ProgressHook(Arc::new(f))
    }

    /// Calls it.
    pub fn call(&self, p: &Progress) {
        (self.0)(p)
    }
}

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook(..)")
    }
}

/// What a caller can attach to a search: a cancellation flag and a progress callback.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// When set (from any thread, e.g. a Ctrl-C handler), the search ends after the batch in
    /// flight and returns the best found so far; the final shootout is skipped.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called after every batch (and once before the first) with the search's progress.
    pub progress: Option<ProgressHook>,
}

impl Hooks {
    /// Whether the cancellation flag is set.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl SearchOptions {
    /// Options with a seed and an evaluation budget, no time budget, no start configs and the
    /// default fidelity ladder.
    pub fn new(seed: u64, max_evals: usize) -> Self {
        SearchOptions {
            seed,
            max_evals,
            max_time_s: None,
            start: Vec::new(),
            fidelity: Fidelity::default(),
            hooks: Hooks::default(),
            target_ms: None,
            priors: Vec::new(),
            prior_params: PriorParams::default(),
        }
    }
}

/// Everything known about one evaluated config.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The config.
    pub config: Config,
    /// All samples drawn so far (empty for a failure).
    pub samples: Vec<f64>,
    /// The failure, if it failed.
    pub failure: Option<Failure>,
}

impl Observation {
    /// The current time estimate ([`estimate()`] of all samples: the median), `None` for a
    /// failure.
    pub fn estimate(&self) -> Option<f64> {
        if self.failure.is_some() {
            return None;
        }
        estimate(&self.samples)
    }
}

/// The result of a search.
#[derive(Clone, Debug)]
pub struct SearchResult {
    /// The winner and its estimated time in ms; `None` when no config ran successfully.
    pub best: Option<(Config, f64)>,
    /// Every unique config evaluated, in evaluation order, with all of its samples.
    pub observations: Vec<Observation>,
    /// How many re-measurement requests (config × call) were made on top of the evaluations.
    pub remeasurements: usize,
    /// Seconds the evaluator reported at the end.
    pub elapsed_s: f64,
    /// Whether the search was cancelled through [`Hooks::cancel`] before it ended on its own:
    /// `best` is then the best of what was evaluated so far, without the final shootout.
    pub cancelled: bool,
    /// Each prior used (source label) and the trust it had at the end (0: its ranking did not
    /// hold here, the search went on without it); empty without priors.
    pub prior_trust: Vec<(String, f64)>,
}

impl SearchResult {
    /// The evaluation trace: each unique config with its first-measurement time (`None` for a
    /// failure), in evaluation order.
    pub fn trace(&self) -> impl Iterator<Item = (&Config, Option<f64>)> + '_ {
        self.observations.iter().map(|o| {
            (
                &o.config,
                if o.failure.is_some() {
                    None
                } else {
                    o.samples.first().copied()
                },
            )
        })
    }
}

/// A search strategy.
pub trait Strategy {
    /// Short name for logs and traces (`lfbo`, `random`, ...).
    fn name(&self) -> &'static str;

    /// Runs the search to completion (budget spent, space exhausted, or converged).
    fn search(&self, eval: &mut dyn Evaluator, opts: &SearchOptions) -> Result<SearchResult>;
}

/// Strategy by name: `lfbo`, `random`, `pattern`, `exhaustive`.
pub fn strategy_by_name(name: &str) -> Option<Box<dyn Strategy>> {
    match name {
        "lfbo" => Some(Box::new(Lfbo::default())),
        "random" => Some(Box::new(RandomSearch::default())),
        "pattern" => Some(Box::new(PatternSearch::default())),
        "exhaustive" => Some(Box::new(Exhaustive::default())),
        _ => None,
    }
}

/// The bookkeeping between a strategy and an evaluator (see the module docs).
pub struct Session<'a> {
    eval: &'a mut dyn Evaluator,
    opts: &'a SearchOptions,
    obs: Vec<Observation>,
    index: HashMap<Config, usize>,
    remeasurements: usize,
    /// Bumped whenever an estimate changes, so strategies can see re-measured labels.
    version: u64,
    /// What [`Progress::budget`] reports (computed once, only when a progress hook is set).
    budget: usize,
    /// The priors, checked against the space.
    prior: PriorState,
    /// Observations before this index were chosen by the priors (start configs and their
    /// polish); the trust is judged on the others, which the priors did not pick.
    seeded: usize,
    /// The last batch: its size and the seconds its evaluation took, what the next one is
    /// expected to take per wave of [`Evaluator::parallelism`] configs (for the time budget).
    last_batch: Option<(usize, f64)>,
    /// A batch was cut to nothing because it would have ended past the time budget.
    out_of_time: bool,
    /// Configs the evaluator had not finished when it returned a batch (stragglers still
    /// compiling, [`Evaluator::evaluate_some`]): they lead the next batch.
    deferred: Vec<Config>,
}

impl<'a> Session<'a> {
    /// A session over `eval` under `opts`.
    pub fn new(eval: &'a mut dyn Evaluator, opts: &'a SearchOptions) -> Self {
        let budget = if opts.hooks.progress.is_some() {
            let count = usize::try_from(eval.space().count()).unwrap_or(usize::MAX);
            opts.max_evals.min(count)
        } else {
            opts.max_evals
        };
        let prior = if opts.priors.is_empty() {
            PriorState::default()
        } else {
            PriorState::new(&opts.priors, &opts.prior_params, eval.space())
        };
        let s = Session {
            eval,
            opts,
            obs: Vec::new(),
            index: HashMap::new(),
            remeasurements: 0,
            version: 0,
            budget,
            prior,
            seeded: 0,
            last_batch: None,
            out_of_time: false,
            deferred: Vec::new(),
        };
        s.report_progress();
        s
    }

    /// Tells the progress hook, if any, where the search stands.
    fn report_progress(&self) {
        if let Some(hook) = &self.opts.hooks.progress {
            hook.call(&Progress {
                evaluated: self.obs.len(),
                budget: self.budget,
                best_ms: self.best().map(|(_, t)| t),
                elapsed_s: self.eval.elapsed_s(),
            });
        }
    }

    /// Whether the caller cancelled the search (see [`Hooks::cancel`]).
    pub fn cancelled(&self) -> bool {
        self.opts.hooks.cancelled()
    }

    /// The space searched.
    pub fn space(&self) -> &SearchSpace {
        self.eval.space()
    }

    /// The options.
    pub fn options(&self) -> &SearchOptions {
        self.opts
    }

    /// Unique evaluations still allowed (0 once the time budget is spent, or too little of it is
    /// left for one more wave of evaluations, the target reached or the search cancelled: every
    /// strategy loops on this, so that is how they all stop).
    pub fn remaining(&self) -> usize {
        if self.cancelled()
            || self.out_of_time
            || self
                .opts
                .max_time_s
                .is_some_and(|t| self.eval.elapsed_s() >= t)
            || self
                .opts
                .target_ms
                .is_some_and(|t| self.best().is_some_and(|(_, b)| b <= t))
        {
            return 0;
        }
        self.opts.max_evals.saturating_sub(self.obs.len())
    }

    /// How many of the first observations the priors chose (start configs and their polish).
    pub fn seeded(&self) -> usize {
        self.seeded
    }

    /// The priors (empty without any).
    pub fn prior(&self) -> &PriorState {
        &self.prior
    }

    /// The current trust in each prior, given what was measured here.
    pub fn prior_trust(&self) -> Vec<f64> {
        self.prior
            .trust(&self.obs[self.seeded.min(self.obs.len())..], self.obs.len())
    }

    /// Evaluates the start configs (the caller's, then the priors' fastest) as the first batch,
    /// then, with a prior, up to `PriorParams::polish` one-step moves of the best of them
    /// (those the priors rank best first). Every strategy begins with this.
    pub fn evaluate_start(&mut self) -> Result<()> {
        let mut start = self.opts.start.clone();
        start.extend(self.prior.start());
        if !start.is_empty() {
            self.evaluate(&start)?;
        }
        if self.prior.is_empty() {
            return Ok(());
        }
        if let Some((i, _)) = self.best() {
            let mut moves: Vec<Config> = self
                .space()
                .one_step_neighbours(&self.obs[i].config)
                .into_iter()
                .filter(|c| !self.is_evaluated(c))
                .collect();
            self.prior.order(&mut moves);
            moves.truncate(self.prior.params().polish);
            if !moves.is_empty() {
                self.evaluate(&moves)?;
            }
        }
        self.seeded = self.obs.len();
        Ok(())
    }

    /// The trusted priors' fastest configs not evaluated yet (candidates for a model), at the
    /// `trust` of [`Session::prior_trust`] (computed once per batch by the caller: it ranks
    /// every observation).
    pub fn prior_candidates(&self, trust: &[f64]) -> Vec<Config> {
        if self.prior.is_empty() {
            return Vec::new();
        }
        self.prior
            .candidates(trust, &|c| self.index.contains_key(c))
    }

    /// Whether `c` was evaluated already.
    pub fn is_evaluated(&self, c: &Config) -> bool {
        self.index.contains_key(c)
    }

    /// Index of `c`'s observation, if it was evaluated.
    pub fn index_of(&self, c: &Config) -> Option<usize> {
        self.index.get(c).copied()
    }

    /// All observations, in evaluation order.
    pub fn observations(&self) -> &[Observation] {
        &self.obs
    }

    /// Changes whenever an observation is added or re-measured.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Index (into [`Session::observations`]) and estimate of the best successful config.
    pub fn best(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (i, o) in self.obs.iter().enumerate() {
            if let Some(t) = o.estimate() {
                if best.is_none_or(|(_, b)| t < b) {
                    best = Some((i, t));
                }
            }
        }
        best
    }

    /// Indices of successful observations sorted by estimate, best first.
    pub fn ranked(&self) -> Vec<usize> {
        let mut v: Vec<(usize, f64)> = self
            .obs
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.estimate().map(|t| (i, t)))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        v.into_iter().map(|(i, _)| i).collect()
    }

    /// Evaluates the configs of `batch` that are valid and new (duplicates dropped), up to the
    /// remaining budget, then applies the fidelity ladder. Returns the indices of the new
    /// observations (empty when nothing was left to evaluate).
    pub fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<usize>> {
        let room = self.remaining();
        let mut todo: Vec<Config> = Vec::new();
        // The last batch's stragglers first: their compilations are under way.
        let deferred = std::mem::take(&mut self.deferred);
        for c in deferred.iter().chain(batch) {
            if todo.len() >= room {
                break;
            }
            if !self.index.contains_key(c) && !todo.contains(c) && self.eval.space().is_valid(c) {
                todo.push(c.clone());
            }
        }
        todo.truncate(self.fits_in_time(todo.len()));
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let started_s = self.eval.elapsed_s();
        let n = todo.len();
        let outcomes = self.eval.evaluate_some(&todo)?;
        if outcomes.len() != todo.len() || outcomes.iter().all(|o| o.is_none()) {
            return Err(Error::Search(format!(
                "evaluator returned {} outcomes ({} finished) for {} configs",
                outcomes.len(),
                outcomes.iter().filter(|o| o.is_some()).count(),
                todo.len()
            )));
        }
        let mut new = Vec::with_capacity(todo.len());
        for (c, out) in todo.into_iter().zip(outcomes) {
            let Some(out) = out else {
                self.deferred.push(c);
                continue;
            };
            let i = self.obs.len();
            let o = match out {
                Outcome::Measured(m) => Observation {
                    config: c.clone(),
                    samples: m.samples,
                    failure: None,
                },
                Outcome::Failed(f) => Observation {
                    config: c.clone(),
                    samples: Vec::new(),
                    failure: Some(f),
                },
            };
            // A "successful" measurement without samples carries no time: treat it as a failure
            // rather than let it win.
            let o = if o.failure.is_none() && o.estimate().is_none() {
                Observation {
                    failure: Some(Failure {
                        class: FailureClass::Launch,
                        detail: "no samples".into(),
                    }),
                    ..o
                }
            } else {
                o
            };
            self.obs.push(o);
            self.index.insert(c, i);
            new.push(i);
        }
        self.version += 1;
        self.refine_near_best()?;
        // The batch's time includes the re-measurements it caused: the next batch will too.
        self.last_batch = Some((n, (self.eval.elapsed_s() - started_s).max(0.0)));
        self.report_progress();
        Ok(new)
    }

    /// How many of `n` configs can be evaluated before the time budget ends, judged by the last
    /// batch: evaluations go in waves of [`Evaluator::parallelism`] configs (compilations in
    /// parallel), each wave taking what one of the last batch's took. With no budget, or no batch
    /// yet, all of them. When none fits, the search is out of time ([`Session::remaining`] is 0).
    fn fits_in_time(&mut self, n: usize) -> usize {
        let (Some(budget), Some((last_n, last_s))) = (self.opts.max_time_s, self.last_batch) else {
            return n;
        };
        let p = self.eval.parallelism().max(1);
        let per_wave = last_s / last_n.div_ceil(p).max(1) as f64;
        let left = budget - self.eval.elapsed_s();
        let waves = if per_wave > 0.0 {
            (left / per_wave).floor().max(0.0)
        } else {
            f64::INFINITY
        };
        let fit = if waves >= n.div_ceil(p) as f64 {
            n
        } else {
            (waves as usize * p).min(n)
        };
        if fit == 0 {
            self.out_of_time = true;
        }
        fit
    }

    /// How many configs the evaluator works on at once ([`Evaluator::parallelism`]).
    pub fn parallelism(&self) -> usize {
        self.eval.parallelism().max(1)
    }

    /// Passes the strategy's next likely configs to the evaluator as a hint
    /// ([`Evaluator::prefetch`]), without those already evaluated, invalid or repeated; nothing
    /// once the search is cancelled. It neither spends budget nor changes any outcome.
    pub fn prefetch(&self, configs: &[Config]) {
        if self.cancelled() {
            return;
        }
        let mut todo: Vec<Config> = Vec::with_capacity(configs.len());
        for c in configs {
            if !self.index.contains_key(c) && !todo.contains(c) && self.eval.space().is_valid(c) {
                todo.push(c.clone());
            }
        }
        if !todo.is_empty() {
            self.eval.prefetch(&todo);
        }
    }

    /// Evaluates the one-step neighbours of `config` that have not been evaluated yet (the
    /// pattern move of pattern search and of LFBO's final polish).
    pub fn evaluate_one_step_moves(&mut self, config: &Config) -> Result<()> {
        let moves: Vec<Config> = self
            .space()
            .one_step_neighbours(config)
            .into_iter()
            .filter(|c| !self.is_evaluated(c))
            .collect();
        if !moves.is_empty() {
            self.evaluate(&moves)?;
        }
        Ok(())
    }

    /// Re-measures configs (by observation index), pooling the new samples; returns nothing but
    /// updates estimates (and [`Session::version`]).
    pub fn remeasure(&mut self, which: &[usize], samples: usize) -> Result<()> {
        let which: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| i < self.obs.len() && self.obs[i].failure.is_none())
            .collect();
        if which.is_empty() || samples == 0 {
            return Ok(());
        }
        let batch: Vec<Config> = which.iter().map(|&i| self.obs[i].config.clone()).collect();
        let outcomes = self.eval.remeasure(&batch, samples)?;
        if outcomes.len() != batch.len() {
            return Err(Error::Search(format!(
                "evaluator returned {} outcomes for {} re-measurements",
                outcomes.len(),
                batch.len()
            )));
        }
        for (i, out) in which.into_iter().zip(outcomes) {
            match out {
                Outcome::Measured(m) => self.obs[i].samples.extend(m.samples),
                // A config that fails when measured again is flaky: it must not win.
                Outcome::Failed(f) => self.obs[i].failure = Some(f),
            }
        }
        self.remeasurements += batch.len();
        self.version += 1;
        Ok(())
    }

    /// The fidelity ladder's middle rung: bring configs within `remeasure_within` of the best
    /// up to `near_best_samples` samples. Repeats until stable, since a re-measured best can get
    /// worse and pull more configs into range.
    fn refine_near_best(&mut self) -> Result<()> {
        let f = &self.opts.fidelity;
        let (within, want) = (f.remeasure_within, f.near_best_samples);
        if want <= 1 || within <= 0.0 {
            return Ok(());
        }
        for _ in 0..8 {
            let Some((_, best)) = self.best() else {
                return Ok(());
            };
            let todo: Vec<usize> = self
                .obs
                .iter()
                .enumerate()
                .filter(|(_, o)| {
                    o.estimate().is_some_and(|t| t <= best * within) && o.samples.len() < want
                })
                .map(|(i, _)| i)
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
            // Bring each up to `want` in one call per missing count (usually just one call).
            let need = todo
                .iter()
                .map(|&i| want - self.obs[i].samples.len())
                .min()
                .unwrap_or(1);
            self.remeasure(&todo, need)?;
        }
        Ok(())
    }

    /// The last rung: interleaved rounds over the top few, then the result. A cancelled search
    /// skips the shootout (the caller asked to stop now) and says so in the result.
    pub fn finish(mut self) -> Result<SearchResult> {
        let (top, rounds) = (
            self.opts.fidelity.shootout_top,
            self.opts.fidelity.shootout_rounds,
        );
        let cancelled = self.cancelled();
        if top > 1 && rounds > 0 && !cancelled {
            let finalists: Vec<usize> = self.ranked().into_iter().take(top).collect();
            if finalists.len() > 1 {
                for _ in 0..rounds {
                    self.remeasure(&finalists, 1)?;
                }
            }
        }
        let best = self.best().map(|(i, t)| (self.obs[i].config.clone(), t));
        let prior_trust = self.prior.report(&self.prior_trust());
        Ok(SearchResult {
            best,
            observations: self.obs,
            remeasurements: self.remeasurements,
            elapsed_s: self.eval.elapsed_s(),
            cancelled,
            prior_trust,
        })
    }
}
