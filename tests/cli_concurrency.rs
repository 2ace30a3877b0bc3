//! Several `jitune import` processes writing one cache file at once, some of them killed with
//! SIGKILL mid-import: the file must pass `PRAGMA integrity_check`, every survivor's entries
//! must all be there, and a killed import must have written all of its entries or none.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jitune::cache::export::Snapshot;
use jitune::cache::store::Store;
use jitune::key::ShapeBucket;

const PROCS: usize = 8;
const PER_FILE: usize = 3000;

#[test]
fn concurrent_imports_with_sigkill_leave_a_healthy_cache() {
    let dir = std::env::temp_dir().join(format!("jitune-cli-conc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Snapshot::load("tests/data/cli/fixture_cache.json").unwrap();
    let template = fixture.entries[0].clone();
    // One export per process with keys of its own (shape [p, i]).
    let mut files: Vec<PathBuf> = Vec::new();
    for p in 0..PROCS {
        let mut snap = Snapshot::default();
        for i in 0..PER_FILE {
            let mut e = template.clone();
            e.key.shape = ShapeBucket::new(&[p as i64 + 1, i as i64 + 1]).unwrap();
            e.median_ms = 0.001 * (i + 1) as f64;
            snap.entries.push(e);
        }
        let f = dir.join(format!("part{p}.json"));
        snap.write_json(&f).unwrap();
        files.push(f);
    }
    let db = dir.join("shared.sqlite");
    let spawn = |f: &PathBuf| -> Child {
        Command::new(env!("CARGO_BIN_EXE_jitune"))
            .args([
                "import",
                f.to_str().unwrap(),
                "--cache",
                db.to_str().unwrap(),
            ])
            .env("JITUNE_CACHE", dir.join("unused.sqlite"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<Child> = files.iter().map(spawn).collect();
    // Kill every other process early: some die while parsing, some inside their write.
    for (p, c) in children.iter_mut().enumerate() {
        if p % 2 == 1 {
            std::thread::sleep(Duration::from_millis(5 * p as u64));
            c.kill().unwrap(); // SIGKILL on Unix
        }
    }
    let mut survived = Vec::new();
    for (p, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        if p % 2 == 0 {
            assert_eq!(
                out.status.code(),
                Some(0),
                "import {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            survived.push(p);
        }
    }
    let store = Store::open_read_only_live(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let entries = store.entries().unwrap();
    for p in 0..PROCS {
        let n = entries
            .iter()
            .filter(|e| e.key.shape.dims()[0] == p as i64 + 1)
            .count();
        if survived.contains(&p) {
            assert_eq!(n, PER_FILE, "survivor {p} lost entries");
        } else {
            assert!(
                n == 0 || n == PER_FILE,
                "killed import {p} left {n} entries (torn)"
            );
        }
    }
    // The file is still writable by a fresh process after the kills.
    let out = Command::new(env!("CARGO_BIN_EXE_jitune"))
        .args([
            "import",
            files[1].to_str().unwrap(),
            "--cache",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::open_read_only_live(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let _ = std::fs::remove_dir_all(&dir);
}
