//! The search hooks `jitune tune` relies on, driven on recorded GPU data (no GPU needed):
//! a cancellation flag set after N batches (as the Ctrl-C handler does) stops every strategy
//! after the batch in flight with the best config measured so far, and the progress callback
//! (which drives the progress bars) reports each batch with a growing count, the budget and a
//! best-so-far that only improves.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{
    strategy_by_name, Fidelity, Hooks, Progress, ProgressHook, SearchOptions, SearchResult,
};

const BUDGET: usize = 200;

fn gemm() -> Arc<Cachefile> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gemm_RTX_2080_Ti.json.gz");
    Arc::new(Cachefile::load(&p).expect("recorded gemm data"))
}

/// Runs `strategy` with a progress hook that sets the cancel flag on the report after
/// `cancel_after` batches (the report made before the first batch does not count); returns the
/// result and every progress report.
fn run(
    data: &Arc<Cachefile>,
    strategy: &str,
    cancel_after: Option<usize>,
) -> (SearchResult, Vec<Progress>) {
    let cancel = Arc::new(AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let batches = Arc::new(AtomicUsize::new(0));
    let hook = {
        let (cancel, reports, batches) = (cancel.clone(), reports.clone(), batches.clone());
        ProgressHook::new(move |p| {
            reports.lock().unwrap().push(*p);
            if p.evaluated == 0 {
                return;
            }
            let n = batches.fetch_add(1, Ordering::SeqCst) + 1;
            if cancel_after.is_some_and(|k| n >= k) {
                cancel.store(true, Ordering::SeqCst);
            }
        })
    };
    let mut opts = SearchOptions::new(7, BUDGET);
    opts.hooks = Hooks {
        cancel: Some(cancel),
        progress: Some(hook),
    };
    let s = strategy_by_name(strategy).expect("known strategy");
    let mut ev = ReplayEvaluator::new(data.clone(), 7);
    let r = s.search(&mut ev, &opts).expect("search runs");
    let reports = reports.lock().unwrap().clone();
    (r, reports)
}

/// The best estimate among the observations, as the session computes it.
fn best_of(r: &SearchResult) -> f64 {
    r.observations
        .iter()
        .filter_map(|o| o.estimate())
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn cancel_flag_stops_every_strategy_after_the_batch_in_flight_with_the_best_so_far() {
    let data = gemm();
    for strategy in ["lfbo", "random", "pattern", "exhaustive"] {
        let (full, _) = run(&data, strategy, None);
        assert!(!full.cancelled, "{strategy}: not cancelled");
        let (r, reports) = run(&data, strategy, Some(3));
        assert!(r.cancelled, "{strategy}: the result says it was cancelled");
        // The flag was set in the third batch's report: no batch ran after it.
        let batch_reports: Vec<&Progress> = reports.iter().filter(|p| p.evaluated > 0).collect();
        assert_eq!(
            batch_reports.len(),
            3,
            "{strategy}: exactly three batches ran ({reports:?})"
        );
        let last = batch_reports[2];
        assert_eq!(
            r.observations.len(),
            last.evaluated,
            "{strategy}: nothing was evaluated after the flag was set"
        );
        assert!(
            r.observations.len() < full.observations.len(),
            "{strategy}: stopped early ({} of {})",
            r.observations.len(),
            full.observations.len()
        );
        // The winner is the best of what was measured, and it is the one reported last.
        let (_, t) = r
            .best
            .clone()
            .expect("something ran correctly in three batches");
        assert_eq!(t, best_of(&r), "{strategy}: best so far returned");
        assert_eq!(
            last.best_ms,
            Some(t),
            "{strategy}: progress saw the same best"
        );
        // Cancelled: no final shootout, so the winner has no more samples than the fidelity
        // ladder's near-best rung gives; the uncancelled winner went through the shootout.
        let samples_of = |r: &SearchResult| {
            let (c, _) = r.best.clone().unwrap();
            r.observations
                .iter()
                .find(|o| o.config == c)
                .unwrap()
                .samples
                .len()
        };
        let rung = Fidelity::default().near_best_samples;
        assert!(samples_of(&r) <= rung, "{strategy}: {}", samples_of(&r));
        assert!(
            samples_of(&full) > rung,
            "{strategy}: {}",
            samples_of(&full)
        );
    }
}

#[test]
fn cancel_before_the_first_batch_evaluates_nothing() {
    let data = gemm();
    let mut opts = SearchOptions::new(1, BUDGET);
    opts.hooks.cancel = Some(Arc::new(AtomicBool::new(true)));
    for strategy in ["lfbo", "random", "pattern", "exhaustive"] {
        let mut ev = ReplayEvaluator::new(data.clone(), 1);
        let r = strategy_by_name(strategy)
            .unwrap()
            .search(&mut ev, &opts)
            .expect("search runs");
        assert!(r.cancelled && r.observations.is_empty() && r.best.is_none());
    }
}

#[test]
fn progress_reports_every_batch_with_budget_and_an_improving_best() {
    let data = gemm();
    let (r, reports) = run(&data, "lfbo", None);
    assert!(reports.len() >= 3, "{reports:?}");
    assert_eq!(reports[0].evaluated, 0, "a report before the first batch");
    assert!(reports[0].best_ms.is_none());
    let budget = BUDGET.min(data.space.count() as usize);
    for w in reports.windows(2) {
        assert_eq!(w[1].budget, budget);
        assert!(w[1].evaluated > w[0].evaluated, "one report per batch");
        assert!(w[1].evaluated <= budget);
        assert!(w[1].elapsed_s >= w[0].elapsed_s);
    }
    assert_eq!(reports.last().unwrap().evaluated, r.observations.len());
    // Best so far is the best estimate at that point; re-measurement can move an estimate, so
    // it is compared with what the session held, not required to be monotone.
    assert!(reports.iter().skip(1).all(|p| p.best_ms.is_some()));
}
