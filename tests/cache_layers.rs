//! Cache layering: memory → user → shipped precedence, nearest-shape lookup, miss explanations,
//! listings, binaries/failures pass-throughs and entry validation.

mod cache_common;

use cache_common::*;
use jitune::cache::export::export_sqlite;
use jitune::cache::store::{BinaryKey, Store};
use jitune::cache::{Cache, CacheOptions, UserCache};
use jitune::failure::FailureClass;

#[test]
fn put_then_lookup_through_memory_and_user_file() {
    let dir = TempDir::new("layers");
    let path = dir.join("nested/dir/cache.sqlite");
    let d = dev("GPU A");
    let e = entry(1, &[1024, 1024], &d, "BM=64,BN=64", 0.5);
    let k = e.key;
    {
        let cache = Cache::open(CacheOptions::at(&path)).unwrap();
        assert!(cache.degraded().is_none(), "{:?}", cache.degraded());
        assert!(cache.lookup(&k).unwrap().is_none());
        cache.put(e.clone()).unwrap();
        assert_eq!(*cache.get_memory(&k).unwrap(), e);
    }
    assert!(path.is_file(), "the directory and file are created");
    // A new process (new cache) finds it in the file, not in memory, then in memory.
    let cache = Cache::open(CacheOptions::at(&path)).unwrap();
    assert!(cache.get_memory(&k).is_none());
    assert_eq!(*cache.lookup(&k).unwrap().unwrap(), e);
    assert_eq!(*cache.get_memory(&k).unwrap(), e);
    // put replaces the row for the key
    let faster = entry(1, &[1024, 1024], &d, "BM=128,BN=64", 0.4);
    cache.put(faster.clone()).unwrap();
    assert_eq!(cache.user_store().unwrap().entry_count().unwrap(), 1);
    assert_eq!(
        cache.user_store().unwrap().get(&k).unwrap().unwrap(),
        faster
    );
}

#[test]
fn user_wins_over_shipped_and_shipped_file_is_untouched() {
    let dir = TempDir::new("shipped");
    let d = dev("GPU A");
    let src = Store::open_rw(dir.join("src.sqlite")).unwrap();
    src.put(&entry(1, &[64], &d, "from=shipped", 1.0)).unwrap();
    src.put(&entry(2, &[64], &d, "only=shipped", 1.0)).unwrap();
    src.put_binary(
        &BinaryKey {
            kernel: kernel(2),
            config: "only=shipped",
            arch: "sm_90",
            nvrtc: "13.0",
        },
        b"CUBIN2",
    )
    .unwrap();
    let shipped = dir.join("shipped.sqlite");
    export_sqlite(&src, &shipped).unwrap();
    let before = file_hash(&shipped);

    let cache =
        Cache::open(CacheOptions::at(dir.join("user.sqlite")).with_shipped(&shipped)).unwrap();
    assert_eq!(cache.shipped_stores().len(), 1);
    cache.put(entry(1, &[64], &d, "from=user", 0.9)).unwrap();
    cache.clear_memory();
    assert_eq!(
        cache.lookup(&key(1, &[64], &d)).unwrap().unwrap().config,
        "from=user"
    );
    assert_eq!(
        cache.lookup(&key(2, &[64], &d)).unwrap().unwrap().config,
        "only=shipped"
    );
    assert!(cache.lookup(&key(3, &[64], &d)).unwrap().is_none());
    assert_eq!(
        cache.nearest(&key(2, &[128], &d)).unwrap().unwrap().config,
        "only=shipped"
    );
    let bkey = BinaryKey {
        kernel: kernel(2),
        config: "only=shipped",
        arch: "sm_90",
        nvrtc: "13.0",
    };
    assert_eq!(
        cache.get_binary(&bkey).unwrap().as_deref(),
        Some(&b"CUBIN2"[..])
    );
    let listed: Vec<String> = cache
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.config)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.contains(&"from=user".to_string()) && listed.contains(&"only=shipped".to_string())
    );
    // The shipped store refuses writes.
    assert!(cache.shipped_stores()[0]
        .put(&entry(9, &[1], &d, "x=1", 1.0))
        .is_err());
    drop(cache);
    assert_eq!(file_hash(&shipped), before, "shipped file changed");
    for side in [
        "shipped.sqlite-wal",
        "shipped.sqlite-shm",
        "shipped.sqlite-journal",
    ] {
        assert!(
            !dir.join(side).exists(),
            "{side} was created next to the shipped file"
        );
    }
}

#[test]
fn nearest_picks_closest_bucket_of_same_kernel_and_device() {
    let cache = Cache::memory_only();
    let (a, b) = (dev("GPU A"), dev("GPU B"));
    cache
        .put(entry(1, &[1024, 1024], &a, "c=small", 1.0))
        .unwrap();
    cache
        .put(entry(1, &[8192, 8192], &a, "c=big", 1.0))
        .unwrap();
    cache
        .put(entry(1, &[2048, 1024], &b, "c=otherdev", 1.0))
        .unwrap();
    cache
        .put(entry(2, &[2048, 1024], &a, "c=otherkernel", 1.0))
        .unwrap();
    assert_eq!(
        cache
            .nearest(&key(1, &[2048, 1024], &a))
            .unwrap()
            .unwrap()
            .config,
        "c=small"
    );
    assert_eq!(
        cache
            .nearest(&key(1, &[4096, 8192], &a))
            .unwrap()
            .unwrap()
            .config,
        "c=big"
    );
    assert_eq!(
        cache
            .nearest(&key(1, &[1024, 1024], &a))
            .unwrap()
            .unwrap()
            .config,
        "c=small"
    );
    assert!(
        cache.nearest(&key(1, &[1024], &a)).unwrap().is_none(),
        "other rank is not near"
    );
    assert!(cache.nearest(&key(3, &[1024, 1024], &a)).unwrap().is_none());
    assert!(cache
        .nearest(&key(1, &[1024, 1024], &dev("GPU C")))
        .unwrap()
        .is_none());
}

#[test]
fn explain_miss_names_what_differs() {
    capture_logs();
    let dir = TempDir::new("explain");
    let cache = Cache::open(CacheOptions::at(dir.join("c.sqlite"))).unwrap();
    let (a, b) = (dev("GPU A"), dev("GPU B"));
    cache.put(entry(1, &[1024, 1024], &a, "c=1", 1.0)).unwrap();
    cache.put(entry(1, &[4096, 4096], &b, "c=2", 1.0)).unwrap();
    cache.clear_memory(); // explanations must also see file-only entries

    let unknown = cache.explain_miss(&key(7, &[1024, 1024], &a));
    assert!(unknown.contains("unknown"), "{unknown}");

    let shape = cache.explain_miss(&key(1, &[2048, 1024], &a));
    assert!(
        shape.contains("nearest tuned bucket is 1024x1024"),
        "{shape}"
    );
    assert!(shape.contains("2048x1024"), "{shape}");

    let device = cache.explain_miss(&key(1, &[4096, 4096], &a));
    assert!(
        device.contains(&a.to_text()) && device.contains(&b.to_text()),
        "{device}"
    );
    assert!(device.contains("other device"), "{device}");

    let hit = cache.explain_miss(&key(1, &[1024, 1024], &a));
    assert!(hit.contains("not a miss"), "{hit}");

    // lookup logs the explanation at debug level on a total miss
    assert!(cache.lookup(&key(7, &[1024, 1024], &a)).unwrap().is_none());
}

#[test]
fn failures_binaries_and_inflight_pass_through() {
    let dir = TempDir::new("aux");
    let cache = Cache::open(CacheOptions::at(dir.join("c.sqlite"))).unwrap();
    let d = dev("GPU A");
    let k = key(1, &[32], &d);
    cache
        .record_failure(&k, "BM=256", FailureClass::Compile, "too many registers")
        .unwrap();
    cache
        .record_failure(&k, "BM=512", FailureClass::Launch, "too many resources")
        .unwrap();
    cache
        .record_failure(&k, "BM=512", FailureClass::Launch, "again")
        .unwrap();
    cache
        .record_failure(&key(1, &[64], &d), "BM=1", FailureClass::TooSlow, "x")
        .unwrap();
    let f = cache.failures_for(&k).unwrap();
    assert_eq!(
        f,
        vec![
            (
                "BM=256".to_string(),
                FailureClass::Compile,
                "too many registers".to_string()
            ),
            (
                "BM=512".to_string(),
                FailureClass::Launch,
                "again".to_string()
            )
        ]
    );

    let bk = BinaryKey {
        kernel: kernel(1),
        config: "BM=64",
        arch: "sm_90",
        nvrtc: "13.0",
    };
    assert!(cache.get_binary(&bk).unwrap().is_none());
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    cache.put_binary(&bk, &blob).unwrap();
    assert_eq!(cache.get_binary(&bk).unwrap().unwrap(), blob);
    assert!(cache
        .get_binary(&BinaryKey {
            arch: "sm_80",
            ..bk
        })
        .unwrap()
        .is_none());

    // Our own marker is not stale: we are alive and still evaluating.
    cache.mark_inflight(&k, "BM=128").unwrap();
    assert!(cache.take_stale_inflight(&k).unwrap().is_empty());
    cache.clear_inflight(&k, "BM=128").unwrap();
    assert!(cache.take_stale_inflight(&k).unwrap().is_empty());
}

#[test]
fn memory_only_cache_works_without_files() {
    let cache = Cache::open(CacheOptions::memory_only()).unwrap();
    assert!(cache.user_store().is_none());
    let d = dev("GPU A");
    let e = entry(1, &[8], &d, "x=1", 2.0);
    cache.put(e.clone()).unwrap();
    assert_eq!(*cache.lookup(&e.key).unwrap().unwrap(), e);
    assert_eq!(cache.entries().unwrap(), vec![e]);
    // pass-throughs are harmless no-ops
    cache
        .record_failure(&key(1, &[8], &d), "x=2", FailureClass::Compile, "m")
        .unwrap();
    assert!(cache.failures_for(&key(1, &[8], &d)).unwrap().is_empty());
}

#[test]
fn invalid_entries_are_rejected() {
    let cache = Cache::memory_only();
    let d = dev("GPU A");
    let mut e = entry(1, &[8], &d, "x=1", 2.0);
    e.key.device ^= 1;
    assert!(
        cache.put(e).is_err(),
        "device hash must match the fingerprint"
    );
    let mut e = entry(1, &[8], &d, "x=1", 2.0);
    e.median_ms = f64::NAN;
    assert!(cache.put(e).is_err(), "NaN time");
    assert_eq!(cache.memory_len(), 0);
}

#[test]
fn default_path_follows_env() {
    // The only test touching these variables.
    std::env::set_var("JITUNE_CACHE", "memory");
    assert_eq!(CacheOptions::default().resolve_user_path(), None);
    std::env::set_var("JITUNE_CACHE", "/x/y.sqlite");
    assert_eq!(
        CacheOptions::default().resolve_user_path(),
        Some("/x/y.sqlite".into())
    );
    std::env::remove_var("JITUNE_CACHE");
    std::env::set_var("XDG_CACHE_HOME", "/xdg");
    assert_eq!(
        CacheOptions::default().resolve_user_path(),
        Some("/xdg/jitune/cache.sqlite".into())
    );
    std::env::set_var("XDG_CACHE_HOME", "relative");
    std::env::set_var("HOME", "/home/u");
    assert_eq!(
        CacheOptions::default().resolve_user_path(),
        Some("/home/u/.cache/jitune/cache.sqlite".into())
    );
    assert_eq!(
        CacheOptions {
            user: UserCache::MemoryOnly,
            shipped: vec![],
            ..CacheOptions::default()
        }
        .resolve_user_path(),
        None
    );
}
