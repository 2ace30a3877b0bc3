//! The roofline stop as the search sees it: `SearchOptions::target_ms` ends every strategy once
//! the best estimate reaches the target, as a normal finish (not a cancellation), on recorded
//! GPU data (no GPU needed).

use std::path::PathBuf;
use std::sync::Arc;

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{strategy_by_name, SearchOptions};

fn data() -> Arc<Cachefile> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sgemm_2048x2048x2048_H100.json.gz");
    Arc::new(Cachefile::load(&p).expect("recorded sgemm space"))
}

#[test]
fn every_strategy_stops_at_the_target() {
    let data = data();
    let (_, opt) = data.optimum().expect("an optimum");
    for name in ["lfbo", "random", "pattern", "exhaustive"] {
        let s = strategy_by_name(name).unwrap();
        let free = s
            .search(
                &mut ReplayEvaluator::new(data.clone(), 3),
                &SearchOptions::new(3, 150),
            )
            .unwrap();
        // A target any decent config meets: the search ends far sooner, and normally.
        let mut opts = SearchOptions::new(3, 150);
        opts.target_ms = Some(opt * 1.6);
        let r = s
            .search(&mut ReplayEvaluator::new(data.clone(), 3), &opts)
            .unwrap();
        let (_, best) = r.best.clone().expect("a winner");
        assert!(!r.cancelled, "{name}: a target is not a cancellation");
        assert!(
            r.observations.len() < free.observations.len(),
            "{name}: {} evaluations with a target, {} without",
            r.observations.len(),
            free.observations.len()
        );
        // The stop comes after the batch that reached the target, and only then.
        let reached = r
            .observations
            .iter()
            .filter_map(|o| o.estimate())
            .any(|t| t <= opt * 1.6 * 1.05);
        assert!(reached && best <= opt * 1.6 * 1.05, "{name}: best {best}");
        // An unreachable target changes nothing.
        let mut opts = SearchOptions::new(3, 150);
        opts.target_ms = Some(opt * 0.5);
        let same = s
            .search(&mut ReplayEvaluator::new(data.clone(), 3), &opts)
            .unwrap();
        assert_eq!(same.observations.len(), free.observations.len(), "{name}");
    }
}
