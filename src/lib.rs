//! jitune: a runtime autotuner for CUDA kernels.
//!
//! Applications launch kernels through [`tuner::Tuner::launch`] (or [`tuner::launch`] on the
//! process-wide tuner). A launch hashes the kernel spec's id and the bucketed problem shape
//! into a [`key::TuningKey`], finds the tuned launch plan in memory, and launches it; on a miss
//! it consults the [`cache`] (memory, a user SQLite file, read-only shipped files) and, per
//! [`tuner::Mode`], tunes with a [`search`] strategy (LFBO pattern search by default) driving
//! the [`gpu`] engine's evaluator. `ARCHITECTURE.md` has the one-page map.
//!
//! What the folders hold: [`spec`] (kernels as data) and [`expr`] (their expression language),
//! [`space`] (search spaces), [`key`] (tuning keys), [`cache`] (the two-tier store),
//! [`search`] (strategies and the evaluator interface), [`replay`] (recorded GPU data as an
//! evaluator), [`gpu`] (device, NVRTC, compile pool, measurement), [`tuner`] (the launch API).

pub mod cache;
pub mod cli;
pub mod error;
pub mod expr;
pub mod failure;
pub mod gpu;
pub mod key;
pub mod replay;
pub mod rng;
pub mod search;
pub mod space;
pub mod spec;
pub mod tuner;

pub use cache::{Cache, CacheOptions, Entry};
pub use error::{Error, Result};
pub use tuner::{launch, Arg, Kernel, Mode, Tuner};
