//! The user cache's binary table under its cap (issue 16 item 4): winners' CUBINs are always
//! kept, the rest are dropped least recently used first once they exceed the cap, a read counts
//! as a use, and files of schema v1/v2 migrate with every row kept.

mod cache_common;

use std::time::Duration;

use cache_common::*;
use jitune::cache::export::Snapshot;
use jitune::cache::store::{BinaryKey, Store, SCHEMA_VERSION, TOUCH_EVERY};
use jitune::cache::{Cache, CacheOptions, Entry};

fn bkey<'a>(e: &Entry, config: &'a str) -> BinaryKey<'a> {
    BinaryKey {
        kernel: e.key.kernel,
        config,
        arch: "sm_90",
        nvrtc: "13.0",
    }
}

fn cubin(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

/// The configs of the binaries in `store`, sorted.
fn configs(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = store
        .binaries()
        .unwrap()
        .into_iter()
        .map(|b| b.config)
        .collect();
    v.sort();
    v
}

/// LRU order comes from millisecond clocks: space writes so that each is later than the last.
fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

#[test]
fn over_the_cap_winners_stay_and_the_oldest_losers_go_first() {
    let dir = TempDir::new("bincap");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
    let d = dev("NVIDIA H200");
    let win = entry(1, &[1024], &d, "W=1", 0.5);
    // Another kernel's winner whose config text is a loser's of kernel 1: a winner is an entry
    // of the same kernel id with that config.
    let other = entry(2, &[1024], &d, "L=2", 0.5);
    store.put(&win).unwrap();
    store.put(&other).unwrap();
    store.set_binary_cap(Some(10_000));

    // The winner's binary is written first, so it is the oldest of all.
    store
        .put_binary(&bkey(&win, "W=1"), &cubin(0, 4000))
        .unwrap();
    for (i, c) in ["L=1", "L=2", "L=3"].iter().enumerate() {
        tick();
        store
            .put_binary(&bkey(&win, c), &cubin(i as u8 + 1, 2000))
            .unwrap();
    }
    assert_eq!(
        store.binary_bytes().unwrap(),
        10_000,
        "at the cap, nothing goes"
    );
    assert_eq!(configs(&store), ["L=1", "L=2", "L=3", "W=1"]);

    // 3000 more bytes: the two oldest losers go (L=1, then L=2), never the older winner.
    tick();
    store
        .put_binary(&bkey(&win, "L=4"), &cubin(9, 3000))
        .unwrap();
    assert_eq!(configs(&store), ["L=3", "L=4", "W=1"]);
    assert_eq!(store.binary_bytes().unwrap(), 9000);

    // Winners alone over the cap: kept, every loser dropped.
    store.set_binary_cap(Some(1000));
    tick();
    store.put_binary(&bkey(&win, "L=5"), &cubin(5, 10)).unwrap();
    assert_eq!(configs(&store), ["W=1"]);
    assert_eq!(
        store.get_binary(&bkey(&win, "W=1")).unwrap(),
        Some(cubin(0, 4000))
    );
    // No cap: nothing is dropped.
    store.set_binary_cap(None);
    store
        .put_binary(&bkey(&win, "L=6"), &cubin(6, 5000))
        .unwrap();
    assert_eq!(configs(&store), ["L=6", "W=1"]);
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn a_read_counts_as_a_use() {
    let dir = TempDir::new("bintouch");
    let store = Store::open_rw(dir.join("c.sqlite")).unwrap();
    let d = dev("NVIDIA H200");
    let e = entry(1, &[64], &d, "W=1", 0.5);
    store.put(&e).unwrap();
    store.set_binary_cap(Some(4000));
    store.put_binary(&bkey(&e, "A=1"), &cubin(1, 2000)).unwrap();
    tick();
    store.put_binary(&bkey(&e, "B=1"), &cubin(2, 2000)).unwrap();
    // A read within TOUCH_EVERY of the write is not recorded again; one after it is, and A
    // becomes the most recently used.
    std::thread::sleep(TOUCH_EVERY + Duration::from_millis(100));
    assert_eq!(
        store.get_binary(&bkey(&e, "A=1")).unwrap(),
        Some(cubin(1, 2000))
    );
    tick();
    store.put_binary(&bkey(&e, "C=1"), &cubin(3, 2000)).unwrap();
    assert_eq!(
        configs(&store),
        ["A=1", "C=1"],
        "B, the least recently used, went"
    );
    assert_eq!(store.get_binary(&bkey(&e, "B=1")).unwrap(), None);
}

#[test]
fn the_cache_caps_its_user_store_from_options_or_the_environment() {
    let dir = TempDir::new("bincapopts");
    let cache = Cache::open(CacheOptions::at(dir.join("a.sqlite")).with_binary_cap(5000)).unwrap();
    assert_eq!(cache.user_store().unwrap().binary_cap(), Some(5000));
    let d = dev("NVIDIA H200");
    let e = entry(1, &[64], &d, "W=1", 0.5);
    cache.put(e.clone()).unwrap();
    for (i, c) in ["W=1", "A=1", "B=1", "C=1"].iter().enumerate() {
        tick();
        cache
            .put_binary(&bkey(&e, c), &cubin(i as u8, 2000))
            .unwrap();
    }
    // 8000 bytes written under a cap of 5000: A and B, the oldest losers, went.
    assert_eq!(configs(cache.user_store().unwrap()), ["C=1", "W=1"]);
    assert_eq!(cache.store_write_failures(), 0);
    let unlimited = CacheOptions::at(dir.join("b.sqlite")).with_binary_cap(u64::MAX);
    assert_eq!(unlimited.resolve_binary_cap(), None);

    // The environment (this is the only test of this binary that sets it).
    std::env::set_var("JITUNE_BINARY_CAP", "64M");
    assert_eq!(
        CacheOptions::at(dir.join("c.sqlite")).resolve_binary_cap(),
        Some(64 << 20)
    );
    let c = Cache::open(CacheOptions::at(dir.join("c.sqlite"))).unwrap();
    assert_eq!(c.user_store().unwrap().binary_cap(), Some(64 << 20));
    std::env::set_var("JITUNE_BINARY_CAP", "off");
    assert_eq!(
        CacheOptions::at(dir.join("c.sqlite")).resolve_binary_cap(),
        None
    );
    std::env::set_var("JITUNE_BINARY_CAP", "a lot");
    assert_eq!(
        CacheOptions::at(dir.join("c.sqlite")).resolve_binary_cap(),
        Some(256 << 20),
        "a malformed value falls back to the default"
    );
    std::env::remove_var("JITUNE_BINARY_CAP");
    assert_eq!(
        CacheOptions::default().resolve_binary_cap(),
        Some(256 << 20)
    );
    // A memory-only cache has no store, so no cap and no binaries.
    let mem = Cache::memory_only();
    mem.put_binary(&bkey(&e, "W=1"), b"x").unwrap();
    assert!(mem.user_store().is_none());
    assert_eq!(mem.get_binary(&bkey(&e, "W=1")).unwrap(), None);
}

/// tests/data/cache_v2.sqlite was written by the schema v2 code: `Snapshot::load` of
/// tests/data/cli/fixture_cache.json applied to `Store::open_rw` (7 entries, 1 failure), then
/// two `put_binary` calls for the first entry's kernel (`old_softmax`, id 1111..): its winner's
/// config `B=256` (3000 bytes) and `LOSER=1` (2000 bytes), arch sm_90, NVRTC 13.0.
#[test]
fn a_v2_cache_migrates_with_every_row_kept() {
    let dir = TempDir::new("bin-v2");
    let path = dir.join("c.sqlite");
    std::fs::copy("tests/data/cache_v2.sqlite", &path).unwrap();

    // Read as a shipped layer (immutable, never migrated): binaries are found all the same.
    let shipped = Store::open_shipped("tests/data/cache_v2.sqlite").unwrap();
    assert_eq!(shipped.schema_version(), 2);
    let (entries, failures, binaries) = (
        shipped.entries().unwrap(),
        shipped.failures().unwrap(),
        shipped.binaries().unwrap(),
    );
    assert_eq!((entries.len(), failures.len(), binaries.len()), (7, 1, 2));
    let w = &entries[0];
    assert_eq!(
        (w.kernel_name.as_str(), w.config.as_str()),
        ("old_softmax", "B=256")
    );
    assert_eq!(
        shipped
            .get_binary(&bkey(w, "B=256"))
            .unwrap()
            .map(|b| b.len()),
        Some(3000)
    );
    assert_eq!(shipped.binary_bytes().unwrap(), 5000);
    drop(shipped);

    let store = Store::open_rw(&path).unwrap();
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
    assert_eq!(store.entries().unwrap(), entries);
    assert_eq!(store.failures().unwrap(), failures);
    assert_eq!(store.binaries().unwrap(), binaries);
    assert_eq!(store.binary_bytes().unwrap(), 5000, "sizes filled in");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<(String, i64, i64, i64)> = c
            .prepare("SELECT config, used_at, created_at, bytes FROM binaries ORDER BY config")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (config, used_at, created_at, bytes) in &rows {
            assert_eq!(*used_at, created_at * 1000, "{config}: last use = creation");
            assert_eq!(*bytes, if config == "B=256" { 3000 } else { 2000 });
        }
    }
    // The migrated file is capped like any other: the loser goes, the winner stays.
    store.set_binary_cap(Some(4000));
    store
        .put_binary(&bkey(w, "NEW=1"), &cubin(7, 1000))
        .unwrap();
    assert_eq!(configs(&store), ["B=256", "NEW=1"]);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    drop(store);
    // Opening again finds nothing to migrate.
    assert_eq!(
        Store::open_rw(&path).unwrap().schema_version(),
        SCHEMA_VERSION
    );

    // A SQLite export of the migrated cache is a v3 file a shipped layer reads.
    let out = dir.join("ship.sqlite");
    Snapshot::load(&path).unwrap().write_sqlite(&out).unwrap();
    let ship = Store::open_shipped(&out).unwrap();
    assert_eq!(ship.schema_version(), SCHEMA_VERSION);
    assert_eq!(ship.entries().unwrap(), entries);
    assert!(ship.get_binary(&bkey(w, "B=256")).unwrap().is_some());
}
