//! Why a config could not be measured: one [`FailureClass`], and its one stored name.
//!
//! The class travels through every layer: an evaluator reports it, the search keeps a failed
//! config from ever winning, the store records it (so no later run tries the config again), the
//! benchmark worker sends it to its host, exports carry it. It lives in a leaf module of its own
//! so that the cache and the search can both name it without depending on each other, and the
//! mapping to and from the stored text is written here once.

use std::fmt;

/// Why a config could not be measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The kernel did not compile for this config.
    Compile,
    /// The launch failed: too many resources (registers, shared memory, threads), an invalid
    /// geometry, a module that does not load.
    Launch,
    /// The kernel ran but its output did not match the reference.
    WrongResult,
    /// Far slower than the best so far at its first look, so no more time was spent on it.
    TooSlow,
    /// Killed at its deadline: a hang or a runaway kernel (isolated tuning).
    Timeout,
    /// The process (or benchmark worker) died or lost its CUDA context while running it.
    Crashed,
}

impl FailureClass {
    /// Every class, in declaration order.
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Compile,
        FailureClass::Launch,
        FailureClass::WrongResult,
        FailureClass::TooSlow,
        FailureClass::Timeout,
        FailureClass::Crashed,
    ];

    /// The name stored in cache files, exports and worker messages.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Compile => "compile",
            FailureClass::Launch => "launch",
            FailureClass::WrongResult => "wrong_result",
            FailureClass::TooSlow => "too_slow",
            FailureClass::Timeout => "timeout",
            FailureClass::Crashed => "crashed",
        }
    }

    /// The class of a stored name. Every name jitune has ever written reads back as the class
    /// that wrote it (before the classes were unified, the evaluator's "too slow" probe was
    /// stored as `too_slow` and isolated deadlines as `timeout`, which is what they read as
    /// now); `None` for a name no jitune wrote.
    pub fn from_name(name: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Like [`FailureClass::from_name`], for records read from files: an unknown name (a newer
    /// jitune, a hand-edited file) counts as a launch failure, so the config is still never
    /// tried again, and is logged.
    pub fn from_stored(name: &str) -> FailureClass {
        FailureClass::from_name(name).unwrap_or_else(|| {
            log::warn!("jitune: unknown failure class `{name}` read as `launch`");
            FailureClass::Launch
        })
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Compile => "compile error",
            FailureClass::Launch => "launch/resource error",
            FailureClass::WrongResult => "wrong result",
            FailureClass::TooSlow => "too slow",
            FailureClass::Timeout => "timeout",
            FailureClass::Crashed => "crashed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_old_names_read_as_written() {
        for c in FailureClass::ALL {
            assert_eq!(FailureClass::from_name(c.name()), Some(c));
        }
        // The names files written before the classes were unified hold.
        assert_eq!(FailureClass::from_stored("too_slow"), FailureClass::TooSlow);
        assert_eq!(FailureClass::from_stored("timeout"), FailureClass::Timeout);
        assert_eq!(FailureClass::from_stored("crashed"), FailureClass::Crashed);
        assert_eq!(FailureClass::from_stored("no such"), FailureClass::Launch);
        assert_eq!(FailureClass::from_name("no such"), None);
    }
}
