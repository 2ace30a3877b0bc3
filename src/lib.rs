//! jitune
pub mod cache;
pub mod error;
pub mod expr;
pub mod gpu;
pub mod key;
pub mod replay;
pub mod rng;
pub mod search;
pub mod space;
pub mod spec;
mod spec_toml;
pub use cache::{Cache, CacheOptions, Entry};
pub use error::{Error, Result};
