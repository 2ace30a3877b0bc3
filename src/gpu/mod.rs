//! The GPU layer: what a GPU is, compiling kernels with NVRTC, launching them, and measuring
//! them honestly. It knows nothing of caches or searches (the [`crate::engine`] above joins
//! them), and each file depends only on those listed before it:
//!
//! - [`device`]: what the GPU is (context, fingerprint, limits);
//! - [`compile`]: a spec + config into a CUBIN in this process; [`pool`]: many such
//!   compilations in parallel worker processes (NVRTC serialises inside one process);
//! - [`convert`]: scalar parameters, half/bfloat16 and device bytes as numbers;
//! - [`tensor_map`]: `CUtensorMap` arguments encoded per launch;
//! - [`launch`]: the one launch path (arguments checked and marshalled, zero-fill, tensor maps,
//!   `cuLaunchKernel`) and loading an image into a function;
//! - [`compare`]: the correctness gate on the device (jitune's own comparison kernel);
//! - [`prepared`]: a config resolved for a shape (variables, geometry, argument lengths, zero
//!   mask), what [`launch`] takes; [`fault`]: a failed launch sorted as an invalid config or a
//!   broken context;
//! - [`inputs`]: the tuner's own synthetic buffers for a spec and shape; [`sampling`]: the
//!   adaptive sampling rule and its statistics (no CUDA);
//! - [`measure`]: the bench: L2 flushing, CUDA-event timing in rounds of [`sampling`] and the
//!   correctness run on [`inputs`], all through [`launch`];
//! - [`roofline`]: the device's copy bandwidth (measured once) and FP32 peak, for stopping a
//!   search near the roofline.
//!
//! Every entry point checks that the CUDA libraries are present before the first call (cudarc
//! panics when a library is missing) and turns anything that still panics inside cudarc into an
//! error value: the host process never goes down because a GPU or library is missing.

pub mod compare;
pub mod compile;
pub mod convert;
pub mod device;
pub mod fault;
mod inputs;
pub mod launch;
pub mod measure;
pub mod pool;
pub mod prepared;
pub mod roofline;
pub mod sampling;
pub mod tensor_map;

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, Result};

/// Checks that the CUDA driver library (`libcuda`) and NVRTC (`libnvrtc`) can be loaded.
///
/// ```
/// match jitune::require_cuda() {
///     Ok(()) => println!("CUDA is available"),
///     Err(e) => println!("no GPU work here: {e}"),
/// }
/// ```
pub fn require_cuda() -> Result<()> {
    // Checked once per process: each check dlopens the libraries, which is slow when nothing
    // else holds them open.
    static PRESENT: once_cell::sync::OnceCell<std::result::Result<(), String>> =
        once_cell::sync::OnceCell::new();
    PRESENT
        .get_or_init(check_libraries)
        .clone()
        .map_err(Error::NoCuda)
}

/// With run-time loading (jitune's `dynamic-loading`, or cudarc's fallback when no link mode was
/// chosen) the libraries may be missing, and cudarc panics at the first call into one: look first.
#[cfg(not(any(feature = "dynamic-linking", feature = "static-linking")))]
fn check_libraries() -> std::result::Result<(), String> {
    let driver =
        catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false);
    if !driver {
        return Err(
            "libcuda (the NVIDIA driver library) was not found; is there an NVIDIA GPU and driver?"
                .into(),
        );
    }
    let nvrtc = catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false);
    if !nvrtc {
        return Err(
            "libnvrtc (the CUDA runtime compiler) was not found; install the CUDA toolkit's NVRTC"
                .into(),
        );
    }
    Ok(())
}

/// Linked at build time (`dynamic-linking`, `static-linking`): a process that started has them.
#[cfg(any(feature = "dynamic-linking", feature = "static-linking"))]
fn check_libraries() -> std::result::Result<(), String> {
    Ok(())
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol, say) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::cuda(format!(
                "{what}: the CUDA library failed: {msg}"
            )))
        }
    }
}
