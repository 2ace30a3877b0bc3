//! What the GPU is: its context, fingerprint (for tuning keys) and limits (for spec expressions).

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as A;
use cudarc::driver::CudaContext;

use crate::key::DeviceFingerprint;
use crate::spec::DeviceLimits;
use crate::{Error, Result};

/// One GPU as jitune sees it.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub limits: DeviceLimits,
    pub fingerprint: DeviceFingerprint,
    /// `DeviceFingerprint::hash64`, computed once (it is part of every key).
    pub fingerprint_hash: u64,
    /// The NVRTC target, e.g. `sm_90`.
    pub arch: String,
    /// The GPU's UUID (`GPU-xxxxxxxx-...`, as `nvidia-smi -L` prints it), `None` if the driver
    /// will not say: the one name of this physical GPU across processes.
    pub uuid: Option<String>,
}

impl Gpu {
    /// The name of this physical GPU for locks shared by processes: its UUID, else its ordinal
    /// (which only names it among the processes that see the same devices).
    pub fn lock_id(&self) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("ordinal-{}", self.ctx.ordinal()))
    }
}

impl Gpu {
    /// Opens device `ordinal` (its primary context).
    pub fn new(ordinal: usize) -> Result<Gpu> {
        super::require_cuda()?;
        let ctx = super::guarded("opening the device", || {
            CudaContext::new(ordinal).map_err(|e| Error::driver(format!("device {ordinal}"), e))
        })?;
        Gpu::from_context(ctx)
    }

    /// Describes the device behind an existing context (the caller's).
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Gpu> {
        super::require_cuda()?;
        super::guarded("reading device attributes", || {
            let attr = |a: A| {
                ctx.attribute(a)
                    .map(|v| v as i64)
                    .map_err(|e| Error::driver(format!("{a:?}"), e))
            };
            let limits = DeviceLimits {
                max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
                max_shared_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
                max_shared_per_block_optin: attr(
                    A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )?,
                max_shared_per_sm: attr(
                    A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
                )?,
                sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
                regs_per_sm: attr(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR)?,
                regs_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK)?,
                warp_size: attr(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?,
                cc_major: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                cc_minor: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                l2_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            };
            let name = ctx.name().map_err(|e| Error::driver("device name", e))?;
            let nvrtc_version = super::compile::nvrtc_version()?;
            let driver_version = driver_version();
            let fingerprint = DeviceFingerprint {
                name,
                compute_capability: (limits.cc_major as u32, limits.cc_minor as u32),
                sm_count: limits.sm_count as u32,
                nvrtc_version,
                driver_version,
            };
            let uuid = ctx.uuid().ok().map(|u| uuid_text(&u.bytes));
            Ok(Gpu {
                uuid,
                arch: format!("sm_{}{}", limits.cc_major, limits.cc_minor),
                fingerprint_hash: fingerprint.hash64(),
                ctx,
                limits,
                fingerprint,
            })
        })
    }
}

/// The CUDA driver's version (major, minor), `None` if the driver will not say.
fn driver_version() -> Option<(i32, i32)> {
    let mut v: std::ffi::c_int = 0;
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS && v > 0).then_some((v / 1000, v % 1000 / 10))
}

/// `GPU-01234567-89ab-cdef-0123-456789abcdef`, as NVIDIA's tools print a GPU's UUID.
fn uuid_text(b: &[std::ffi::c_char; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{:02x}", *x as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..].concat()
    )
}
