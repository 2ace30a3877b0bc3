//! The `jitune` binary driven as a subprocess on CPU: ls, show, export, import, merge, prune and
//! report on the fixture cache `tests/data/cli/fixture_cache.json` (a JSON export), plus the exit
//! codes scripts rely on (usage 2, no CUDA 3, cache file problems 4, nothing matched 5).
//! Every run points `JITUNE_CACHE` at a scratch path so the user's cache is never touched.

mod cli_common;

use std::path::PathBuf;

use cli_common::*;
use jitune::cache::export::Snapshot;
use jitune::cache::store::Store;
use serde_json::Value;

#[test]
fn ls_lists_and_filters() {
    let d = scratch("ls");
    let all = json(&jitune(&d, &["ls", "--cache", FIXTURE, "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 7);
    let key = all[0]["key"].as_str().unwrap();
    assert_eq!(key.split('/').count(), 3);
    let sgemm = json(&jitune(
        &d,
        &["ls", "--cache", FIXTURE, "--kernel", "sgemm", "--json"],
    ));
    assert_eq!(sgemm.as_array().unwrap().len(), 6);
    let a100 = json(&jitune(
        &d,
        &["ls", "--cache", FIXTURE, "--device", "A100", "--json"],
    ));
    assert_eq!(a100.as_array().unwrap().len(), 1);
    assert_eq!(a100[0]["strategy"], "pattern");
    let by_id = json(&jitune(
        &d,
        &["ls", "--cache", FIXTURE, "--kernel", "1111", "--json"],
    ));
    assert_eq!(by_id[0]["kernel_name"], "old_softmax");
    let table = jitune(&d, &["ls", "--cache", FIXTURE]);
    assert_eq!(code(&table), 0);
    let text = stdout(&table);
    assert!(text.starts_with("KEY"), "{text}");
    assert_eq!(text.lines().count(), 8);
}

#[test]
fn show_prints_one_entry_or_exits_5() {
    let d = scratch("show");
    let o = jitune(&d, &["show", "sgemm/4096x4096x4096", "--cache", FIXTURE]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = stdout(&o);
    for want in [
        "ATRANS=true,BK=8,BM=128,BN=256,DBUF=true",
        "6.8122 ms",
        "evaluations:  96",
        "random",
        "nvrtc 13.0",
        "UTC",
    ] {
        assert!(t.contains(want), "missing {want:?} in {t}");
    }
    // Three devices have 1024^3; a device-hash prefix picks one.
    let three = json(&jitune(
        &d,
        &["show", "sgemm/1024x1024x1024", "--cache", FIXTURE, "--json"],
    ));
    assert_eq!(three.as_array().unwrap().len(), 3);
    let one = json(&jitune(
        &d,
        &[
            "show",
            "sgemm/1024x1024x1024/f97f",
            "--cache",
            FIXTURE,
            "--json",
        ],
    ));
    assert_eq!(one.as_array().unwrap().len(), 1);
    let missing = jitune(&d, &["show", "sgemm/8x8x8", "--cache", FIXTURE]);
    assert_eq!(code(&missing), 5);
    assert_eq!(stderr(&missing).lines().count(), 1);
    assert_eq!(
        code(&jitune(&d, &["show", "no-slash", "--cache", FIXTURE])),
        2
    );
}

#[test]
fn export_import_round_trip() {
    let d = scratch("roundtrip");
    let db = d.join("c.sqlite");
    let o = jitune(&d, &["import", FIXTURE, "--cache", s(&db), "--json"]);
    let r = json(&o);
    assert_eq!(r["entries_written"], 7);
    assert_eq!(r["failures"], 1);
    let out = d.join("again.json");
    assert_eq!(
        code(&jitune(&d, &["export", s(&out), "--cache", s(&db)])),
        0
    );
    let a = Snapshot::load(FIXTURE).unwrap();
    let b = Snapshot::load(&out).unwrap();
    assert_eq!(a, b);
    // JSON re-export of an unchanged cache is byte-identical.
    let out2 = d.join("again2.json");
    assert_eq!(
        code(&jitune(&d, &["export", s(&out2), "--cache", s(&db)])),
        0
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    // SQLite export is readable by ls.
    let sq = d.join("ship.sqlite");
    let r = json(&jitune(
        &d,
        &["export", s(&sq), "--cache", s(&db), "--json"],
    ));
    assert_eq!(r["format"], "sqlite");
    let listed = json(&jitune(&d, &["ls", "--cache", s(&sq), "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 7);
    // Without --cache, the user cache ($JITUNE_CACHE) is used.
    assert_eq!(code(&jitune(&d, &["import", s(&sq)])), 0);
    assert!(d.join("default-user-cache.sqlite").exists());
    let listed = json(&jitune(&d, &["ls", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 7);
}

#[test]
fn merge_keeps_the_faster_winner() {
    let d = scratch("merge");
    let mut snap = Snapshot::load(FIXTURE).unwrap();
    // A faster result for one key and a slower one for another.
    snap.entries[0].median_ms = 0.0001;
    snap.entries[0].config = "FAST".into();
    snap.entries[1].median_ms = 999.0;
    snap.entries[1].config = "SLOW".into();
    let other = d.join("other.json");
    snap.write_json(&other).unwrap();
    let into = d.join("merged.sqlite");
    let r = json(&jitune(
        &d,
        &["merge", FIXTURE, s(&other), "--into", s(&into), "--json"],
    ));
    assert_eq!(r["entries_read"], 7);
    let merged = Store::open_read_only_live(&into)
        .unwrap()
        .entries()
        .unwrap();
    assert_eq!(merged.len(), 7);
    assert!(merged.iter().any(|e| e.config == "FAST"));
    assert!(!merged.iter().any(|e| e.config == "SLOW"));
    // Merging into a JSON file is refused (exit 4) and leaves it alone.
    let before = std::fs::read(&other).unwrap();
    assert_eq!(
        code(&jitune(
            &d,
            &["merge", FIXTURE, s(&other), "--into", s(&other)]
        )),
        4
    );
    assert_eq!(std::fs::read(&other).unwrap(), before);
}

#[test]
fn prune_removes_gone_and_changed_kernels() {
    let d = scratch("prune");
    let db = d.join("c.sqlite");
    assert_eq!(
        code(&jitune(&d, &["import", FIXTURE, "--cache", s(&db)])),
        0
    );
    let dry = json(&jitune(
        &d,
        &[
            "prune",
            "kernels/sgemm.toml",
            "--cache",
            s(&db),
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["pruned"].as_array().unwrap().len(), 2);
    assert_eq!(
        Store::open_read_only_live(&db)
            .unwrap()
            .entry_count()
            .unwrap(),
        7
    );
    let r = json(&jitune(
        &d,
        &["prune", "kernels/sgemm.toml", "--cache", s(&db), "--json"],
    ));
    let reasons: Vec<&str> = r["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|x| x.starts_with("kernel gone")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|x| x.starts_with("kernel changed")),
        "{reasons:?}"
    );
    let store = Store::open_read_only_live(&db).unwrap();
    assert_eq!(store.entry_count().unwrap(), 5);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    // Nothing left to prune.
    let again = json(&jitune(
        &d,
        &["prune", "kernels/sgemm.toml", "--cache", s(&db), "--json"],
    ));
    assert_eq!(again["pruned"].as_array().unwrap().len(), 0);
    // No specs and no --this-gpu is a usage error.
    assert_eq!(code(&jitune(&d, &["prune", "--cache", s(&db)])), 2);
    // A missing spec file is a runtime error and prunes nothing.
    assert_eq!(
        code(&jitune(
            &d,
            &["prune", "kernels/nope.toml", "--cache", s(&db)]
        )),
        1
    );
    assert_eq!(
        Store::open_read_only_live(&db)
            .unwrap()
            .entry_count()
            .unwrap(),
        5
    );
}

#[test]
fn bad_inputs_give_documented_codes_without_panics() {
    let d = scratch("bad");
    let help = jitune(&d, &["--help"]);
    assert_eq!(code(&help), 0);
    assert!(stdout(&help).contains("Exit codes:"));
    assert_eq!(code(&jitune(&d, &[])), 2);
    assert_eq!(code(&jitune(&d, &["frobnicate"])), 2);
    assert_eq!(code(&jitune(&d, &["ls", "--bogus"])), 2);
    let missing = d.join("missing.sqlite");
    let o = jitune(&d, &["ls", "--cache", s(&missing)]);
    assert_eq!(code(&o), 4);
    assert!(!missing.exists());
    let garbage = d.join("garbage.sqlite");
    std::fs::write(&garbage, b"not a database at all").unwrap();
    assert_eq!(code(&jitune(&d, &["ls", "--cache", s(&garbage)])), 4);
    // Importing into a garbage file refuses and leaves it alone.
    assert_eq!(
        code(&jitune(&d, &["import", FIXTURE, "--cache", s(&garbage)])),
        4
    );
    assert_eq!(std::fs::read(&garbage).unwrap(), b"not a database at all");
    let newer_json = d.join("newer.json");
    std::fs::write(
        &newer_json,
        r#"{"format":"jitune-cache","version":99,"entries":[]}"#,
    )
    .unwrap();
    let db = d.join("c.sqlite");
    let o = jitune(&d, &["import", s(&newer_json), "--cache", s(&db)]);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("newer"), "{}", stderr(&o));
    assert_eq!(
        code(&jitune(
            &d,
            &["import", s(&d.join("nope.json")), "--cache", s(&db)]
        )),
        4
    );
}

#[test]
fn newer_schema_cache_is_never_written() {
    let d = scratch("newer");
    let db = d.join("c.sqlite");
    assert_eq!(
        code(&jitune(&d, &["import", FIXTURE, "--cache", s(&db)])),
        0
    );
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    for args in [
        vec!["import", FIXTURE, "--cache", s(&db)],
        vec!["prune", "kernels/sgemm.toml", "--cache", s(&db)],
        vec!["merge", FIXTURE, FIXTURE, "--into", s(&db)],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 4, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("newer"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // Reading it either works or says why, with a documented code.
    let o = jitune(&d, &["ls", "--cache", s(&db)]);
    assert!([0, 4].contains(&code(&o)), "{}", stderr(&o));
}

#[test]
fn tune_without_gpu_says_why_in_one_line() {
    let d = scratch("tune");
    let shapes = d.join("shapes.toml");
    std::fs::write(&shapes, "sgemm = [[1024, 1024, 1024]]\n").unwrap();
    // Input errors come first, whatever the machine.
    let o = jitune(
        &d,
        &[
            "tune",
            "kernels/sgemm.toml",
            "--shapes",
            s(&d.join("nope.toml")),
        ],
    );
    assert_eq!(code(&o), 1);
    std::fs::write(d.join("wrong.toml"), "sgemm = [[1024, 1024]]\n").unwrap();
    let o = jitune(
        &d,
        &[
            "tune",
            "kernels/sgemm.toml",
            "--shapes",
            s(&d.join("wrong.toml")),
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        code(&jitune(
            &d,
            &[
                "tune",
                "kernels/sgemm.toml",
                "--shapes",
                s(&shapes),
                "--strategy",
                "magic"
            ]
        )),
        2
    );
    if jitune::require_cuda().is_ok() {
        eprintln!("skipping the no-GPU exit code check: CUDA is present here");
        return;
    }
    let o = jitune(
        &d,
        &[
            "tune",
            "kernels/sgemm.toml",
            "--shapes",
            s(&shapes),
            "--cache",
            s(&d.join("c.sqlite")),
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("CUDA unavailable"));
}

#[test]
fn report_writes_svg_png_and_html() {
    let d = scratch("report");
    // A tune trace (seconds) for two shapes of the fixture, with default times.
    let trace = d.join("tune.jsonl");
    std::fs::write(
        &trace,
        concat!(
            r#"{"kernel":"sgemm","shape":"1024x1024x1024","strategy":"lfbo","default_ms":0.4569,"curve":[[0.5,0.40],[1.0,0.2],[2.0,0.1523]]}"#, "\n",
            r#"{"kernel":"sgemm","shape":"2048x2048x2048","strategy":"lfbo","default_ms":null,"curve":[[0.7,2.0],[1.5,1.2],[3.0,0.9871]]}"#, "\n",
        ),
    )
    .unwrap();
    let out = d.join("out");
    let o = jitune(
        &d,
        &[
            "report",
            "--trace",
            s(&trace),
            "--cache",
            FIXTURE,
            "--out",
            s(&out),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let svg = std::fs::read_to_string(out.join("convergence.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("sgemm 1024x1024x1024 lfbo"));
    let png = std::fs::read(out.join("convergence.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let dec = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    assert_eq!((dec.info().width, dec.info().height), (800, 500));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("convergence.svg"));
    assert!(html.contains("old_softmax"));
    assert!(
        html.contains("3.00&times;"),
        "speed-up 0.4569 / 0.1523 missing"
    );
    assert!(html.contains("unknown"));

    // Replay traces (evaluation index): one line per strategy.
    let rt = d.join("replay.jsonl");
    std::fs::write(
        &rt,
        concat!(
            r#"{"space":"a","strategy":"lfbo","run":0,"evals":[["x",3.0],["y",null],["z",1.0]]}"#,
            "\n",
            r#"{"space":"a","strategy":"random","run":0,"evals":[["x",4.0],["y",2.0],["z",2.0]]}"#,
            "\n",
            r#"{"space":"a","strategy":"random","run":1,"evals":[["x",2.0],["y",1.5],["z",1.5]]}"#,
            "\n",
        ),
    )
    .unwrap();
    let out2 = d.join("out2");
    let o = jitune(
        &d,
        &["report", "--trace", s(&rt), "--no-cache", "--out", s(&out2)],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let svg = std::fs::read_to_string(out2.join("convergence.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("random (mean of 2 runs)"));
    // Mixed x axes, malformed lines and nothing to report are refused with codes.
    assert_eq!(
        code(&jitune(
            &d,
            &[
                "report",
                "--trace",
                s(&rt),
                "--trace",
                s(&trace),
                "--no-cache",
                "--out",
                s(&out2)
            ]
        )),
        2
    );
    std::fs::write(d.join("bad.jsonl"), "{\"what\": 1}\n").unwrap();
    assert_eq!(
        code(&jitune(
            &d,
            &[
                "report",
                "--trace",
                s(&d.join("bad.jsonl")),
                "--no-cache",
                "--out",
                s(&out2)
            ]
        )),
        1
    );
    assert_eq!(
        code(&jitune(&d, &["report", "--no-cache", "--out", s(&out2)])),
        2
    );
}

/// `jitune explain` on the fixture cache, for each step of the fallback chain: the exact key
/// (hit), this GPU model under another toolchain (inherited), another model of the same compute
/// capability (provisional), an untuned shape (nearest), and nothing known (default).
#[test]
fn explain_names_each_decision_and_its_source() {
    let d = scratch("explain");
    let h100 = "NVIDIA H100 80GB HBM3|sm_90|132 SMs|nvrtc 13.0";
    let explain = |key: &str, device: &str, cache: &str| -> Value {
        json(&jitune(
            &d,
            &[
                "explain", key, "--device", device, "--cache", cache, "--json",
            ],
        ))
    };
    // The fixture's sgemm entries have the id of kernels/sgemm.toml.
    let v = explain("kernels/sgemm.toml/1000x1000x1000", h100, FIXTURE);
    assert_eq!(v["decision"], "hit", "{v}");
    assert_eq!(v["shape"], "1024x1024x1024", "the spec's bucketing applies");
    assert!(v["from"]
        .as_str()
        .unwrap()
        .starts_with("d889722ae356/1024x1024x1024/"));

    // A new NVRTC (and a driver): the same GPU model's winner, from the closest toolchain.
    let v = explain(
        "kernels/sgemm.toml/1024x1024x1024",
        "NVIDIA H100 80GB HBM3|sm_90|132 SMs|nvrtc 13.1|driver 13.0",
        FIXTURE,
    );
    assert_eq!(v["decision"], "inherited", "{v}");
    assert!(v["considered"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["device"].as_str().unwrap().contains("nvrtc 12.4")));
    let from = v["from"].as_str().unwrap();
    let src = &v["considered"][0];
    assert_eq!(src["key"].as_str().unwrap(), from);
    assert!(
        src["device"].as_str().unwrap().ends_with("nvrtc 13.0"),
        "{v}"
    );
    assert!(v["explanation"]
        .as_str()
        .unwrap()
        .contains("never its binary"));

    // Another GPU model of compute capability 9.0: provisional, from the H100's winner.
    let v = explain(
        "d889722ae356/2048x2048x2048",
        "NVIDIA H200|sm_90|132 SMs|nvrtc 13.0",
        FIXTURE,
    );
    assert_eq!(v["decision"], "provisional", "{v}");
    assert!(v["config"].as_str().is_some());
    assert!(v["from"].as_str().unwrap().contains("/2048x2048x2048/"));

    // An untuned shape on a tuned fingerprint: the nearest bucket (4096^3 for 8192^3).
    let v = explain("kernels/sgemm.toml/8192x8192x8192", h100, FIXTURE);
    assert_eq!(v["decision"], "nearest", "{v}");
    assert!(v["from"].as_str().unwrap().contains("/4096x4096x4096/"));

    // A compute capability nobody tuned for, and an empty cache: default, from null.
    let v = explain(
        "kernels/sgemm.toml/1024x1024x1024",
        "NVIDIA B200|sm_100|148 SMs|nvrtc 13.0",
        FIXTURE,
    );
    assert_eq!(v["decision"], "default", "{v}");
    assert!(v["from"].is_null());
    let empty = d.join("empty.sqlite");
    Store::open_rw(&empty).unwrap();
    let v = explain("kernels/sgemm.toml/1024x1024x1024", h100, s(&empty));
    assert_eq!(v["decision"], "default", "{v}");
    assert!(v["from"].is_null());
    assert!(v["explanation"]
        .as_str()
        .unwrap()
        .contains("knows nothing of this kernel"));

    // Bad input: usage errors, never a panic.
    let o = jitune(
        &d,
        &["explain", "sgemm", "--device", h100, "--cache", FIXTURE],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = jitune(
        &d,
        &[
            "explain",
            "sgemm/1x1x1",
            "--device",
            "not a fingerprint",
            "--cache",
            FIXTURE,
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // `sgemm` names two kernel ids in the fixture: ambiguous, say so.
    let o = jitune(
        &d,
        &[
            "explain",
            "sgemm/1024x1024x1024",
            "--device",
            h100,
            "--cache",
            FIXTURE,
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("kernel ids"));
}

/// A SQLite export carries only the winners' binaries unless asked for all of them; the
/// shipped-layer list of `JITUNE_SHIPPED` is split like a PATH.
#[test]
fn export_keeps_only_winners_binaries_by_default() {
    use jitune::cache::store::BinaryKey;
    let d = scratch("export-winners");
    let src = d.join("src.sqlite");
    let fixture = Snapshot::load(FIXTURE).unwrap();
    let store = Store::open_rw(&src).unwrap();
    fixture
        .apply(&store, jitune::cache::OnConflict::Replace)
        .unwrap();
    let winner = &fixture.entries[0];
    for (config, bytes) in [
        (winner.config.as_str(), b"winner".as_slice()),
        ("LOSER=1", b"loser"),
    ] {
        let key = BinaryKey {
            kernel: winner.key.kernel,
            config,
            arch: "sm_90",
            nvrtc: "13.0",
        };
        store.put_binary(&key, bytes).unwrap();
    }
    drop(store);
    let out = d.join("shipped.sqlite");
    let v = json(&jitune(
        &d,
        &["export", s(&out), "--cache", s(&src), "--json"],
    ));
    assert_eq!(
        (v["binaries"].as_u64(), v["binaries_dropped"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let shipped = Snapshot::load(&out).unwrap();
    assert_eq!(shipped.binaries.len(), 1);
    assert_eq!(shipped.binaries[0].config, winner.config);
    let v = json(&jitune(
        &d,
        &[
            "export",
            s(&out),
            "--cache",
            s(&src),
            "--all-binaries",
            "--json",
        ],
    ));
    assert_eq!(v["binaries"].as_u64(), Some(2), "{v}");
    let o = jitune(
        &d,
        &[
            "export",
            s(&out),
            "--cache",
            s(&src),
            "--all-binaries",
            "--winners-only",
        ],
    );
    assert_eq!(code(&o), 2, "the two flags conflict: {}", stderr(&o));
    // Importing it under a binary cap of 0 keeps the winner's binary only; with the default
    // cap (256 MiB) both stay.
    let capped = d.join("capped.sqlite");
    let o = jitune_env(
        &d,
        &["import", s(&out), "--cache", s(&capped)],
        &[("JITUNE_BINARY_CAP", "0")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let kept = Snapshot::load(&capped).unwrap().binaries;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].config, winner.config);
    let uncapped = d.join("uncapped.sqlite");
    assert_eq!(
        code(&jitune(&d, &["import", s(&out), "--cache", s(&uncapped)])),
        0
    );
    assert_eq!(Snapshot::load(&uncapped).unwrap().binaries.len(), 2);

    let opts = jitune::cache::CacheOptions::memory_only()
        .with_shipped_list(std::ffi::OsStr::new("/opt/a.sqlite::/opt/b.sqlite"));
    assert_eq!(
        opts.shipped,
        vec![
            PathBuf::from("/opt/a.sqlite"),
            PathBuf::from("/opt/b.sqlite")
        ]
    );
}
