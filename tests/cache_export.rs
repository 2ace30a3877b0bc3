//! Export, import and merge: JSON round trip (stable, reviewable output), SQLite export usable
//! as a shipped layer, format detection, merge keeping the faster winner, malformed input.

mod cache_common;

use cache_common::*;
use jitune::cache::export::{export_json, export_sqlite, import, merge, Snapshot};
use jitune::cache::store::{BinaryKey, Store};
use jitune::cache::{Cache, CacheOptions};
use jitune::failure::FailureClass;
use jitune::Error;

fn sample_store(path: &std::path::Path) -> Store {
    let store = Store::open_rw(path).unwrap();
    let (a, b) = (dev("GPU A"), dev("GPU B"));
    store
        .put(&entry(
            1,
            &[4096, 4096, 1024],
            &a,
            "BM=128,BN=128,BK=32",
            0.8125,
        ))
        .unwrap();
    store
        .put(&entry(1, &[1, 4096], &b, "BM=16,BN=256,BK=64", 0.013))
        .unwrap();
    store.put(&entry(2, &[33], &a, "V=4", 1e-3 / 3.0)).unwrap();
    store
        .record_failure(
            &key(1, &[1, 4096], &b),
            "BM=512,BN=512,BK=64",
            FailureClass::Compile,
            "uses too much shared memory \"quoted\"\n",
        )
        .unwrap();
    store
        .put_binary(
            &BinaryKey {
                kernel: kernel(2),
                config: "V=4",
                arch: "sm_90",
                nvrtc: "13.0",
            },
            &[0, 1, 2, 255],
        )
        .unwrap();
    store
}

#[test]
fn json_round_trip_is_lossless_and_stable() {
    let dir = TempDir::new("json");
    let src = sample_store(&dir.join("src.sqlite"));
    let json = dir.join("tuned.json");
    export_json(&src, &json).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains("\"format\": \"jitune-cache\""), "{text}");
    assert!(text.lines().count() > 20, "pretty-printed");
    assert!(!text.contains("cubin"), "binaries stay out of JSON");

    let dst = Store::open_rw(dir.join("dst.sqlite")).unwrap();
    let rep = import(&json, &dst).unwrap();
    assert_eq!(rep.entries_written, 3);
    assert_eq!(
        dst.entries().unwrap(),
        src.entries().unwrap(),
        "entries round-trip exactly (floats included)"
    );
    assert_eq!(dst.failures().unwrap(), src.failures().unwrap());

    // Re-exporting gives the very same bytes: diffs in review show only real changes.
    let json2 = dir.join("again.json");
    export_json(&dst, &json2).unwrap();
    assert_eq!(std::fs::read(&json2).unwrap(), text.as_bytes());

    // Entries are sorted (by kernel id, shape, device).
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kernel_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[test]
fn sqlite_export_imports_and_ships() {
    let dir = TempDir::new("sqlite");
    let src = sample_store(&dir.join("src.sqlite"));
    src.mark_inflight(&key(1, &[1], &dev("GPU A")), "x=1")
        .unwrap();
    let out = dir.join("export.sqlite");
    export_sqlite(&src, &out).unwrap();
    assert!(std::fs::read(&out)
        .unwrap()
        .starts_with(b"SQLite format 3\0"));
    assert!(
        !dir.join("export.sqlite-wal").exists(),
        "export is self-contained"
    );

    let snap = Snapshot::load(&out).unwrap();
    assert_eq!(snap, Snapshot::from_store(&src).unwrap());
    assert_eq!(snap.binaries.len(), 1);

    let dst = Store::open_rw(dir.join("dst.sqlite")).unwrap();
    import(&out, &dst).unwrap();
    let bk = BinaryKey {
        kernel: kernel(2),
        config: "V=4",
        arch: "sm_90",
        nvrtc: "13.0",
    };
    assert_eq!(dst.get_binary(&bk).unwrap().unwrap(), vec![0, 1, 2, 255]);
    assert_eq!(dst.entries().unwrap(), src.entries().unwrap());

    // Importing a live user cache (WAL, possibly uncheckpointed) reads its latest commits.
    let live = dir.join("src.sqlite");
    let dst2 = Store::open_rw(dir.join("dst2.sqlite")).unwrap();
    assert_eq!(import(&live, &dst2).unwrap().entries_written, 3);

    // The export works as a shipped layer.
    let cache = Cache::open(CacheOptions::memory_only().with_shipped(&out)).unwrap();
    assert_eq!(cache.entries().unwrap(), src.entries().unwrap());
}

#[test]
fn merge_keeps_the_faster_winner_and_the_union() {
    let dir = TempDir::new("merge");
    let d = dev("GPU A");
    let a = Store::open_rw(dir.join("a.sqlite")).unwrap();
    a.put(&entry(1, &[64], &d, "from=a,slow", 2.0)).unwrap();
    a.put(&entry(1, &[128], &d, "from=a,fast", 1.0)).unwrap();
    a.put(&entry(3, &[8], &d, "only=a", 1.0)).unwrap();
    a.record_failure(&key(1, &[64], &d), "bad=a", FailureClass::Launch, "m")
        .unwrap();
    let b = Store::open_rw(dir.join("b.sqlite")).unwrap();
    b.put(&entry(1, &[64], &d, "from=b,fast", 1.5)).unwrap();
    b.put(&entry(1, &[128], &d, "from=b,slow", 3.0)).unwrap();
    b.put(&entry(4, &[8], &d, "only=b", 1.0)).unwrap();
    b.record_failure(&key(1, &[64], &d), "bad=b", FailureClass::Compile, "m")
        .unwrap();
    // Mix the formats: a as JSON, b as SQLite.
    export_json(&a, dir.join("a.json")).unwrap();

    let into = Store::open_rw(dir.join("into.sqlite")).unwrap();
    into.put(&entry(1, &[128], &d, "from=into,fastest", 0.5))
        .unwrap();
    into.put(&entry(3, &[8], &d, "into,slower", 9.0)).unwrap();
    merge(dir.join("a.json"), dir.join("b.sqlite"), &into).unwrap();

    let cfg = |k: u8, s: i64| into.get(&key(k, &[s], &d)).unwrap().unwrap().config;
    assert_eq!(cfg(1, 64), "from=b,fast");
    assert_eq!(
        cfg(1, 128),
        "from=into,fastest",
        "an existing faster entry stays"
    );
    assert_eq!(
        cfg(3, 8),
        "only=a",
        "a faster merged entry replaces a slower existing one"
    );
    assert_eq!(cfg(4, 8), "only=b");
    assert_eq!(into.entry_count().unwrap(), 4);
    let f: Vec<String> = into
        .failures_for(&key(1, &[64], &d))
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(f, vec!["bad=a".to_string(), "bad=b".to_string()]);
}

#[test]
fn malformed_inputs_are_json_errors_naming_the_file() {
    let dir = TempDir::new("badjson");
    let into = Store::open_rw(dir.join("into.sqlite")).unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("trunc.json", "{\"format\": \"jitune-cache\", \"vers", "EOF"),
        ("fmt.json", "{\"format\": \"other\", \"version\": 1, \"entries\": []}", "format"),
        ("ver.json", "{\"format\": \"jitune-cache\", \"version\": 7, \"entries\": []}", "newer"),
        ("arr.json", "[1, 2]", "not an object"),
        ("ent.json", "{\"format\": \"jitune-cache\", \"version\": 1, \"entries\": [{\"kernel_id\": \"zz\"}]}", "entries[0]"),
        ("bin.json", "\u{0}\u{1}binary", "malformed"),
    ];
    for (name, text, needle) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        match import(&p, &into) {
            Err(e @ Error::Json { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(name), "error does not name the file: {msg}");
                assert!(msg.contains(needle), "{name}: {msg}");
            }
            other => panic!("{name}: expected a JSON error, got {other:?}"),
        }
    }
    // A field with the wrong type, and a device hash that does not match the fingerprint.
    let src = sample_store(&dir.join("src.sqlite"));
    let good = Snapshot::from_store(&src).unwrap().to_json();
    let mut bad = good.clone();
    bad["entries"][1]["median_ms"] = "fast".into();
    let e = Snapshot::from_json_str(&bad.to_string(), "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("entries[1]") && e.contains("median_ms"), "{e}");
    let mut bad = good;
    bad["entries"][0]["device"] = "Other GPU|sm_90|132 SMs|nvrtc 13.0".into();
    let e = Snapshot::from_json_str(&bad.to_string(), "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("device hash"), "{e}");
    assert_eq!(
        into.entry_count().unwrap(),
        0,
        "failed imports write nothing"
    );
    assert!(matches!(
        import(dir.join("missing.json"), &into),
        Err(Error::Io { .. })
    ));
}
