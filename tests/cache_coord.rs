//! The cache's pass-throughs for processes sharing one cache (issue 14), as the tuner's miss
//! path calls them: `acquire_lease` with its heartbeat and release on drop, `wait_for_winner`
//! adopting another process' winner into the memory tier, a SIGKILLed holder's key taken over,
//! and a memory-only cache that grants everything.
//!
//! The child processes are this test binary itself, re-run with `--exact child` and
//! `JITUNE_COORD_ROLE` set; without that variable the child test returns at once.

mod cache_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_common::*;
use jitune::cache::store::{unix_ms, LeaseOwner, LeaseState, Stale, Store};
use jitune::cache::{Cache, CacheOptions, LeaseAttempt, WinnerWait, LEASE_TTL};
use jitune::key::TuningKey;

const ROLE: &str = "JITUNE_COORD_ROLE";
const PATH: &str = "JITUNE_COORD_PATH";

fn the_key(n: i64) -> TuningKey {
    key(1, &[n], &dev("GPU coord"))
}

fn parent() -> bool {
    std::env::var(ROLE).is_err()
}

/// Child roles, on key 1: `tune` takes the lease, "tunes" 300 ms, stores the winner and drops
/// the guard (release); `hang` takes the lease and sleeps until killed.
#[test]
fn child() {
    let (Ok(role), Some(path)) = (std::env::var(ROLE), std::env::var_os(PATH)) else {
        return;
    };
    let cache = Arc::new(Cache::open(CacheOptions::at(PathBuf::from(path))).unwrap());
    let LeaseAttempt::Held(guard) = cache.acquire_lease(&the_key(1), LEASE_TTL) else {
        panic!("the child should get the lease");
    };
    println!("holding");
    if role == "tune" {
        std::thread::sleep(Duration::from_millis(300));
        cache
            .put(entry(1, &[1], &dev("GPU coord"), "winner=7", 0.25))
            .unwrap();
        drop(guard);
        println!("done");
    } else {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn spawn(role: &str, path: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(PATH, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
    }
    (c, out)
}

#[test]
fn memory_only_cache_grants_everything() {
    if !parent() {
        return;
    }
    let cache = Arc::new(Cache::memory_only());
    let k = the_key(1);
    assert_eq!(
        cache.try_lease(&k, LEASE_TTL),
        LeaseState::Acquired { took_over: None }
    );
    assert!(cache.renew_lease(&k, LEASE_TTL));
    cache.release_lease(&k);
    let LeaseAttempt::Held(g) = cache.acquire_lease(&k, LEASE_TTL) else {
        panic!("memory-only caches grant leases");
    };
    // A second ask in the same process is granted too: in-process single flight is the tuner's.
    assert!(matches!(
        cache.acquire_lease(&k, LEASE_TTL),
        LeaseAttempt::Held(_)
    ));
    assert!(!g.lost() && g.took_over().is_none());
    drop(g);
    assert!(matches!(
        cache.wait_for_winner(&k, Instant::now() + Duration::from_secs(5)),
        WinnerWait::Free
    ));
    cache
        .put(entry(1, &[1], &dev("GPU coord"), "mem=1", 1.0))
        .unwrap();
    match cache.wait_for_winner(&k, Instant::now()) {
        WinnerWait::Landed(e) => assert_eq!(e.config, "mem=1"),
        w => panic!("{w:?}"),
    }
    assert!(cache.leases().unwrap().is_empty());
    assert_eq!(cache.coordination_failures(), 0);
}

#[test]
fn heartbeat_keeps_a_short_lease_and_drop_releases_it() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("coord-heartbeat");
    let path = dir.join("c.sqlite");
    let cache = Arc::new(Cache::open(CacheOptions::at(&path)).unwrap());
    let k = the_key(2);
    let ttl = Duration::from_secs(1);
    let LeaseAttempt::Held(guard) = cache.acquire_lease(&k, ttl) else {
        panic!("free key");
    };
    assert_eq!(guard.key(), &k);
    // Another host's process asks for 1 s, far beyond the time to live: the heartbeat keeps
    // the lease fresh all along.
    let other = LeaseOwner {
        scope: "elsewhere/pid:[1]".into(),
        host: "elsewhere".into(),
        pid: 1,
        start: 1,
    };
    let store = Store::open_rw(&path).unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        match store.try_lease(&k, &other, ttl).unwrap() {
            LeaseState::HeldBy { owner, .. } => assert_eq!(&owner, cache.lease_owner()),
            s => panic!("lease lost to a stale check after {:?}: {s:?}", t.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let l = store.lease(&k).unwrap().unwrap();
    assert!(l.renewed_at_ms > l.acquired_at_ms + 1000, "{l:?}");
    assert!(!guard.lost());
    drop(guard);
    assert!(store.lease(&k).unwrap().is_none(), "drop releases");

    // Dropping a guard right after taking it stops its heartbeat at once (the stop must not be
    // lost if the thread has not started waiting yet: it would sleep a whole period, 10 s).
    for _ in 0..20 {
        let LeaseAttempt::Held(g) = cache.acquire_lease(&the_key(3), LEASE_TTL) else {
            panic!("free key");
        };
        let t = Instant::now();
        drop(g);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "drop took {:?}",
            t.elapsed()
        );
    }

    // A lease taken over while its holder was stopped is reported lost by the next heartbeat.
    let LeaseAttempt::Held(guard) = cache.acquire_lease(&k, Duration::from_millis(600)) else {
        panic!("free key");
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE leases SET owner_scope = 'elsewhere/pid:[1]', owner_pid = 1, owner_start = 1",
        [],
    )
    .unwrap();
    // The heartbeat runs every 200 ms; give it a few periods even on a busy machine.
    let t = Instant::now();
    while !guard.lost() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(guard.lost());
    drop(guard);
    // The other owner's lease is not released by our drop.
    assert_eq!(store.lease(&k).unwrap().unwrap().owner, other);
}

#[test]
fn a_waiter_adopts_another_process_winner() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("coord-adopt");
    let path = dir.join("c.sqlite");
    let cache = Arc::new(Cache::open(CacheOptions::at(&path)).unwrap());
    let k = the_key(1);
    let (mut child, mut out) = spawn("tune", &path);
    let holder = match cache.acquire_lease(&k, LEASE_TTL) {
        LeaseAttempt::HeldBy { owner, .. } => owner,
        LeaseAttempt::Held(_) => panic!("the child holds the key"),
    };
    assert_eq!(holder.pid, child.id() as i64);
    assert!(cache.get_memory(&k).is_none());
    match cache.wait_for_winner(&k, Instant::now() + Duration::from_secs(20)) {
        WinnerWait::Landed(e) => assert_eq!(e.config, "winner=7"),
        w => panic!("{w:?}"),
    }
    // Adopted into memory: the next launch is a plain hit.
    assert_eq!(cache.get_memory(&k).unwrap().config, "winner=7");
    let mut line = String::new();
    while !line.contains("done") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(cache.leases().unwrap().is_empty(), "the holder released");
}

#[test]
fn a_sigkilled_holder_is_taken_over() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("coord-kill");
    let path = dir.join("c.sqlite");
    let cache = Arc::new(Cache::open(CacheOptions::at(&path)).unwrap());
    let k = the_key(1);
    let (mut child, _out) = spawn("hang", &path);
    assert!(matches!(
        cache.acquire_lease(&k, LEASE_TTL),
        LeaseAttempt::HeldBy { .. }
    ));
    let listed = cache.leases().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].stale(unix_ms()).is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(listed[0].stale(unix_ms()), Some(Stale::OwnerDead));
    // The waiter is told at once that nobody tunes the key any more, and takes it over.
    let t = Instant::now();
    assert!(matches!(
        cache.wait_for_winner(&k, Instant::now() + Duration::from_secs(20)),
        WinnerWait::Free
    ));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    match cache.acquire_lease(&k, LEASE_TTL) {
        LeaseAttempt::Held(g) => {
            let (old, why) = g.took_over().expect("a takeover");
            assert_eq!(*why, Stale::OwnerDead);
            assert_eq!(old.owner.pid, listed[0].owner.pid);
        }
        a => panic!("{a:?}"),
    }
}
