//! Search seeded by a prior, on recorded GPU data: the same convolution space recorded on two
//! GPUs. A prior that transfers (RTX 2080 Ti → TITAN RTX, rank correlation 0.999) must make LFBO
//! find near-optimal configs far sooner than a cold search; one that does not (RTX A4000 → AMD
//! W6600, rank correlation 0.43) must not make it worse than cold, and must lose the search's
//! trust; a reversed prior (the target's own ranking upside down) must be dropped.
//!
//! Regret is the best recorded mean time among the configs evaluated / the recorded optimum,
//! averaged over fixed seeds. The runs go on parallel threads to keep the test quick.

use std::path::PathBuf;
use std::sync::Arc;

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{Lfbo, Prior, SearchOptions, Strategy};

const SEEDS: u64 = 6;
const BUDGET: usize = 100;

fn load(rel: &str) -> Arc<Cachefile> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel);
    Arc::new(Cachefile::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Evaluations a prior seeds: its start configs and their polish (`PriorParams` defaults).
const SEEDED: usize = 10;

/// Mean regret after 20, `BUDGET - SEEDED` and `BUDGET` evaluations, and the mean final trust
/// in the prior.
fn run(data: &Arc<Cachefile>, prior: Option<&Prior>) -> (f64, f64, f64, f64) {
    let (_, opt) = data.optimum().expect("a successful config");
    let worst = data.worst_time().expect("a successful config");
    let runs: Vec<[f64; 4]> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..SEEDS)
            .map(|seed| {
                sc.spawn(move || {
                    let mut ev = ReplayEvaluator::new(data.clone(), seed);
                    let mut opts = SearchOptions::new(seed, BUDGET);
                    opts.priors.extend(prior.cloned());
                    let r = Lfbo::default().search(&mut ev, &opts).expect("search runs");
                    assert!(r.observations.len() <= BUDGET);
                    let best_of = |n: usize| {
                        r.observations
                            .iter()
                            .take(n)
                            .filter_map(|o| data.mean_time(&o.config))
                            .fold(worst, f64::min)
                            / opt
                    };
                    let trust = r.prior_trust.iter().map(|(_, t)| *t).sum::<f64>();
                    [
                        best_of(20),
                        best_of(BUDGET - SEEDED),
                        best_of(BUDGET),
                        trust,
                    ]
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("run"))
            .collect()
    });
    let mean = |i: usize| runs.iter().map(|r| r[i]).sum::<f64>() / runs.len() as f64;
    (mean(0), mean(1), mean(2), mean(3))
}

#[test]
fn a_prior_that_transfers_helps_one_that_does_not_is_dropped() {
    // The two targets, then the two priors (recordings of the same space on other GPUs).
    let titan = load("transfer/convolution_RTX_Titan.json.gz");
    let w6600 = load("transfer/convolution_W6600.json.gz");
    let from_2080 = load("convolution_RTX_2080_Ti.json.gz")
        .prior_for(&titan)
        .expect("same parameters");
    let from_a4000 = load("convolution_A4000.json.gz")
        .prior_for(&w6600)
        .expect("same parameters");
    assert!(from_2080.observations.len() > 4000 && from_a4000.observations.len() > 4000);
    // The Titan's own times, reversed: a prior that is exactly wrong.
    let reversed = Prior::new(
        "reversed",
        titan
            .space
            .iter()
            .filter_map(|c| titan.mean_time(&c).map(|t| (c, 1.0 / t)))
            .collect(),
    );

    let (cold20, cold90, cold100, _) = run(&titan, None);
    let (warm20, _, warm100, warm_trust) = run(&titan, Some(&from_2080));
    let (rev20, _, rev100, rev_trust) = run(&titan, Some(&reversed));
    let (w_cold20, _, w_cold100, _) = run(&w6600, None);
    let (w_warm20, _, w_warm100, w_trust) = run(&w6600, Some(&from_a4000));
    let at = BUDGET - SEEDED;
    eprintln!("TITAN RTX  cold: reg@20 {cold20:.4} reg@{at} {cold90:.4} reg@{BUDGET} {cold100:.4}");
    eprintln!(
        "  prior 2080 Ti: reg@20 {warm20:.4} reg@{BUDGET} {warm100:.4} trust {warm_trust:.3}"
    );
    eprintln!("  reversed prior: reg@20 {rev20:.4} reg@{BUDGET} {rev100:.4} trust {rev_trust:.3}");
    eprintln!("W6600      cold: reg@20 {w_cold20:.4} reg@{BUDGET} {w_cold100:.4}");
    eprintln!(
        "  prior A4000:   reg@20 {w_warm20:.4} reg@{BUDGET} {w_warm100:.4} trust {w_trust:.3}"
    );

    // Transfers: near-optimal within 20 evaluations, where the cold search is 20% off or more.
    assert!(warm20 < 1.02, "prior 2080 Ti → Titan: reg@20 {warm20:.4}");
    assert!(
        warm20 < cold20 - 0.15,
        "prior reg@20 {warm20:.4} vs cold {cold20:.4}"
    );
    assert!(warm100 <= cold100, "{warm100:.4} vs cold {cold100:.4}");
    // Does not transfer: no worse than cold at the budget, and trusted far less than the prior
    // that transfers.
    assert!(
        w_warm100 <= w_cold100 + 0.01,
        "prior A4000 → W6600: reg@{BUDGET} {w_warm100:.4} vs cold {w_cold100:.4}"
    );
    assert!(
        w_trust < 0.7 * warm_trust,
        "trust in A4000 → W6600 {w_trust:.3} vs 2080 Ti → Titan {warm_trust:.3}"
    );
    // Exactly wrong: dropped (trust 0), then a cold search that lost the evaluations the prior
    // seeded (measured: reg@100 1.046 against the cold search's 1.000, which it had at 90
    // already), far from where following the prior leads (its start configs are the slowest).
    assert_eq!(rev_trust, 0.0, "a reversed prior must be dropped");
    assert!(
        rev100 < cold100 + 0.08,
        "reversed prior: reg@{BUDGET} {rev100:.4} vs cold {cold100:.4} (reg@{at} {cold90:.4})"
    );
    assert!(
        rev20 > 1.3,
        "the reversed prior's start configs are slow: reg@20 {rev20:.4}"
    );
}
