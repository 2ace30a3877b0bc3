//! jitune: a runtime autotuner for CUDA kernels.
//!
//! Applications launch kernels through [`Tuner::launch`] (or [`launch`] on the process-wide
//! tuner). A launch hashes the kernel spec's id and the bucketed problem shape into a
//! [`TuningKey`](key::TuningKey), finds the tuned launch plan in memory, and launches it; on a
//! miss it consults the [`cache`] (memory, a user SQLite file, read-only shipped files) and, per
//! [`Mode`], tunes with a [`search`] strategy (LFBO pattern search by default) driving the
//! [`engine`]'s evaluator over the GPU layer. `ARCHITECTURE.md` has the one-page map.
//!
//! The public API is what an application uses: [`Tuner`], [`Kernel`], [`Arg`], [`Mode`],
//! [`spec`] ([`KernelSpec`](spec::KernelSpec), [`SpecBuilder`](spec::SpecBuilder)), [`cache`]
//! ([`Cache`], [`CacheOptions`], exports for shipping), [`Error`]/[`Result`]; and for those who
//! test or extend search: the [`Evaluator`](search::Evaluator) trait, the strategies, [`replay`]
//! of recorded GPU data and [`GpuEvaluator`](engine::GpuEvaluator). [`internals`] holds the
//! pieces jitune's own benches, tests and examples reach into; it is not a stable API.

pub mod cache;
pub mod engine;
pub mod error;
mod expr;
pub mod failure;
mod gpu;
pub mod key;
pub mod replay;
mod rng;
pub mod search;
pub mod space;
pub mod spec;
pub mod tuner;

pub use cache::{Cache, CacheOptions, Entry};
pub use engine::run_if_worker;
pub use error::{Error, Result};
pub use gpu::device::Gpu;
pub use gpu::launch::{Arg, BufferArg, DeviceElem};
pub use gpu::require_cuda;
pub use tuner::{
    launch, Capture, Event, Kernel, MissDecision, Mode, Stats, SwapPolicy, TuneOptions, TuneReport,
    Tuner, TuningPause,
};

/// Not a stable API: the engine's inner pieces that jitune's own benches, tests and examples
/// use (compilation, the compile pool, measurement helpers, number formats, tensor maps, the
/// expression parser, the seeded RNG, the key map a launch reads). Applications should not need
/// anything here.
pub mod internals {
    pub use crate::engine::job::key_of;
    pub use crate::expr::Expr;
    pub use crate::gpu::compare::{
        compare as compare_on_device, compiles as compare_kernels_compiled, Comparison, Operands,
        SCRATCH_BYTES,
    };
    pub use crate::gpu::compile::{compile_in_process, nvrtc_version, CompileRequest, Image};
    pub use crate::gpu::convert::{f16_to_f32, f32_to_bf16, f32_to_f16, to_f64};
    pub use crate::gpu::pool::{worker_command, CompilePool, PoolMode, PoolStats};
    pub use crate::gpu::roofline::{copy_bandwidth, fp32_lanes_per_sm, Roofline};
    pub use crate::gpu::sampling::{decide, iqr, median, median_ci, Decision, Sampling, Stop};
    pub use crate::gpu::tensor_map::{encode_tiled, MapDims, TensorMapSlot};
    pub use crate::rng::Rng;
    pub use crate::tuner::state::KeyStates;

    /// Whether launches now ask the driver if their stream captures (some tuning or miss
    /// resolution is active): a hit then costs one more driver call. For the launch bench.
    pub fn capture_watching() -> bool {
        crate::tuner::capture::gate().watching()
    }

    /// Whether GPU tests should run: `JITUNE_GPU_TESTS=1` and CUDA present. Otherwise the
    /// reason to print when skipping.
    pub fn gpu_tests_enabled() -> std::result::Result<(), String> {
        if std::env::var("JITUNE_GPU_TESTS").ok().as_deref() != Some("1") {
            return Err(
                "JITUNE_GPU_TESTS is not 1 (set it on a machine with an NVIDIA GPU)".into(),
            );
        }
        crate::gpu::require_cuda().map_err(|e| e.to_string())
    }
}
