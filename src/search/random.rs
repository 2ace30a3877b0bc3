//! Random search: uniform draws of unevaluated valid configs, in batches.
//!
//! The baseline every other strategy has to beat, and a fair one: it never repeats a config, so
//! on a small space it degrades gracefully into exhaustive search in random order.

use std::collections::HashSet;

use super::{Evaluator, SearchOptions, SearchResult, Session, Strategy};
use crate::rng::Rng;
use crate::space::Config;
use crate::Result;

/// Uniform random search without repetition.
#[derive(Clone, Debug)]
pub struct RandomSearch {
    /// Configs proposed per batch.
    pub batch: usize,
}

impl Default for RandomSearch {
    fn default() -> Self {
        RandomSearch { batch: 16 }
    }
}

/// Up to `n` distinct unevaluated valid configs drawn uniformly (shared with other strategies).
/// Falls back to enumerating what is left when draws keep hitting evaluated configs.
pub(crate) fn fresh_samples(
    s: &Session<'_>,
    n: usize,
    rng: &mut Rng,
    exclude: &HashSet<Config>,
) -> Vec<Config> {
    let mut out: Vec<Config> = Vec::with_capacity(n);
    let mut misses = 0;
    while out.len() < n && misses < 64 + 4 * n {
        match s.space().sample(rng) {
            Some(c) if !s.is_evaluated(&c) && !exclude.contains(&c) && !out.contains(&c) => {
                out.push(c)
            }
            Some(_) => misses += 1,
            None => break,
        }
    }
    if out.len() < n
        && (s.observations().len() as u64 + exclude.len() as u64) * 2 >= s.space().count()
    {
        // Mostly explored: list the rest and draw from it, so nothing is unreachable.
        let mut rest: Vec<Config> = s
            .space()
            .iter()
            .filter(|c| !s.is_evaluated(c) && !exclude.contains(c) && !out.contains(c))
            .collect();
        rng.shuffle(&mut rest);
        out.extend(rest.into_iter().take(n - out.len()));
    }
    out
}

impl Strategy for RandomSearch {
    fn name(&self) -> &'static str {
        "random"
    }

    fn search(&self, eval: &mut dyn Evaluator, opts: &SearchOptions) -> Result<SearchResult> {
        let mut s = Session::new(eval, opts);
        let mut rng = Rng::new(opts.seed);
        s.evaluate_start()?;
        let none = HashSet::new();
        while s.remaining() > 0 {
            let batch = fresh_samples(&s, self.batch.max(1).min(s.remaining()), &mut rng, &none);
            if batch.is_empty() || s.evaluate(&batch)?.is_empty() {
                break;
            }
        }
        s.finish()
    }
}
