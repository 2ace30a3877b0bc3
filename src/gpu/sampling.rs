//! The sampling rule of a measurement: how many timed runs to take, and when to stop.
//!
//! A file of its own because it is pure arithmetic on a list of times, with no CUDA in it: the
//! [`Bench`](super::measure::Bench) takes samples in rounds and asks [`decide`] after each one;
//! the rule is tested here without a GPU, and the search's tools (median, interval, spread)
//! share its statistics.
//!
//! Sampling is adaptive: rounds of runs, each round one synchronisation, until the median's
//! confidence interval is narrow, the time budget is spent, or the candidate is clearly slower
//! than the best so far (racing).

/// The rules of adaptive sampling (see [`decide`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Kernel time (ms) a measurement may spend; once spent, 3 samples are enough.
    pub budget_ms: f64,
    /// Samples a measurement takes at least while within the budget.
    pub min_reps: usize,
    /// Samples a measurement takes at most.
    pub max_reps: usize,
    /// Stop once the half-width of the median's 95% confidence interval is at most this
    /// fraction of the median.
    pub stable_within: f64,
    /// A first run slower than this many times the best median stops as [`Stop::TooSlow`];
    /// infinite: no probe and no racing (every config measured fully).
    pub too_slow_factor: f64,
}

impl Default for Sampling {
    /// The tuner's: 20 ms of kernel time, 5 to 50 samples, stable within 2%, a first run 10
    /// times slower than the best stops.
    fn default() -> Self {
        Sampling {
            budget_ms: 20.0,
            min_reps: 5,
            max_reps: 50,
            stable_within: 0.02,
            too_slow_factor: 10.0,
        }
    }
}

/// Why sampling stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The first run was slower than `too_slow_factor` times the best (a failure of its own).
    TooSlow,
    /// Every run so far (two at least) was slower than the upper end of the best's interval.
    Raced,
    /// The median's interval is narrow enough.
    Stable,
    /// The time budget is spent.
    Budget,
    /// `max_reps` samples.
    MaxReps,
}

/// What [`decide`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take this many more samples.
    More(usize),
    Stop(Stop),
}

/// A sampled measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub samples: Vec<f64>,
    pub stop: Stop,
}

/// The distribution-free 95% confidence interval of the median of `samples`: the order
/// statistics `j` and `n - 1 - j` with `j = floor((n - 1.96 sqrt(n)) / 2)` (normal approximation
/// of the binomial; below 6 samples the whole range). `(0, 0)` for no samples.
pub fn median_ci(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let j = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
        .floor()
        .max(0.0) as usize;
    let j = j.min((n - 1) / 2);
    (s[j], s[n - 1 - j])
}

/// One step of adaptive sampling: given the samples so far, stop (and why) or how many more
/// to take. In order: the first run against `too_slow_factor` times the best median; racing
/// (two runs or more, all slower than the upper end of the best's interval); `max_reps`; then,
/// with at least `min_reps` samples (3 once the budget is spent), stop when the budget is spent
/// or the median's interval is within `stable_within`. Otherwise the sample doubles (limited
/// by what the budget still pays for once past the floor).
pub fn decide(samples: &[f64], rule: &Sampling, best: Option<(f64, f64)>) -> Decision {
    let n = samples.len();
    if n == 0 {
        return Decision::More(1);
    }
    let max = rule.max_reps.max(1);
    let pruning = rule.too_slow_factor.is_finite();
    if let (true, Some((best_ms, best_hi))) = (pruning, best) {
        if n == 1 && samples[0] > rule.too_slow_factor * best_ms {
            return Decision::Stop(Stop::TooSlow);
        }
        let fastest = samples.iter().copied().fold(f64::INFINITY, f64::min);
        if n >= 2 && fastest > best_hi {
            return Decision::Stop(Stop::Raced);
        }
    }
    if n >= max {
        return Decision::Stop(Stop::MaxReps);
    }
    let spent: f64 = samples.iter().sum();
    let over = spent >= rule.budget_ms;
    let floor = if over { 3 } else { rule.min_reps.max(1) }.min(max);
    let med = median(samples);
    if n >= floor {
        if over {
            return Decision::Stop(Stop::Budget);
        }
        let (lo, hi) = median_ci(samples);
        if (hi - lo) / 2.0 <= rule.stable_within * med {
            return Decision::Stop(Stop::Stable);
        }
    }
    // Below the floor: up to it, doubling (1, 2, 4, ...), so racing can stop a slow candidate
    // after its second run. Above it: double, but not beyond what the rest of the budget pays
    // for.
    let add = if n < floor {
        n.min(floor - n)
    } else {
        let affordable = if med > 0.0 {
            ((rule.budget_ms - spent) / med).ceil() as usize
        } else {
            n
        };
        n.min(affordable).max(1)
    };
    Decision::More(add.min(max - n))
}

/// Median of a sample (0 for none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Interquartile range of a sample.
pub fn iqr(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let x = p * (s.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
    };
    q(0.75) - q(0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!((iqr(&[1.0, 2.0, 3.0, 4.0, 5.0]) - 2.0).abs() < 1e-12);
    }

    /// The tuner's rule (20 ms, 5 to 50 samples, 2%, 10x).
    fn rule() -> Sampling {
        Sampling::default()
    }

    /// Runs `decide` against a kernel whose runs take `run(i)` ms; the samples taken and why
    /// it stopped.
    fn simulate(
        rule: &Sampling,
        best: Option<(f64, f64)>,
        run: impl Fn(usize) -> f64,
    ) -> (usize, Stop, usize) {
        let mut s = Vec::new();
        let mut rounds = 0;
        loop {
            match decide(&s, rule, best) {
                Decision::More(n) => {
                    assert!(
                        n >= 1 && s.len() + n <= rule.max_reps,
                        "{n} more after {}",
                        s.len()
                    );
                    rounds += 1;
                    for _ in 0..n {
                        let i = s.len();
                        s.push(run(i));
                    }
                }
                Decision::Stop(why) => return (s.len(), why, rounds),
            }
        }
    }

    #[test]
    fn a_stable_kernel_stops_at_the_floor_in_few_rounds() {
        let (n, why, rounds) = simulate(&rule(), None, |i| 1.0 + 0.001 * (i % 3) as f64);
        assert_eq!((n, why), (5, Stop::Stable));
        assert!(rounds <= 4, "{rounds} rounds");
    }

    #[test]
    fn a_noisy_kernel_samples_more_but_not_beyond_the_cap() {
        // +-10% noise: the interval of the median narrows only with many samples.
        let noisy = |i: usize| 0.01 * (1.0 + 0.1 * (((i * 7919) % 13) as f64 / 6.0 - 1.0));
        let (n, why, rounds) = simulate(&rule(), None, noisy);
        assert!(n > 5, "{n}");
        assert!(
            n <= 50 && matches!(why, Stop::Stable | Stop::MaxReps),
            "{n} {why:?}"
        );
        assert!(rounds <= 9, "{rounds} rounds");
    }

    #[test]
    fn the_budget_follows_the_kernel_time() {
        // A 15 ms kernel spends the 20 ms budget at its second run: 3 samples and done.
        let noisy = |i: usize| 15.0 * (1.0 + 0.1 * (i % 2) as f64);
        assert_eq!(simulate(&rule(), None, noisy).0, 3);
        // A 30 ms kernel too (never fewer than 3 samples).
        assert_eq!(simulate(&rule(), None, |_| 30.0).0, 3);
        // A 1 ms noisy kernel stops once ~20 ms are spent, not at 50 runs.
        let (n, why, _) = simulate(&rule(), None, |i| 1.0 + 0.2 * (i % 2) as f64);
        assert!((10..=25).contains(&n) && why == Stop::Budget, "{n} {why:?}");
    }

    #[test]
    fn racing_stops_a_clearly_slower_candidate_early() {
        let best = Some((1.0, 1.02));
        // 1.5x slower, steadily: stopped after 2 runs (the probe and one more).
        let (n, why, _) = simulate(&rule(), best, |_| 1.5);
        assert_eq!((n, why), (2, Stop::Raced));
        // 20x slower: the first run is the "too slow" probe.
        assert_eq!(simulate(&rule(), best, |_| 20.0).1, Stop::TooSlow);
        // One fast run among slow ones: not clearly slower, so it is measured on.
        let (n, why, _) = simulate(&rule(), best, |i| if i == 1 { 1.0 } else { 1.5 });
        assert!(n >= 5 && why != Stop::Raced, "{n} {why:?}");
        // As fast as the best: never raced.
        assert_ne!(simulate(&rule(), best, |_| 1.01).1, Stop::Raced);
        // No pruning when the factor is infinite (record, verify): measured fully.
        let full = Sampling {
            too_slow_factor: f64::INFINITY,
            ..rule()
        };
        assert_eq!(simulate(&full, best, |_| 20.0), (3, Stop::Budget, 3));
        assert_eq!(simulate(&full, best, |_| 1.5).1, Stop::Stable);
    }

    #[test]
    fn median_interval_is_the_order_statistics() {
        assert_eq!(median_ci(&[]), (0.0, 0.0));
        assert_eq!(median_ci(&[2.0]), (2.0, 2.0));
        assert_eq!(median_ci(&[3.0, 1.0, 2.0, 5.0, 4.0]), (1.0, 5.0));
        let v: Vec<f64> = (0..50).map(|i| i as f64).collect();
        // j = floor((50 - 1.96 * sqrt(50)) / 2) = 18.
        assert_eq!(median_ci(&v), (18.0, 31.0));
        let (lo, hi) = median_ci(&v[..10]);
        assert!(lo <= median(&v[..10]) && median(&v[..10]) <= hi);
    }
}
