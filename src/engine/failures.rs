//! The configs known to fail for one key: read from the store when tuning starts (stale
//! in-flight markers of dead processes become `crashed` records), consulted before a config is
//! compiled or run, and written to the store as soon as a new failure is seen, so no later run,
//! in this process or another, tries the config again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::Cache;
use crate::failure::FailureClass;
use crate::key::TuningKey;
use crate::search::evaluator::{Failure, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// Failed configs of one key, by canonical text.
pub struct FailureBook {
    cache: Arc<Cache>,
    key: TuningKey,
    kernel: String,
    failed: HashMap<String, FailureClass>,
}

impl FailureBook {
    /// The failures the cache knows for `key`, after turning dead processes' in-flight markers
    /// into `crashed` records.
    pub fn load(cache: Arc<Cache>, key: TuningKey, kernel: &str) -> FailureBook {
        let mut failed = HashMap::new();
        for c in cache.take_stale_inflight(&key).unwrap_or_default() {
            log::warn!(
                "jitune: {kernel} config {c} was running when a process died; it will not be tried again"
            );
            failed.insert(c, FailureClass::Crashed);
        }
        for (c, class, _) in cache.failures_for(&key).unwrap_or_default() {
            failed.insert(c, class);
        }
        FailureBook {
            cache,
            key,
            kernel: kernel.to_string(),
            failed,
        }
    }

    /// The class `config` failed with, if it did.
    pub fn known(&self, text: &str) -> Option<FailureClass> {
        self.failed.get(text).copied()
    }

    /// The outcome of a config known to fail: its class, without running it again.
    pub fn known_outcome(&self, text: &str) -> Option<Outcome> {
        self.known(text).map(|class| {
            Outcome::Failed(Failure {
                class,
                detail: "failed before (recorded in the store)".into(),
            })
        })
    }

    /// Records a new failure: in the store (a failed write is logged, the failure still counts
    /// in this run) and here.
    pub fn record(&mut self, text: &str, class: FailureClass, detail: &str) {
        if let Err(e) = self.cache.record_failure(&self.key, text, class, detail) {
            log::warn!("jitune: could not record a failure of {}: {e}", self.kernel);
        }
        log::debug!(
            "jitune: {} {text}: {}: {}",
            self.kernel,
            class.name(),
            detail.lines().next().unwrap_or("")
        );
        self.failed.insert(text.to_string(), class);
    }

    /// The config whose outputs candidates are checked against: the spec's default when it is
    /// valid here and not known to fail, else the first valid config not known to fail. (A
    /// process killed while running the default leaves an in-flight marker that turns into a
    /// `crashed` record; that must not make the key untunable for ever.)
    pub fn reference_config(&self, spec: &KernelSpec, space: &SearchSpace) -> Result<Config> {
        reference_config(spec, space, &self.failed)
    }
}

/// A batch's outcomes, with `class` and "no result" for any config that got none (the machinery
/// dropped it: it must not look like a success).
pub fn complete(out: Vec<Option<Outcome>>, class: FailureClass) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Failed(Failure {
                    class,
                    detail: "no result".into(),
                })
            })
        })
        .collect()
}

fn reference_config(
    spec: &KernelSpec,
    space: &SearchSpace,
    failed: &HashMap<String, FailureClass>,
) -> Result<Config> {
    let usable = |c: &Config| !failed.contains_key(&space.config_text(c));
    if space.is_valid(&spec.default) && usable(&spec.default) {
        return Ok(spec.default.clone());
    }
    space.iter().find(usable).ok_or_else(|| {
        Error::Search(format!(
            "kernel `{}`: every config is recorded as failed; nothing to use as the reference",
            spec.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_default_does_not_leave_a_key_without_reference() {
        let spec = KernelSpec::from_toml_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/faults.toml"
        ))
        .unwrap();
        let space = spec
            .space_for(&[1 << 20], &crate::spec::DeviceLimits::h100())
            .unwrap();
        let mut failed = HashMap::new();
        assert_eq!(
            reference_config(&spec, &space, &failed).unwrap(),
            spec.default
        );
        // A process killed while running the default left a `crashed` record.
        failed.insert(space.config_text(&spec.default), FailureClass::Crashed);
        let r = reference_config(&spec, &space, &failed).unwrap();
        assert_ne!(r, spec.default);
        assert!(space.is_valid(&r));
        for c in space.iter() {
            failed.insert(space.config_text(&c), FailureClass::Launch);
        }
        assert!(reference_config(&spec, &space, &failed).is_err());
    }
}
