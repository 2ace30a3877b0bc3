//! Bad input for a shared cache (issue 14): a disk that fills up under a running process, a
//! disk that turns read-only under it, a lease row of a process that no longer exists and a
//! lease written under a clock that later went back. In each case: no panic, every call still
//! answers, one clear warning, and nothing that was stored is lost.
//!
//! The full disk is simulated two ways. Always: a child process (this test binary, re-run with
//! `--exact child_full` and `JITUNE_FAULT_ROLE` set) runs under `ulimit -f` with SIGXFSZ
//! ignored, so its writes past the limit fail as they would on a full disk (SQLite reports a
//! full disk or an I/O error). When this process may mount file systems (root): also a
//! 8-MiB tmpfs filled to the last byte, which gives the real ENOSPC, and which is then remounted
//! read-only for the read-only case.

mod cache_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cache_common::*;
use jitune::cache::store::{unix_ms, LeaseOwner, LeaseState, Stale, Store, MAX_LEASE_TTL};
use jitune::cache::{BinaryKey, Cache, CacheOptions, LeaseAttempt, LEASE_TTL};
use std::sync::Arc;

const ROLE: &str = "JITUNE_FAULT_ROLE";
const PATH: &str = "JITUNE_FAULT_PATH";

/// Entries the parent stores before the disk fills: they must all survive.
const KEPT: i64 = 40;

fn parent() -> bool {
    std::env::var(ROLE).is_err()
}

/// A cache with `KEPT` entries and some binaries (a few hundred KiB), closed.
fn prefill(path: &Path) {
    let cache = Cache::open(CacheOptions::at(path)).unwrap();
    let d = dev("GPU fault");
    for i in 0..KEPT {
        cache
            .put(entry(1, &[i + 1], &d, &format!("kept={i}"), 1.0))
            .unwrap();
        let cfg = format!("kept={i}");
        let bk = BinaryKey {
            kernel: key(1, &[1], &d).kernel,
            config: &cfg,
            arch: "sm_90",
            nvrtc: "13.0",
        };
        cache.put_binary(&bk, &[i as u8; 6000]).unwrap();
    }
    assert_eq!(cache.store_write_failures(), 0);
}

/// What a process on a disk that fills up does: keeps calling the cache as the tuner would.
/// Every call must answer; the results stay in memory; one warning says what happened.
fn write_until_full(cache: &Cache) -> u64 {
    let d = dev("GPU fault");
    let big = "x".repeat(1000);
    for i in 0..150 {
        let e = entry(2, &[i + 1], &d, &format!("late={i},{big}"), 2.0);
        let k = e.key;
        cache.put(e).expect("put never fails for the disk");
        assert!(cache.get_memory(&k).is_some(), "the winner stays in memory");
        let cfg = format!("late={i}");
        let bk = BinaryKey {
            kernel: k.kernel,
            config: &cfg,
            arch: "sm_90",
            nvrtc: "13.0",
        };
        cache.put_binary(&bk, &[7; 8000]).unwrap();
        cache
            .record_failure(&k, "bad=1", jitune::failure::FailureClass::Compile, "x")
            .unwrap();
        cache.mark_inflight(&k, "c=1").unwrap();
        cache.clear_inflight(&k, "c=1").unwrap();
        let _ = cache.try_lease(&k, LEASE_TTL);
        cache.release_lease(&k);
    }
    cache.store_write_failures()
}

/// Child: the full-disk run under `ulimit -f`.
#[test]
fn child_full() {
    let (Ok(_), Some(path)) = (std::env::var(ROLE), std::env::var_os(PATH)) else {
        return;
    };
    capture_logs();
    let cache = Cache::open(CacheOptions::at(PathBuf::from(path))).unwrap();
    let failed = write_until_full(&cache);
    let warned = warnings_with("could not write").len();
    println!("fault-result failed={failed} warned={warned}");
}

/// Checks the file after a fault: healthy, with every entry stored before it.
fn check_nothing_lost(path: &Path) -> usize {
    let store = Store::open_read_only_live(path).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let entries = store.entries().unwrap();
    for i in 0..KEPT {
        assert!(
            entries
                .iter()
                .any(|e| e.config == format!("kept={i}") && e.median_ms == 1.0),
            "entry kept={i} was lost"
        );
    }
    entries.len()
}

#[test]
fn full_disk_under_ulimit() {
    if !parent() {
        return;
    }
    let dir = TempDir::new("fault-ulimit");
    let path = dir.join("c.sqlite");
    prefill(&path);
    let size = std::fs::metadata(&path).unwrap().len();
    // dash counts `ulimit -f` in 512-byte blocks: 256 KiB, below the prefilled file's size, so
    // the WAL can take a few commits and the checkpoint into the file fails.
    assert!(size > 256 * 1024, "prefill is only {size} bytes");
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 512; exec \"$0\" --exact child_full --nocapture --test-threads=1")
        .arg(std::env::current_exe().unwrap())
        .env(ROLE, "full")
        .env(PATH, &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let result = text
        .lines()
        .find_map(|l| l.split("fault-result ").nth(1))
        .expect("child result");
    println!("child under ulimit -f: {result}");
    assert!(
        !result.contains("failed=0 "),
        "the disk never filled: {result}"
    );
    assert!(
        result.ends_with("warned=1"),
        "one warning, not one per write: {result}"
    );
    let n = check_nothing_lost(&path);
    // With room again, the same file takes writes.
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    cache
        .put(entry(3, &[1], &dev("GPU fault"), "after=1", 1.0))
        .unwrap();
    assert_eq!(cache.store_write_failures(), 0);
    println!("after the full disk: {n} entries in the file, integrity ok");
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop; `None` where mounting is not
/// allowed (not root, no CAP_SYS_ADMIN).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_then_read_only_tmpfs() {
    if !parent() {
        return;
    }
    capture_logs();
    let dir = TempDir::new("fault-tmpfs");
    let Some(fs) = Tmpfs::mount(&dir.join("mnt"), "8m") else {
        println!("skipped the tmpfs part: cannot mount a tmpfs here (not root); the full disk is covered under ulimit -f");
        return;
    };
    let path = dir.join("mnt/c.sqlite");
    prefill(&path);
    let cache = Arc::new(Cache::open(CacheOptions::at(&path)).unwrap());
    assert!(cache.degraded().is_none());
    // Fill the file system to the last byte.
    let filler = dir.join("mnt/filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let failed = write_until_full(&cache);
    assert!(failed > 0, "ENOSPC never reached the cache");
    let mine = |w: &String| w.contains(&*path.to_string_lossy());
    let write_warnings = warnings_with("could not write");
    assert_eq!(write_warnings.iter().filter(|w| mine(w)).count(), 1);
    // A lease is still answered (granted) and its guard drops cleanly.
    let k = key(9, &[1], &dev("GPU fault"));
    assert!(matches!(
        cache.acquire_lease(&k, LEASE_TTL),
        LeaseAttempt::Held(_)
    ));
    println!("full tmpfs: {failed} writes failed, one warning");

    // Room again, then a clean close (the last connection checkpoints and removes the WAL).
    std::fs::remove_file(&filler).unwrap();
    drop(cache);

    // The disk is read-only when a process starts (Linux refuses to remount a file system
    // read-only while files on it are open for writing, so this is the case to test).
    let sidecars: Vec<_> = ["c.sqlite-wal", "c.sqlite-shm"]
        .iter()
        .filter(|n| dir.join("mnt").join(n).exists())
        .collect();
    println!("beside the file on the read-only disk: {sidecars:?}");
    fs.remount("ro");
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    assert!(cache.degraded().is_some());
    let open_warnings = warnings_with("cannot use cache file");
    assert_eq!(open_warnings.iter().filter(|w| mine(w)).count(), 1);
    let old = key(1, &[1], &dev("GPU fault"));
    assert_eq!(cache.lookup(&old).unwrap().unwrap().config, "kept=0");
    let e = entry(4, &[1], &dev("GPU fault"), "ro=1", 1.0);
    cache.put(e.clone()).unwrap();
    assert_eq!(cache.lookup(&e.key).unwrap().unwrap().config, "ro=1");
    assert!(matches!(
        cache.try_lease(&e.key, LEASE_TTL),
        LeaseState::Acquired { took_over: None }
    ));
    drop(cache);
    fs.remount("rw");
    let n = check_nothing_lost(&path);
    println!("read-only disk: degraded to memory, the file's entries still served; then {n} entries in the file, integrity ok");
}

#[test]
fn lease_rows_of_the_dead_and_of_a_clock_that_went_back() {
    if !parent() {
        return;
    }
    capture_logs();
    let dir = TempDir::new("fault-lease");
    let path = dir.join("c.sqlite");
    let cache = Arc::new(Cache::open(CacheOptions::at(&path)).unwrap());
    let store = Store::open_rw(&path).unwrap();
    let me = LeaseOwner::current();
    // A row of a process of this host that no longer exists (a pid above any pid_max), with
    // a long time to live: free at once.
    let ghost = LeaseOwner {
        pid: 1 << 30,
        start: 12345,
        ..me.clone()
    };
    let k = key(1, &[1], &dev("GPU fault"));
    store
        .try_lease(&k, &ghost, Duration::from_secs(500))
        .unwrap();
    match cache.acquire_lease(&k, LEASE_TTL) {
        LeaseAttempt::Held(g) => {
            let (old, why) = g.took_over().unwrap();
            assert_eq!((old.owner.pid, *why), (1 << 30, Stale::OwnerDead));
        }
        a => panic!("{a:?}"),
    }
    // A row written while the clock read a day later: stale, with a warning saying why.
    let k2 = key(1, &[2], &dev("GPU fault"));
    let other = LeaseOwner {
        scope: "elsewhere/pid:[1]".into(),
        ..ghost.clone()
    };
    store.try_lease(&k2, &other, MAX_LEASE_TTL).unwrap();
    let day = 24 * 3600 * 1000;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE leases SET expires_at_ms = ?1 WHERE owner_scope = 'elsewhere/pid:[1]'",
            [unix_ms() + day],
        )
        .unwrap();
    assert!(matches!(
        cache.try_lease(&k2, LEASE_TTL),
        LeaseState::Acquired {
            took_over: Some((_, Stale::ClockJump))
        }
    ));
    assert_eq!(warnings_with("the clock went back").len(), 1);
    assert_eq!(cache.coordination_failures(), 0);
    assert_eq!(store.integrity_check().unwrap(), "ok");
}
