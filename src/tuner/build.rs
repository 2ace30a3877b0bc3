//! Building a plan from what is known of a config: the function an evaluator already loaded, its
//! image (an isolated search's winner, a preload), the binary table, or one compilation in this
//! process; then loading it, never inside a capture.

use std::sync::atomic::Ordering;
use std::time::Instant;

use cudarc::driver::CudaFunction;

use super::capture::gate;
use super::{Plan, Tuner};
use crate::engine::binaries::Binaries;
use crate::engine::TuningJob;
use crate::gpu::launch::load_function;
use crate::gpu::prepared::Prepared;
use crate::space::Config;
use crate::spec::MAX_VARS;
use crate::{Error, Result};

/// What a plan is built from.
pub(super) enum Have {
    /// Nothing yet: the binary table, else a compilation.
    Nothing,
    /// The config's image (an isolated search's winner).
    Image(crate::gpu::compile::Image),
    /// The config loaded in this context (an in-process search's winner).
    Func(CudaFunction),
}

impl Tuner {
    pub(super) fn plan_for_text(&self, job: &TuningJob, text: &str, tuned: bool) -> Result<Plan> {
        // A stored config is checked like any from outside: it must be a valid config here.
        let config = job.space.parse_config_text(text)?;
        if !job.space.is_valid(&config) {
            return Err(Error::Space(format!(
                "config `{text}` of `{}` is not valid at shape {:?} on this device",
                job.spec.name, job.shape
            )));
        }
        self.plan_for(job, &config, tuned, Have::Nothing)
    }

    /// A plan of `config`, from what the caller has of it already (a winner the evaluator
    /// loaded, or its image), else from its image in the binary table, else compiled in this
    /// process (a single compilation: a pool worker would pay NVRTC's start-up first).
    pub(super) fn plan_for(
        &self,
        job: &TuningJob,
        config: &Config,
        tuned: bool,
        have: Have,
    ) -> Result<Plan> {
        let spec = &job.spec;
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| job.space.int_value(config, d))
            .collect();
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(&values, &job.shape, self.inner.device.limits(), &mut env);
        let text = job.text(config);
        let Some(gpu) = self.inner.device.gpu() else {
            return Plan::simulated(spec, env, text, tuned);
        };
        let image = match have {
            Have::Func(f) => return Plan::new(f, spec, env, text, tuned),
            Have::Image(img) => img,
            // A preload has it (or is compiling it: wait rather than compile it twice).
            Have::Nothing => match self.preloaded(spec.id(), &text) {
                Some(img) => img,
                None => {
                    let mut bin = Binaries::new(
                        gpu.clone(),
                        spec.clone(),
                        self.inner.cache.clone(),
                        self.inner.pool.clone(),
                    );
                    let t = Instant::now();
                    let img = bin.one(config, &text)?;
                    if bin.compiled > 0 {
                        self.inner.compile_time.add(t.elapsed());
                    }
                    self.inner
                        .compiles
                        .fetch_add(bin.compiled, Ordering::Relaxed);
                    img
                }
            },
        };
        let geometry = Prepared::resolve(spec, &env, &job.shape)?.geometry;
        // Loading a module: never inside a capture (waits for one to end).
        let func = {
            let _permit = gate().permit()?;
            load_function(&gpu.ctx, &image, &spec.entry, &geometry)?
        };
        Plan::new(func, spec, env, text, tuned)
    }
}
