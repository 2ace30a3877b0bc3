//! Search seeded by a prior: times of this space's configs measured elsewhere.
//!
//! A [`Prior`] is a list of configs with times from one other place where they are comparable
//! with each other: another GPU model, another toolchain, another shape of the same kernel (a
//! cache layer, a recorded file). Its times are not comparable with this GPU's; its ranking may
//! be: rankings carry over between NVIDIA GPUs and much less to AMD ones (recorded pairs in
//! `../shared/datasets/transfer`). So a prior is used by rank only, and only as far as this GPU's
//! own measurements agree with it:
//!
//! - First evaluations ([`Session::evaluate_start`](super::Session::evaluate_start), where every
//!   strategy begins): the priors' `start` fastest configs, right after the caller's start
//!   configs, then the `polish` one-step moves of the best of them that the priors rank best (a
//!   prior often has the right region and a wrong detail: on the AMD W6600 the A4000's 4th
//!   config with one flag flipped is the optimum).
//! - The model (LFBO): each prior's rank (as a share, 0 = its fastest) is an extra feature, so
//!   the classifier learns from this GPU's labels how far the prior's ranking holds; a share of
//!   each batch (`LfboParams::prior_share` × trust) is picked by that model, the rest by the
//!   cold model (without the feature), a hedge that keeps a misleading prior from steering the
//!   whole search; the trusted priors' fastest unmeasured configs join the candidates.
//! - Trust: `weight × agreement × decay`, judged only on configs the priors did not pick (the
//!   start configs and their polish lie where the prior is surest, and would flatter it).
//!   Agreement maps the Spearman rank correlation ρ between the prior's times and the ones
//!   measured here (failures here rank last), shrunk towards 1 by the prior's `belief` (as that
//!   many agreeing pairs), linearly from `rho_floor` (0) to `rho_full` (1). Decay
//!   `half / (half + n)` halves the prior's say after `half` evaluations here. At trust 0 the
//!   search is cold: no feature (a constant), no prior slots, no prior candidates; LFBO then
//!   also completes its cold random design.
//!
//! A prior of one config (an inherited winner) is fine: it is evaluated first and its one-step
//! moves next; there is no agreement to judge. Configs that are not valid in this space, repeated
//! configs (the first time is kept) and times that are not finite and positive are dropped;
//! several priors (one per source, each with its weight) may be given.
//!
//! Measured with `examples/replay.rs --prior` on the 7 recorded pairs of
//! `../shared/datasets/transfer` (10 runs each, budget 220): LFBO's mean regret after 20
//! evaluations is 1.056 and after 50 1.005 (cold LFBO on the same targets: 1.80 and 1.34;
//! evaluating the prior's fastest in order: 1.105 and 1.080), and no pair is worse than cold at
//! 100. What guards against a prior that misleads is mostly the hedge: with the trust check off
//! those figures barely move. The check matters for a prior that is wrong outright (a target's
//! own ranking reversed): it is dropped after the random design and the search goes on cold,
//! having spent the 10 seeded evaluations on the slowest configs (regret after 100 on the TITAN
//! RTX: 1.046, cold 1.000; `tests/search_prior.rs`).

use std::collections::{HashMap, HashSet};

use super::Observation;
use crate::space::{Config, SearchSpace};

/// Configs of this space with times measured elsewhere (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Prior {
    /// Where the times come from, for logs and results (`"NVIDIA H100|sm_90|nvrtc 12.9"`,
    /// `"convolution_A4000"`).
    pub source: String,
    /// Configs and their times (ms, or any unit: only their order counts).
    pub observations: Vec<(Config, f64)>,
    /// Trust before any measurement here, in 0..=1 (1: as much as the data allows; a cache
    /// layer of another GPU model might get 0.5). A prior of weight 0 is ignored.
    pub weight: f64,
}

impl Prior {
    /// A prior of weight 1.
    pub fn new(source: impl Into<String>, observations: Vec<(Config, f64)>) -> Prior {
        Prior {
            source: source.into(),
            observations,
            weight: 1.0,
        }
    }

    /// The same prior with another weight (clamped to 0..=1; not a number counts as 0).
    pub fn with_weight(mut self, weight: f64) -> Prior {
        self.weight = clamp_weight(weight);
        self
    }
}

fn clamp_weight(w: f64) -> f64 {
    if w.is_finite() {
        w.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// How priors are used (see the module docs). The defaults were chosen on the replayed pairs.
#[derive(Clone, Debug)]
pub struct PriorParams {
    /// The priors' fastest configs evaluated first (over all priors, taken from each in turn).
    pub start: usize,
    /// One-step moves of the best start config evaluated next, those the priors rank best first.
    pub polish: usize,
    /// How many agreeing measured pairs the prior's belief counts for.
    pub belief: f64,
    /// Rank correlation at or below which a prior is dropped.
    pub rho_floor: f64,
    /// Rank correlation at or above which a prior keeps its full weight.
    pub rho_full: f64,
    /// Evaluations here after which a prior's say is halved.
    pub half: f64,
    /// The trusted priors' fastest unmeasured configs offered to the model as candidates.
    pub candidates: usize,
}

impl Default for PriorParams {
    fn default() -> Self {
        PriorParams {
            start: 8,
            polish: 2,
            belief: 4.0,
            rho_floor: 0.3,
            rho_full: 0.8,
            half: 50.0,
            candidates: 64,
        }
    }
}

/// One prior inside a session: its valid configs fastest first, with time and rank.
#[derive(Debug)]
struct Source {
    label: String,
    weight: f64,
    sorted: Vec<(Config, f64)>,
    /// Time and rank (index into `sorted`) of each config.
    time: HashMap<Config, (f64, usize)>,
}

impl Source {
    /// `c`'s rank as a share of the prior's configs (0 = its fastest), if the prior holds it.
    fn share(&self, c: &Config) -> Option<f64> {
        self.time
            .get(c)
            .map(|&(_, r)| r as f64 / self.sorted.len() as f64)
    }
}

/// The priors of a session, checked against its space (see the module docs).
#[derive(Debug, Default)]
pub struct PriorState {
    sources: Vec<Source>,
    params: PriorParams,
}

impl PriorState {
    /// The priors' valid configs in `space`, fastest first; priors left empty are dropped.
    pub fn new(priors: &[Prior], params: &PriorParams, space: &SearchSpace) -> PriorState {
        let mut sources = Vec::new();
        for p in priors {
            let weight = clamp_weight(p.weight);
            let mut seen = HashSet::new();
            let mut sorted = Vec::new();
            for (c, t) in &p.observations {
                if t.is_finite() && *t > 0.0 && space.is_valid(c) && seen.insert(c) {
                    sorted.push((c.clone(), *t));
                }
            }
            if sorted.is_empty() || weight == 0.0 {
                continue;
            }
            sorted.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let time = sorted
                .iter()
                .enumerate()
                .map(|(i, (c, t))| (c.clone(), (*t, i)))
                .collect();
            sources.push(Source {
                label: p.source.clone(),
                weight,
                sorted,
                time,
            });
        }
        PriorState {
            sources,
            params: params.clone(),
        }
    }

    /// Whether no prior is in use.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// How priors are used.
    pub fn params(&self) -> &PriorParams {
        &self.params
    }

    /// Up to `n` of the priors' fastest configs for which `done` is false, taken from each prior
    /// whose `trust` is positive in turn.
    fn fastest(&self, n: usize, trust: &[f64], done: &dyn Fn(&Config) -> bool) -> Vec<Config> {
        let mut out: Vec<Config> = Vec::new();
        let mut seen: HashSet<&Config> = HashSet::new();
        let mut next = vec![0usize; self.sources.len()];
        while out.len() < n {
            let before = out.len();
            for (k, s) in self.sources.iter().enumerate() {
                if trust[k] <= 0.0 || out.len() >= n {
                    continue;
                }
                while let Some((c, _)) = s.sorted.get(next[k]) {
                    next[k] += 1;
                    if !done(c) && seen.insert(c) {
                        out.push(c.clone());
                        break;
                    }
                }
            }
            if out.len() == before {
                break;
            }
        }
        out
    }

    /// The configs to evaluate first: the priors' `start` fastest.
    pub fn start(&self) -> Vec<Config> {
        let all = vec![1.0; self.sources.len()];
        self.fastest(self.params.start, &all, &|_| false)
    }

    /// Sorts `configs` by their best rank (as a share) in any prior, those no prior holds last.
    pub fn order(&self, configs: &mut [Config]) {
        let best = |c: &Config| {
            self.sources
                .iter()
                .filter_map(|s| s.share(c))
                .fold(2.0, f64::min)
        };
        configs.sort_by(|a, b| best(a).total_cmp(&best(b)));
    }

    /// The trust in each prior, judged on `obs` (observations the priors did not pick), after
    /// `n` evaluations in all.
    pub fn trust(&self, obs: &[Observation], n: usize) -> Vec<f64> {
        let p = &self.params;
        let decay = p.half.max(0.0) / (p.half.max(0.0) + n as f64).max(1e-9);
        let belief = p.belief.max(0.0);
        self.sources
            .iter()
            .map(|s| {
                let pairs: Vec<(f64, f64)> = obs
                    .iter()
                    .filter_map(|o| {
                        let (prior, _) = *s.time.get(&o.config)?;
                        Some((prior, o.estimate().unwrap_or(f64::INFINITY)))
                    })
                    .collect();
                let k = pairs.len() as f64;
                let rho = if pairs.len() < 3 {
                    1.0
                } else {
                    (k * spearman(&pairs) + belief) / (k + belief)
                };
                let span = (p.rho_full - p.rho_floor).max(1e-9);
                let agreement = ((rho - p.rho_floor) / span).clamp(0.0, 1.0);
                s.weight * agreement * decay
            })
            .collect()
    }

    /// Up to `candidates` of the trusted priors' fastest configs for which `done` is false (not
    /// measured yet).
    pub fn candidates(&self, trust: &[f64], done: &dyn Fn(&Config) -> bool) -> Vec<Config> {
        self.fastest(self.params.candidates, trust, done)
    }

    /// Number of features [`PriorState::features`] writes: one per prior.
    pub fn n_features(&self) -> usize {
        self.sources.len()
    }

    /// The model's features of `c`: per prior, its rank there as a share (0 = fastest, 1 for a
    /// config it does not hold), or 0.5 for every config once the prior is not trusted (a
    /// constant feature, which no tree splits on).
    pub fn features(&self, c: &Config, trust: &[f64], out: &mut [f64]) {
        for ((s, &t), o) in self.sources.iter().zip(trust).zip(out.iter_mut()) {
            *o = if t <= 0.0 {
                0.5
            } else {
                s.share(c).unwrap_or(1.0)
            };
        }
    }

    /// Each prior's source label with its `trust`, for the search's result.
    pub fn report(&self, trust: &[f64]) -> Vec<(String, f64)> {
        self.sources
            .iter()
            .map(|s| s.label.clone())
            .zip(trust.iter().copied())
            .collect()
    }
}

/// Ranks (1-based, ties averaged) of `v`.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of the pairs (0 for fewer than two, or when either side is
/// constant).
pub fn spearman(pairs: &[(f64, f64)]) -> f64 {
    if pairs.len() < 2 {
        return 0.0;
    }
    let a = ranks(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let b = ranks(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Failure;
    use crate::space::Param;

    fn space() -> SearchSpace {
        let params = vec![
            Param::ints("a", &[1, 2, 3, 4, 5]),
            Param::ints("b", &[1, 2, 3, 4]),
        ];
        // (4, 3) is not in the space.
        SearchSpace::new(params, &[], &[])
            .unwrap()
            .with_filter(|c: &Config| c.0 != vec![4, 3])
            .unwrap()
    }

    fn c(a: u16, b: u16) -> Config {
        Config(vec![a, b])
    }

    fn measured(config: Config, t: f64) -> Observation {
        Observation {
            config,
            samples: vec![t],
            failure: None,
        }
    }

    #[test]
    fn rank_correlation() {
        let up: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, 10.0 + i as f64)).collect();
        assert!((spearman(&up) - 1.0).abs() < 1e-12);
        let down: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, -(i as f64))).collect();
        assert!((spearman(&down) + 1.0).abs() < 1e-12);
        assert_eq!(
            spearman(&[(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]),
            0.0,
            "constant side"
        );
        assert_eq!(spearman(&[(1.0, 2.0)]), 0.0);
        // Failures (infinite times) tie for the last rank.
        let f = f64::INFINITY;
        assert!(spearman(&[(1.0, 1.0), (2.0, 2.0), (3.0, f), (4.0, f)]) > 0.8);
    }

    #[test]
    fn keeps_valid_configs_fastest_first_and_shares_the_start() {
        let a = Prior::new(
            "a",
            vec![
                (c(0, 0), 5.0),
                (c(4, 3), 0.1), // not in the space: dropped
                (c(1, 1), 2.0),
                (c(1, 1), 0.5),      // repeated: the first time is kept
                (c(2, 2), f64::NAN), // not a time: dropped
                (c(3, 2), 1.0),
                (c(9, 9), 0.1), // out of range: dropped
            ],
        );
        let b = Prior::new("b", vec![(c(2, 0), 1.0), (c(1, 1), 2.0), (c(0, 3), 4.0)]);
        let zero = Prior::new("zero", vec![(c(0, 1), 1.0)]).with_weight(0.0);
        let params = PriorParams {
            start: 5,
            ..PriorParams::default()
        };
        let st = PriorState::new(&[a, b, zero], &params, &space());
        assert_eq!(st.n_features(), 2, "the prior of weight 0 is ignored");
        // From each prior in turn, fastest first, no repeats.
        assert_eq!(
            st.start(),
            vec![c(3, 2), c(2, 0), c(1, 1), c(0, 3), c(0, 0)]
        );
        let mut v = vec![c(0, 0), c(3, 3), c(2, 0), c(1, 1)];
        st.order(&mut v);
        assert_eq!(v, vec![c(2, 0), c(1, 1), c(0, 0), c(3, 3)]);
        let mut f = [0.0; 2];
        st.features(&c(0, 3), &[1.0, 1.0], &mut f);
        assert_eq!(
            f,
            [1.0, 2.0 / 3.0],
            "rank share; 1 where a prior lacks the config"
        );
        st.features(&c(0, 3), &[0.0, 1.0], &mut f);
        assert_eq!(f[0], 0.5, "an untrusted prior's feature is constant");
        let done = |x: &Config| *x == c(1, 1);
        assert_eq!(st.candidates(&[0.0, 1.0], &done), vec![c(2, 0), c(0, 3)]);
    }

    #[test]
    fn trust_follows_agreement_and_decays() {
        let sp = space();
        let all: Vec<Config> = sp.iter().collect();
        let truth = |x: &Config| 1.0 + x.0[0] as f64 * 4.0 + x.0[1] as f64;
        let agreeing = Prior::new("same", all.iter().map(|x| (x.clone(), truth(x))).collect());
        let reversed = Prior::new(
            "rev",
            all.iter().map(|x| (x.clone(), 1.0 / truth(x))).collect(),
        );
        let p = PriorParams::default();
        let st = PriorState::new(&[agreeing, reversed], &p, &sp);
        let obs: Vec<Observation> = all
            .iter()
            .step_by(2)
            .map(|x| measured(x.clone(), truth(x)))
            .collect();
        let decay = p.half / (p.half + obs.len() as f64);
        // Nothing judged yet: full weight (times the decay of no evaluations: 1).
        assert_eq!(st.trust(&[], 0), vec![1.0, 1.0]);
        let t = st.trust(&obs, obs.len());
        assert!(
            (t[0] - decay).abs() < 1e-12,
            "agreeing prior keeps its weight: {t:?}"
        );
        assert_eq!(t[1], 0.0, "reversed prior dropped: {t:?}");
        // Two disagreeing pairs are not enough against the prior's belief...
        let few = [measured(c(0, 0), 9.0), measured(c(4, 2), 1.0)];
        assert!(st.trust(&few, 2)[0] > 0.9 * p.half / (p.half + 2.0));
        // ...a failure on a config the prior finds fast counts as slowest here.
        let mut fail = measured(c(0, 0), 1.0);
        fail.samples.clear();
        fail.failure = Some(Failure {
            class: crate::failure::FailureClass::Launch,
            detail: "x".into(),
        });
        let mixed: Vec<Observation> = obs.iter().skip(1).cloned().chain([fail]).collect();
        assert!(st.trust(&mixed, mixed.len())[0] > 0.0);
    }
}
