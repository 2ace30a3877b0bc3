//! The one error type of jitune and its `Result` alias.
//!
//! Every fallible call in the crate returns [`Result`]. Nothing that a user, a spec file, a cache
//! file or the GPU can get wrong is allowed to panic: it becomes one of these variants, with a
//! message that says what was wrong and where.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in jitune.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A kernel spec is invalid: `spec` names it, `field` the offending field.
    Spec {
        spec: String,
        field: String,
        msg: String,
    },
    /// An expression failed to parse: spec, field and 1-based column of the problem.
    Expr {
        spec: String,
        field: String,
        column: usize,
        msg: String,
    },
    /// An expression failed at evaluation (division by zero, unknown variable value, ...).
    Eval(String),
    /// A search space has no valid configuration, or a config does not belong to it.
    Space(String),
    /// A shape does not match the spec's dimensions.
    Shape(String),
    /// The SQLite store failed: what it was doing (the file, usually), and SQLite's own error
    /// when there was one (kept as the [`source`](std::error::Error::source)).
    Store {
        msg: String,
        source: Option<rusqlite::Error>,
    },
    /// A cache file was written by a newer jitune schema than this build understands.
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Reading or writing a file failed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON document (cache export, Kernel Tuner cachefile) is malformed.
    Json { what: String, msg: String },
    /// The CUDA driver or NVRTC library is missing or failed to load.
    NoCuda(String),
    /// A CUDA driver call failed: what it was doing, and the driver's error when there was one
    /// (kept as the [`source`](std::error::Error::source)).
    Cuda {
        msg: String,
        source: Option<cudarc::driver::DriverError>,
    },
    /// NVRTC failed to compile a kernel; its log is the [`source`](std::error::Error::source).
    Compile { log: CompileLog },
    /// A search or evaluation could not proceed.
    Search(String),
    /// An argument passed by the caller is invalid.
    InvalidArgument(String),
    /// Strict mode (`JITUNE_REQUIRE_HIT=1`): a cache-only miss with no tuned winner; the key
    /// and the cache's explanation.
    NotTuned(String),
    /// A launch or call inside a CUDA graph capture needed what a capture forbids (loading or
    /// compiling a kernel, tuning), or a capture could not be started or ended.
    Capture(String),
}

/// `Result` with jitune's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spec { spec, field, msg } => write!(f, "spec `{spec}`, field `{field}`: {msg}"),
            Error::Expr { spec, field, column, msg } => {
                write!(f, "spec `{spec}`, field `{field}`, column {column}: {msg}")
            }
            Error::Eval(m) => write!(f, "expression evaluation failed: {m}"),
            Error::Space(m) => write!(f, "search space: {m}"),
            Error::Shape(m) => write!(f, "shape: {m}"),
            Error::Store { msg, source } => match source {
                Some(e) => write!(f, "cache store: {msg}: {e}"),
                None => write!(f, "cache store: {msg}"),
            },
            Error::NewerSchema { path, found, supported } => write!(
                f,
                "cache file {} has schema version {found}, newer than this jitune supports ({supported}); \
                 upgrade jitune or use another cache file",
                path.display()
            ),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Json { what, msg } => write!(f, "{what}: malformed JSON: {msg}"),
            Error::NoCuda(m) => write!(f, "CUDA unavailable: {m}"),
            Error::Cuda { msg, source } => match source {
                Some(e) => write!(f, "CUDA error: {msg}: {e}"),
                None => write!(f, "CUDA error: {msg}"),
            },
            Error::Compile { log } => write!(f, "NVRTC compilation failed:\n{}", log.0),
            Error::Search(m) => write!(f, "search: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::NotTuned(m) => write!(f, "not tuned: {m}"),
            Error::Capture(m) => write!(f, "CUDA graph capture: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Store {
                source: Some(e), ..
            } => Some(e),
            Error::Cuda {
                source: Some(e), ..
            } => Some(e),
            Error::Compile { log } => Some(log),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store {
            msg: "SQLite".into(),
            source: Some(e),
        }
    }
}

/// NVRTC's compile log, as the source of an [`Error::Compile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLog(pub String);

impl fmt::Display for CompileLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompileLog {}

impl Error {
    /// A store failure that SQLite did not report (a read-only file, a bad row).
    pub fn store(msg: impl Into<String>) -> Self {
        Error::Store {
            msg: msg.into(),
            source: None,
        }
    }

    /// A SQLite error, with what was being done (the file, usually).
    pub fn sqlite(msg: impl Into<String>, source: rusqlite::Error) -> Self {
        Error::Store {
            msg: msg.into(),
            source: Some(source),
        }
    }

    /// A CUDA failure without a driver error code (a missing symbol, a bad image).
    pub fn cuda(msg: impl Into<String>) -> Self {
        Error::Cuda {
            msg: msg.into(),
            source: None,
        }
    }

    /// A failed CUDA driver call, with what was being done.
    pub fn driver(msg: impl Into<String>, source: cudarc::driver::DriverError) -> Self {
        Error::Cuda {
            msg: msg.into(),
            source: Some(source),
        }
    }

    /// NVRTC rejected a source; `log` is its compile log.
    pub fn compile(log: impl Into<String>) -> Self {
        Error::Compile {
            log: CompileLog(log.into()),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_keep_their_source() {
        let sql = rusqlite::Connection::open_in_memory()
            .unwrap()
            .execute("NOT SQL", [])
            .unwrap_err();
        let e = Error::sqlite("/tmp/x.sqlite", sql);
        let src = e.source().expect("the SQLite error is the source");
        assert!(src.downcast_ref::<rusqlite::Error>().is_some());
        assert!(e.to_string().starts_with("cache store: /tmp/x.sqlite: "));

        let d = Error::driver(
            "launching",
            cudarc::driver::DriverError(
                cudarc::driver::sys::CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            ),
        );
        assert!(d
            .source()
            .and_then(|s| s.downcast_ref::<cudarc::driver::DriverError>())
            .is_some());

        let c = Error::compile("kernel.cu(3): error: identifier \"x\" is undefined");
        let log = c.source().and_then(|s| s.downcast_ref::<CompileLog>());
        assert!(log.is_some_and(|l| l.0.contains("undefined")));
        assert!(Error::store("read-only").source().is_none());
    }
}
