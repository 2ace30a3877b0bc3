//! The GPU engine: compiling kernels with NVRTC, measuring them honestly, and launching them.
//!
//! Layered like cudarc itself: [`device`] reads what the GPU is (fingerprint, limits);
//! [`compile`] turns a spec + config into a CUBIN in this process; [`pool`] runs many such
//! compilations in parallel worker processes (NVRTC serialises inside one process);
//! [`measure`] makes synthetic inputs, flushes L2, times launches with CUDA events and checks
//! results against a reference; [`evaluator`] puts these together behind the search's
//! [`Evaluator`](crate::search::evaluator::Evaluator) interface; [`isolate`] runs that evaluator
//! in a worker process, so a crashing or hanging candidate cannot take the host down.
//!
//! Every entry point checks that the CUDA libraries are present before the first call (cudarc
//! panics when a library is missing) and turns anything that still panics inside cudarc into an
//! error value: the host process never goes down because a GPU or library is missing.

pub mod compile;
pub mod device;
pub mod evaluator;
pub mod isolate;

pub mod pool;
pub mod tensor_map;

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, Result};

/// Checks that the CUDA driver library (`libcuda`) and NVRTC (`libnvrtc`) can be loaded.
///
/// ```
/// match jitune::gpu::require_cuda() {
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

/// Whether GPU tests should run: `JITUNE_GPU_TESTS=1` and CUDA present. Otherwise the reason to
/// print when skipping.
pub fn gpu_tests_enabled() -> std::result::Result<(), String> {
    if std::env::var("JITUNE_GPU_TESTS").ok().as_deref() != Some("1") {
        return Err("JITUNE_GPU_TESTS is not 1 (set it on a machine with an NVIDIA GPU)".into());
    }
    require_cuda().map_err(|e| e.to_string())
}
pub mod measure;
