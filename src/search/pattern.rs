//! Pattern search: move the incumbent to its best one-step neighbour while that improves.
//!
//! Each step evaluates, as one batch, every unevaluated config that differs from the incumbent
//! by one step of one parameter. When no neighbour is better the local search has converged; it
//! then restarts from a fresh random config (iterated local search), so the whole budget is used.

use std::collections::HashSet;

use super::random::fresh_samples;
use super::{Evaluator, SearchOptions, SearchResult, Session, Strategy};
use crate::rng::Rng;
use crate::Result;

/// Best-improvement one-step pattern search with random restarts.
#[derive(Clone, Debug, Default)]
pub struct PatternSearch {
    /// Stop at the first local optimum instead of restarting.
    pub no_restart: bool,
}

impl Strategy for PatternSearch {
    fn name(&self) -> &'static str {
        "pattern"
    }

    fn search(&self, eval: &mut dyn Evaluator, opts: &SearchOptions) -> Result<SearchResult> {
        let mut s = Session::new(eval, opts);
        let mut rng = Rng::new(opts.seed);
        let none = HashSet::new();
        s.evaluate_start()?;
        // The incumbent of the current local search (index into observations).
        let mut inc = s.best().map(|(i, _)| i);
        while s.remaining() > 0 {
            let Some(i) = inc else {
                // No working config yet: draw one and start from it.
                let batch = fresh_samples(&s, 1, &mut rng, &none);
                if batch.is_empty() {
                    break;
                }
                let new = s.evaluate(&batch)?;
                inc = new
                    .into_iter()
                    .find(|&j| s.observations()[j].estimate().is_some());
                continue;
            };
            let here = s.observations()[i].config.clone();
            s.evaluate_one_step_moves(&here)?;
            // Estimates may have moved with re-measurement: compare on current values.
            let cur = s.observations()[i].estimate().unwrap_or(f64::INFINITY);
            let best_nb = s
                .space()
                .one_step_neighbours(&here)
                .iter()
                .filter_map(|c| s.index_of(c))
                .filter_map(|j| s.observations()[j].estimate().map(|t| (j, t)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match best_nb {
                Some((j, t)) if t < cur => inc = Some(j),
                _ if self.no_restart => break,
                _ => inc = None,
            }
        }
        s.finish()
    }
}
