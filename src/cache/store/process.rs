//! Which process wrote a row (an in-flight marker, a lease), and whether it still runs.

/// A process, identified by pid and start time (so a recycled pid is a different process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcessId {
    pub(super) pid: i64,
    /// Start time in clock ticks since boot (Linux), 0 where unknown.
    pub(super) start: i64,
}

impl ProcessId {
    pub(super) fn current() -> ProcessId {
        let pid = std::process::id() as i64;
        ProcessId {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    #[cfg(target_os = "linux")]
    pub(super) fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        match parse_stat(&stat) {
            // Zombies and dead tasks are not evaluating anything any more.
            Some((state, _)) if state == "Z" || state == "X" => false,
            Some((_, start)) => self.start == 0 || start == self.start,
            None => true,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn is_alive(&self) -> bool {
        false
    }
}

/// State and start time from a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, i64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // Field 22 overall is the start time; `state` was field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn process_start(pid: i64) -> Option<i64> {
    if cfg!(target_os = "linux") {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat).map(|(_, s)| s)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_names() {
        let line = "123 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20";
        assert_eq!(parse_stat(line), Some(("S", 4242)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(ProcessId::current().is_alive() || !cfg!(target_os = "linux"));
    }
}
