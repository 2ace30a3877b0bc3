//! Several processes sharing one cache file: concurrent writers lose nothing, a writer killed
//! with SIGKILL mid-transaction leaves a healthy file with every committed row, and in-flight
//! markers of a dead process become "crashed" failures.
//!
//! The child processes are this test binary itself, re-run with `--exact <child test>` and
//! `JITUNE_TEST_ROLE` set; without that variable the child tests return at once.

mod cache_common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cache_common::*;
use jitune::cache::store::Store;
use jitune::cache::{Cache, CacheOptions, OnConflict};

const ROLE: &str = "JITUNE_TEST_ROLE";
const PATH: &str = "JITUNE_TEST_PATH";
const WRITER: &str = "JITUNE_TEST_WRITER";

const WRITERS: u8 = 4;
const PER_WRITER: i64 = 150;
const SHARED: i64 = 20;
const BATCH: i64 = 2000;

fn child(test: &str, role: &str, path: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(PATH, path);
    c
}

fn role() -> Option<(String, PathBuf)> {
    Some((
        std::env::var(ROLE).ok()?,
        PathBuf::from(std::env::var_os(PATH)?),
    ))
}

/// Child: one writer process; each put is its own IMMEDIATE transaction.
#[test]
fn child_writer() {
    let Some((r, path)) = role() else { return };
    assert_eq!(r, "writer");
    let w: u8 = std::env::var(WRITER).unwrap().parse().unwrap();
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    assert!(cache.degraded().is_none());
    let d = dev("GPU A");
    for i in 0..PER_WRITER {
        cache
            .put(entry(
                10 + w,
                &[i, 7],
                &d,
                &format!("w={w},i={i}"),
                1.0 + i as f64,
            ))
            .unwrap();
        // Everyone also fights over the same few rows.
        if i < SHARED {
            cache
                .put(entry(1, &[i], &d, &format!("w={w}"), 1.0))
                .unwrap();
        }
    }
}

#[test]
fn concurrent_writer_processes_lose_nothing() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("multi");
    let path = dir.join("cache.sqlite");
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            child("child_writer", "writer", &path)
                .env(WRITER, w.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer failed");
    }
    let store = Store::open_rw(&path).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert_eq!(
        store.entry_count().unwrap(),
        WRITERS as u64 * PER_WRITER as u64 + SHARED as u64
    );
    let d = dev("GPU A");
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            let e = store
                .get(&key(10 + w, &[i, 7], &d))
                .unwrap()
                .unwrap_or_else(|| panic!("lost w={w} i={i}"));
            assert_eq!(e.config, format!("w={w},i={i}"));
        }
    }
    for i in 0..SHARED {
        let e = store.get(&key(1, &[i], &d)).unwrap().expect("shared row");
        assert!(e.config.starts_with("w="), "{}", e.config);
    }
}

/// Child: writes big transactions forever, announcing each commit, until it is killed.
#[test]
fn child_endless_writer() {
    let Some((r, path)) = role() else { return };
    assert_eq!(r, "endless");
    let store = Store::open_rw(&path).unwrap();
    let d = dev("GPU A");
    let pad = "p".repeat(1000);
    let mut out = std::io::stdout().lock();
    for batch in 0..1_000_000i64 {
        let entries: Vec<_> = (0..BATCH)
            .map(|i| entry(1, &[batch, i], &d, &format!("b={batch},i={i},{pad}"), 1.0))
            .collect();
        store.put_entries(&entries, OnConflict::Replace).unwrap();
        writeln!(out, "COMMITTED {batch}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkilled_writer_leaves_a_healthy_file_with_all_commits() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("sigkill");
    let path = dir.join("cache.sqlite");
    let mut c = child("child_endless_writer", "endless", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = c.stdout.take().unwrap();
    let mut committed = -1i64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(b) = line.strip_prefix("COMMITTED ") {
            committed = b.parse().unwrap();
            if committed >= 3 {
                break;
            }
        }
    }
    assert!(committed >= 3, "child stopped before committing");
    // The child is by now inside the next transaction (it spends nearly all its time there).
    c.kill().unwrap(); // SIGKILL on Unix
    let status = c.wait().unwrap();
    assert!(!status.success());

    let store = Store::open_rw(&path).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let d = dev("GPU A");
    let mut per_batch = std::collections::BTreeMap::<i64, i64>::new();
    for e in store.entries().unwrap() {
        *per_batch.entry(e.key.shape.dims()[0]).or_default() += 1;
    }
    for b in 0..=committed {
        assert_eq!(
            per_batch.get(&b),
            Some(&BATCH),
            "batch {b} was committed but is incomplete"
        );
    }
    for (b, n) in &per_batch {
        assert_eq!(
            *n, BATCH,
            "batch {b} is partial: transactions must be atomic"
        );
    }
    assert!(store
        .get(&key(1, &[committed, BATCH - 1], &d))
        .unwrap()
        .is_some());
    // And the file is still writable.
    store.put(&entry(2, &[1], &d, "after=1", 1.0)).unwrap();
}

/// Child: marks a config in flight and "crashes" (exits without clearing it).
#[test]
fn child_crasher() {
    let Some((r, path)) = role() else { return };
    assert_eq!(r, "crasher");
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    let d = dev("GPU A");
    cache
        .mark_inflight(&key(1, &[64], &d), "BM=killer")
        .unwrap();
    cache.mark_inflight(&key(1, &[64], &d), "BM=also").unwrap();
    cache.clear_inflight(&key(1, &[64], &d), "BM=also").unwrap();
    std::process::exit(0);
}

#[test]
fn inflight_marker_of_dead_process_becomes_crashed_failure() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("inflight");
    let path = dir.join("cache.sqlite");
    let st = child("child_crasher", "crasher", &path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    let d = dev("GPU A");
    let k = key(1, &[64], &d);
    cache.mark_inflight(&k, "BM=mine").unwrap();
    assert_eq!(
        cache.take_stale_inflight(&k).unwrap(),
        vec!["BM=killer".to_string()]
    );
    let f = cache.failures_for(&k).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, "BM=killer");
    assert_eq!(f[0].1.name(), "crashed");
    // Taken once: a second call finds nothing; our own marker stays.
    assert!(cache.take_stale_inflight(&k).unwrap().is_empty());
    assert!(cache
        .take_stale_inflight(&key(1, &[128], &d))
        .unwrap()
        .is_empty());
}
