//! The claimer's side of a miss: what a key that is not ready serves, and whether and how it is
//! tuned (issue 16's fallback chain on top of the modes).
//!
//! The job is built once. The exact key is looked up everywhere a winner can be (memory, the
//! user store, the fleet's remote tier, shipped layers). Failing that, the cache explains what it
//! knows ([`Cache::explain`](crate::cache::Cache::explain)) and the first entry of its chain
//! whose config is valid here is used:
//!
//! | decision | CacheOnly | Blocking | Background |
//! |---|---|---|---|
//! | inherited (same GPU model, other toolchain) | serves | serves | serves; a short search seeded by it re-checks it |
//! | provisional (same compute capability) | serves | seeds the search | serves, seeds the search |
//! | nearest (another shape here) | serves | seeds the search | serves, seeds the search |
//! | default | serves | search | serves, search |
//!
//! Every search is also given the chain's entries as priors. The explanation is logged at info
//! level once per key (the claimer is one thread per key). In strict mode
//! ([`Tuner::set_require_hit`], `JITUNE_REQUIRE_HIT=1`) a cache-only miss that would serve
//! anything but a hit or an inherited winner is an error naming the key and the explanation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::events::MissDecision;
use super::swap::SwapPolicy;
use super::{Have, Kernel, Mode, Plan, Tuner};
use crate::cache::{Decision, Entry};
use crate::engine::TuningJob;
use crate::key::TuningKey;
use crate::search::Prior;
use crate::space::Config;
use crate::{Error, Result};

/// Environment variable of strict mode (`1`: a cache-only miss is an error).
pub const REQUIRE_HIT_ENV: &str = "JITUNE_REQUIRE_HIT";

/// What a miss serves first.
pub(super) struct Pick {
    pub decision: Decision,
    pub config: Config,
    /// The entry it comes from (`None` for the default).
    pub from: Option<Arc<Entry>>,
    /// The cache's explanation.
    pub why: String,
}

impl Tuner {
    /// Strict mode (see the module docs); `JITUNE_REQUIRE_HIT=1` turns it on for every tuner.
    pub fn set_require_hit(&self, on: bool) {
        self.inner.require_hit.store(on, Ordering::Relaxed);
    }

    /// Whether strict mode is on.
    pub fn require_hit(&self) -> bool {
        self.inner.require_hit.load(Ordering::Relaxed)
    }

    /// The claimer's side of a miss (see the module docs). The key may already serve a
    /// provisional plan (claimed inside a capture; then `announce` is false: the launch's miss
    /// event was sent then). The miss event goes out before any background run starts, so a
    /// listener sees a key's events in order.
    pub(super) fn resolve_claimed(
        &self,
        kernel: &Kernel,
        key: TuningKey,
        shape: &[i64],
        announce: bool,
    ) -> Result<Arc<Plan>> {
        let (plan, decision) = self.resolve_claimed_inner(kernel, key, shape, announce)?;
        if let Some(d) = decision.filter(|_| announce) {
            self.emit_miss(kernel, key, shape, d);
        }
        Ok(plan)
    }

    fn resolve_claimed_inner(
        &self,
        kernel: &Kernel,
        key: TuningKey,
        shape: &[i64],
        announce: bool,
    ) -> Result<(Arc<Plan>, Option<MissDecision>)> {
        let job = self.job(kernel, shape)?;
        if let Some(entry) = self
            .inner
            .cache
            .lookup_with(&key, &|e| Self::fits(&job, e))?
        {
            match self.plan_for_text(&job, &entry.config, true) {
                Ok(plan) => {
                    self.count_decision(Decision::Hit);
                    let config = plan.config.clone();
                    let plan = self.finish(key, Arc::new(plan));
                    return Ok((plan, Some(MissDecision::Cached { config })));
                }
                Err(e) => {
                    log::warn!(
                        "jitune: cached config `{}` for {} is unusable ({e}); retuning",
                        entry.config,
                        job.spec.name
                    );
                    self.fallback(key, &job.spec.name, || {
                        format!("cached config `{}` is unusable: {e}", entry.config)
                    });
                }
            }
        }
        let pick = self.pick(&job)?;
        self.count_decision(pick.decision);
        log::info!("jitune: {}", pick.why);
        let mode = self.mode();
        if mode == Mode::CacheOnly
            && self.require_hit()
            && !matches!(pick.decision, Decision::Hit | Decision::Inherited)
        {
            return Err(Error::NotTuned(format!(
                "{} (strict mode: {REQUIRE_HIT_ENV}=1) has no tuned winner: {}",
                key.display(),
                pick.why
            )));
        }
        let from = pick.from.as_ref().map(|e| e.key);
        let serves = |plan: &Plan| match (pick.decision, from) {
            (Decision::Inherited, Some(from)) => MissDecision::Inherited {
                config: plan.config.clone(),
                from,
            },
            (Decision::Default, _) | (_, None) => MissDecision::Default {
                config: plan.config.clone(),
            },
            (d, Some(from)) => MissDecision::Provisional {
                config: plan.config.clone(),
                from: Some((d, from)),
            },
        };
        let inherited = pick.decision == Decision::Inherited;
        match mode {
            Mode::CacheOnly => {
                let plan = self.plan_for(&job, &pick.config, inherited, Have::Nothing)?;
                let d = serves(&plan);
                if pick.decision != Decision::Inherited {
                    self.fallback(key, &job.spec.name, || pick.why.clone());
                }
                Ok((self.finish(key, Arc::new(plan)), Some(d)))
            }
            Mode::Blocking if inherited => {
                let plan = self.plan_for(&job, &pick.config, true, Have::Nothing)?;
                let d = serves(&plan);
                Ok((self.finish(key, Arc::new(plan)), Some(d)))
            }
            Mode::Blocking => {
                let start = (pick.decision != Decision::Default).then_some(pick.config);
                // Another process tuning the key: wait for its winner (a search's time budget
                // and more), then tune here.
                let budget = self.inner.tune.read().max_time_s.unwrap_or(60.0);
                let wait = Duration::from_secs_f64(2.0 * budget + 10.0);
                let plan = self.tune_shared(&job, start, Some(wait), false)?;
                let config = plan.config.clone();
                Ok((
                    self.finish(key, Arc::new(plan)),
                    Some(MissDecision::TunedNow { config }),
                ))
            }
            Mode::Background => {
                let serving = self.inner.states.plan(&key);
                let plan = match serving {
                    // Claimed inside a capture: a loaded plan serves already; under OnRequest
                    // it stays until the winner is applied.
                    Some(p) if self.swap_policy() == SwapPolicy::OnRequest => p,
                    _ => {
                        let plan = Arc::new(self.plan_for(
                            &job,
                            &pick.config,
                            inherited,
                            Have::Nothing,
                        )?);
                        self.provisional(key, &job.spec.name, plan)
                    }
                };
                if announce {
                    self.emit_miss(kernel, key, shape, serves(&plan));
                }
                let start = (pick.decision != Decision::Default).then_some(pick.config);
                // An inherited winner is re-checked by a short search seeded by it.
                self.spawn_background(job, start, plan.clone(), inherited);
                Ok((plan, None))
            }
        }
    }

    /// The first entry of the cache's fallback chain whose config is valid at `job`'s shape
    /// here, else the default (see the module docs).
    pub(super) fn pick(&self, job: &TuningJob) -> Result<Pick> {
        let ex = self
            .inner
            .cache
            .explain(&job.key, self.inner.device.fingerprint())?;
        let why = ex.text();
        for (d, e) in &ex.chain {
            let Ok(c) = job.space.parse_config_text(&e.config) else {
                continue;
            };
            if job.space.is_valid(&c) {
                let why = if Some(&e.key) == ex.from.as_ref().map(|f| &f.key) {
                    why
                } else {
                    format!(
                        "{why} (not valid at this shape; using the {} entry {} instead: {})",
                        d.name(),
                        e.key.display(),
                        e.config
                    )
                };
                return Ok(Pick {
                    decision: *d,
                    config: c,
                    from: Some(e.clone()),
                    why,
                });
            }
        }
        Ok(Pick {
            decision: Decision::Default,
            config: job.fallback_config()?,
            from: None,
            why: if ex.chain.is_empty() {
                why
            } else {
                format!("{why} (no entry's config is valid at this shape: the default)")
            },
        })
    }

    /// What the cache knows from other toolchains, GPU models and shapes of `job`'s kernel, as
    /// priors of its search (each entry one prior, trusted by how close it is).
    pub(super) fn cache_priors(&self, job: &TuningJob) -> Vec<Prior> {
        let Ok(chain) = self
            .inner
            .cache
            .priors(&job.key, self.inner.device.fingerprint())
        else {
            return Vec::new();
        };
        chain
            .into_iter()
            .filter_map(|(d, e)| {
                let c = job.space.parse_config_text(&e.config).ok()?;
                if !(job.space.is_valid(&c) && e.median_ms.is_finite() && e.median_ms > 0.0) {
                    return None;
                }
                let weight = match d {
                    Decision::Inherited => 1.0,
                    Decision::Provisional => 0.6,
                    _ => 0.5,
                };
                Some(
                    Prior::new(
                        format!("{} {}", d.name(), e.key.display()),
                        vec![(c, e.median_ms)],
                    )
                    .with_weight(weight),
                )
            })
            .collect()
    }

    fn count_decision(&self, d: Decision) {
        self.inner.decisions[d as usize].fetch_add(1, Ordering::Relaxed);
    }
}
