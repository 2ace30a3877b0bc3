//! Exit codes scripts can rely on (the tests include this file, so the codes the tool returns
//! are the ones its `--help` and the README document).

/// Success.
pub const OK: i32 = 0;
/// A runtime error (a bad spec or shapes file, a CUDA failure, a failed write, a tuned winner
/// the cache file did not take, an unreachable remote tier, ...).
pub const RUNTIME: i32 = 1;
/// A usage error: unknown option, missing argument (clap's code), a malformed key or URL.
pub const USAGE: i32 = 2;
/// No GPU, or the CUDA driver or NVRTC library is missing.
pub const NO_CUDA: i32 = 3;
/// A cache file problem: missing, unreadable, corrupt, malformed JSON, or a newer schema.
pub const CACHE: i32 = 4;
/// Nothing matched (`show KEY` with no such entry, `verify` with no cached winner of the
/// given specs for this GPU).
pub const NOT_FOUND: i32 = 5;
/// `verify` flagged at least one entry (drift beyond the threshold, slower than the
/// default, or no longer working).
pub const DRIFT: i32 = 6;
/// Tuning was interrupted with Ctrl-C (finished shapes are stored).
pub const INTERRUPTED: i32 = 130;
