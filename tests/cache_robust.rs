//! Robustness of the cache files: corrupt files are moved aside, unwritable locations degrade
//! to memory-only, newer schemas are only read (and left byte-identical).

mod cache_common;

use std::path::Path;

use cache_common::*;
use jitune::cache::store::{Access, Store};
use jitune::cache::{Cache, CacheOptions};
use jitune::Error;

fn aside_files(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{name}.corrupt-");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

fn check_fresh_cache_works(path: &Path) {
    let cache = Cache::open(CacheOptions::at(path)).unwrap();
    assert!(cache.degraded().is_none(), "{:?}", cache.degraded());
    let d = dev("GPU A");
    let e = entry(1, &[16], &d, "fresh=1", 1.0);
    cache.put(e.clone()).unwrap();
    cache.clear_memory();
    assert_eq!(*cache.lookup(&e.key).unwrap().unwrap(), e);
    assert_eq!(cache.user_store().unwrap().integrity_check().unwrap(), "ok");
}

#[test]
fn garbage_file_is_moved_aside_and_replaced() {
    capture_logs();
    let dir = TempDir::new("garbage");
    let path = dir.join("cache.sqlite");
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    // A stale WAL of the broken file must not be replayed into the fresh one.
    std::fs::write(dir.join("cache.sqlite-wal"), b"junk wal").unwrap();
    // The strict open refuses and leaves everything in place.
    assert!(matches!(
        Store::open_rw_strict(&path),
        Err(Error::Store { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), garbage);

    check_fresh_cache_works(&path);
    let aside = aside_files(dir.path(), "cache.sqlite");
    assert!(aside.iter().any(|n| !n.ends_with("-wal")), "{aside:?}");
    let main_aside = aside.iter().find(|n| !n.ends_with("-wal")).unwrap();
    let ts: i64 = main_aside
        .trim_start_matches("cache.sqlite.corrupt-")
        .parse()
        .expect("unix timestamp suffix");
    assert!((ts - jitune::cache::unix_now()).abs() < 600);
    assert_eq!(
        std::fs::read(dir.join(main_aside)).unwrap(),
        garbage,
        "the bad file is kept for inspection"
    );
    // (SQLite itself discards a -wal whose header is invalid; either way none is left to be
    // replayed into the fresh cache, which check_fresh_cache_works verified.)
    assert!(
        !warnings_with("moved it to").is_empty(),
        "a warning is logged"
    );
}

#[test]
fn truncated_database_is_moved_aside_and_replaced() {
    let dir = TempDir::new("truncated");
    let path = dir.join("cache.sqlite");
    {
        let store = Store::open_rw(&path).unwrap();
        let d = dev("GPU A");
        let entries: Vec<_> = (0..2000)
            .map(|i| entry(1, &[i], &d, &format!("c={i},pad={}", "x".repeat(100)), 1.0))
            .collect();
        store
            .put_entries(&entries, jitune::cache::OnConflict::Replace)
            .unwrap();
    } // last connection closed: WAL checkpointed into the main file
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > 100_000,
        "database is large enough to truncate meaningfully ({len})"
    );
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    check_fresh_cache_works(&path);
    assert_eq!(aside_files(dir.path(), "cache.sqlite").len(), 1);
}

#[test]
fn foreign_sqlite_database_is_not_adopted() {
    let dir = TempDir::new("foreign");
    let path = dir.join("cache.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos VALUES (1, 'cat');").unwrap();
    }
    let before = file_hash(&path);
    check_fresh_cache_works(&path);
    let aside = aside_files(dir.path(), "cache.sqlite");
    assert_eq!(aside.len(), 1);
    assert_eq!(
        file_hash(&dir.join(&aside[0])),
        before,
        "someone else's database is kept intact"
    );
}

/// Whether this process can write into a directory with mode 0555 (root can).
fn can_bypass_permissions(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.join("probe");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let bypass = std::fs::write(ro.join("x"), b"x").is_ok();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    bypass
}

fn check_degraded_cache_works(cache: &Cache) {
    assert!(cache.degraded().is_some());
    assert!(cache.user_store().is_none());
    let d = dev("GPU A");
    let e = entry(1, &[16], &d, "mem=1", 1.0);
    cache.put(e.clone()).unwrap();
    assert_eq!(*cache.get_memory(&e.key).unwrap(), e);
    assert_eq!(*cache.lookup(&e.key).unwrap().unwrap(), e);
    // binaries/failures/inflight are accepted and dropped
    cache.mark_inflight(&e.key, "mem=1").unwrap();
    cache.clear_inflight(&e.key, "mem=1").unwrap();
}

#[test]
fn unwritable_location_degrades_to_memory_only() {
    capture_logs();
    let dir = TempDir::new("readonly");
    // Works as root too: the cache's parent "directory" is a regular file, so it can't be created.
    std::fs::write(dir.join("not-a-dir"), b"").unwrap();
    let cache = Cache::open(CacheOptions::at(dir.join("not-a-dir/jitune/cache.sqlite"))).unwrap();
    check_degraded_cache_works(&cache);
    assert!(!warnings_with("memory only").is_empty());

    if can_bypass_permissions(dir.path()) {
        println!("running as root (or with CAP_DAC_OVERRIDE): chmod cannot make a directory read-only; tested the degradation via an uncreatable directory only");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let cache = Cache::open(CacheOptions::at(ro.join("cache.sqlite"))).unwrap();
    check_degraded_cache_works(&cache);

    // A read-only file with data: writes stay in memory, its entries are still read.
    let file = dir.join("rofile.sqlite");
    let d = dev("GPU A");
    Store::open_rw(&file)
        .unwrap()
        .put(&entry(2, &[4], &d, "old=1", 1.0))
        .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let cache = Cache::open(CacheOptions::at(&file)).unwrap();
    check_degraded_cache_works(&cache);
    assert_eq!(
        cache.lookup(&key(2, &[4], &d)).unwrap().unwrap().config,
        "old=1"
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn newer_schema_is_read_but_never_written() {
    capture_logs();
    let dir = TempDir::new("newer");
    let path = dir.join("cache.sqlite");
    let d = dev("GPU A");
    let e = entry(1, &[16], &d, "future=1", 1.0);
    Store::open_rw(&path).unwrap().put(&e).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        // What a future jitune might add.
        c.execute_batch("CREATE TABLE future_stuff (x); PRAGMA journal_mode = DELETE;")
            .unwrap();
    }
    let before = file_hash(&path);

    match Store::open_rw_strict(&path) {
        Err(Error::NewerSchema {
            found: 99,
            supported: 3,
            ..
        }) => {}
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let store = Store::open_rw(&path).unwrap();
    assert_eq!(store.access(), Access::NewerSchema);
    assert_eq!(store.get(&e.key).unwrap().unwrap(), e);
    assert!(matches!(store.put(&e), Err(Error::NewerSchema { .. })));
    drop(store);

    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    assert!(cache.degraded().is_some());
    assert_eq!(
        *cache.lookup(&e.key).unwrap().unwrap(),
        e,
        "data still readable"
    );
    let e2 = entry(2, &[16], &d, "new=1", 1.0);
    cache.put(e2.clone()).unwrap();
    assert_eq!(*cache.get_memory(&e2.key).unwrap(), e2);
    drop(cache);
    assert!(!warnings_with("newer than this jitune").is_empty());
    assert_eq!(file_hash(&path), before, "newer-schema file modified");
}

#[test]
fn missing_or_bad_shipped_layers_are_skipped() {
    let dir = TempDir::new("badshipped");
    std::fs::write(dir.join("bad.sqlite"), b"definitely not sqlite").unwrap();
    let cache = Cache::open(
        CacheOptions::memory_only()
            .with_shipped(dir.join("missing.sqlite"))
            .with_shipped(dir.join("bad.sqlite")),
    )
    .unwrap();
    assert!(cache.shipped_stores().is_empty());
    assert!(matches!(
        Store::open_shipped(dir.join("missing.sqlite")),
        Err(Error::Io { .. })
    ));
    assert_eq!(
        std::fs::read(dir.join("bad.sqlite")).unwrap(),
        b"definitely not sqlite",
        "shipped files are never moved"
    );
}
