//! jitune
pub mod error;
pub mod expr;
pub mod rng;
pub use error::{Error, Result};
pub mod cache;
pub mod key;
pub use cache::{Cache, CacheOptions, Entry};
