//! Unit-level tests of the search strategies on a synthetic space and evaluator.
//!
//! The evaluator is a smooth bowl with a known optimum, a region of failing configs and optional
//! noise, so each property (determinism, budget, exhaustiveness, failures never win, pattern moves)
//! can be checked exactly and fast.

use jitune::search::{
    Evaluator, Exhaustive, Failure, FailureClass, Lfbo, Measurement, Outcome, PatternSearch, Prior,
    PriorParams, RandomSearch, SearchOptions, Strategy,
};
use jitune::space::{Config, Param, SearchSpace};
use jitune::{internals::Rng, Result};

/// Bowl: time = 1 + Σ (index − target)², failing where the first two indices sum above a limit.
struct Bowl {
    space: SearchSpace,
    target: Vec<i64>,
    noise: f64,
    fail_above: i64,
    /// Configs that measure fast first but fail when measured again.
    flaky: Vec<Config>,
    rng: Rng,
    elapsed: f64,
    calls: Vec<Config>,
}

impl Bowl {
    fn new(noise: f64) -> Bowl {
        let params = vec![
            Param::ints("a", &[1, 2, 4, 8, 16, 32, 64]),
            Param::ints("b", &[1, 2, 3, 4, 5, 6]),
            Param::ints("c", &[0, 1]),
            Param::ints("d", &[16, 32, 48, 64, 80]),
        ];
        // Drop a slice of the raw product, as a restricted space would.
        let space = SearchSpace::new(params, &[], &[])
            .unwrap()
            .with_filter(|c: &Config| c.0[1] != 5 || c.0[3] != 0)
            .unwrap();
        Bowl {
            space,
            target: vec![4, 2, 1, 3],
            noise,
            fail_above: 9,
            flaky: Vec::new(),
            rng: Rng::new(5),
            elapsed: 0.0,
            calls: Vec::new(),
        }
    }

    fn truth(&self, c: &Config) -> Option<f64> {
        if c.0[0] as i64 + c.0[1] as i64 > self.fail_above {
            return None;
        }
        Some(
            1.0 + c
                .0
                .iter()
                .zip(&self.target)
                .map(|(&i, &t)| ((i as i64 - t) * (i as i64 - t)) as f64)
                .sum::<f64>(),
        )
    }

    fn measure(&mut self, c: &Config, n: usize, again: bool) -> Outcome {
        self.elapsed += 1.0;
        if again && self.flaky.contains(c) {
            return Outcome::Failed(Failure {
                class: FailureClass::WrongResult,
                detail: "flaky".into(),
            });
        }
        if !again && self.flaky.contains(c) {
            return Outcome::Measured(Measurement::from_samples(vec![0.01]).unwrap());
        }
        match self.truth(c) {
            None => Outcome::Failed(Failure {
                class: FailureClass::Launch,
                detail: "too big".into(),
            }),
            Some(t) => {
                let s = (0..n.max(1))
                    .map(|_| t * (1.0 + self.noise * (self.rng.next_f64() - 0.5)))
                    .collect();
                Outcome::Measured(Measurement::from_samples(s).unwrap())
            }
        }
    }
}

impl Evaluator for Bowl {
    fn space(&self) -> &SearchSpace {
        &self.space
    }
    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.calls.extend(batch.iter().cloned());
        Ok(batch.iter().map(|c| self.measure(c, 1, false)).collect())
    }
    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        Ok(batch
            .iter()
            .map(|c| self.measure(c, samples, true))
            .collect())
    }
    fn elapsed_s(&self) -> f64 {
        self.elapsed
    }
}

fn strategies() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(Lfbo::default()),
        Box::new(RandomSearch::default()),
        Box::new(PatternSearch::default()),
        Box::new(Exhaustive::default()),
    ]
}

#[test]
fn deterministic_for_a_seed() {
    for s in strategies() {
        let run = |seed| {
            let mut b = Bowl::new(0.2);
            let r = s.search(&mut b, &SearchOptions::new(seed, 60)).unwrap();
            (
                r.observations
                    .iter()
                    .map(|o| (o.config.clone(), o.samples.clone()))
                    .collect::<Vec<_>>(),
                r.best,
            )
        };
        assert_eq!(run(3), run(3), "{}", s.name());
        if s.name() != "exhaustive" {
            assert_ne!(
                run(3).0,
                run(4).0,
                "{}: another seed, another search",
                s.name()
            );
        }
    }
}

#[test]
fn budget_respected_and_configs_unique() {
    for s in strategies() {
        for budget in [1, 7, 45] {
            let mut b = Bowl::new(0.1);
            let r = s.search(&mut b, &SearchOptions::new(1, budget)).unwrap();
            assert!(
                r.observations.len() <= budget,
                "{}: {} > {budget}",
                s.name(),
                r.observations.len()
            );
            assert_eq!(
                b.calls.len(),
                r.observations.len(),
                "{}: every evaluate call is a new config",
                s.name()
            );
            let mut seen = b.calls.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen.len(),
                b.calls.len(),
                "{}: a config was evaluated twice",
                s.name()
            );
            assert!(
                b.calls.iter().all(|c| b.space.is_valid(c)),
                "{}: invalid config evaluated",
                s.name()
            );
        }
        // A time budget stops proposing, too (each evaluation costs one simulated second here).
        let mut b = Bowl::new(0.0);
        let mut o = SearchOptions::new(1, 1000);
        o.max_time_s = Some(30.0);
        let r = s.search(&mut b, &o).unwrap();
        assert!(
            r.observations.len() < 60,
            "{}: {} evaluations on a 30 s budget",
            s.name(),
            r.observations.len()
        );
        // The search ends within the budget rather than a batch past it, and not far short of
        // it. (The first batch has no estimate to go by: exhaustive's first batch of 32 and its
        // re-measurements take 56 s here, so the budget is 60 s. The final shootout, which
        // re-times the finalists after the search, is off: it costs a second per re-timing on
        // this evaluator.)
        let mut b = Bowl::new(0.0);
        o.max_time_s = Some(60.0);
        o.fidelity.shootout_rounds = 0;
        s.search(&mut b, &o).unwrap();
        assert!(
            b.elapsed <= 60.0 && b.elapsed >= 50.0,
            "{}: {} simulated seconds on a 60 s budget",
            s.name(),
            b.elapsed
        );
    }
}

#[test]
fn exhaustive_visits_every_valid_config_once() {
    let mut b = Bowl::new(0.0);
    let n = b.space.count() as usize;
    let r = Exhaustive::default()
        .search(&mut b, &SearchOptions::new(0, usize::MAX))
        .unwrap();
    assert_eq!(r.observations.len(), n);
    let mut got: Vec<Config> = r.observations.iter().map(|o| o.config.clone()).collect();
    got.sort();
    let want: Vec<Config> = b.space.iter().collect();
    assert_eq!(got, want);
    let (best, t) = r.best.unwrap();
    assert_eq!(best, Config(vec![4, 2, 1, 3]));
    assert_eq!(t, 1.0);
}

#[test]
fn random_search_covers_a_small_space() {
    let mut b = Bowl::new(0.0);
    let n = b.space.count() as usize;
    let r = RandomSearch::default()
        .search(&mut b, &SearchOptions::new(2, usize::MAX))
        .unwrap();
    assert_eq!(
        r.observations.len(),
        n,
        "random search without repetition ends as exhaustive"
    );
}

#[test]
fn failures_never_win() {
    for s in strategies() {
        // Flaky configs look 100x faster on their first measurement, then fail when re-measured.
        let mut b = Bowl::new(0.0);
        b.flaky = b.space.iter().step_by(3).collect();
        let r = s.search(&mut b, &SearchOptions::new(9, 80)).unwrap();
        if let Some((best, _)) = &r.best {
            assert!(!b.flaky.contains(best), "{}: a flaky config won", s.name());
            assert!(
                b.truth(best).is_some(),
                "{}: a failing config won",
                s.name()
            );
        }
        // Nothing works at all: no winner, no panic.
        let mut b = Bowl::new(0.0);
        b.fail_above = -1;
        let r = s.search(&mut b, &SearchOptions::new(9, 40)).unwrap();
        assert!(r.best.is_none(), "{}", s.name());
        assert_eq!(
            r.observations.len(),
            40,
            "{}: keeps searching for a working config",
            s.name()
        );
    }
}

#[test]
fn pattern_search_moves_to_a_better_neighbour() {
    let mut b = Bowl::new(0.0);
    let mut o = SearchOptions::new(0, 200);
    o.start = vec![Config(vec![0, 0, 0, 0])];
    let r = PatternSearch { no_restart: true }
        .search(&mut b, &o)
        .unwrap();
    // The second evaluated config is a one-step neighbour of the start, and the bowl is convex
    // along each axis, so best-improvement pattern search walks to the optimum and stops.
    assert_eq!(r.observations[0].config, Config(vec![0, 0, 0, 0]));
    assert_eq!(r.best.unwrap().0, Config(vec![4, 2, 1, 3]));
    assert!(
        r.observations.len() < 80,
        "walked, not enumerated: {}",
        r.observations.len()
    );
}

#[test]
fn start_configs_come_first_and_lfbo_finds_the_optimum() {
    let mut b = Bowl::new(0.05);
    let mut o = SearchOptions::new(4, 120);
    o.start = vec![Config(vec![1, 1, 0, 0]), Config(vec![2, 1, 0, 0])];
    let r = Lfbo::default().search(&mut b, &o).unwrap();
    assert_eq!(r.observations[0].config, o.start[0]);
    assert_eq!(r.observations[1].config, o.start[1]);
    assert_eq!(r.best.unwrap().0, Config(vec![4, 2, 1, 3]));
}

#[test]
fn every_strategy_starts_with_the_prior_and_reports_its_trust() {
    let b = Bowl::new(0.0);
    // The bowl's own times as the prior, plus a config outside the space, which is skipped.
    let mut obs: Vec<(Config, f64)> = b
        .space
        .iter()
        .filter_map(|c| b.truth(&c).map(|t| (c, t)))
        .collect();
    obs.push((Config(vec![99, 0, 0, 0]), 0.001));
    let mut sorted = obs.clone();
    sorted.retain(|(c, _)| b.space.is_valid(c));
    sorted.sort_by(|x, y| x.1.total_cmp(&y.1));
    let first: Vec<Config> = sorted.iter().take(3).map(|(c, _)| c.clone()).collect();
    for s in strategies() {
        let mut b = Bowl::new(0.0);
        let mut o = SearchOptions::new(2, 40);
        o.start = vec![Config(vec![0, 0, 0, 0])];
        o.priors = vec![Prior::new("bowl", obs.clone())];
        o.prior_params = PriorParams {
            start: 3,
            polish: 2,
            ..PriorParams::default()
        };
        let r = s.search(&mut b, &o).unwrap();
        let got: Vec<Config> = r.observations.iter().map(|o| o.config.clone()).collect();
        assert_eq!(got[0], o.start[0], "{}: the caller's start first", s.name());
        assert_eq!(
            got[1..4],
            first[..],
            "{}: then the prior's fastest",
            s.name()
        );
        // Then two one-step moves of the best of them (the bowl's optimum).
        for c in &got[4..6] {
            let steps: i64 =
                c.0.iter()
                    .zip(&first[0].0)
                    .map(|(x, y)| (*x as i64 - *y as i64).abs())
                    .sum();
            assert_eq!(steps, 1, "{}: {c:?} is not a one-step move", s.name());
        }
        assert_eq!(r.best.as_ref().unwrap().0, first[0], "{}", s.name());
        assert_eq!(r.prior_trust.len(), 1, "{}", s.name());
        assert_eq!(r.prior_trust[0].0, "bowl");
        assert!(
            r.prior_trust[0].1 > 0.0,
            "{}: an exact prior keeps trust",
            s.name()
        );
    }
}

/// A bowl whose evaluator says it works on `parallel` configs at once, recording batch sizes.
struct Parallel {
    bowl: Bowl,
    parallel: usize,
    batches: Vec<usize>,
}

impl Evaluator for Parallel {
    fn space(&self) -> &SearchSpace {
        self.bowl.space()
    }
    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.batches.push(batch.len());
        self.bowl.evaluate(batch)
    }
    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        self.bowl.remeasure(batch, samples)
    }
    fn elapsed_s(&self) -> f64 {
        self.bowl.elapsed_s()
    }
    fn parallelism(&self) -> usize {
        self.parallel
    }
}

#[test]
fn lfbo_batches_follow_the_evaluators_parallelism_up_to_max_batch() {
    // The model's batches: after the initial design, the most common batch size (the last may
    // be cut by the budget; re-measurement and polishing batches differ).
    let model_batch = |parallel: usize| {
        let mut e = Parallel {
            bowl: Bowl::new(0.05),
            parallel,
            batches: Vec::new(),
        };
        Lfbo::default()
            .search(&mut e, &SearchOptions::new(5, 160))
            .unwrap();
        let rest = &e.batches[1..];
        let mut counts = std::collections::BTreeMap::new();
        for &b in rest {
            *counts.entry(b).or_insert(0usize) += 1;
        }
        let (size, n) = counts.into_iter().max_by_key(|&(_, n)| n).unwrap();
        assert!(n >= 3, "parallelism {parallel}: batches {:?}", e.batches);
        size
    };
    let p = jitune::search::LfboParams::default();
    assert_eq!(
        model_batch(1),
        p.batch,
        "a sequential evaluator keeps the batch"
    );
    assert_eq!(model_batch(16), 16, "a pool of 16 gets batches of 16");
    assert_eq!(model_batch(64), p.max_batch, "capped at max_batch");
}

/// An evaluator that leaves the last config of every batch of two or more unfinished (a
/// straggler still compiling), and finishes it when it comes back.
struct Straggling {
    bowl: Bowl,
    batches: Vec<Vec<Config>>,
    unfinished: Vec<Config>,
}

impl Evaluator for Straggling {
    fn space(&self) -> &SearchSpace {
        self.bowl.space()
    }
    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.bowl.evaluate(batch)
    }
    fn evaluate_some(&mut self, batch: &[Config]) -> Result<Vec<Option<Outcome>>> {
        self.batches.push(batch.to_vec());
        let cut = if batch.len() >= 2 {
            batch.len() - 1
        } else {
            batch.len()
        };
        let mut out: Vec<Option<Outcome>> = self
            .bowl
            .evaluate(&batch[..cut])?
            .into_iter()
            .map(Some)
            .collect();
        if cut < batch.len() {
            self.unfinished.push(batch[cut].clone());
            out.push(None);
        }
        Ok(out)
    }
    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        self.bowl.remeasure(batch, samples)
    }
    fn elapsed_s(&self) -> f64 {
        self.bowl.elapsed_s()
    }
}

#[test]
fn a_batchs_stragglers_lead_the_next_batch_and_are_measured_once() {
    for s in strategies() {
        let mut e = Straggling {
            bowl: Bowl::new(0.1),
            batches: Vec::new(),
            unfinished: Vec::new(),
        };
        let r = s.search(&mut e, &SearchOptions::new(2, 40)).unwrap();
        assert!(r.observations.len() <= 40, "{}", s.name());
        assert!(
            !e.unfinished.is_empty(),
            "{}: nothing was left unfinished",
            s.name()
        );
        // Every straggler but the last batch's leads the next batch.
        for (k, b) in e.batches.iter().enumerate().skip(1) {
            let prev = &e.batches[k - 1];
            if prev.len() >= 2 {
                assert_eq!(&b[0], prev.last().unwrap(), "{}: batch {k}", s.name());
            }
        }
        // Each config measured at most once; an observation for every config finished.
        let mut seen = std::collections::HashSet::new();
        assert!(
            e.bowl.calls.iter().all(|c| seen.insert(c.clone())),
            "{}: a config was measured twice",
            s.name()
        );
        assert_eq!(e.bowl.calls.len(), r.observations.len(), "{}", s.name());
    }
}
