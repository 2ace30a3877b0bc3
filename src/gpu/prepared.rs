//! [`Prepared`]: one config resolved for one shape, in the form the launch path takes.
//!
//! Resolving a config (its variable table, geometry, argument lengths and zero mask) is done
//! once per config and shape, apart from both its users: the bench that measures candidates
//! and the serving plans that launch winners (which memoise the same values per shape). Both
//! hand the result to [`launch`](super::launch::launch) as a [`Resolved`].

use super::launch::{ArgLayout, Resolved, MAX_ARGS};
use crate::spec::{DeviceLimits, Geometry, KernelSpec, MAX_VARS};
use crate::{Error, Result};

/// One config resolved for one shape: the variable table, the geometry, what each argument
/// needs and which arguments are zero-filled. Computed once per config, used by every launch
/// of it (the serving plans memoise the same values per shape).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub layout: ArgLayout,
    pub env: [i64; MAX_VARS],
    pub geometry: Geometry,
    pub need: [i64; MAX_ARGS],
    pub zero: u64,
}

impl Prepared {
    /// Resolves `spec` for a variable table holding the config's values and the device limits
    /// (see [`KernelSpec::fill_env`]) at `shape`. Allocation-free unless it fails.
    pub fn resolve(spec: &KernelSpec, env: &[i64; MAX_VARS], shape: &[i64]) -> Result<Prepared> {
        if spec.args.len() > MAX_ARGS || shape.len() != spec.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}`: more than {MAX_ARGS} arguments, or a shape of {} dims for {}",
                spec.name,
                shape.len(),
                spec.dims.len()
            )));
        }
        let layout = ArgLayout::of(spec)?;
        let mut env = *env;
        let base = spec.shape_slot();
        env[base..base + shape.len()].copy_from_slice(shape);
        let geometry = spec.geometry_in(&env)?;
        let mut need = [0i64; MAX_ARGS];
        for (n, a) in need.iter_mut().zip(&spec.args) {
            *n = a.len.eval(&env).map_err(|e| {
                Error::Eval(format!(
                    "kernel `{}`, argument `{}`: {e}",
                    spec.name, a.name
                ))
            })?;
        }
        let zero = spec.zero_mask(&env)?;
        Ok(Prepared {
            layout,
            env,
            geometry,
            need,
            zero,
        })
    }

    /// For a config given as its parameter values.
    pub fn for_config(
        spec: &KernelSpec,
        values: &[i64],
        shape: &[i64],
        limits: &DeviceLimits,
    ) -> Result<Prepared> {
        if values.len() != spec.params.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}`: a config of {} values for {} parameters",
                spec.name,
                values.len(),
                spec.params.len()
            )));
        }
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(values, shape, limits, &mut env);
        Prepared::resolve(spec, &env, shape)
    }

    /// What [`launch`](super::launch::launch) takes.
    pub fn resolved(&self, spec: &KernelSpec) -> Resolved<'_> {
        Resolved {
            layout: &self.layout,
            env: &self.env,
            geometry: self.geometry,
            need: &self.need[..spec.args.len()],
            zero: self.zero,
        }
    }
}
