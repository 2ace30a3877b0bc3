//! jitune
pub mod error;
pub mod expr;
pub mod rng;
pub use error::{Error, Result};
pub mod key;
pub mod replay;
pub mod search;
pub mod space;
