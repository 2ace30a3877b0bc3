//! What a tuner tunes on: a GPU, or a simulated one whose measurements are a recorded space's.
//!
//! The simulated device exists so that what the tuner does between processes and hosts (the
//! cache, leases, waiting for another process's winner, the GPU lock, the remote tier) can be
//! run and tested, through the real [`Tuner`](super::Tuner), on machines without a GPU: its
//! searches draw recorded times and failures (a Kernel Tuner cachefile, replayed) and sleep
//! each evaluation's recorded cost, scaled. Its plans cannot launch; a program drives it with
//! [`Tuner::resolve`](super::Tuner::resolve), the launch without the kernel.

use std::sync::Arc;

use crate::gpu::device::Gpu;
use crate::key::{Bucketing, DeviceFingerprint};
use crate::replay::Cachefile;
use crate::space::SearchSpace;
use crate::spec::{DeviceLimits, KernelSpec, SpecBuilder};
use crate::tuner::Kernel;
use crate::{Error, Result};

/// A device that replays recorded measurements (see the module docs).
#[derive(Clone, Debug)]
pub struct SimDevice {
    pub fingerprint: DeviceFingerprint,
    pub(crate) fingerprint_hash: u64,
    pub limits: DeviceLimits,
    /// The physical GPU this simulated one stands for (processes with the same id share its
    /// tuning lock).
    pub lock_id: String,
    pub(crate) data: Arc<Cachefile>,
    /// Each evaluation sleeps its recorded cost (compile, verification, benchmark) times this.
    pub time_scale: f64,
}

impl SimDevice {
    /// A simulated `fingerprint` (its limits an H100's) replaying `data`, standing for the
    /// physical GPU `lock_id`.
    pub fn new(
        data: Arc<Cachefile>,
        fingerprint: DeviceFingerprint,
        lock_id: impl Into<String>,
        time_scale: f64,
    ) -> SimDevice {
        SimDevice {
            fingerprint_hash: fingerprint.hash64(),
            fingerprint,
            limits: DeviceLimits::h100(),
            lock_id: lock_id.into(),
            data,
            time_scale: if time_scale.is_finite() && time_scale >= 0.0 {
                time_scale
            } else {
                0.0
            },
        }
    }

    /// The recorded data.
    pub fn data(&self) -> &Arc<Cachefile> {
        &self.data
    }

    /// The kernel this device simulates: the recorded space's parameters and values, one
    /// shape dimension `key` taken exactly (each value is a shape bucket, tuned on the recorded
    /// space), the first recorded config that ran as its default.
    pub fn kernel(&self) -> Result<Kernel> {
        let space = &self.data.space;
        let default = space
            .iter()
            .find(|c| self.data.mean_time(c).is_some())
            .ok_or_else(|| {
                Error::Space(format!(
                    "recorded space `{}` has no config that ran",
                    self.data.name
                ))
            })?;
        let mut b = SpecBuilder::new(&self.data.name)
            .source(&format!(
                "// simulated: replays the recorded space `{}`\nextern \"C\" __global__ void sim(float* y) {{}}",
                self.data.name
            ))
            .entry("sim")
            .dim("key", Bucketing::Exact)
            .grid(["1", "1", "1"])
            .block(["1", "1", "1"])
            .arg_buffer("y", "f32", "out", "1", "");
        for p in space.params() {
            b = b.param(p.clone());
        }
        let values: Vec<String> = space
            .values(&default)
            .iter()
            .map(|v| v.to_string())
            .collect();
        let pairs: Vec<(&str, &str)> = space
            .params()
            .iter()
            .zip(&values)
            .map(|(p, v)| (p.name.as_str(), v.as_str()))
            .collect();
        Ok(Kernel::new(b.default_config(&pairs).build()?))
    }
}

/// The tuner's device.
#[derive(Clone)]
pub(crate) enum Device {
    Gpu(Arc<Gpu>),
    Sim(Arc<SimDevice>),
}

impl Device {
    pub(crate) fn fingerprint(&self) -> &DeviceFingerprint {
        match self {
            Device::Gpu(g) => &g.fingerprint,
            Device::Sim(s) => &s.fingerprint,
        }
    }

    pub(crate) fn fingerprint_hash(&self) -> u64 {
        match self {
            Device::Gpu(g) => g.fingerprint_hash,
            Device::Sim(s) => s.fingerprint_hash,
        }
    }

    pub(crate) fn limits(&self) -> &DeviceLimits {
        match self {
            Device::Gpu(g) => &g.limits,
            Device::Sim(s) => &s.limits,
        }
    }

    pub(crate) fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Sim(_) => None,
        }
    }

    /// The name of the physical GPU for the tuning lock shared by processes.
    pub(crate) fn lock_id(&self) -> String {
        match self {
            Device::Gpu(g) => g.lock_id(),
            Device::Sim(s) => s.lock_id.clone(),
        }
    }

    /// The space of `spec` at `shape` here: the spec's own on a GPU, the recorded one on a
    /// simulated device.
    pub(crate) fn space(&self, spec: &KernelSpec, shape: &[i64]) -> Result<Arc<SearchSpace>> {
        match self {
            Device::Gpu(g) => Ok(Arc::new(spec.space_for(shape, &g.limits)?)),
            Device::Sim(s) => Ok(Arc::new(s.data.space.clone())),
        }
    }
}
