//! A tuning job: everything a miss works out once (the key, the shape, the search space) and
//! hands to whichever mode runs it, so no step builds the key or re-binds the space's
//! constraints again.

use std::sync::Arc;

use crate::key::TuningKey;
use crate::space::{Config, SearchSpace};
use crate::spec::{DeviceLimits, KernelSpec};
use crate::{Error, Result};

/// One kernel at one shape on one GPU.
#[derive(Clone, Debug)]
pub struct TuningJob {
    pub spec: Arc<KernelSpec>,
    /// The shape asked for (the key holds its bucket).
    pub shape: Vec<i64>,
    pub key: TuningKey,
    /// The spec's space at this shape on this GPU.
    pub space: Arc<SearchSpace>,
}

impl TuningJob {
    /// The job of `spec` at `shape` on the device with fingerprint hash `device` and `limits`.
    pub fn new(
        spec: Arc<KernelSpec>,
        shape: &[i64],
        device: u64,
        limits: &DeviceLimits,
    ) -> Result<TuningJob> {
        let space = Arc::new(spec.space_for(shape, limits)?);
        TuningJob::with_space(spec, shape, device, space)
    }

    /// A job whose space is given rather than derived from the spec (a simulated device's
    /// space is the recorded one).
    pub fn with_space(
        spec: Arc<KernelSpec>,
        shape: &[i64],
        device: u64,
        space: Arc<SearchSpace>,
    ) -> Result<TuningJob> {
        let key = key_of(&spec, shape, device)?;
        Ok(TuningJob {
            spec,
            shape: shape.to_vec(),
            key,
            space,
        })
    }

    /// The config to launch when nothing better is known: the spec's default when it is valid
    /// at this shape, else the first valid config.
    pub fn fallback_config(&self) -> Result<Config> {
        if self.space.is_valid(&self.spec.default) {
            return Ok(self.spec.default.clone());
        }
        self.space.iter().next().ok_or_else(|| {
            Error::Space(format!(
                "kernel `{}` has no valid config at shape {:?}",
                self.spec.name, self.shape
            ))
        })
    }

    /// A config's canonical text in this space.
    pub fn text(&self, c: &Config) -> String {
        self.space.config_text(c)
    }
}

/// The tuning key of `spec` at `shape` for the device with fingerprint hash `device`.
pub fn key_of(spec: &KernelSpec, shape: &[i64], device: u64) -> Result<TuningKey> {
    let bucket = spec.bucket(shape).ok_or_else(|| {
        Error::Shape(format!(
            "kernel `{}` takes {} dims, got {}",
            spec.name,
            spec.dims.len(),
            shape.len()
        ))
    })?;
    Ok(TuningKey {
        kernel: spec.id(),
        shape: bucket,
        device,
    })
}
