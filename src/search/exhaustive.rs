//! Exhaustive search: every valid config once, in the space's lexicographic order.
//!
//! Only sensible for small spaces (or as ground truth in tests); the budget still applies.

use super::{Evaluator, SearchOptions, SearchResult, Session, Strategy};
use crate::Result;

/// Enumerates the space in order, in batches.
#[derive(Clone, Debug)]
pub struct Exhaustive {
    /// Configs per batch.
    pub batch: usize,
}

impl Default for Exhaustive {
    fn default() -> Self {
        Exhaustive { batch: 32 }
    }
}

impl Strategy for Exhaustive {
    fn name(&self) -> &'static str {
        "exhaustive"
    }

    fn search(&self, eval: &mut dyn Evaluator, opts: &SearchOptions) -> Result<SearchResult> {
        let mut s = Session::new(eval, opts);
        s.evaluate_start()?;
        let space = s.space().clone();
        let mut it = space.iter();
        loop {
            let room = s.remaining().min(self.batch.max(1));
            if room == 0 {
                break;
            }
            let batch: Vec<_> = it
                .by_ref()
                .filter(|c| !s.is_evaluated(c))
                .take(room)
                .collect();
            if batch.is_empty() {
                break;
            }
            s.evaluate(&batch)?;
        }
        s.finish()
    }
}
