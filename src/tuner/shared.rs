//! One search per key however many processes and hosts miss it (issues 14 and 15).
//!
//! A key that misses everywhere is tuned by the process that holds its lease: first the host's
//! lease (the user store's, [`Cache::acquire_lease`](crate::cache::Cache::acquire_lease)), then
//! the fleet's (the remote tier's, [`Cache::remote_lease`](crate::cache::Cache::remote_lease)).
//! Every other process adopts the holder's winner when it lands: from the store within about
//! 50 ms of its commit (the store's `data_version`, polled), or from the remote tier (polled). A
//! holder that dies frees its lease (at once on its host, at expiry elsewhere) and another
//! process takes the key over. The holder measures only while it holds the tuning lock of its
//! physical GPU, so no timing is ever taken while another jitune tuner measures on that GPU.
//!
//! Background runs wait as long as a holder lives; Blocking callers wait until a deadline and
//! then tune themselves. Nothing here can fail a launch: a store or remote tier that misbehaves
//! degrades to "tune here" (see the cache's coordination docs).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Plan, Tuner};
use crate::cache::fleet::RemoteTurn;
use crate::cache::remote::check_config;
use crate::cache::Entry;
use crate::cache::{LeaseAttempt, WinnerWait, LEASE_TTL};
use crate::engine::TuningJob;
use crate::space::Config;
use crate::Result;

/// How often a process whose key another host tunes looks for that host's winner.
const REMOTE_POLL: Duration = Duration::from_millis(250);

/// How long a Background run waits for a live holder's winner before asking again (a holder
/// that lives but never finishes is asked about every this often).
const BACKGROUND_WAIT: Duration = Duration::from_secs(600);

impl Tuner {
    /// Whether `e`'s config is a valid point of `job`'s space, in its canonical spelling (a
    /// winner from another process or host is checked before it is used; see
    /// [`check_config`]).
    pub(super) fn fits(job: &TuningJob, e: &Entry) -> bool {
        check_config(&job.space, &e.config).is_ok()
    }

    /// The winner of `job`'s key if one landed (this host, the fleet, shipped layers), as a
    /// plan.
    fn landed(&self, job: &TuningJob) -> Result<Option<Plan>> {
        let found = self
            .inner
            .cache
            .lookup_with(&job.key, &|e| Self::fits(job, e))?;
        match found {
            Some(e) if Self::fits(job, &e) => Ok(Some(self.plan_for_text(job, &e.config, true)?)),
            _ => Ok(None),
        }
    }

    /// Tunes `job` once across processes and hosts, or adopts the winner of whoever does (see
    /// the module docs). `wait_limit`: how long to wait for another holder before tuning here
    /// anyway (`None`: as long as it lives). `short`: a re-check (a quarter of the budget).
    pub(super) fn tune_shared(
        &self,
        job: &TuningJob,
        nearest: Option<Config>,
        wait_limit: Option<Duration>,
        short: bool,
    ) -> Result<Plan> {
        let cache = &self.inner.cache;
        let give_up = wait_limit.map(|d| Instant::now() + d);
        let past_limit = || give_up.is_some_and(|g| Instant::now() >= g);
        loop {
            if let Some(p) = self.landed(job)? {
                return Ok(self.adopted(p));
            }
            // This process's turn first (one search at a time per tuner), the key's lease only
            // then: a process whose misses wait for its turn holds no lease meanwhile, so the
            // other processes (on other GPUs) take those keys and the keys get divided. Taking
            // the leases first let one process hold every key and tune them one after another.
            let turn = self.inner.background_gate.lock();
            let guard = match cache.acquire_lease(&job.key, LEASE_TTL) {
                LeaseAttempt::Held(g) => g,
                LeaseAttempt::HeldBy { .. } => {
                    drop(turn);
                    let deadline = give_up.unwrap_or_else(|| Instant::now() + BACKGROUND_WAIT);
                    match cache.wait_for_winner(&job.key, deadline) {
                        WinnerWait::Landed(e) if Self::fits(job, &e) => {
                            let p = self.plan_for_text(job, &e.config, true)?;
                            return Ok(self.adopted(p));
                        }
                        // Not usable here, or the holder is gone: ask again.
                        WinnerWait::Landed(_) | WinnerWait::Free => continue,
                        WinnerWait::TimedOut if past_limit() => {
                            log::info!(
                                "jitune: {} {:?}: the process tuning it has not finished; \
                                 tuning here too",
                                job.spec.name,
                                job.shape
                            );
                            return self.search_here(job, nearest, short, None);
                        }
                        WinnerWait::TimedOut => continue,
                    }
                }
            };
            if guard.took_over().is_some() {
                self.inner.takeovers.fetch_add(1, Ordering::Relaxed);
            }
            // This host tunes it, unless another host does.
            let _fleet = match cache.remote_lease(&job.key, LEASE_TTL) {
                RemoteTurn::Mine(g) => g,
                RemoteTurn::Elsewhere => {
                    // Keep this host's lease (its other processes wait on it) and watch for the
                    // other host's winner, without holding this process's turn; take the
                    // fleet's lease if it frees.
                    drop(turn);
                    match self.await_fleet(job, give_up)? {
                        Some(p) => return Ok(self.adopted(p)),
                        None if past_limit() => return self.search_here(job, nearest, short, None),
                        None => continue,
                    }
                }
            };
            // `search_here` looks for a winner that landed meanwhile once it has the GPU.
            return self.search_here(job, nearest, short, Some(turn));
        }
    }

    /// Polls the remote tier for another host's winner of `job` until it lands, the fleet's
    /// lease frees (`None`: ask again) or `give_up`.
    fn await_fleet(&self, job: &TuningJob, give_up: Option<Instant>) -> Result<Option<Plan>> {
        let until = give_up.unwrap_or_else(|| Instant::now() + BACKGROUND_WAIT);
        while Instant::now() < until {
            std::thread::sleep(REMOTE_POLL);
            if let Some(p) = self.landed(job)? {
                return Ok(Some(p));
            }
            if let RemoteTurn::Mine(g) = self.inner.cache.remote_lease(&job.key, LEASE_TTL) {
                // Free again (its holder gave up or died): the caller takes it properly.
                drop(g);
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The search itself, while this process holds its GPU's tuning lock (one run per tuner,
    /// too: two searches on one GPU would time each other). `turn`: this tuner's turn when the
    /// caller holds it already (else it is waited for here).
    fn search_here(
        &self,
        job: &TuningJob,
        nearest: Option<Config>,
        short: bool,
        turn: Option<parking_lot::MutexGuard<'_, ()>>,
    ) -> Result<Plan> {
        let _turn = turn.unwrap_or_else(|| self.inner.background_gate.lock());
        let _gpu = self.gpu_turn();
        // Waiting for the GPU may have let another process's winner land.
        if let Some(p) = self.landed(job)? {
            return Ok(self.adopted(p));
        }
        let (plan, _) = self.tune_job_to_plan(job, nearest, short)?;
        Ok(plan)
    }

    /// This GPU's tuning lock, shared by every jitune process on it: waited for (a day at
    /// most), held while a search measures. `None` only when it could not be had by then.
    pub(super) fn gpu_turn(&self) -> Option<crate::cache::GpuLockGuard> {
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        self.inner.cache.gpu_lock(&self.inner.device.lock_id(), far)
    }

    /// Another process's winner, counted as adopted.
    fn adopted(&self, p: Plan) -> Plan {
        self.inner.adopted.fetch_add(1, Ordering::Relaxed);
        p
    }
}
