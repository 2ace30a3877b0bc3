//! The `jitune` command and the remote tier (issue 15 item 5), against a real `redis-server`
//! started by each test on a free loopback port (`remote_common`; skipped with a printed reason
//! without one, unless `JITUNE_REQUIRE_REDIS=1`): push a shipped cache, list it with
//! `ls --remote --json`, pull it into a fresh cache, export it, and records altered in Redis
//! that are never pulled. An unreachable server is exit 1 in one line without its password.
#![cfg(feature = "redis")]

mod cli_common;
mod remote_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cli_common::*;
use jitune::cache::export::Snapshot;
use jitune::cache::remote::{Keys, RedisTier, RemoteTier, RemoteUrl};
use jitune::cache::store::{BinaryKey, Store};
use remote_common::RedisServer;
use serde_json::Value;

const SECRET: &str = "cli test fleet secret, 32 bytes!";

fn tier(server: &RedisServer) -> RedisTier {
    RedisTier::new(&RemoteUrl::parse(&server.url()).unwrap()).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// The `key` fields of a JSON listing.
fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

/// Flips one byte in the middle of the value under `name` (its checksum no longer matches).
fn damage(server: &RedisServer, name: &str) {
    let t = tier(server);
    let mut v = t.get(name, soon()).unwrap().expect("the record exists");
    let mid = v.len() / 2;
    v[mid] ^= 0x20;
    t.put(name, &v, soon()).unwrap();
}

#[test]
fn push_list_pull_and_export_round_trip() {
    let Some(server) = RedisServer::start("cli_round_trip") else {
        return;
    };
    let d = scratch("remote-round-trip");
    let url = server.url();
    let fixture = Snapshot::load(FIXTURE).unwrap();

    let v = json(&jitune(&d, &["push", FIXTURE, "--remote", &url, "--json"]));
    assert_eq!(
        (v["entries"].as_u64(), v["failures"].as_u64()),
        (Some(7), Some(1)),
        "{v}"
    );
    assert_eq!(v["binaries"].as_u64(), Some(0));

    // Every winner in Redis, with its key (the form `ls` prints) and its key in Redis.
    let listed = json(&jitune(&d, &["ls", "--remote", &url, "--json"]));
    let want: BTreeSet<String> = fixture.entries.iter().map(|e| e.key.display()).collect();
    assert_eq!(keys_of(&listed), want);
    let keys = Keys::default();
    for (row, e) in listed.as_array().unwrap().iter().zip(&fixture.entries) {
        assert_eq!(row["config"], e.config.as_str());
        assert_eq!(row["remote_key"], keys.entry(&e.key).as_str());
    }
    let table = jitune(&d, &["ls", "--remote", &url, "--kernel", "sgemm"]);
    assert_eq!(code(&table), 0, "{}", stderr(&table));
    assert_eq!(stdout(&table).lines().count(), 7, "header and 6 sgemm rows");
    let shown = jitune(&d, &["show", "sgemm/4096x4096x4096", "--remote", &url]);
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    assert!(
        stdout(&shown).contains("BM=128,BN=256"),
        "{}",
        stdout(&shown)
    );
    let missing = jitune(&d, &["show", "sgemm/8x8x8", "--remote", &url]);
    assert_eq!(code(&missing), 5);
    assert!(
        stderr(&missing).contains("127.0.0.1"),
        "{}",
        stderr(&missing)
    );

    // Pull into a fresh cache: the same entries and failure records as the shipped file.
    let db = d.join("pulled.sqlite");
    let v = json(&jitune(
        &d,
        &["pull", "--remote", &url, "--cache", s(&db), "--json"],
    ));
    assert_eq!(
        (v["entries"].as_u64(), v["failures"].as_u64()),
        (Some(7), Some(1)),
        "{v}"
    );
    let local = json(&jitune(&d, &["ls", "--cache", s(&db), "--json"]));
    assert_eq!(keys_of(&local), want);
    let pulled = Snapshot::load(&db).unwrap();
    assert_eq!(pulled.entries, fixture.entries);
    assert_eq!(pulled.failures, fixture.failures);

    // Export the remote tier as JSON: the fixture again.
    let out = d.join("remote.json");
    let v = json(&jitune(
        &d,
        &["export", s(&out), "--remote", &url, "--json"],
    ));
    assert_eq!(v["entries"].as_u64(), Some(7));
    let exported = Snapshot::load(&out).unwrap();
    assert_eq!(
        (exported.entries, exported.failures),
        (fixture.entries, fixture.failures)
    );
}

#[test]
fn tampered_records_are_never_pulled() {
    let Some(server) = RedisServer::start("cli_tampered") else {
        return;
    };
    let d = scratch("remote-tampered");
    let url = server.url();
    let fixture = Snapshot::load(FIXTURE).unwrap();
    assert_eq!(code(&jitune(&d, &["push", FIXTURE, "--remote", &url])), 0);

    // One entry damaged in Redis: listed and pulled without it, and named on stderr.
    let bad = &fixture.entries[3];
    let name = Keys::default().entry(&bad.key);
    damage(&server, &name);
    let o = jitune(&d, &["ls", "--remote", &url, "--json"]);
    let listed = json(&o);
    assert_eq!(listed.as_array().unwrap().len(), 6);
    assert!(!keys_of(&listed).contains(&bad.key.display()));
    assert!(
        stderr(&o).contains(&name) && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );
    let db = d.join("pulled.sqlite");
    let o = jitune(&d, &["pull", "--remote", &url, "--cache", s(&db), "--json"]);
    assert_eq!(json(&o)["entries"].as_u64(), Some(6));
    assert!(stderr(&o).contains(&name), "{}", stderr(&o));
    let pulled = Store::open_read_only_live(&db).unwrap();
    assert_eq!(pulled.entry_count().unwrap(), 6);
    assert_eq!(
        pulled.get(&bad.key).unwrap(),
        None,
        "the damaged record was not pulled"
    );
    for e in fixture.entries.iter().filter(|e| e.key != bad.key) {
        assert_eq!(pulled.get(&e.key).unwrap().as_ref(), Some(e));
    }
}

/// With the fleet key, a shipped SQLite cache's winner binary travels signed and is pulled
/// only while its MAC verifies; a reader with another key takes nothing; without the key no
/// binary moves at all.
#[test]
fn binaries_travel_only_with_the_fleet_key_and_a_valid_mac() {
    let Some(server) = RedisServer::start("cli_binaries") else {
        return;
    };
    let d = scratch("remote-binaries");
    let url = server.url();
    // tests/data/cache_v2.sqlite: the fixture's entries, a winner's binary (old_softmax B=256,
    // sm_90, NVRTC 13.0, 3000 bytes) and a loser's. Copied: reading it live may create side
    // files next to it.
    let shipped = d.join("shipped.sqlite");
    std::fs::copy("tests/data/cache_v2.sqlite", &shipped).unwrap();
    let keyed = [("JITUNE_REMOTE_KEY", SECRET)];

    let v = json(&jitune(
        &d,
        &["push", s(&shipped), "--remote", &url, "--json"],
    ));
    assert_eq!(v["binaries"].as_u64(), Some(0), "no key, no binary: {v}");
    let v = json(&jitune_env(
        &d,
        &["push", s(&shipped), "--remote", &url, "--json"],
        &keyed,
    ));
    assert_eq!(v["binaries"].as_u64(), Some(1), "only the winner's: {v}");

    let pull = |name: &str, env: &[(&str, &str)]| -> (Value, Snapshot) {
        let db = d.join(name);
        let v = json(&jitune_env(
            &d,
            &["pull", "--remote", &url, "--cache", s(&db), "--json"],
            env,
        ));
        (v, Snapshot::load(&db).unwrap())
    };
    let (v, snap) = pull("keyed.sqlite", &keyed);
    assert_eq!(
        (v["entries"].as_u64(), v["binaries"].as_u64()),
        (Some(7), Some(1))
    );
    let winner = snap.entries.iter().find(|e| e.config == "B=256").unwrap();
    assert_eq!(snap.binaries.len(), 1);
    assert_eq!(
        (
            snap.binaries[0].config.as_str(),
            snap.binaries[0].cubin.len()
        ),
        ("B=256", 3000)
    );
    // Without the key: the configs, never the binary.
    let (v, snap) = pull("keyless.sqlite", &[]);
    assert_eq!(
        (v["entries"].as_u64(), v["binaries"].as_u64()),
        (Some(7), Some(0))
    );
    assert!(snap.binaries.is_empty());
    // Another fleet's key: every record fails its MAC, nothing is pulled.
    let (v, snap) = pull(
        "foreign.sqlite",
        &[("JITUNE_REMOTE_KEY", "another fleet's secret, 32 byt")],
    );
    assert_eq!(v["entries"].as_u64(), Some(0));
    assert!(snap.entries.is_empty() && snap.binaries.is_empty());

    // The binary damaged in Redis: its entry is still pulled, the binary is not.
    let bin = Keys::default().binary(&BinaryKey {
        kernel: winner.key.kernel,
        config: "B=256",
        arch: "sm_90",
        nvrtc: "13.0",
    });
    damage(&server, &bin);
    let (v, snap) = pull("damaged.sqlite", &keyed);
    assert_eq!(
        (v["entries"].as_u64(), v["binaries"].as_u64()),
        (Some(7), Some(0)),
        "{v}"
    );
    assert!(snap.binaries.is_empty());
}

#[test]
fn an_unreachable_or_malformed_remote_is_a_documented_exit_code() {
    // Nothing listens on the port of a listener just closed (no redis-server needed).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = scratch("remote-unreachable");
    let url = format!("redis://:hunter2secret@127.0.0.1:{port}/0");
    let db = d.join("never.sqlite");
    let out = d.join("out.json");
    for args in [
        vec!["ls", "--remote", &url],
        vec!["show", "sgemm/1024x1024x1024", "--remote", &url],
        vec!["export", s(&out), "--remote", &url],
        vec!["push", FIXTURE, "--remote", &url],
        vec!["pull", "--remote", &url, "--cache", s(&db)],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("jitune: "), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("hunter2secret"), "the password leaked: {err}");
    }
    assert!(!db.exists(), "a failed pull creates no cache");
    assert!(!out.exists(), "a failed export writes no file");
    // Malformed URLs and two sources at once are usage errors.
    for args in [
        vec!["ls", "--remote", "localhost:6379"],
        vec!["pull", "--remote", "http://h:1/0"],
        vec!["ls", "--remote", &url, "--cache", FIXTURE],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    // A file that is not a cache is reported before anything is sent.
    std::fs::write(d.join("junk.json"), "not json").unwrap();
    let o = jitune(&d, &["push", s(&d.join("junk.json")), "--remote", &url]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
}
