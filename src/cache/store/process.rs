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

    /// Whether the process still runs, as far as `/proc` can tell (this pid namespace only:
    /// the caller checks that the pid was written in it). A pid whose start time differs is
    /// another process that reused the number: the one meant is dead.
    pub(super) fn liveness(&self) -> Liveness {
        if !cfg!(target_os = "linux") {
            return Liveness::Unknown;
        }
        let stat = match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Liveness::Dead,
            Err(_) => return Liveness::Unknown,
        };
        match parse_stat(&stat) {
            // Zombies and dead tasks are not doing anything any more.
            Some((state, _)) if state == "Z" || state == "X" => Liveness::Dead,
            Some((_, start)) if self.start == 0 || start == self.start => Liveness::Alive,
            Some(_) => Liveness::Dead,
            None => Liveness::Unknown,
        }
    }

    /// For in-flight markers: on Linux a process counts as alive unless `/proc` shows it dead;
    /// elsewhere every other process counts as dead (markers are then reclaimed at once).
    pub(super) fn is_alive(&self) -> bool {
        cfg!(target_os = "linux") && self.liveness() != Liveness::Dead
    }
}

/// Whether a process still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs.
    Alive,
    /// It is gone (or its pid now names another process).
    Dead,
    /// Cannot be told from here: another host, another pid namespace, no `/proc`.
    Unknown,
}

/// Where a pid names one process: this kernel boot (`/proc/sys/kernel/random/boot_id`) and this
/// pid namespace (`/proc/self/ns/pid`), e.g. `482cffdc-...-d453e4795dde/pid:[4026531836]`.
/// Containers share the boot id but not the pid namespace, and a reboot changes the boot id,
/// so two processes with the same scope can check each other through `/proc`. Empty where
/// either is unknown (not Linux): liveness is then never judged, only expiry.
pub(super) fn pid_scope() -> &'static str {
    static SCOPE: once_cell::sync::Lazy<String> = once_cell::sync::Lazy::new(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let ns = std::fs::read_link("/proc/self/ns/pid").ok();
        match (boot, ns) {
            (Some(b), Some(n)) if !b.trim().is_empty() => {
                format!("{}/{}", b.trim(), n.display())
            }
            _ => String::new(),
        }
    });
    &SCOPE
}

/// This machine's name, for people reading a lease list (never used to decide anything).
pub(super) fn hostname() -> &'static str {
    static NAME: once_cell::sync::Lazy<String> = once_cell::sync::Lazy::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_else(|| "unknown".into())
    });
    &NAME
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

    #[test]
    #[cfg(target_os = "linux")]
    fn liveness_tells_dead_and_recycled_pids() {
        let me = ProcessId::current();
        assert_eq!(me.liveness(), Liveness::Alive);
        // Same pid, another start time: the pid was reused, the process meant is gone.
        let recycled = ProcessId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert_eq!(recycled.liveness(), Liveness::Dead);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = ProcessId {
            pid: child.id() as i64,
            start: 0,
        };
        child.wait().unwrap();
        assert_eq!(gone.liveness(), Liveness::Dead);
        assert!(pid_scope().contains("/pid:["), "{}", pid_scope());
    }
}
