//! [`LaunchFailure`]: how a launch or a run on the device went wrong, as the search needs to
//! know it.
//!
//! The search treats two failures differently: a config that cannot launch (too many
//! resources, an invalid geometry) is one failed candidate and the search goes on; an error
//! that breaks the context (an illegal address and the like) ends everything that runs in it.
//! That sorting of driver errors lives here, in one place: the bench sorts what its launches,
//! copies and synchronisations return, and the evaluator acts on the two kinds.

use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;

use super::launch::LaunchError;

/// How a launch went wrong, as the search needs to know it.
#[derive(Debug)]
pub enum LaunchFailure {
    /// The config cannot launch (too many resources, invalid geometry): an invalid config.
    Invalid(String),
    /// The context is broken (illegal address and the like): nothing more can run in it.
    Sticky(String),
}

/// Whether a CUDA error leaves the context unusable.
pub fn is_sticky(e: &DriverError) -> bool {
    matches!(
        e.0,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_ECC_UNCORRECTABLE
            | CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUresult::CUDA_ERROR_TOO_MANY_PEERS
    )
}

/// A driver error of `what` as a [`LaunchFailure`] (sticky or not, by [`is_sticky`]).
pub(super) fn classify(e: DriverError, what: &str) -> LaunchFailure {
    if is_sticky(&e) {
        LaunchFailure::Sticky(format!("{what}: {e}"))
    } else {
        LaunchFailure::Invalid(format!("{what}: {e}"))
    }
}

/// A failure of the launch path: arguments it refused make the config invalid; a driver error
/// is sorted by [`classify`].
pub(super) fn classify_launch(f: LaunchError) -> LaunchFailure {
    match f {
        LaunchError::Args(e) => LaunchFailure::Invalid(e.to_string()),
        LaunchError::Driver(what, e) => classify(e, what),
    }
}
