//! Kernel specs: everything jitune needs to know about a kernel, as data.
//!
//! A [`KernelSpec`] holds the CUDA source, entry point, compile flags, tunable parameters,
//! constraints, launch geometry, the shape's dimensions (with bucketing rules), the kernel's
//! arguments, a default config and a correctness tolerance. Specs load from a TOML file beside
//! their `.cu` (`kernels/sgemm.toml` + `kernels/sgemm.cu`) or are built in Rust with
//! [`SpecBuilder`]; both reach the same canonical form and hence the same blake3
//! [`KernelId`](crate::key::KernelId), which changes whenever something that can change the
//! best config changes (source, flags, space, geometry, arguments, tolerance) and never with
//! TOML formatting or key order.
//!
//! Being plain data, a spec hashes stably, travels to worker processes and drives the CLI.
//! Expressions are parsed and bound to one variable table (parameters, then shape dimensions,
//! then device limits) at build time, so evaluating geometry at launch allocates nothing.
//!
//! One concern per file, each importing only the files below it, so that no file imports one
//! that imports it back (this file only names them and hands their public items on):
//!
//! | file | imports | holds |
//! |---|---|---|
//! | `model.rs` | — | the plain types: limits, element types, roles, tensor maps, dims |
//! | `kernel.rs` | model | [`KernelSpec`]: id, canonical text, bucket, space, geometry |
//! | `builder.rs` | model, kernel | [`SpecBuilder`]: the one validation, and the id |
//! | `toml.rs` | model, kernel, builder | the TOML reader and writer |
//! | [`wire`] | kernel, toml | the form in which a spec travels to a worker process |

mod builder;
mod kernel;
mod model;
mod toml;
pub mod wire;

pub use builder::SpecBuilder;
pub use kernel::KernelSpec;
pub use model::{
    ArgSpec, DeviceLimits, Dim, ElemType, Generator, Geometry, Role, Swizzle, TensorMapSpec,
    MAX_TENSOR_MAPS, MAX_TENSOR_MAP_BOX, MAX_TENSOR_MAP_RANK, MAX_VARS,
};
