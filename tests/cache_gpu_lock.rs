//! The per-GPU tuning lock (issue 14): one holder at a time, across threads and processes,
//! freed the moment its holder dies (SIGKILL included), independent per GPU id, and a cache that
//! cannot make the lock file grants it unlocked with one warning.
//!
//! The child process is this test binary itself, re-run with `--exact child` and
//! `JITUNE_GPU_LOCK_ROLE` set; without that variable the child test returns at once.

mod cache_common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache_common::*;
use jitune::cache::{Cache, CacheOptions, GpuLock};

const ROLE: &str = "JITUNE_GPU_LOCK_ROLE";
const DIR: &str = "JITUNE_GPU_LOCK_DIR";
const PCI: &str = "0000:3b:00.0";

/// Child: takes the lock of `PCI` under `$DIR`, says so, and sleeps until killed.
#[test]
fn child() {
    let (Ok(_), Some(dir)) = (std::env::var(ROLE), std::env::var_os(DIR)) else {
        return;
    };
    let g = GpuLock::wait(&PathBuf::from(dir), PCI).unwrap();
    assert!(g.is_exclusive());
    println!("locked");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn parent() -> bool {
    std::env::var(ROLE).is_err()
}

#[test]
fn one_holder_at_a_time_in_one_process() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("gpulock");
    let a = GpuLock::try_acquire(dir.path(), PCI).unwrap().unwrap();
    assert!(a.is_exclusive());
    assert_eq!(a.path(), dir.join("locks/gpu-0000%3A3b%3A00.0.lock"));
    // Another thread (another open file) is refused while `a` lives.
    let dir2 = dir.path().to_path_buf();
    let other = std::thread::spawn(move || GpuLock::try_acquire(&dir2, PCI).unwrap().is_none());
    assert!(other.join().unwrap(), "a second holder got the lock");
    assert!(GpuLock::try_acquire(dir.path(), PCI).unwrap().is_none());
    // Another GPU is independent.
    let b = GpuLock::try_acquire(dir.path(), "GPU-5f3c0a2e").unwrap();
    assert!(b.is_some());
    // A bounded wait ends at its deadline.
    let t = Instant::now();
    let none = GpuLock::acquire(dir.path(), PCI, Instant::now() + Duration::from_millis(150));
    assert!(none.unwrap().is_none());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // A blocking waiter gets it as soon as the holder drops it.
    let dir3 = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let g = GpuLock::wait(&dir3, PCI).unwrap();
        (g.is_exclusive(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(a);
    let (got, after) = waiter.join().unwrap();
    assert!(got && after >= Duration::from_millis(190), "{after:?}");
    assert!(GpuLock::try_acquire(dir.path(), "").is_err(), "empty id");
}

#[test]
fn a_killed_holder_frees_the_gpu_at_once() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("gpulock-kill");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, "hold")
        .env(DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("locked") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
    }
    // Held by the child: a bounded wait gives up.
    let none = GpuLock::acquire(dir.path(), PCI, Instant::now() + Duration::from_millis(100));
    assert!(none.unwrap().is_none());
    let waiter = {
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || {
            GpuLock::acquire(&d, PCI, Instant::now() + Duration::from_secs(10))
                .unwrap()
                .map(|g| (g, Instant::now()))
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    child.kill().unwrap(); // SIGKILL: no destructor runs, the kernel drops the lock
    child.wait().unwrap();
    let (g, at) = waiter.join().unwrap().expect("lock after the kill");
    let after = at.saturating_duration_since(killed);
    assert!(g.is_exclusive());
    assert!(after < Duration::from_secs(3), "{after:?}");
    println!("the GPU lock was taken {after:?} after its holder's SIGKILL");
}

#[test]
fn cache_gpu_lock_lives_beside_the_cache_and_degrades() {
    if !parent() {
        return;
    }
    capture_logs();
    let dir = TempDir::new("gpulock-cache");
    let cache = Cache::open(CacheOptions::at(dir.join("c.sqlite"))).unwrap();
    assert_eq!(cache.lock_dir(), dir.path());
    let deadline = Instant::now() + Duration::from_millis(100);
    let g = cache.gpu_lock("GPU-1", deadline).unwrap();
    assert!(g.is_exclusive());
    assert!(g.path().starts_with(dir.join("locks")));
    // Held: a second ask times out (None), it does not fail or pretend.
    assert!(cache.gpu_lock("GPU-1", deadline).is_none());
    drop(g);
    assert!(cache.gpu_lock("GPU-1", deadline).is_some());
    assert_eq!(cache.coordination_failures(), 0);

    // `locks` cannot be a directory here (it is a file, which stops root too): the lock is
    // granted without an OS lock, with one warning for any number of asks.
    let bad = TempDir::new("gpulock-bad");
    std::fs::write(bad.join("locks"), b"not a directory").unwrap();
    let cache = Cache::open(CacheOptions::at(bad.join("c.sqlite"))).unwrap();
    for _ in 0..3 {
        let g = cache.gpu_lock("GPU-2", deadline).unwrap();
        assert!(!g.is_exclusive());
    }
    assert_eq!(cache.coordination_failures(), 3);
    assert_eq!(warnings_with("tuning lock of GPU GPU-2").len(), 1);

    // A memory-only cache still excludes other processes, through the temporary directory.
    let mem = Cache::memory_only();
    assert_eq!(mem.lock_dir(), std::env::temp_dir().join("jitune"));
}
