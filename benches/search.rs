//! Benchmark of the search's own CPU time: one LFBO step (forest fit + candidate generation and
//! scoring + diverse batch pick) with 300 observations (in a smaller space, all but 32 configs),
//! on each recorded dataset, and on the recorded transfer pairs with a prior (a second, warm
//! model is then fitted and scored too).
//!
//! The search runs between GPU measurements, so its time is pure overhead on tuning; the target
//! is at most 50 ms per batch. Run with `cargo bench --bench search` (release, no harness).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jitune::internals::Rng;
use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{Lfbo, Prior, SearchOptions, Session};

const OBSERVATIONS: usize = 300;
const ITERS: usize = 30;

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
            .collect(),
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    files.sort();
    let lfbo = Lfbo::default();
    println!(
        "LFBO step (fit {} trees + score candidates + pick a batch of {}) with {OBSERVATIONS} observations, {ITERS} iterations",
        lfbo.params.forest.n_trees, lfbo.params.batch
    );
    println!(
        "{:<52} {:>6} {:>10} {:>10} {:>10}",
        "space", "feats", "median_ms", "mean_ms", "max_ms"
    );
    let mut worst: f64 = 0.0;
    for f in &files {
        worst = worst.max(step(&lfbo, &load(f), None));
    }
    // Target (tests/data/transfer) and prior (tests/data) of the recorded transfer pairs.
    for (target, prior) in [
        ("transfer/convolution_RTX_Titan", "convolution_RTX_2080_Ti"),
        ("transfer/convolution_W6600", "convolution_A4000"),
    ] {
        let data = load(&dir.join(format!("{target}.json.gz")));
        let p = load(&dir.join(format!("{prior}.json.gz"))).prior_for(&data);
        let Some(p) = p else {
            eprintln!("{prior}: not the parameters of {target}");
            std::process::exit(1);
        };
        worst = worst.max(step(&lfbo, &data, Some(p)));
    }
    println!("worst batch: {worst:.2} ms (target: <= 50 ms)");
}

fn load(f: &std::path::Path) -> Arc<Cachefile> {
    match Cachefile::load(f) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// Times `ITERS` LFBO steps after `OBSERVATIONS` random evaluations; prints a row, returns the
/// slowest step in ms.
fn step(lfbo: &Lfbo, data: &Arc<Cachefile>, prior: Option<Prior>) -> f64 {
    let mut ev = ReplayEvaluator::new(data.clone(), 1);
    let mut opts = SearchOptions::new(1, usize::MAX);
    let label = match &prior {
        Some(p) => format!("{} (prior {})", data.name, p.source),
        None => data.name.clone(),
    };
    opts.priors.extend(prior);
    let mut s = Session::new(&mut ev, &opts);
    let mut rng = Rng::new(7);
    // A space smaller than that keeps some configs back to propose (the loop would never end).
    let count = usize::try_from(s.space().count()).unwrap_or(usize::MAX);
    let want = OBSERVATIONS.min(count.saturating_sub(4 * lfbo.params.batch));
    while s.observations().len() < want {
        let batch: Vec<_> = (0..16).filter_map(|_| s.space().sample(&mut rng)).collect();
        if s.evaluate(&batch).is_err() {
            eprintln!("evaluation failed");
            std::process::exit(1);
        }
    }
    let mut ms = Vec::with_capacity(ITERS);
    for _ in 0..ITERS {
        let t0 = Instant::now();
        let batch = lfbo.propose(&s, lfbo.params.batch, &mut rng);
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(matches!(&batch, Ok(b) if b.len() == lfbo.params.batch));
    }
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{:<52} {:>6} {:>10.2} {:>10.2} {:>10.2}",
        label,
        s.space().feature_len() + s.prior().n_features(),
        ms[ms.len() / 2],
        mean,
        ms[ms.len() - 1]
    );
    ms[ms.len() - 1]
}
