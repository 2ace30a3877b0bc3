//! LFBO pattern search: likelihood-free Bayesian optimisation over pattern-search neighbourhoods.
//!
//! This is the strategy Helion made its default autotuner in 2025-12, after Song et al. (ICML
//! 2022), "A General Recipe for Likelihood-free Bayesian Optimization": instead of a Gaussian
//! process, a classifier learns "is this config below the threshold τ" from the observations,
//! with positives weighted by how far below τ they are (the EI utility), failures as negatives.
//! Its class probability ranks candidates. Candidates are random neighbours (radius 2, or 20% of a
//! parameter's list if longer) of a few good configs spread over different basins, plus global
//! random draws; the batch is picked greedily by probability minus a diversity penalty (the share
//! of trees in which two candidates share a leaf), so one batch does not spend itself on
//! near-copies.
//!
//! Recorded GPU data shows strong attractors far from the optimum (a transposed block shape, a
//! swapped A/B layout), so a local search that stalls for `patience` batches is polished
//! (one-step moves), then abandoned: the next one starts from fresh random draws, up to
//! `max_restarts` times, after which the search stops. The budget (evaluations and/or time)
//! bounds everything; the search ends with a one-step polish around the overall best.
//!
//! Pitfalls Helion found in its own implementation and avoided here: unbenchmarked neighbours are
//! not marked visited (only evaluated configs are excluded), a batch share that rounds to zero
//! cannot end the search (at least one model-picked slot per batch), the current local search's
//! incumbent is always a neighbourhood centre and the overall best is never dropped (a restart only
//! stops using it as a centre; the final polish returns to it), and labels are rebuilt from
//! current estimates every batch so re-measured configs carry their updated times.
//!
//! With a prior ([`super::prior`]): after the prior's start configs only `prior_init` random
//! configs (the cold design's remainder only if they already refute the prior), then each batch
//! is shared between a warm model (the priors' ranks as extra features) and the cold one, the
//! warm share shrinking with the trust; the prior's fastest unmeasured configs join the
//! candidates. Without a prior the search is exactly the cold one.
//!
//! Compile prefetch: each proposal also predicts the next batch (the same candidate draws on a
//! clone of the RNG, scored by the current models; see `propose_with`) and hands it to the
//! evaluator as a hint ([`Session::prefetch`]), so otherwise idle compile workers build those
//! images while this batch is measured. The RNG is never touched by it: the evaluated sequence is
//! bit-identical with and without (tests/search_prefetch.rs).

use std::collections::HashSet;

use super::forest::{Forest, ForestParams};
use super::random::fresh_samples;
use super::{Evaluator, SearchOptions, SearchResult, Session, Strategy};
use crate::rng::Rng;
use crate::space::{Config, SearchSpace};
use crate::Result;

/// Knobs of [`Lfbo`].
#[derive(Clone, Debug)]
pub struct LfboParams {
    /// Configs per batch, at least; more when the evaluator works on more at once
    /// ([`Session::parallelism`], up to `max_batch`).
    pub batch: usize,
    /// The largest batch sized to the evaluator's parallelism. A compile-bound GPU search
    /// waits for a batch's slowest compilation, so a batch of 8 on a pool of 16 workers leaves
    /// half of them idle: 16 configs per batch took about as long as 8 on the H200.
    pub max_batch: usize,
    /// Size of the initial design (start configs count towards it; the rest is uniform random).
    pub n_init: usize,
    /// τ is this quantile of the observed (log) times.
    pub quantile: f64,
    /// The classifier.
    pub forest: ForestParams,
    /// How many of the best configs are neighbourhood centres.
    pub n_incumbents: usize,
    /// Random neighbours drawn around each centre.
    pub neighbours_per_incumbent: usize,
    /// Neighbourhood radius in steps per parameter.
    pub radius: usize,
    /// Per parameter, the radius is at least this share of its number of values.
    pub radius_share: f64,
    /// Global random candidates per batch.
    pub n_global: usize,
    /// Weight of the diversity penalty (0 = pure probability ranking).
    pub diversity: f64,
    /// Share of each batch reserved for the best-scored global candidates.
    pub explore_share: f64,
    /// Neighbourhood centres after the first must differ from every earlier centre in at least
    /// this many parameters, so the centres cover more than one basin (0 or 1: the plain top few).
    pub centre_distance: usize,
    /// Share of the batch given to global candidates once the search has stalled for half its
    /// patience (escaping a local optimum is then worth more than refining it).
    pub stall_explore_share: f64,
    /// Configs differing from an abandoned basin's centre in fewer parameters than this are not
    /// neighbourhood centres after a restart.
    pub basin_distance: usize,
    /// A restarted local search takes its centres only from observations made after the restart
    /// (it begins with random draws), so it cannot drift back into the abandoned basin at once.
    pub restart_fresh: bool,
    /// Local searches abandoned (restarts elsewhere) before the search stops on patience.
    pub max_restarts: usize,
    /// Batches without improvement before the search polishes and, failing that, stops.
    pub patience: usize,
    /// Relative improvement of the best estimate that resets the patience.
    pub min_improvement: f64,
    /// With a prior: the share of each batch picked by the model that also sees the prior, at
    /// full trust (it shrinks with the trust; the cold model picks the rest).
    pub prior_share: f64,
    /// With a prior: the uniform random configs drawn after the prior's start configs.
    pub prior_init: usize,
    /// Spare configs proposed with each batch (the look-ahead's prediction of the next batch,
    /// see the module docs) and handed to the evaluator as a prefetch hint
    /// ([`Session::prefetch`]), compiled by otherwise idle workers. Never changes the batches
    /// (0: no hint).
    pub prefetch: usize,
}

impl Default for LfboParams {
    fn default() -> Self {
        LfboParams {
            batch: 8,
            max_batch: 16,
            n_init: 16,
            quantile: 0.2,
            forest: ForestParams {
                n_trees: 48,
                max_depth: 10,
                min_samples_leaf: 1,
                max_features: None,
                bootstrap: true,
            },
            n_incumbents: 4,
            neighbours_per_incumbent: 150,
            radius: 2,
            radius_share: 0.2,
            n_global: 200,
            diversity: 1.0,
            explore_share: 0.125,
            centre_distance: 3,
            stall_explore_share: 0.125,
            basin_distance: 3,
            max_restarts: 3,
            restart_fresh: true,
            patience: 8,
            min_improvement: 0.002,
            prior_share: 0.66,
            prior_init: 4,
            prefetch: 8,
        }
    }
}

/// LFBO pattern search (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Lfbo {
    /// The knobs.
    pub params: LfboParams,
}

impl Lfbo {
    /// LFBO with the given knobs.
    pub fn new(params: LfboParams) -> Self {
        Lfbo { params }
    }

    /// Fits the classifier to the session's observations (current estimates; failures are
    /// negatives), with the priors' ranks as extra features when `trust` is given (the warm
    /// model) or without (the cold model). `None` when there is nothing to learn from (no
    /// successful config yet).
    pub fn fit(&self, s: &Session<'_>, seed: u64, trust: Option<&[f64]>) -> Result<Option<Forest>> {
        let d = width(s, trust.is_some());
        let obs = s.observations();
        let logs: Vec<Option<f64>> = obs
            .iter()
            .map(|o| o.estimate().filter(|t| *t > 0.0).map(f64::ln))
            .collect();
        let mut ok: Vec<f64> = logs.iter().flatten().copied().collect();
        if ok.is_empty() {
            return Ok(None);
        }
        ok.sort_by(f64::total_cmp);
        ok.dedup();
        let q = self.params.quantile.clamp(0.0, 1.0);
        // Linear-interpolated quantile of the distinct values (as numpy.quantile(unique(y))).
        let pos_f = q * (ok.len() - 1) as f64;
        let lo = pos_f.floor() as usize;
        let hi = (lo + 1).min(ok.len() - 1);
        let mut tau = ok[lo] + (ok[hi] - ok[lo]) * (pos_f - lo as f64);
        if tau <= ok[0] {
            // Too few distinct values: make the best one positive rather than none.
            tau = ok[0]
                + 1e-9
                + if ok.len() > 1 {
                    0.5 * (ok[1] - ok[0])
                } else {
                    0.0
                };
        }
        let mut x = vec![0.0; obs.len() * d];
        let mut labels = Vec::with_capacity(obs.len());
        let mut w = Vec::with_capacity(obs.len());
        for (i, o) in obs.iter().enumerate() {
            encode(s, trust, &o.config, &mut x[i * d..(i + 1) * d]);
            match logs[i] {
                Some(y) if y < tau => {
                    labels.push(true);
                    w.push(tau - y);
                }
                _ => {
                    labels.push(false);
                    w.push(1.0);
                }
            }
        }
        // Positive weights ∝ τ − y, scaled to mean 1 so the classes keep their counts' balance.
        let (sum, n) = labels
            .iter()
            .zip(&w)
            .filter(|(l, _)| **l)
            .fold((0.0, 0usize), |(s, n), (_, w)| (s + w, n + 1));
        if n > 0 && sum > 0.0 {
            let k = n as f64 / sum;
            for (l, wi) in labels.iter().zip(w.iter_mut()) {
                if *l {
                    *wi *= k;
                }
            }
        }
        Forest::fit(&x, d, &labels, &w, &self.params.forest, seed).map(Some)
    }

    /// Proposes up to `n` new configs for the next batch: the LFBO step (fit, generate
    /// candidates, score, pick with the diversity penalty). Public so it can be benchmarked.
    pub fn propose(&self, s: &Session<'_>, n: usize, rng: &mut Rng) -> Result<Vec<Config>> {
        Ok(self
            .propose_with(s, n, 0, self.params.explore_share, &[], 0, rng)?
            .0)
    }

    /// As [`Lfbo::propose`], plus up to `spare` further configs: the likeliest members of the
    /// following batch (the look-ahead of `propose_with`: the next call's candidates, drawn on
    /// a clone of the RNG, scored by the current models). The batch itself, and the RNG's state
    /// after the call, are exactly those of [`Lfbo::propose`].
    pub fn propose_with_spares(
        &self,
        s: &Session<'_>,
        n: usize,
        spare: usize,
        rng: &mut Rng,
    ) -> Result<(Vec<Config>, Vec<Config>)> {
        self.propose_with(s, n, spare, self.params.explore_share, &[], 0, rng)
    }

    /// The centres of the neighbourhoods: the best config outside the abandoned basins, then the
    /// next best ones that are at least `centre_distance` parameters away from every centre chosen
    /// before. Configs within `basin_distance` parameters of an abandoned basin's centre (`tabu`)
    /// are not centres.
    fn centres(&self, s: &Session<'_>, tabu: &[Config], epoch: usize) -> Vec<usize> {
        let k = self.params.n_incumbents.max(1);
        let ranked = self.ranked_local(s, tabu, epoch);
        let mut out: Vec<usize> = Vec::with_capacity(k);
        for &i in &ranked {
            if out.len() >= k {
                break;
            }
            let c = &s.observations()[i].config;
            let far = out
                .iter()
                .all(|&j| hamming(c, &s.observations()[j].config) >= self.params.centre_distance);
            if far {
                out.push(i);
            }
        }
        // Too few distinct basins: fill up with the plain ranking.
        for &i in &ranked {
            if out.len() >= k {
                break;
            }
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The batch of `n` and up to `spare` spares; see [`Lfbo::propose_with_spares`].
    ///
    /// The spares are the look-ahead's prediction of the next batch: the next call draws its
    /// candidates from the RNG state this call leaves, and while the centres stay the same (the
    /// usual case: most batches do not move the incumbents) it draws the same neighbours, less
    /// the configs of this batch (then evaluated). So a clone of the RNG, advanced past the
    /// next fit's seeds, draws that candidate set now; the current models score it and the same
    /// greedy rules pick from it. The RNG itself is not touched: the batch and everything after
    /// it are exactly those without spares.
    #[allow(clippy::too_many_arguments)]
    fn propose_with(
        &self,
        s: &Session<'_>,
        n: usize,
        spare: usize,
        explore_share: f64,
        tabu: &[Config],
        epoch: usize,
        rng: &mut Rng,
    ) -> Result<(Vec<Config>, Vec<Config>)> {
        let p = &self.params;
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let Some(forest) = self.fit(s, rng.next_u64(), None)? else {
            return Ok((fresh_samples(s, n, rng, &HashSet::new()), Vec::new()));
        };
        // With a trusted prior, a share of the slots (shrinking with the trust) goes to a model
        // that also sees the priors' ranks; the cold model keeps the others, a hedge against a
        // prior whose ranking does not hold here.
        let trust = s.prior_trust();
        let share = p.prior_share * trust.iter().copied().fold(0.0, f64::max);
        let n_warm = ((n as f64) * share).round() as usize;
        let warm = if n_warm > 0 {
            self.fit(s, rng.next_u64(), Some(&trust))?
        } else {
            None
        };
        let centres = self.centres(s, tabu, epoch);
        if centres.is_empty() {
            // Every good config lies in an abandoned basin: start afresh from random draws.
            return Ok((fresh_samples(s, n, rng, &HashSet::new()), Vec::new()));
        }
        let models = Models {
            cold: &forest,
            warm: warm.as_ref(),
            trust: &trust,
        };
        let none = HashSet::new();
        let (cands, n_local) = self.candidates(s, &centres, &trust, &none, rng);
        let batch = self.pick(s, &models, &cands, n_local, n, n_warm, explore_share);
        if spare == 0 || batch.is_empty() {
            return Ok((batch, Vec::new()));
        }
        // The look-ahead (see above) on a clone of the RNG: the next call's fit seeds first.
        let mut ahead = rng.clone();
        ahead.next_u64();
        if n_warm > 0 {
            ahead.next_u64();
        }
        let this: HashSet<Config> = batch.iter().cloned().collect();
        let (next, next_local) = self.candidates(s, &centres, &trust, &this, &mut ahead);
        let mut spares = self.pick(s, &models, &next, next_local, spare, n_warm, explore_share);
        spares.retain(|c| !this.contains(c));
        Ok((batch, spares))
    }

    /// The candidates of one proposal: the trusted priors' fastest unmeasured configs, random
    /// neighbours of the centres (never evaluated ones, nor any of `skip`; merely proposed
    /// configs are not "visited"), then global random draws. Returns them and how many are local
    /// (the rest are global).
    fn candidates(
        &self,
        s: &Session<'_>,
        centres: &[usize],
        trust: &[f64],
        skip: &HashSet<Config>,
        rng: &mut Rng,
    ) -> (Vec<Config>, usize) {
        let p = &self.params;
        let space = s.space();
        let mut seen: HashSet<Config> = HashSet::new();
        let mut cands: Vec<Config> = Vec::new();
        for c in s.prior_candidates(trust) {
            if !skip.contains(&c) && seen.insert(c.clone()) {
                cands.push(c);
            }
        }
        for &i in centres {
            let centre = &s.observations()[i].config;
            let mut got = 0;
            for _ in 0..2 * p.neighbours_per_incumbent {
                if got >= p.neighbours_per_incumbent {
                    break;
                }
                if let Some(c) = self.random_neighbour(space, centre, rng) {
                    if !s.is_evaluated(&c) && !skip.contains(&c) && seen.insert(c.clone()) {
                        cands.push(c);
                        got += 1;
                    }
                }
            }
        }
        let n_local = cands.len();
        // `skip` will be evaluated by then, which `fresh_samples` skips as it does `seen`.
        seen.extend(skip.iter().cloned());
        cands.extend(fresh_samples(s, p.n_global, rng, &seen));
        (cands, n_local)
    }

    /// Scores `cands` (probability and leaf vector under the cold model, the warm model's
    /// probability) and picks up to `n` greedily: probability minus diversity × (highest
    /// similarity to anything picked), the first `explore_share` of the slots from the global
    /// candidates, `n_warm` slots (spread evenly, the first one first) by the warm model.
    #[allow(clippy::too_many_arguments)]
    fn pick(
        &self,
        s: &Session<'_>,
        m: &Models<'_>,
        cands: &[Config],
        n_local: usize,
        n: usize,
        n_warm: usize,
        explore_share: f64,
    ) -> Vec<Config> {
        if cands.is_empty() {
            return Vec::new();
        }
        // The cold model's leaves measure similarity; the warm model's probability ranks the
        // prior's slots.
        let t = m.cold.n_trees();
        let mut feat = vec![0.0; width(s, true)];
        let mut leaves = vec![0u32; cands.len() * t];
        let mut prob = Vec::with_capacity(cands.len());
        let mut warm_prob = Vec::new();
        let mut scratch = vec![0u32; m.warm.map_or(0, Forest::n_trees)];
        for (k, c) in cands.iter().enumerate() {
            encode(s, None, c, &mut feat[..width(s, false)]);
            prob.push(
                m.cold
                    .proba_and_leaves(&feat, &mut leaves[k * t..(k + 1) * t]),
            );
            if let Some(w) = m.warm {
                encode(s, Some(m.trust), c, &mut feat);
                warm_prob.push(w.proba_and_leaves(&feat, &mut scratch));
            }
        }
        let n_warm = if m.warm.is_none() { 0 } else { n_warm };
        let n = n.min(cands.len());
        let n_explore = ((n as f64) * explore_share).round() as usize;
        // At least one slot is model-picked from everything, however the share rounds.
        let n_explore = n_explore.min(n.saturating_sub(1));
        let mut max_sim = vec![0.0f64; cands.len()];
        let mut taken = vec![false; cands.len()];
        let mut out = Vec::with_capacity(n);
        for slot in 0..n {
            // The warm model's slots are spread evenly over the batch, starting with the first.
            let is_warm = (slot * n_warm).div_ceil(n) < ((slot + 1) * n_warm).div_ceil(n);
            let prob = if is_warm { &warm_prob } else { &prob };
            let range = if slot < n_explore && n_local < cands.len() {
                n_local..cands.len()
            } else {
                0..cands.len()
            };
            let mut best: Option<(usize, f64)> = None;
            for k in range {
                if taken[k] {
                    continue;
                }
                let v = prob[k] - self.params.diversity * max_sim[k];
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((k, v));
                }
            }
            let Some((k, _)) = best else { break };
            taken[k] = true;
            out.push(cands[k].clone());
            let lk = &leaves[k * t..(k + 1) * t];
            for j in 0..cands.len() {
                if !taken[j] {
                    let sim = super::forest::leaf_similarity(lk, &leaves[j * t..(j + 1) * t]);
                    if sim > max_sim[j] {
                        max_sim[j] = sim;
                    }
                }
            }
        }
        out
    }

    /// Pattern search from observation `from` by one-step moves until no neighbour is better
    /// (or the budget is gone). Returns the index of where it ended and whether that improved on
    /// `from` by more than `min_improvement`.
    fn polish(&self, s: &mut Session<'_>, from: usize) -> Result<(usize, bool)> {
        let Some(start) = s.observations()[from].estimate() else {
            return Ok((from, false));
        };
        let mut at = from;
        while s.remaining() > 0 {
            let here = s.observations()[at].config.clone();
            let before = s.observations()[at].estimate().unwrap_or(f64::INFINITY);
            s.evaluate_one_step_moves(&here)?;
            let next = s
                .space()
                .one_step_neighbours(&here)
                .iter()
                .filter_map(|c| s.index_of(c))
                .filter_map(|j| s.observations()[j].estimate().map(|t| (j, t)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match next {
                Some((j, t)) if t < before => at = j,
                _ => break,
            }
        }
        let end = s.observations()[at].estimate().unwrap_or(f64::INFINITY);
        Ok((at, end < start * (1.0 - self.params.min_improvement)))
    }

    /// A random valid config near `c`: one parameter (half of the time) or two to three moved,
    /// each by 1..=r steps where r = max(`radius`, `radius_share` × its number of values), so
    /// long ordered lists (block sizes in steps of 16) are crossed in a few moves, not dozens.
    fn random_neighbour(&self, space: &SearchSpace, c: &Config, rng: &mut Rng) -> Option<Config> {
        let params = space.params();
        let movable: Vec<usize> = (0..params.len())
            .filter(|&i| params[i].values.len() > 1)
            .collect();
        if movable.is_empty() {
            return None;
        }
        for _ in 0..64 {
            let k = if rng.next_f64() < 0.5 {
                1
            } else {
                2 + rng.index(2)
            };
            let mut n = c.clone();
            for _ in 0..k.min(movable.len()) {
                let d = movable[rng.index(movable.len())];
                let len = params[d].values.len();
                let r = self
                    .params
                    .radius
                    .max(1)
                    .max((self.params.radius_share * len as f64).round() as usize);
                let step = 1 + rng.index(r) as i64;
                let signed = if rng.next_u64() & 1 == 0 { step } else { -step };
                n.0[d] = (n.0[d] as i64 + signed).clamp(0, len as i64 - 1) as u16;
            }
            if n != *c && space.is_valid(&n) {
                return Some(n);
            }
        }
        space.random_neighbour(c, self.params.radius.max(1), rng)
    }

    /// Configs per batch: `batch`, or the evaluator's parallelism up to `max_batch` when that
    /// is larger (see [`LfboParams::max_batch`]).
    fn batch_size(&self, s: &Session<'_>) -> usize {
        let p = &self.params;
        p.batch.max(1).max(s.parallelism().min(p.max_batch))
    }

    /// The initial design: uniform random, topped up until something works (a model needs a
    /// positive) or the budget runs out. After a prior's start configs it has only to be large
    /// enough to judge the prior by (`prior_init`); if that already refutes every prior, it is
    /// completed to the cold design (`n_init` random configs).
    fn initial_design(&self, s: &mut Session<'_>, rng: &mut Rng) -> Result<()> {
        let p = &self.params;
        let none = HashSet::new();
        let (mut n_init, min_batch) = if s.prior().is_empty() {
            (p.n_init, self.batch_size(s))
        } else {
            (s.seeded() + p.prior_init, 1)
        };
        while s.remaining() > 0 && (s.observations().len() < n_init || s.best().is_none()) {
            let want = design_batch(n_init, s.observations().len(), min_batch, s.remaining());
            let batch = fresh_samples(s, want, rng, &none);
            if batch.is_empty() || s.evaluate(&batch)?.is_empty() {
                break;
            }
            let cold = s.seeded() + p.n_init;
            if n_init < cold && s.prior_trust().iter().all(|t| *t <= 0.0) {
                n_init = cold;
            }
        }
        Ok(())
    }

    /// Successful observations of the current local search, best first: those made since it
    /// started (`epoch`, an index into the observations) outside the abandoned basins.
    fn ranked_local(&self, s: &Session<'_>, tabu: &[Config], epoch: usize) -> Vec<usize> {
        s.ranked()
            .into_iter()
            .filter(|&i| {
                i >= epoch
                    && !near_any(
                        &s.observations()[i].config,
                        tabu,
                        self.params.basin_distance,
                    )
            })
            .collect()
    }

    /// Best observation of the current local search, with its estimate.
    fn local_best(&self, s: &Session<'_>, tabu: &[Config], epoch: usize) -> Option<(usize, f64)> {
        self.ranked_local(s, tabu, epoch)
            .first()
            .and_then(|&i| s.observations()[i].estimate().map(|t| (i, t)))
    }
}

/// The models of one proposal: the cold one, the warm one (with a trusted prior) and the trust
/// its features were built with.
struct Models<'a> {
    cold: &'a Forest,
    warm: Option<&'a Forest>,
    trust: &'a [f64],
}

/// Length of the model's feature vectors: the space's encoding, then (`prior`) the priors'.
fn width(s: &Session<'_>, prior: bool) -> usize {
    s.space().feature_len() + if prior { s.prior().n_features() } else { 0 }
}

/// The model's features of `c` (`out` is [`width`] long): with `Some(trust)` the priors' too.
fn encode(s: &Session<'_>, trust: Option<&[f64]>, c: &Config, out: &mut [f64]) {
    let d = s.space().feature_len();
    s.space().encode(c, &mut out[..d]);
    if let Some(t) = trust {
        s.prior().features(c, t, &mut out[d..]);
    }
}

/// Number of parameters in which two configs differ.
fn hamming(a: &Config, b: &Config) -> usize {
    a.0.iter().zip(&b.0).filter(|(x, y)| x != y).count()
}

/// Whether `c` is within `d` differing parameters of any config of `set` (never, for `d == 0`).
fn near_any(c: &Config, set: &[Config], d: usize) -> bool {
    d > 0 && set.iter().any(|t| hamming(c, t) < d)
}

/// How many random configs a design batch asks for: what is missing of `n_init` after
/// `observed` observations, at least `min_batch`, at most `remaining` (the first batch is also
/// what a cold search hands over before its start, so both ask through this).
fn design_batch(n_init: usize, observed: usize, min_batch: usize, remaining: usize) -> usize {
    n_init
        .saturating_sub(observed)
        .max(min_batch)
        .min(remaining)
}

impl Strategy for Lfbo {
    fn name(&self) -> &'static str {
        "lfbo"
    }

    fn search(&self, eval: &mut dyn Evaluator, opts: &SearchOptions) -> Result<SearchResult> {
        let p = &self.params;
        let mut s = Session::new(eval, opts);
        let mut rng = Rng::new(opts.seed);
        // A cold search's first design is random and does not depend on how its start configs
        // do: handed over as spares before the start is evaluated, it compiles while the start
        // (the spec's default, whose run is the correctness reference) compiles and runs alone.
        // SGEMM 2048^3 spent 1.2 s of a 7 s search on that with one core of 16 busy (call Q).
        // Drawn from a copy of the generator: the design itself draws the same configs.
        if p.prefetch > 0 && s.prior().is_empty() && !opts.start.is_empty() {
            let start: HashSet<Config> = opts.start.iter().cloned().collect();
            let want = design_batch(
                p.n_init,
                start.len(),
                self.batch_size(&s),
                s.remaining().saturating_sub(start.len()),
            );
            s.prefetch(&fresh_samples(&s, want, &mut rng.clone(), &start));
        }
        s.evaluate_start()?;
        self.initial_design(&mut s, &mut rng)?;
        let none = HashSet::new();
        // One local search at a time: `local` is the best estimate of the current one; when it
        // stalls for `patience` batches and a polish does not help, its basin is abandoned
        // (tabu as a centre) and the next local search starts elsewhere, up to `max_restarts`.
        let mut tabu: Vec<Config> = Vec::new();
        let mut epoch = 0;
        let mut local = self
            .local_best(&s, &tabu, epoch)
            .map_or(f64::INFINITY, |(_, t)| t);
        let mut stall = 0;
        let mut restarts = 0;
        while s.remaining() > 0 {
            let want = self.batch_size(&s).min(s.remaining());
            let share = if 2 * stall >= p.patience {
                p.stall_explore_share
            } else {
                p.explore_share
            };
            // Spares only where a later batch can still use them (the budget allows one).
            let spare = p.prefetch.min(s.remaining().saturating_sub(want));
            let (mut batch, spares) =
                self.propose_with(&s, want, spare, share, &tabu, epoch, &mut rng)?;
            if batch.is_empty() {
                batch = fresh_samples(&s, want, &mut rng, &none);
            }
            // Compiled with idle capacity while this batch is measured (a hint, see
            // `Evaluator::prefetch`): the next batch is likely among them.
            s.prefetch(&spares);
            if batch.is_empty() || s.evaluate(&batch)?.is_empty() {
                break; // the space is exhausted
            }
            let now = self
                .local_best(&s, &tabu, epoch)
                .map_or(f64::INFINITY, |(_, t)| t);
            if now < local * (1.0 - p.min_improvement) {
                stall = 0;
            } else {
                stall += 1;
            }
            local = local.min(now);
            if stall >= p.patience {
                stall = 0;
                let Some((i, _)) = self.local_best(&s, &tabu, epoch) else {
                    continue;
                };
                let (end, improved) = self.polish(&mut s, i)?;
                if improved {
                    local = s.observations()[end].estimate().unwrap_or(local);
                    continue;
                }
                if restarts >= p.max_restarts {
                    break; // converged
                }
                restarts += 1;
                tabu.push(s.observations()[end].config.clone());
                if p.restart_fresh {
                    // The next local search starts from its own random design, not from what
                    // the abandoned one left behind.
                    epoch = s.observations().len();
                }
                local = self
                    .local_best(&s, &tabu, epoch)
                    .map_or(f64::INFINITY, |(_, t)| t);
            }
        }
        if let Some((i, _)) = s.best() {
            self.polish(&mut s, i)?;
        }
        s.finish()
    }
}
