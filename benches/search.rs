//! Benchmark of the search's own CPU time: one LFBO step (forest fit + candidate generation and
//! scoring + diverse batch pick) with 300 observations, on each recorded dataset.
//!
//! The search runs between GPU measurements, so its time is pure overhead on tuning; the target
//! is at most 50 ms per batch. Run with `cargo bench --bench search` (release, no harness).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jitune::internals::Rng;
use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{Lfbo, SearchOptions, Session};

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
        "{:<26} {:>6} {:>10} {:>10} {:>10}",
        "space", "feats", "median_ms", "mean_ms", "max_ms"
    );
    let mut worst: f64 = 0.0;
    for f in &files {
        let data = match Cachefile::load(f) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let mut ev = ReplayEvaluator::new(data.clone(), 1);
        let opts = SearchOptions::new(1, usize::MAX);
        let mut s = Session::new(&mut ev, &opts);
        let mut rng = Rng::new(7);
        while s.observations().len() < OBSERVATIONS {
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
        worst = worst.max(ms[ms.len() - 1]);
        println!(
            "{:<26} {:>6} {:>10.2} {:>10.2} {:>10.2}",
            data.name,
            s.space().feature_len(),
            ms[ms.len() / 2],
            mean,
            ms[ms.len() - 1]
        );
    }
    println!("worst batch: {worst:.2} ms (target: <= 50 ms)");
}
