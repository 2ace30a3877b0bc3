//! CI check of the search on recorded GPU data: on every cachefile in `tests/data`, over 10 fixed
//! seeds, LFBO's median regret after 100 evaluations must be lower than random search's.
//!
//! Regret is the best recorded mean time among the configs evaluated / the recorded optimum. The
//! datasets run on parallel threads so the test stays fast in debug builds.

use std::path::PathBuf;
use std::sync::Arc;

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{Lfbo, RandomSearch, SearchOptions, Strategy};

const SEEDS: u64 = 10;
const BUDGET: usize = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Regret after `BUDGET` evaluations of each seeded run.
fn regrets(data: &Arc<Cachefile>, s: &dyn Strategy) -> Vec<f64> {
    let (_, opt) = data.optimum().expect("a successful config");
    let worst = data.worst_time().expect("a successful config");
    (0..SEEDS)
        .map(|seed| {
            let mut ev = ReplayEvaluator::new(data.clone(), seed);
            let r = s
                .search(&mut ev, &SearchOptions::new(seed, BUDGET))
                .expect("search runs");
            assert!(r.observations.len() <= BUDGET);
            let best = r
                .observations
                .iter()
                .filter_map(|o| data.mean_time(&o.config))
                .fold(f64::INFINITY, f64::min);
            if best.is_finite() {
                best / opt
            } else {
                worst / opt
            }
        })
        .collect()
}

#[test]
fn lfbo_beats_random_search_on_recorded_data() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the four recorded datasets in {}",
        dir.display()
    );
    let results: Vec<(String, f64, f64)> = std::thread::scope(|sc| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                sc.spawn(move || {
                    let data = Arc::new(Cachefile::load(f).expect("cachefile loads"));
                    let lfbo = median(regrets(&data, &Lfbo::default()));
                    let random = median(regrets(&data, &RandomSearch::default()));
                    (data.name.clone(), lfbo, random)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("dataset thread"))
            .collect()
    });
    for (name, lfbo, random) in &results {
        eprintln!("{name}: median regret@{BUDGET}: lfbo {lfbo:.4}, random {random:.4}");
    }
    for (name, lfbo, random) in &results {
        assert!(lfbo < random, "{name}: LFBO median regret@{BUDGET} {lfbo:.4} is not below random search's {random:.4}");
    }
}
