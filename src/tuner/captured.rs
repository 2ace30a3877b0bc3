//! A miss inside a CUDA graph capture (issue 17): nothing may be loaded, compiled or tuned on
//! the capturing context, and no launch may wait for another thread (which may itself wait for
//! the capture to end). A plan already loaded serves, and the key is resolved once the capture
//! lets jitune's GPU work run again.

use std::sync::Arc;

use super::capture::gate;
use super::events::MissDecision;
use super::state::Claim;
use super::{Kernel, Plan, Tuner};
use crate::key::TuningKey;
use crate::{Error, Result};

impl Tuner {
    /// A miss inside a CUDA graph capture: never a load, a compilation or a search, and never
    /// a wait for another thread (which may be waiting for the capture to end). The key's own
    /// serving plan if it has one, else the nearest loaded bucket's plan of the kernel (when
    /// its config is valid at this shape), which becomes the key's provisional plan while the
    /// key is resolved in the background after the capture; else an error.
    pub(super) fn resolve_in_capture(
        &self,
        kernel: &Kernel,
        key: TuningKey,
        shape: &[i64],
    ) -> Result<Arc<Plan>> {
        let states = &self.inner.states;
        let claim = states.claim(key);
        let mine = matches!(claim, Claim::Mine);
        match claim {
            Claim::Ready(p) | Claim::Provisional(p) => {
                self.emit_miss(kernel, key, shape, MissDecision::Joined);
                return Ok(p);
            }
            Claim::Mine | Claim::Wait(_) => {}
        }
        let near = self.loaded_near(kernel, key, shape);
        let Some((from, plan)) = near else {
            if mine {
                self.release(&key);
            }
            self.emit_miss(kernel, key, shape, MissDecision::CaptureRefused);
            let e = Error::Capture(format!(
                "kernel `{}` at shape {shape:?} ({}) has no loaded plan to launch inside a CUDA \
                 graph capture, and jitune does not load, compile or tune during one; launch \
                 this kernel once before capturing (any shape of it whose config also fits \
                 this one will do)",
                kernel.spec.name,
                key.display()
            ));
            self.emit_error(Some(key), &kernel.spec.name, &e);
            return Err(e);
        };
        if mine {
            states.set_provisional(&key, plan.clone());
            self.defer_resolution(kernel.clone(), key, shape.to_vec());
        }
        self.emit_miss(
            kernel,
            key,
            shape,
            MissDecision::Captured {
                config: plan.config.clone(),
                from,
            },
        );
        self.fallback(key, &kernel.spec.name, || {
            format!(
                "inside a CUDA graph capture: launched {}'s loaded plan {}",
                from.display(),
                plan.config
            )
        });
        Ok(plan)
    }

    /// The nearest other bucket's loaded plan of `kernel` whose config is valid at `shape`.
    fn loaded_near(
        &self,
        kernel: &Kernel,
        key: TuningKey,
        shape: &[i64],
    ) -> Option<(TuningKey, Arc<Plan>)> {
        let near = self.inner.states.loaded_near(&key);
        if near.is_empty() {
            return None;
        }
        let space = self.inner.device.space(&kernel.spec, shape).ok()?;
        near.into_iter().find(|(_, p)| {
            space
                .parse_config_text(&p.config)
                .is_ok_and(|c| space.is_valid(&c))
        })
    }

    /// Resolves a key claimed inside a capture, in a thread of its own, once the capture lets
    /// jitune's GPU work run (every load and search there takes a permit).
    fn defer_resolution(&self, kernel: Kernel, key: TuningKey, shape: Vec<i64>) {
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("jitune-resolve".into())
            .spawn(move || {
                // Nothing of the resolution (not even a compilation in the pool) starts before
                // the capture has ended.
                drop(gate().permit());
                let _active = gate().activity();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    this.resolve_claimed(&kernel, key, &shape, false)
                }))
                .unwrap_or_else(|_| Err(Error::Search("resolving a key panicked".into())));
                if let Err(e) = r {
                    log::warn!(
                        "jitune: resolving {} {:?} after a capture failed: {e}",
                        kernel.spec.name,
                        shape
                    );
                    this.release(&key);
                    this.emit_error(Some(key), &kernel.spec.name, &e);
                }
            });
        if let Err(e) = spawned {
            log::warn!("jitune: cannot start a thread to resolve a key after a capture: {e}");
            // The provisional plan serves for good.
            if let Some(p) = self.inner.states.plan(&key) {
                self.inner.states.install(key, p);
            }
        }
    }
}
