//! LFBO's prefetch hint (`LfboParams::prefetch`, `Evaluator::prefetch`) on recorded GPU data:
//!
//! - it changes nothing: with and without spares, on every cachefile in `tests/data` and
//!   several seeds, the evaluated sequence (configs, samples, failures), the re-measurements
//!   and the winner are identical, bit for bit;
//! - it is useful: the share of each batch's configs that an earlier call had handed out as
//!   spares (so the GPU engine had them compiling while the previous batch was measured) is
//!   printed (`cargo test --release --test search_prefetch -- --nocapture`) and must be well
//!   above zero.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{Evaluator, Lfbo, LfboParams, Outcome, SearchOptions, SearchResult, Strategy};
use jitune::space::{Config, SearchSpace};

const SEEDS: u64 = 6;
const BUDGET: usize = 100;

/// What the search asked of the evaluator, in order.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Prefetch(Vec<Config>),
    Evaluate(Vec<Config>),
}

/// A replay that records every evaluate and prefetch call.
struct Recording {
    inner: ReplayEvaluator,
    calls: RefCell<Vec<Call>>,
}

impl Evaluator for Recording {
    fn space(&self) -> &SearchSpace {
        self.inner.space()
    }

    fn evaluate(&mut self, batch: &[Config]) -> jitune::Result<Vec<Outcome>> {
        self.calls.borrow_mut().push(Call::Evaluate(batch.to_vec()));
        self.inner.evaluate(batch)
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> jitune::Result<Vec<Outcome>> {
        self.inner.remeasure(batch, samples)
    }

    fn elapsed_s(&self) -> f64 {
        self.inner.elapsed_s()
    }

    fn prefetch(&self, configs: &[Config]) {
        self.calls
            .borrow_mut()
            .push(Call::Prefetch(configs.to_vec()));
    }
}

fn run(data: &Arc<Cachefile>, seed: u64, prefetch: usize) -> (SearchResult, Vec<Call>) {
    run_from(data, seed, prefetch, &[])
}

/// `run` with start configs (as the tuner gives: the spec's default first).
fn run_from(
    data: &Arc<Cachefile>,
    seed: u64,
    prefetch: usize,
    start: &[Config],
) -> (SearchResult, Vec<Call>) {
    let lfbo = Lfbo::new(LfboParams {
        prefetch,
        ..LfboParams::default()
    });
    let mut ev = Recording {
        inner: ReplayEvaluator::new(data.clone(), seed),
        calls: RefCell::new(Vec::new()),
    };
    let mut opts = SearchOptions::new(seed, BUDGET);
    opts.start = start.to_vec();
    let r = lfbo.search(&mut ev, &opts).expect("search runs");
    (r, ev.calls.into_inner())
}

/// Configs of evaluate calls (after the first prefetch) and how many of them were handed out
/// as spares just before the previous evaluate call, and before it at all.
#[derive(Default)]
struct Hits {
    configs: usize,
    prev: usize,
    any: usize,
    /// Model batches that follow a model batch (the case a look-ahead predicts).
    model_configs: usize,
    model_prev: usize,
}

fn hits(calls: &[Call]) -> Hits {
    let mut h = Hits::default();
    // Spares given before the evaluate call in flight, and since the search began.
    let mut last: Vec<Config> = Vec::new();
    let mut all: HashSet<Config> = HashSet::new();
    // Spares given since the last evaluate call (compiling while it runs).
    let mut fresh: Vec<Config> = Vec::new();
    let mut seen_prefetch = false;
    let mut prev_model = false;
    for (i, c) in calls.iter().enumerate() {
        match c {
            Call::Prefetch(s) => {
                seen_prefetch = true;
                fresh.extend(s.iter().cloned());
            }
            Call::Evaluate(batch) => {
                let model = i > 0 && matches!(calls[i - 1], Call::Prefetch(_));
                if model && prev_model {
                    h.model_configs += batch.len();
                    h.model_prev += batch.iter().filter(|c| last.contains(c)).count();
                }
                prev_model = model;
                if seen_prefetch {
                    h.configs += batch.len();
                    h.prev += batch.iter().filter(|c| last.contains(c)).count();
                    h.any += batch.iter().filter(|c| all.contains(*c)).count();
                }
                // What was handed out before this call compiles while it runs: available to
                // the next one.
                last = std::mem::take(&mut fresh);
                all.extend(last.iter().cloned());
            }
        }
    }
    h
}

fn datasets() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "recorded datasets in {}", dir.display());
    files
}

#[test]
fn spares_change_nothing_and_are_mostly_the_next_batch() {
    let files = datasets();
    let per_file: Vec<(String, Hits, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                sc.spawn(move || {
                    let data = Arc::new(Cachefile::load(f).expect("cachefile loads"));
                    let mut total = Hits::default();
                    let mut evaluated = 0;
                    for seed in 0..SEEDS {
                        let (plain, plain_calls) = run(&data, seed, 0);
                        let (spared, calls) = run(&data, seed, 8);
                        let name = &data.name;
                        assert!(
                            !plain_calls.iter().any(|c| matches!(c, Call::Prefetch(_))),
                            "{name}: no prefetch hint without spares"
                        );
                        // The evaluate calls, in order, are the same.
                        let evals = |v: &[Call]| -> Vec<Call> {
                            v.iter()
                                .filter(|c| matches!(c, Call::Evaluate(_)))
                                .cloned()
                                .collect()
                        };
                        assert_eq!(
                            evals(&plain_calls),
                            evals(&calls),
                            "{name} seed {seed}: spares changed the batches"
                        );
                        // Every observation, sample for sample, and the winner.
                        assert_eq!(plain.observations.len(), spared.observations.len());
                        for (a, b) in plain.observations.iter().zip(&spared.observations) {
                            assert_eq!(a.config, b.config, "{name} seed {seed}");
                            let bits =
                                |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&a.samples), bits(&b.samples), "{name} seed {seed}");
                            assert_eq!(a.failure, b.failure, "{name} seed {seed}");
                        }
                        assert_eq!(plain.remeasurements, spared.remeasurements);
                        assert_eq!(
                            plain.best.as_ref().map(|(c, t)| (c.clone(), t.to_bits())),
                            spared.best.as_ref().map(|(c, t)| (c.clone(), t.to_bits())),
                            "{name} seed {seed}: another winner"
                        );
                        // A hint never names an evaluated config or repeats the batch it
                        // precedes.
                        let mut done: HashSet<Config> = HashSet::new();
                        let mut hinted: Vec<Config> = Vec::new();
                        for c in &calls {
                            match c {
                                Call::Prefetch(s) => {
                                    assert!(s.len() <= 8);
                                    assert!(s.iter().all(|c| !done.contains(c)), "{name}");
                                    hinted = s.clone();
                                }
                                Call::Evaluate(b) => {
                                    assert!(b.iter().all(|c| !hinted.contains(c)), "{name}");
                                    hinted.clear();
                                    done.extend(b.iter().cloned());
                                }
                            }
                        }
                        let h = hits(&calls);
                        total.configs += h.configs;
                        total.prev += h.prev;
                        total.any += h.any;
                        total.model_configs += h.model_configs;
                        total.model_prev += h.model_prev;
                        evaluated += spared.observations.len();
                    }
                    (data.name.clone(), total, evaluated)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("dataset thread"))
            .collect()
    });
    let mut all = Hits::default();
    let mut evaluated = 0;
    for (name, h, n) in &per_file {
        eprintln!(
            "{name}: of {} configs evaluated after the first hint ({} in all, {SEEDS} seeds, \
             budget {BUDGET}), {:.1}% were spares of the previous call, {:.1}% of any earlier call",
            h.configs,
            n,
            100.0 * h.prev as f64 / h.configs.max(1) as f64,
            100.0 * h.any as f64 / h.configs.max(1) as f64,
        );
        all.configs += h.configs;
        all.prev += h.prev;
        all.any += h.any;
        all.model_configs += h.model_configs;
        all.model_prev += h.model_prev;
        evaluated += n;
    }
    let (prev, any) = (
        all.prev as f64 / all.configs.max(1) as f64,
        all.any as f64 / all.configs.max(1) as f64,
    );
    eprintln!(
        "all datasets: {} configs after the first hint of {evaluated} evaluated: \
         {:.1}% hit the previous call's spares, {:.1}% any earlier spares",
        all.configs,
        100.0 * prev,
        100.0 * any
    );
    eprintln!(
        "model batches right after a model batch: {} configs, {:.1}% were the previous call's spares",
        all.model_configs,
        100.0 * all.model_prev as f64 / all.model_configs.max(1) as f64
    );
    assert!(all.configs > 0, "LFBO never gave a hint");
    assert!(
        any >= prev && prev > 0.1,
        "spares rarely become the next batch ({:.1}%)",
        100.0 * prev
    );
}

/// A cold search with start configs (the tuner's: the spec's default first) hands its random
/// first design over before the start is evaluated, so the GPU engine compiles the design while
/// the start (the correctness reference) compiles and runs alone; the batches, observations and
/// winner stay those of a search without hints.
#[test]
fn a_cold_searchs_design_compiles_while_its_start_runs() {
    let files = datasets();
    for f in &files {
        let data = Arc::new(Cachefile::load(f).expect("cachefile loads"));
        let name = &data.name;
        let start = data.space.iter().next().expect("a valid config");
        for seed in 0..3 {
            let (plain, plain_calls) = run_from(&data, seed, 0, std::slice::from_ref(&start));
            let (hinted, calls) = run_from(&data, seed, 8, std::slice::from_ref(&start));
            // The first call is the hint; the start is evaluated next, alone; the design after it
            // is mostly what the hint named.
            let (Call::Prefetch(hint), Call::Evaluate(first), Call::Evaluate(design)) =
                (&calls[0], &calls[1], &calls[2])
            else {
                panic!(
                    "{name} seed {seed}: hint, start, design expected: {:?}",
                    &calls[..3]
                );
            };
            assert_eq!(first, &vec![start.clone()], "{name}");
            assert!(!hint.contains(&start), "{name}: the hint names the start");
            let named = design.iter().filter(|c| hint.contains(c)).count();
            assert!(
                named * 10 >= design.len() * 9,
                "{name} seed {seed}: {named} of the design's {} configs were hinted",
                design.len()
            );
            // Nothing else changes.
            let evals = |v: &[Call]| -> Vec<Call> {
                v.iter()
                    .filter(|c| matches!(c, Call::Evaluate(_)))
                    .cloned()
                    .collect()
            };
            assert_eq!(evals(&plain_calls), evals(&calls), "{name} seed {seed}");
            assert_eq!(
                plain.best.as_ref().map(|(c, t)| (c.clone(), t.to_bits())),
                hinted.best.as_ref().map(|(c, t)| (c.clone(), t.to_bits())),
                "{name} seed {seed}"
            );
        }
    }
}
