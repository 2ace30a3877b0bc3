//! Tuning leases in the store (issue 14): one process per key, released only by its owner,
//! free at once when its owner (a process of this host) dies, free after expiry otherwise, and
//! not bound by a clock that went back; waiting for a holder's winner sees its commit within
//! about a poll interval, and sees a killed holder's key free.
//!
//! The child processes are this test binary itself, re-run with `--exact <child test>` and
//! `JITUNE_LEASE_ROLE` set; without that variable the child tests return at once.

mod cache_common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use cache_common::*;
use jitune::cache::store::{
    unix_ms, LeaseOwner, LeaseState, Liveness, Stale, Store, WaitOutcome, LEASE_RECHECK,
    MAX_LEASE_TTL, SCHEMA_VERSION,
};
use jitune::key::TuningKey;

const ROLE: &str = "JITUNE_LEASE_ROLE";
const PATH: &str = "JITUNE_LEASE_PATH";
const KEY: &str = "JITUNE_LEASE_KEY";

const TTL: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

fn the_key(n: i64) -> TuningKey {
    key(1, &[n, 64], &dev("GPU lease"))
}

/// An owner on another host (its liveness cannot be told from here).
fn elsewhere(pid: i64) -> LeaseOwner {
    LeaseOwner {
        scope: "another-boot/pid:[1]".into(),
        host: "elsewhere".into(),
        pid,
        start: 1,
    }
}

fn role() -> Option<(String, PathBuf, i64)> {
    Some((
        std::env::var(ROLE).ok()?,
        PathBuf::from(std::env::var_os(PATH)?),
        std::env::var(KEY).ok()?.parse().ok()?,
    ))
}

fn spawn(role: &str, path: &Path, key: i64) -> (Child, BufReader<ChildStdout>) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(PATH, path)
        .env(KEY, key.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    (c, out)
}

/// The next line the child printed that starts with one of our words (libtest prints its own
/// lines around ours).
fn next_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            return String::new();
        }
        for w in ["acquired", "held", "committed"] {
            if let Some(i) = line.find(w) {
                return line[i..].trim().to_string();
            }
        }
    }
}

fn kill(mut c: Child) {
    let _ = c.kill(); // SIGKILL
    let _ = c.wait();
}

/// Child roles: `hang` takes the lease and sleeps until killed; `finish` takes it, stores the
/// winner 400 ms later, says when, releases and exits; `race` waits for its stdin to close,
/// tries the lease once, says what it got and sleeps until killed (so its lease stays live).
#[test]
fn child() {
    let Some((role, path, n)) = role() else {
        return;
    };
    let store = Store::open_rw(&path).unwrap();
    let me = LeaseOwner::current();
    let k = the_key(n);
    if role == "race" {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    let state = store.try_lease(&k, &me, TTL).unwrap();
    match state {
        LeaseState::Acquired { .. } => println!("acquired"),
        LeaseState::HeldBy { .. } => println!("held"),
    }
    match role.as_str() {
        "finish" => {
            std::thread::sleep(Duration::from_millis(400));
            store
                .put(&entry(1, &[n, 64], &dev("GPU lease"), "winner=1", 0.5))
                .unwrap();
            println!("committed {}", unix_ms());
            assert!(store.release_lease(&k, &me).unwrap());
        }
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

#[test]
fn lease_basics() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-basics");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
    let me = LeaseOwner::current();
    assert_eq!(me.liveness(), Liveness::Alive);
    let (k, other) = (the_key(1), elsewhere(42));

    assert_eq!(
        store.try_lease(&k, &me, TTL).unwrap(),
        LeaseState::Acquired { took_over: None }
    );
    // Re-entrant for its owner.
    assert_eq!(
        store.try_lease(&k, &me, TTL).unwrap(),
        LeaseState::Acquired { took_over: None }
    );
    match store.try_lease(&k, &other, TTL).unwrap() {
        LeaseState::HeldBy {
            owner,
            expires_at_ms,
        } => {
            assert_eq!(owner, me);
            let left = expires_at_ms - unix_ms();
            assert!(left > 55_000 && left <= 60_000, "{left} ms left");
        }
        s => panic!("{s:?}"),
    }
    // Only the owner renews or releases.
    assert!(!store.renew_lease(&k, &other, TTL).unwrap());
    assert!(!store.release_lease(&k, &other).unwrap());
    assert_eq!(store.leases().unwrap().len(), 1);
    let before = store.lease(&k).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(store.renew_lease(&k, &me, TTL).unwrap());
    let after = store.lease(&k).unwrap().unwrap();
    assert!(after.renewed_at_ms > before.renewed_at_ms);
    assert!(after.expires_at_ms > before.expires_at_ms);
    assert_eq!(after.acquired_at_ms, before.acquired_at_ms);
    assert!(store.release_lease(&k, &me).unwrap());
    assert!(store.lease(&k).unwrap().is_none());
    assert!(
        !store.renew_lease(&k, &me, TTL).unwrap(),
        "renewing a released lease"
    );

    // A second key, then everything of one owner at once.
    store.try_lease(&the_key(2), &me, TTL).unwrap();
    store.try_lease(&the_key(3), &me, TTL).unwrap();
    store.try_lease(&the_key(4), &other, TTL).unwrap();
    let listed = store.leases().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|l| l.stale(unix_ms()).is_none()));
    assert_eq!(store.release_leases_of(&me).unwrap(), 2);
    assert_eq!(store.leases().unwrap()[0].owner, other);

    // A time to live of zero or beyond the maximum is refused, not clamped silently.
    assert!(store.try_lease(&k, &me, Duration::ZERO).is_err());
    assert!(store
        .try_lease(&k, &me, MAX_LEASE_TTL + Duration::from_secs(1))
        .is_err());
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn lease_of_another_host_frees_after_expiry_only() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-expiry");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    let k = the_key(1);
    let other = elsewhere(7);
    assert_eq!(other.liveness(), Liveness::Unknown);
    store
        .try_lease(&k, &other, Duration::from_millis(300))
        .unwrap();
    let me = LeaseOwner::current();
    assert!(matches!(
        store.try_lease(&k, &me, TTL).unwrap(),
        LeaseState::HeldBy { .. }
    ));
    std::thread::sleep(Duration::from_millis(350));
    match store.try_lease(&k, &me, TTL).unwrap() {
        LeaseState::Acquired {
            took_over: Some((old, Stale::Expired)),
        } => assert_eq!(old.owner, other),
        s => panic!("{s:?}"),
    }
}

#[test]
fn clock_that_went_back_does_not_bind_everyone() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-clock");
    let path = dir.join("c.sqlite");
    let store = Store::open_rw(&path).unwrap();
    let k = the_key(1);
    let other = elsewhere(9);
    store.try_lease(&k, &other, TTL).unwrap();
    // The lease was written when the clock read two hours later than now: its expiry lies
    // beyond any time to live a holder can ask for.
    let later = unix_ms() + 2 * 3600 * 1000;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE leases SET renewed_at_ms = ?1, expires_at_ms = ?2",
        [later, later + 60_000],
    )
    .unwrap();
    drop(conn);
    let me = LeaseOwner::current();
    match store.try_lease(&k, &me, TTL).unwrap() {
        LeaseState::Acquired {
            took_over: Some((old, Stale::ClockJump)),
        } => assert_eq!(old.owner, other),
        s => panic!("{s:?}"),
    }
    // A lease whose expiry is within the maximum still binds (only a jump beyond it is read
    // as one).
    let k2 = the_key(2);
    store
        .try_lease(&k2, &other, MAX_LEASE_TTL - Duration::from_secs(1))
        .unwrap();
    assert!(matches!(
        store.try_lease(&k2, &me, TTL).unwrap(),
        LeaseState::HeldBy { .. }
    ));
}

#[test]
fn recycled_pid_is_not_the_owner() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-recycled");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    let me = LeaseOwner::current();
    // Our own pid, but a different start time: the process that took the lease is gone and
    // its pid now names us.
    let ghost = LeaseOwner {
        start: me.start + 1,
        ..me.clone()
    };
    let k = the_key(1);
    store.try_lease(&k, &ghost, TTL).unwrap();
    match store.try_lease(&k, &me, TTL).unwrap() {
        LeaseState::Acquired {
            took_over: Some((_, Stale::OwnerDead)),
        } => {}
        s => panic!("{s:?}"),
    }
}

#[test]
fn killed_holder_frees_its_key_at_once() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-kill");
    let path = dir.join("c.sqlite");
    let store = Store::open_rw(&path).unwrap();
    let me = LeaseOwner::current();
    let k = the_key(5);
    let (child, mut out) = spawn("hang", &path, 5);
    assert_eq!(next_line(&mut out), "acquired");
    let holder = match store.try_lease(&k, &me, TTL).unwrap() {
        LeaseState::HeldBy { owner, .. } => owner,
        s => panic!("{s:?}"),
    };
    assert_eq!(holder.pid, child.id() as i64);
    assert_eq!(holder.liveness(), Liveness::Alive);
    // A waiter started now is freed soon after the kill, although the lease has 60 s left.
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || {
            let s = Store::open_rw(&path).unwrap();
            let t = Instant::now();
            let r = s
                .wait_for_entry(&k, Instant::now() + Duration::from_secs(20), POLL)
                .unwrap();
            (r, t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    kill(child);
    let (outcome, _) = waiter.join().unwrap();
    let freed_after = killed.elapsed();
    assert_eq!(outcome, WaitOutcome::Free);
    assert!(
        freed_after < LEASE_RECHECK + Duration::from_secs(2),
        "the waiter saw the dead holder {freed_after:?} after the kill"
    );
    match store.try_lease(&k, &me, TTL).unwrap() {
        LeaseState::Acquired {
            took_over: Some((old, Stale::OwnerDead)),
        } => assert_eq!(old.owner, holder),
        s => panic!("{s:?}"),
    }
    println!("waiter freed {freed_after:?} after the holder's SIGKILL");
}

#[test]
fn waiter_sees_the_winner_within_a_second() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-wait");
    let path = dir.join("c.sqlite");
    let store = Store::open_rw(&path).unwrap();
    let mut worst = 0;
    for n in 0..5 {
        let (mut child, mut out) = spawn("finish", &path, 10 + n);
        assert_eq!(next_line(&mut out), "acquired");
        let k = the_key(10 + n);
        let r = store
            .wait_for_entry(&k, Instant::now() + Duration::from_secs(20), POLL)
            .unwrap();
        let seen = unix_ms();
        match r {
            WaitOutcome::Landed(e) => assert_eq!(e.config, "winner=1"),
            r => panic!("{r:?}"),
        }
        let committed: i64 = next_line(&mut out)
            .strip_prefix("committed ")
            .unwrap()
            .parse()
            .unwrap();
        assert!(child.wait().unwrap().success());
        let latency = seen - committed;
        assert!(
            latency < 1000,
            "saw the winner {latency} ms after its commit"
        );
        worst = worst.max(latency);
    }
    println!("waiters saw the winner at most {worst} ms after its commit (poll {POLL:?})");
}

#[test]
fn waiter_times_out_while_a_live_holder_tunes() {
    if role().is_some() {
        return;
    }
    let dir = TempDir::new("lease-timeout");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    let k = the_key(1);
    store.try_lease(&k, &elsewhere(3), TTL).unwrap();
    let t = Instant::now();
    let r = store
        .wait_for_entry(&k, Instant::now() + Duration::from_millis(300), POLL)
        .unwrap();
    assert_eq!(r, WaitOutcome::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // No lease and no winner: free at once.
    let r = store
        .wait_for_entry(&the_key(2), Instant::now() + Duration::from_secs(5), POLL)
        .unwrap();
    assert_eq!(r, WaitOutcome::Free);
}

#[test]
fn exactly_one_of_many_processes_gets_the_lease() {
    if role().is_some() {
        return;
    }
    const PROCS: usize = 12;
    const ROUNDS: i64 = 5;
    let dir = TempDir::new("lease-race");
    let path = dir.join("c.sqlite");
    drop(Store::open_rw(&path).unwrap());
    for round in 0..ROUNDS {
        let mut kids: Vec<_> = (0..PROCS)
            .map(|_| spawn("race", &path, 100 + round))
            .collect();
        for (c, _) in &mut kids {
            drop(c.stdin.take());
        }
        let got: Vec<String> = kids.iter_mut().map(|(_, out)| next_line(out)).collect();
        for (c, _) in kids {
            kill(c);
        }
        let acquired = got.iter().filter(|l| *l == "acquired").count();
        let held = got.iter().filter(|l| *l == "held").count();
        assert_eq!((acquired, held), (1, PROCS - 1), "round {round}: {got:?}");
    }
}

#[test]
fn a_v1_cache_is_migrated_and_keeps_its_rows() {
    if role().is_some() {
        return;
    }
    // tests/data/cache_v1.sqlite: `jitune import tests/data/cli/fixture_cache.json` by the
    // schema v1 code (7 entries, 1 failure).
    let dir = TempDir::new("lease-v1");
    let path = dir.join("c.sqlite");
    std::fs::copy("tests/data/cache_v1.sqlite", &path).unwrap();
    let old = Store::open_read_only_live(&path).unwrap();
    assert_eq!(old.schema_version(), 1);
    let (entries, failures) = (old.entries().unwrap(), old.failures().unwrap());
    assert_eq!((entries.len(), failures.len()), (7, 1));
    drop(old);
    let store = Store::open_rw(&path).unwrap();
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
    assert_eq!(store.entries().unwrap(), entries);
    assert_eq!(store.failures().unwrap(), failures);
    let k = entries[0].key;
    assert!(matches!(
        store.try_lease(&k, &LeaseOwner::current(), TTL).unwrap(),
        LeaseState::Acquired { took_over: None }
    ));
    assert_eq!(store.integrity_check().unwrap(), "ok");
}
