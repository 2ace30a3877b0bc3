//! What a fleet run reports, and the records it is drawn from.
//!
//! Each child appends one line per event to its log (`Line`), in one `write` each, so a child
//! killed with SIGKILL leaves whole lines behind: its searches still count. At the end a child
//! that was not killed writes its report (`ChildReport`: the config each key ends with). The
//! parent reads both, and the hosts' stores, into [`Figures`] (OUT.json), whose fields mean:
//!
//! - `searches_per_key`: searches started for the key (`TuneStarted` events), summed over every
//!   process of the run: the killed one and its replacement included. A search a process cut
//!   short by being killed counts: it ran.
//! - `winners`: per key, one entry per process slot (in slot order) for the process in that
//!   slot at the end (a killed process's replacement): the config text of its plan if the plan
//!   is a tuned winner, `null` if it ends with an untuned (provisional or default) plan or did
//!   not report.
//! - `failed_launches`: `resolve` calls that returned an error, all processes.
//! - `lock_errors`: store failures seen by the processes: writes the user store gave up on
//!   (`Cache::store_write_failures`), lease and GPU-lock operations that failed and were
//!   degraded (`Cache::coordination_failures`), a cache that opened degraded (1), plus failed
//!   launches whose message mentions a lock.
//! - `lease_takeovers`: keys whose search was cut short by the killed process and that another
//!   process (on the same host, or on any host with `--remote`) then searched to the end: it
//!   started its search after the kill and finished it. The store's own takeover reports
//!   (`LeaseGuard::took_over`) stay inside the process that took over, so the fleet counts
//!   takeovers from the events instead.
//! - `rows_lost`: (process, key) pairs where the process logged a search as stored (it finished
//!   and its store write did not fail) and the key is not in its host's store at the end.
//! - `wall_s`: seconds from the first process's start until every process had every key tuned
//!   (until the run ended, if that never happened).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

/// The time as the logs keep it: unix milliseconds (the cache's clock, unsigned).
pub fn unix_ms() -> u64 {
    jitune::cache::unix_ms().max(0) as u64
}

/// One line of a child's event log. Times are unix milliseconds; keys are key text.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// The child's tuner is built.
    Ready { ms: u64, pid: u32 },
    /// A search began.
    Start { ms: u64, key: String },
    /// A search ended; `stored`: its store write did not fail.
    Done {
        ms: u64,
        key: String,
        stored: bool,
        wall_s: f64,
        winner: String,
    },
    /// A launch (`resolve`) failed.
    Fail {
        ms: u64,
        key: String,
        message: String,
    },
    /// The tuner reported an error (a failed background search, say).
    Error {
        ms: u64,
        key: String,
        message: String,
    },
    /// Store failures so far (cumulative; see the module docs).
    StoreFail { ms: u64, count: u64 },
    /// Every key's plan is tuned now.
    AllTuned { ms: u64 },
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl Line {
    /// The line's text (no newline).
    pub fn format(&self) -> String {
        match self {
            Line::Ready { ms, pid } => format!("ready {ms} {pid}"),
            Line::Start { ms, key } => format!("start {ms} {key}"),
            Line::Done {
                ms,
                key,
                stored,
                wall_s,
                winner,
            } => format!(
                "done {ms} {key} {} {wall_s:.3} {}",
                if *stored { "stored" } else { "unstored" },
                one_line(winner)
            ),
            Line::Fail { ms, key, message } => format!("fail {ms} {key} {}", one_line(message)),
            Line::Error { ms, key, message } => format!("error {ms} {key} {}", one_line(message)),
            Line::StoreFail { ms, count } => format!("storefail {ms} {count}"),
            Line::AllTuned { ms } => format!("alltuned {ms}"),
        }
    }

    /// Parses a line; `None` for anything else (a torn last line of a killed child).
    pub fn parse(s: &str) -> Option<Line> {
        let mut it = s.splitn(3, ' ');
        let kind = it.next()?;
        let ms: u64 = it.next()?.parse().ok()?;
        let rest = it.next().unwrap_or("");
        let (first, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if first.is_empty() && kind != "alltuned" {
            return None;
        }
        Some(match kind {
            "ready" => Line::Ready {
                ms,
                pid: rest.parse().ok()?,
            },
            "start" => Line::Start {
                ms,
                key: rest.to_string(),
            },
            "done" => {
                let mut t = tail.splitn(3, ' ');
                let stored = match t.next()? {
                    "stored" => true,
                    "unstored" => false,
                    _ => return None,
                };
                Line::Done {
                    ms,
                    key: first.to_string(),
                    stored,
                    wall_s: t.next()?.parse().ok()?,
                    winner: t.next().unwrap_or("").to_string(),
                }
            }
            "fail" => Line::Fail {
                ms,
                key: first.to_string(),
                message: tail.to_string(),
            },
            "error" => Line::Error {
                ms,
                key: first.to_string(),
                message: tail.to_string(),
            },
            "storefail" => Line::StoreFail {
                ms,
                count: rest.parse().ok()?,
            },
            "alltuned" => Line::AllTuned { ms },
            _ => return None,
        })
    }
}

/// A child's log as the parent has read it so far (whole lines only).
#[derive(Debug, Default)]
pub struct LogReader {
    offset: u64,
    partial: String,
    pub lines: Vec<Line>,
}

impl LogReader {
    /// A log already read (tests).
    pub fn from_lines(lines: Vec<Line>) -> LogReader {
        LogReader {
            lines,
            ..LogReader::default()
        }
    }

    /// Reads what was appended since the last call; returns how many lines were new.
    pub fn poll(&mut self, path: &Path) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return 0;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return 0;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return 0;
        };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let before = self.lines.len();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            if let Some(l) = Line::parse(line.trim_end()) {
                self.lines.push(l);
            }
        }
        self.lines.len() - before
    }

    /// Searches begun and not (yet) finished: key and start time.
    pub fn open_searches(&self) -> Vec<(String, u64)> {
        let mut open: BTreeMap<String, u64> = BTreeMap::new();
        for l in &self.lines {
            match l {
                Line::Start { ms, key } => {
                    open.insert(key.clone(), *ms);
                }
                Line::Done { key, .. } => {
                    open.remove(key);
                }
                // A failed search ends too (an error event for the key).
                Line::Error { key, .. } => {
                    open.remove(key);
                }
                _ => {}
            }
        }
        open.into_iter().collect()
    }

    pub fn all_tuned_at(&self) -> Option<u64> {
        self.lines.iter().find_map(|l| match l {
            Line::AllTuned { ms } => Some(*ms),
            _ => None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.lines.iter().find_map(|l| match l {
            Line::Ready { pid, .. } => Some(*pid),
            _ => None,
        })
    }
}

/// What a child that was not killed reports when told to stop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildReport {
    pub pid: u32,
    /// Per key text: the config its plan has at the end, and whether it is tuned.
    pub plans: BTreeMap<String, (String, bool)>,
    pub failed_launches: u64,
    pub store_failures: u64,
    /// The tuner's counters.
    pub searches: u64,
    pub hits: u64,
    pub misses: u64,
    pub swaps: u64,
    pub errors: u64,
    pub tuning_s: f64,
}

impl ChildReport {
    pub fn to_json(&self) -> Value {
        let plans: serde_json::Map<String, Value> = self
            .plans
            .iter()
            .map(|(k, (c, t))| (k.clone(), json!({"config": c, "tuned": t})))
            .collect();
        json!({
            "pid": self.pid,
            "plans": plans,
            "failed_launches": self.failed_launches,
            "store_failures": self.store_failures,
            "searches": self.searches,
            "hits": self.hits,
            "misses": self.misses,
            "swaps": self.swaps,
            "errors": self.errors,
            "tuning_s": self.tuning_s,
        })
    }

    pub fn from_json(v: &Value) -> Result<ChildReport, String> {
        let u = |f: &str| {
            v.get(f)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("child report: field `{f}` missing or not a count"))
        };
        let mut plans = BTreeMap::new();
        let obj = v
            .get("plans")
            .and_then(Value::as_object)
            .ok_or("child report: field `plans` missing")?;
        for (k, p) in obj {
            let config = p.get("config").and_then(Value::as_str);
            let tuned = p.get("tuned").and_then(Value::as_bool);
            match (config, tuned) {
                (Some(c), Some(t)) => plans.insert(k.clone(), (c.to_string(), t)),
                _ => return Err(format!("child report: plan of key `{k}` malformed")),
            };
        }
        Ok(ChildReport {
            pid: u("pid")? as u32,
            plans,
            failed_launches: u("failed_launches")?,
            store_failures: u("store_failures")?,
            searches: u("searches")?,
            hits: u("hits")?,
            misses: u("misses")?,
            swaps: u("swaps")?,
            errors: u("errors")?,
            tuning_s: v.get("tuning_s").and_then(Value::as_f64).unwrap_or(0.0),
        })
    }
}

/// One process of the run, as the parent saw it.
#[derive(Debug)]
pub struct ProcRecord {
    pub slot: usize,
    /// 0 for the first process of the slot, 1 for a replacement.
    pub gen: usize,
    pub host: usize,
    /// When the parent killed it (unix ms).
    pub killed_at: Option<u64>,
    pub log: LogReader,
    pub report: Option<ChildReport>,
}

/// The kill of `--kill-tuner`.
#[derive(Clone, Debug)]
pub struct Kill {
    pub slot: usize,
    pub gen: usize,
    pub host: usize,
    pub pid: u32,
    pub at_ms: u64,
    /// The searches it was running (key text).
    pub keys: Vec<String>,
    /// Whether the store showed it holding the key's lease: `None` when the store had no
    /// lease rows at all (a jitune without leases).
    pub lease_held: Option<bool>,
}

/// The figures of OUT.json (see the module docs for each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Key number -> searches started.
    pub searches_per_key: BTreeMap<usize, u64>,
    /// Key number -> per slot, the tuned config the process ends with.
    pub winners: BTreeMap<usize, Vec<Option<String>>>,
    pub failed_launches: u64,
    pub lock_errors: u64,
    pub lease_takeovers: u64,
    pub rows_lost: u64,
    pub wall_s: f64,
}

/// What the parent knows when it computes the figures.
pub struct Inputs<'a> {
    pub keys: usize,
    pub slots: usize,
    pub procs: &'a [ProcRecord],
    /// Per host: the key texts its store holds at the end (`None`: unreadable).
    pub stored: &'a [Option<BTreeSet<String>>],
    pub kill: Option<&'a Kill>,
    /// Whether every host shares winners (`--remote`): a takeover may come from any host.
    pub shared: bool,
    pub wall_s: f64,
}

fn mentions_lock(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("locked") || m.contains("sqlite_busy") || m.contains("database is busy")
}

impl Figures {
    pub fn compute(i: &Inputs<'_>) -> Figures {
        let mut f = Figures {
            wall_s: i.wall_s,
            ..Figures::default()
        };
        for k in 1..=i.keys {
            f.searches_per_key.insert(k, 0);
            f.winners.insert(k, vec![None; i.slots]);
        }
        for p in i.procs {
            let mut store_failures = 0;
            for l in &p.log.lines {
                match l {
                    Line::Start { key, .. } => {
                        if let Some(n) = key
                            .parse::<usize>()
                            .ok()
                            .and_then(|k| f.searches_per_key.get_mut(&k))
                        {
                            *n += 1;
                        }
                    }
                    Line::Fail { message, .. } => {
                        f.failed_launches += 1;
                        if mentions_lock(message) {
                            f.lock_errors += 1;
                        }
                    }
                    Line::StoreFail { count, .. } => store_failures = store_failures.max(*count),
                    Line::Done {
                        key, stored: true, ..
                    } => {
                        let there = i
                            .stored
                            .get(p.host)
                            .and_then(|s| s.as_ref())
                            .is_some_and(|s| s.contains(key));
                        if !there {
                            f.rows_lost += 1;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(r) = &p.report {
                store_failures = store_failures.max(r.store_failures);
            }
            f.lock_errors += store_failures;
        }
        // Winners: the last process of each slot.
        for slot in 0..i.slots {
            let last = i
                .procs
                .iter()
                .filter(|p| p.slot == slot && p.killed_at.is_none())
                .max_by_key(|p| p.gen);
            let Some(report) = last.and_then(|p| p.report.as_ref()) else {
                continue;
            };
            for (k, w) in f.winners.iter_mut() {
                if let Some((config, true)) = report.plans.get(&k.to_string()) {
                    w[slot] = Some(config.clone());
                }
            }
        }
        if let Some(kill) = i.kill {
            for key in &kill.keys {
                let taken_over = i.procs.iter().any(|p| {
                    if (p.slot, p.gen) == (kill.slot, kill.gen)
                        || !(i.shared || p.host == kill.host)
                    {
                        return false;
                    }
                    let started = p.log.lines.iter().find_map(|l| match l {
                        Line::Start { ms, key: k } if k == key && *ms >= kill.at_ms => Some(*ms),
                        _ => None,
                    });
                    started.is_some_and(|s| {
                        p.log.lines.iter().any(
                            |l| matches!(l, Line::Done { ms, key: k, .. } if k == key && *ms >= s),
                        )
                    })
                });
                if taken_over {
                    f.lease_takeovers += 1;
                }
            }
        }
        f
    }

    /// OUT.json: exactly the seven fields, keys in numeric order.
    pub fn to_json(&self) -> String {
        let obj = |entries: Vec<String>| format!("{{{}}}", entries.join(", "));
        let searches = obj(self
            .searches_per_key
            .iter()
            .map(|(k, n)| format!("\"{k}\": {n}"))
            .collect());
        let winners = obj(self
            .winners
            .iter()
            .map(|(k, w)| format!("\"{k}\": {}", Value::from(w.clone())))
            .collect());
        format!(
            "{{\n  \"searches_per_key\": {searches},\n  \"winners\": {winners},\n  \
             \"failed_launches\": {},\n  \"lock_errors\": {},\n  \"lease_takeovers\": {},\n  \
             \"rows_lost\": {},\n  \"wall_s\": {:.3}\n}}",
            self.failed_launches,
            self.lock_errors,
            self.lease_takeovers,
            self.rows_lost,
            self.wall_s
        )
    }
}
