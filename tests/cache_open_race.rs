//! Many processes opening and writing one FRESH cache file at the same instant (issue 14): the
//! situation of inference servers started together against one cache directory. Before the fix
//! a fresh file failed here in two ways: `PRAGMA journal_mode=WAL` returned "database is
//! locked" at once (SQLite does not wait in its busy handler for that lock upgrade), and a
//! process that read the file statement by statement while another created the schema judged
//! the fresh cache "a SQLite database without jitune's schema" and moved it aside.
//!
//! 16 processes x 50 rounds, each round on a new file: every process must open the file
//! read-write (half through `Cache::open`, half through `Store::open_rw`) and write an entry,
//! a shared entry, a failure record, a binary and an in-flight marker; afterwards
//! `PRAGMA integrity_check` is ok, every row is there and nothing was moved aside. The whole
//! run must finish within 60 s (it takes about 15 s on 2 cores).
//!
//! `JITUNE_OPEN_RACE_ROUNDS` and `JITUNE_OPEN_RACE_PROCS` override the counts. `harness = false`:
//! `main` is the parent, or with `JITUNE_OPEN_RACE_ROLE` set one child, which starts its open
//! when the parent closes its stdin (all children are released within microseconds).

mod cache_common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cache_common::{dev, entry, key, TempDir};
use jitune::cache::store::{Access, BinaryKey, Store};
use jitune::cache::{Cache, CacheOptions};
use jitune::failure::FailureClass;

const ROLE: &str = "JITUNE_OPEN_RACE_ROLE";
const PATH: &str = "JITUNE_OPEN_RACE_PATH";
/// The whole test, all rounds, must end within this (it stops by itself past it).
const BOUND: Duration = Duration::from_secs(60);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One child: wait for the start signal, open, write, report the time taken.
fn child(n: usize, path: &Path) -> Result<Duration, String> {
    println!("ready");
    // The parent closes our stdin to start everyone at once.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let t = Instant::now();
    let d = dev("GPU race");
    let own = entry(1, &[n as i64 + 1], &d, &format!("n={n}"), 1.0 + n as f64);
    let shared = entry(2, &[1], &d, &format!("n={n}"), 1.0);
    let tk = key(3, &[n as i64 + 1], &d);
    let config = format!("c={n}");
    let bk = BinaryKey {
        kernel: tk.kernel,
        config: &config,
        arch: "sm_90",
        nvrtc: "13.0",
    };
    if n % 2 == 0 {
        let cache = Cache::open(CacheOptions::at(path)).map_err(|e| e.to_string())?;
        if let Some(why) = cache.degraded() {
            return Err(format!("Cache::open degraded: {why}"));
        }
        cache.put(own).map_err(|e| format!("put: {e}"))?;
        cache.put(shared).map_err(|e| format!("put shared: {e}"))?;
        cache
            .record_failure(&tk, "c=9", FailureClass::Compile, "planted")
            .map_err(|e| format!("record_failure: {e}"))?;
        cache
            .put_binary(&bk, &[7; 512])
            .map_err(|e| format!("put_binary: {e}"))?;
        cache
            .mark_inflight(&tk, "c=2")
            .and_then(|_| cache.clear_inflight(&tk, "c=2"))
            .map_err(|e| format!("inflight: {e}"))?;
        if cache.store_write_failures() != 0 {
            return Err(format!(
                "{} store writes failed",
                cache.store_write_failures()
            ));
        }
    } else {
        let store = Store::open_rw(path).map_err(|e| format!("Store::open_rw: {e}"))?;
        if store.access() != Access::ReadWrite {
            return Err(format!("opened as {:?}", store.access()));
        }
        store.put(&own).map_err(|e| format!("put: {e}"))?;
        store.put(&shared).map_err(|e| format!("put shared: {e}"))?;
        store
            .record_failure(&tk, "c=9", FailureClass::Compile, "planted")
            .map_err(|e| format!("record_failure: {e}"))?;
        store
            .put_binary(&bk, &[7; 512])
            .map_err(|e| format!("put_binary: {e}"))?;
        store
            .mark_inflight(&tk, "c=2")
            .and_then(|_| store.clear_inflight(&tk, "c=2"))
            .map_err(|e| format!("inflight: {e}"))?;
    }
    Ok(t.elapsed())
}

fn spawn(n: usize, path: &Path) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .env(ROLE, n.to_string())
        .env(PATH, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a child")
}

/// Runs one round on a fresh file; returns the slowest child's open+write time.
fn round(dir: &Path, r: usize, procs: usize, deadline: Instant) -> Result<Duration, String> {
    let path = dir.join(format!("round{r}.sqlite"));
    let mut kids: Vec<Child> = (0..procs).map(|n| spawn(n, &path)).collect();
    // Wait until every child is up, then release them together.
    let mut outs = Vec::new();
    for k in &mut kids {
        let mut out = BufReader::new(k.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        if line.trim() != "ready" {
            return Err(format!("round {r}: a child did not start ({line:?})"));
        }
        outs.push(out);
    }
    for k in &mut kids {
        drop(k.stdin.take());
    }
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (n, (mut k, mut out)) in kids.into_iter().zip(outs).enumerate() {
        let status = loop {
            match k.try_wait().expect("wait") {
                Some(s) => break Some(s),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => {
                    let _ = k.kill();
                    let _ = k.wait();
                    break None;
                }
            }
        };
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let mut err = String::new();
        if let Some(mut e) = k.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        match status {
            Some(s) if s.success() => {
                let us: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("done "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                slowest = slowest.max(Duration::from_micros(us));
            }
            Some(s) => failures.push(format!("child {n}: {s}: {}", err.trim())),
            None => failures.push(format!("child {n}: still running at the time bound")),
        }
    }
    if !failures.is_empty() {
        return Err(format!("round {r}: {}", failures.join("; ")));
    }
    let aside: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    if !aside.is_empty() {
        return Err(format!("round {r}: files moved aside: {aside:?}"));
    }
    let store = Store::open_read_only_live(&path).map_err(|e| format!("round {r}: {e}"))?;
    let integrity = store.integrity_check().map_err(|e| e.to_string())?;
    if integrity != "ok" {
        return Err(format!("round {r}: integrity_check: {integrity}"));
    }
    let entries = store.entry_count().map_err(|e| e.to_string())?;
    let failures = store.failures().map_err(|e| e.to_string())?.len();
    let binaries = store.binaries().map_err(|e| e.to_string())?.len();
    if entries != procs as u64 + 1 || failures != procs || binaries != procs {
        return Err(format!(
            "round {r}: {entries} entries (want {}), {failures} failures and {binaries} binaries (want {procs})",
            procs + 1
        ));
    }
    Ok(slowest)
}

fn main() {
    if let Ok(n) = std::env::var(ROLE) {
        let path = std::env::var_os(PATH).expect("path");
        match child(n.parse().expect("child number"), Path::new(&path)) {
            Ok(t) => println!("done {}", t.as_micros()),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let rounds = env_count("JITUNE_OPEN_RACE_ROUNDS", 50);
    let procs = env_count("JITUNE_OPEN_RACE_PROCS", 16);
    let dir = TempDir::new("open-race");
    let start = Instant::now();
    let deadline = start + BOUND;
    let mut slowest = Duration::ZERO;
    for r in 0..rounds {
        match round(dir.path(), r, procs, deadline) {
            Ok(s) => slowest = slowest.max(s),
            Err(e) => {
                eprintln!("cache_open_race FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    let wall = start.elapsed();
    println!(
        "cache_open_race: {procs} processes x {rounds} rounds on fresh files: 0 failures, integrity ok, \
         slowest open+write {:.0} ms, {:.1} s in all",
        slowest.as_secs_f64() * 1e3,
        wall.as_secs_f64()
    );
    assert!(wall < BOUND, "took {wall:?}");
    println!("test cache_open_race ... ok");
}
