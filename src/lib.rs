//! jitune
pub mod error;
pub mod expr;
pub mod key;
pub mod rng;
pub mod space;
pub mod spec;
mod spec_toml;
pub use error::{Error, Result};
pub mod gpu;
