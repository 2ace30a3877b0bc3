//! The parent side of the cache load tests (`cache_load`, `cache_load_gpu`): several child
//! processes hammer one cache file while random ones are killed with SIGKILL and replaced;
//! afterwards the file must pass `PRAGMA integrity_check`, every key a child logged (children
//! log a key only after its write returned) must be in the file, and no child may have logged
//! a key tuned twice within itself. Children are this test binary re-run with `ROLE` set.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jitune::cache::store::Store;
use jitune::cache::{Cache, CacheOptions};
use jitune::internals::Rng;
use jitune::key::TuningKey;

pub const ROLE: &str = "JITUNE_LOAD_ROLE";
pub const PATH: &str = "JITUNE_LOAD_PATH";
pub const LOG: &str = "JITUNE_LOAD_LOG";
pub const DEADLINE: &str = "JITUNE_LOAD_DEADLINE_MS";
pub const SEED: &str = "JITUNE_LOAD_SEED";

/// How a key is written in the logs.
pub fn key_text(k: &TuningKey) -> String {
    format!(
        "{} {} {:016x}",
        k.kernel.to_hex(),
        k.shape.to_text(),
        k.device
    )
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a child was started with.
pub struct ChildEnv {
    pub path: PathBuf,
    pub log: ChildLog,
    pub deadline_ms: u64,
    pub seed: u64,
}

/// The child's settings, when this process is a child.
pub fn child_env() -> Option<ChildEnv> {
    std::env::var(ROLE).ok()?;
    Some(ChildEnv {
        path: PathBuf::from(std::env::var_os(PATH)?),
        log: ChildLog::open(Path::new(&std::env::var_os(LOG)?)),
        deadline_ms: std::env::var(DEADLINE).ok()?.parse().ok()?,
        seed: std::env::var(SEED).ok()?.parse().ok()?,
    })
}

/// An append-only log; each line goes out in one `write` (O_APPEND), so a SIGKILL leaves
/// whole lines (the parent ignores an unterminated last line anyway).
pub struct ChildLog(std::sync::Mutex<std::fs::File>);

impl ChildLog {
    pub fn open(p: &Path) -> ChildLog {
        ChildLog(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("child log"),
        ))
    }

    pub fn line(&self, s: &str) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(format!("{s}\n").as_bytes()).expect("log write");
    }
}

pub struct Load {
    pub procs: usize,
    pub secs: f64,
    pub kills: usize,
    /// How long children may take past the deadline to finish (background tuning).
    pub grace: Duration,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub secs: f64,
    pub kills: usize,
    pub spawned: usize,
    pub launches: u64,
    pub logged: usize,
    /// Keys whose write the store gave up on (kept in the child's memory only).
    pub unpersisted: Vec<String>,
    pub rows: usize,
    pub lost: Vec<String>,
    pub dups: Vec<String>,
    /// Tuning runs that ended in an error (children log them as `tunefail ...`).
    pub tune_failures: Vec<String>,
    pub integrity: String,
    pub bad_exits: Vec<String>,
}

fn spawn(dir: &Path, path: &Path, slot: usize, gen: usize, deadline_ms: u64) -> (Child, PathBuf) {
    let log = dir.join(format!("child-{slot}-{gen}.log"));
    let child = Command::new(std::env::current_exe().expect("current exe"))
        .env(ROLE, "child")
        .env(PATH, path)
        .env(LOG, &log)
        .env(DEADLINE, deadline_ms.to_string())
        .env(SEED, (slot * 1000 + gen + 1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child");
    (child, log)
}

/// Runs the load in `dir` and checks the file afterwards.
pub fn run(load: &Load, dir: &Path) -> LoadReport {
    let path = dir.join("cache.sqlite");
    // The schema exists before the crowd arrives.
    drop(Cache::open(CacheOptions::at(&path)).expect("create the cache"));
    let start = Instant::now();
    let deadline_ms = unix_ms() + (load.secs * 1000.0) as u64;
    let mut rng = Rng::new(0x10AD);
    let mut kill_at: Vec<f64> = (0..load.kills)
        .map(|_| load.secs * (0.1 + 0.75 * rng.next_f64()))
        .collect();
    kill_at.sort_by(|a, b| a.total_cmp(b));
    let mut slots: Vec<(Child, usize)> = Vec::new();
    let mut logs = Vec::new();
    for s in 0..load.procs {
        let (c, l) = spawn(dir, &path, s, 0, deadline_ms);
        slots.push((c, 0));
        logs.push(l);
    }
    let mut report = LoadReport {
        spawned: load.procs,
        ..Default::default()
    };
    for t in kill_at {
        let now = start.elapsed().as_secs_f64();
        if t > now {
            std::thread::sleep(Duration::from_secs_f64(t - now));
        }
        let s = rng.below(load.procs as u64) as usize;
        let (child, gen) = &mut slots[s];
        // SIGKILL: no destructors, no rollback but SQLite's own.
        let _ = child.kill();
        let _ = child.wait();
        report.kills += 1;
        let (c, l) = spawn(dir, &path, s, *gen + 1, deadline_ms);
        report.spawned += 1;
        logs.push(l);
        slots[s] = (c, *gen + 1);
    }
    let wait_until =
        Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(unix_ms())) + load.grace;
    for (s, (child, gen)) in slots.iter_mut().enumerate() {
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        report.bad_exits.push(format!("child {s}.{gen}: {st}"));
                    }
                    break;
                }
                Ok(None) if Instant::now() < wait_until => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    report
                        .bad_exits
                        .push(format!("child {s}.{gen}: did not finish in time"));
                    break;
                }
            }
        }
    }
    report.secs = start.elapsed().as_secs_f64();

    let mut logged = BTreeSet::new();
    for l in &logs {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        let mut last_launches = 0u64;
        // Only whole lines: a line cut by the SIGKILL was never complete.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            if let Some(k) = line.strip_prefix("key ") {
                logged.insert(k.to_string());
            } else if let Some(k) = line.strip_prefix("unpersisted ") {
                report.unpersisted.push(k.to_string());
            } else if let Some(k) = line.strip_prefix("dup ") {
                report.dups.push(k.to_string());
            } else if let Some(m) = line.strip_prefix("tunefail ") {
                report.tune_failures.push(m.to_string());
            } else if let Some(n) = line.strip_prefix("launches ") {
                last_launches = n.parse().unwrap_or(last_launches);
            }
        }
        report.launches += last_launches;
    }
    let store = Store::open_rw_strict(&path).expect("open the store");
    report.integrity = store.integrity_check().expect("integrity check");
    let cache = Cache::open(CacheOptions::at(&path)).expect("reopen");
    let present: BTreeMap<String, ()> = cache
        .entries()
        .expect("entries")
        .into_iter()
        .map(|e| (key_text(&e.key), ()))
        .collect();
    report.rows = present.len();
    report.logged = logged.len();
    report.lost = logged
        .into_iter()
        .filter(|k| !present.contains_key(k))
        .collect();
    report
}

impl LoadReport {
    pub fn print(&self, what: &str, procs: usize, threads: usize) {
        println!(
            "{what}: {procs} processes x {threads} threads for {:.2} min; {} SIGKILLs ({} processes in all); \
             {:.0} launches/s; {} keys logged after their write, {} rows in the file, {} rows lost; \
             integrity_check: {}; tuned twice within a process: {}; tuning runs failed: {}",
            self.secs / 60.0,
            self.kills,
            self.spawned,
            self.launches as f64 / self.secs,
            self.logged,
            self.rows,
            self.lost.len(),
            self.integrity,
            self.dups.len(),
            self.tune_failures.len()
        );
    }

    /// The assertions both tests make.
    pub fn check(&self) {
        assert_eq!(self.integrity, "ok");
        assert!(self.lost.is_empty(), "rows lost: {:?}", self.lost);
        assert!(
            self.unpersisted.is_empty(),
            "writes the store gave up on: {:?}",
            self.unpersisted
        );
        assert!(
            self.dups.is_empty(),
            "tuned twice within a process: {:?}",
            self.dups
        );
        assert!(
            self.bad_exits.is_empty(),
            "children failed: {:?}",
            self.bad_exits
        );
        assert!(self.logged > 0, "nothing was written");
        assert!(self.kills > 0, "nothing was killed");
    }
}
