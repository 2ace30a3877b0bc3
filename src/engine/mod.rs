//! The tuning engine: the layer that joins the GPU ([`crate::gpu`]), the cache and the search.
//!
//! `gpu/` knows how to compile, load, launch and time a kernel and nothing of caches or
//! searches; `cache/` and `search/` know nothing of GPUs. This layer puts them together, once:
//!
//! - [`job`]: what a miss hands to whichever mode runs it (key, space, shape), built once;
//! - [`binaries`]: where a candidate's image comes from: handed in, the cache's binary table,
//!   or the compile pool (storing what it compiles);
//! - [`failures`]: the configs known to fail for a key, read from the store and recorded in it;
//! - [`evaluator`]: [`GpuEvaluator`], the candidate pipeline behind the search's `Evaluator`
//!   (image → load → correctness check → timing → failure records), in this process;
//! - [`isolate`]: [`IsolatedEvaluator`], the same pipeline in a benchmark worker process, and
//!   [`worker`]: that worker's side (a `GpuEvaluator` fed the host's images), speaking
//!   [`protocol`]'s frames.
//!
//! The tuner's plans use [`binaries`] and `gpu::launch::load_function` too, so a served plan and a
//! tuned candidate come from the same images loaded the same way.

pub(crate) mod binaries;
pub(crate) mod evaluator;
pub(crate) mod failures;
pub(crate) mod isolate;
pub(crate) mod job;
pub(crate) mod protocol;
pub(crate) mod sim;
pub(crate) mod worker;

pub use evaluator::{CandidateCost, EvalStats, GpuEvaluator, MeasureOptions, WorkGate};
pub use isolate::{IsolatedEvaluator, Isolation, IsolationOptions, IsolationStats};
pub use job::TuningJob;
pub use worker::run_if_worker;
