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
    /// The SQLite store failed.
    Store(String),
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
    /// A CUDA driver call failed.
    Cuda(String),
    /// NVRTC failed to compile a kernel; the log is kept.
    Compile { log: String },
    /// A search or evaluation could not proceed.
    Search(String),
    /// An argument passed by the caller is invalid.
    InvalidArgument(String),
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
            Error::Store(m) => write!(f, "cache store: {m}"),
            Error::NewerSchema { path, found, supported } => write!(
                f,
                "cache file {} has schema version {found}, newer than this jitune supports ({supported}); \
                 upgrade jitune or use another cache file",
                path.display()
            ),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Json { what, msg } => write!(f, "{what}: malformed JSON: {msg}"),
            Error::NoCuda(m) => write!(f, "CUDA unavailable: {m}"),
            Error::Cuda(m) => write!(f, "CUDA error: {m}"),
            Error::Compile { log } => write!(f, "NVRTC compilation failed:\n{log}"),
            Error::Search(m) => write!(f, "search: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
