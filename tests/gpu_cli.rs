//! `jitune tune` and `jitune verify` on a GPU, as subprocesses: tune SGEMM for one small shape
//! with a small budget into a scratch cache, verify it (exit codes, per-entry output, the cache
//! left unchanged), verify a doctored copy whose stored time is 100 times too fast (flagged as
//! drift, exit 6), `verify --against` of two caches tuned apart (both winners re-timed side by
//! side), and a Ctrl-C sent to the process group in the middle of a long tuning run
//! (exit 130, the best so far stored and marked partial, the summary printed).
//!
//! They need an NVIDIA GPU: without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints
//! why it skips and passes.

#[path = "cli_common/mod.rs"]
mod cli_common;
#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli_common::{code, command, s, scratch};
use gpu_common::gpu_or_skip;
use jitune::cache::export::Snapshot;
use serde_json::Value;

fn sgemm_spec() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml").to_string()
}

/// Runs the binary (see [`cli_common::command`]) and prints what it said, for the device logs.
fn jitune(dir: &Path, args: &[&str]) -> Output {
    let o = command(dir, args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!(
        "$ jitune {}\n{}{err}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !err.contains("panicked") && o.status.code() != Some(101),
        "{args:?}: {err}"
    );
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

const SHAPE: &str = "512x512x512";

/// `jitune tune` of sgemm at [`SHAPE`] with `budget` evaluations into `db`, summary as JSON. A
/// power-of-two shape: its bucket is itself, so verify measures the shape tuned.
fn tune_512(d: &Path, db: &Path, budget: usize) -> Output {
    tune_sgemm(d, db, "[[512, 512, 512]]", budget, "lfbo")
}

/// `jitune tune` of sgemm at `shapes` (a TOML array) with `budget` evaluations of `strategy`
/// into `db`, summary as JSON.
fn tune_sgemm(d: &Path, db: &Path, shapes: &str, budget: usize, strategy: &str) -> Output {
    let file = d.join("shapes.toml");
    std::fs::write(&file, format!("sgemm = {shapes}\n")).unwrap();
    let budget = budget.to_string();
    jitune(
        d,
        &[
            "tune",
            &sgemm_spec(),
            "--shapes",
            s(&file),
            "--budget",
            &budget,
            "--strategy",
            strategy,
            "--cache",
            s(db),
            "--json",
        ],
    )
}

#[test]
fn tune_then_verify_sgemm() {
    if !gpu_or_skip("tune_then_verify_sgemm") {
        return;
    }
    let d = scratch("tv");
    let db = d.join("cache.sqlite");
    let spec = sgemm_spec();
    let o = tune_512(&d, &db, 16);
    assert_eq!(code(&o), 0);
    let summary = json(&o);
    let rows = summary.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["kernel"], "sgemm");
    assert_eq!(row["partial"], false);
    let stored = row["median_ms"].as_f64().unwrap();
    assert!(stored > 0.0);
    let default_ms = row["default_ms"]
        .as_f64()
        .expect("the default was measured");
    assert!((row["speedup"].as_f64().unwrap() - default_ms / stored).abs() < 1e-9);
    let evaluated = row["evaluated"].as_u64().unwrap();
    assert!((1..=16).contains(&evaluated), "{evaluated}");

    // The table form of verify.
    let before = Snapshot::load(&db).unwrap();
    let o = jitune(&d, &["verify", &spec, "--cache", s(&db)]);
    assert!([0, 6].contains(&code(&o)), "exit {}", code(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("KEY"), "{text}");
    assert!(text.contains(&format!("sgemm/{SHAPE}")), "{text}");
    assert!(text.contains("verified 1 entries"), "{text}");

    // JSON: one entry, its numbers consistent, the exit code following the flags.
    let o = jitune(&d, &["verify", &spec, "--cache", s(&db), "--json"]);
    let v = json(&o);
    let e = &v["entries"][0];
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(e["stored_ms"].as_f64().unwrap(), stored);
    let now = e["now_ms"].as_f64().expect("the winner still runs");
    let dflt = e["default_ms"].as_f64().expect("the default runs");
    assert!(now > 0.0 && dflt > 0.0);
    let drift = e["drift_pct"].as_f64().unwrap();
    assert!((drift - (now / stored - 1.0) * 100.0).abs() < 1e-9);
    let flagged = v["flagged"].as_u64().unwrap();
    assert_eq!(code(&o), if flagged > 0 { 6 } else { 0 });
    println!("verify: stored {stored:.4} ms, now {now:.4} ms ({drift:+.1}%), default {dflt:.4} ms");
    // Re-measured within a factor of two of the stored time: the same measurement machinery.
    assert!(
        now < 2.0 * stored && now > 0.5 * stored,
        "{now} vs {stored}"
    );

    // A threshold no honest re-measurement crosses: exit 0.
    let o = jitune(
        &d,
        &["verify", &spec, "--cache", s(&db), "--threshold", "1000"],
    );
    assert_eq!(code(&o), 0);

    // Verify never writes the cache.
    let after = Snapshot::load(&db).unwrap();
    assert_eq!(before.entries, after.entries);

    // A copy whose stored time is 100 times too fast: flagged as drift, exit 6.
    let mut doctored = after.clone();
    for e in &mut doctored.entries {
        e.median_ms /= 100.0;
    }
    let fake = d.join("doctored.json");
    doctored.write_json(&fake).unwrap();
    let o = jitune(&d, &["verify", &spec, "--cache", s(&fake), "--json"]);
    assert_eq!(code(&o), 6);
    let v = json(&o);
    assert!(v["entries"][0]["status"]
        .as_str()
        .unwrap()
        .contains("drift"));

    // --kernel naming another spec's kernel: nothing matched.
    let o = jitune(
        &d,
        &["verify", &spec, "--cache", s(&db), "--kernel", "softmax"],
    );
    assert_eq!(code(&o), 5);
    // A cache without entries for this GPU: nothing matched.
    let empty = d.join("empty.json");
    Snapshot::default().write_json(&empty).unwrap();
    let o = jitune(&d, &["verify", &spec, "--cache", s(&empty)]);
    assert_eq!(code(&o), 5);
}

/// `verify --against`: two caches tuned apart (different strategies, the second with one more
/// shape), their winners of the common key re-timed side by side, the extra key listed, and
/// neither file changed; a cache against itself is one config, ratio 1.
#[test]
fn verify_against_retimes_both_winners() {
    if !gpu_or_skip("verify_against_retimes_both_winners") {
        return;
    }
    let d = scratch("against");
    let (a, b) = (d.join("a.sqlite"), d.join("b.sqlite"));
    let spec = sgemm_spec();
    assert_eq!(code(&tune_sgemm(&d, &a, "[[512, 512, 512]]", 8, "lfbo")), 0);
    let shapes = "[[512, 512, 512], [256, 256, 256]]";
    assert_eq!(code(&tune_sgemm(&d, &b, shapes, 8, "random")), 0);
    let (before_a, before_b) = (Snapshot::load(&a).unwrap(), Snapshot::load(&b).unwrap());

    // `jitune verify sgemm --cache CACHE --against OTHER EXTRA...`.
    let verify = |cache: &Path, other: &Path, extra: &[&str]| {
        let mut args = vec!["verify", &spec, "--cache", s(cache), "--against", s(other)];
        args.extend_from_slice(extra);
        jitune(&d, &args)
    };

    // JSON, with a threshold no honest re-timing crosses: exit 0, one matched key.
    let o = verify(&a, &b, &["--json", "--threshold", "1000"]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    let e = &entries[0];
    assert_eq!(e["shape"], SHAPE);
    assert_eq!(e["status"], "ok");
    assert_eq!(e["config"], before_a.entries[0].config.as_str());
    let now = e["now_ms"].as_f64().expect("a's winner was timed");
    let other = e["against_ms"].as_f64().expect("b's winner was timed");
    let ratio = e["ratio"].as_f64().expect("a ratio");
    assert!(now > 0.0 && other > 0.0);
    assert!((ratio - now / other).abs() < 1e-9, "{e}");
    assert!((e["ratio_pct"].as_f64().unwrap() - (ratio - 1.0) * 100.0).abs() < 1e-9);
    assert_eq!(
        e["same_config"].as_bool().unwrap(),
        e["config"] == e["against_config"],
        "{e}"
    );
    println!("a {now:.4} ms vs b {other:.4} ms: ratio {ratio:.3}");
    assert_eq!(v["only_cache"].as_array().unwrap().len(), 0, "{v}");
    let only_b = v["only_against"].as_array().unwrap();
    assert_eq!(only_b.len(), 1, "{v}");
    assert!(only_b[0].as_str().unwrap().contains("256x256x256"), "{v}");

    // The table: both times, the ratio, the key only b holds.
    let o = verify(&a, &b, &["--threshold", "3"]);
    assert!([0, 6].contains(&code(&o)), "exit {}", code(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("KEY") && text.contains("RATIO"), "{text}");
    assert!(text.contains(&format!("sgemm/{SHAPE}")), "{text}");
    assert!(text.contains("compared 1 keys"), "{text}");
    assert!(
        text.contains("only in") && text.contains("sgemm/256x256x256"),
        "{text}"
    );

    // A cache against itself: one config per key, measured once, ratio 1.
    let o = verify(&b, &b, &["--json"]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    for e in v["entries"].as_array().unwrap() {
        assert_eq!(e["same_config"], true, "{e}");
        assert_eq!(e["ratio"].as_f64(), Some(1.0), "{e}");
    }

    // No key in common: nothing matched (5).
    let empty = d.join("empty.json");
    Snapshot::default().write_json(&empty).unwrap();
    let o = verify(&a, &empty, &[]);
    assert_eq!(code(&o), 5);

    // Neither file was written.
    assert_eq!(Snapshot::load(&a).unwrap().entries, before_a.entries);
    assert_eq!(Snapshot::load(&b).unwrap().entries, before_b.entries);
}

#[test]
fn ctrl_c_stores_the_best_so_far_and_prints_the_summary() {
    if !gpu_or_skip("ctrl_c_stores_the_best_so_far_and_prints_the_summary") {
        return;
    }
    let d = scratch("ctrlc");
    let shapes = d.join("shapes.toml");
    // Two shapes: the second must never start after the Ctrl-C.
    std::fs::write(&shapes, "sgemm = [[512, 512, 512], [1024, 1024, 1024]]\n").unwrap();
    let db = d.join("cache.sqlite");
    let spec = sgemm_spec();
    // Random search does not converge early: it would run all 1500 evaluations.
    let child = command(
        &d,
        &[
            "tune",
            &spec,
            "--shapes",
            s(&shapes),
            "--strategy",
            "random",
            "--budget",
            "1500",
            "--cache",
            s(&db),
            "--json",
        ],
    )
    // Its own process group, so the Ctrl-C reaches the compile workers too, as from a
    // terminal.
    .process_group(0)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    // Wait until some configs are compiled (their CUBINs land in the binary table).
    let start = Instant::now();
    loop {
        // Read-only, and only once it exists: the test must not create the tuner's file.
        let n: i64 = if db.exists() {
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| c.query_row("SELECT COUNT(*) FROM binaries", [], |r| r.get(0)))
                .unwrap_or(0)
        } else {
            0
        };
        if n >= 24 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no progress in 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = Instant::now();
    // `--` keeps the negative process-group id from being read as an option.
    assert!(Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pid}")])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let stopped_in = sent.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("stopped {stopped_in:?} after Ctrl-C\n{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(code(&o), 130, "{err}");
    assert!(stopped_in < Duration::from_secs(60), "{stopped_in:?}");
    let v = json(&o);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "the second shape never started: {v}");
    let row = &rows[0];
    assert_eq!(row["partial"], true);
    let evaluated = row["evaluated"].as_u64().unwrap();
    assert!(evaluated < 1500, "{evaluated}");
    assert!(row["median_ms"].as_f64().unwrap() > 0.0);
    assert!(row["strategy"].as_str().unwrap().contains("partial"));
    // The entry is in the cache, marked partial, with the honest evaluation count.
    let snap = Snapshot::load(&db).unwrap();
    assert_eq!(snap.entries.len(), 1);
    let e = &snap.entries[0];
    assert_eq!(e.key.shape.to_text(), SHAPE);
    assert!(e.strategy.contains("partial"), "{}", e.strategy);
    assert_eq!(u64::from(e.evaluated), evaluated);
    // No config was recorded as failed because the Ctrl-C killed its compile worker.
    let worker_failures: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM failures WHERE message LIKE '%worker%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(worker_failures, 0);
}

/// A winner the cache file refuses (a trigger aborts every write of an entry, as a broken
/// disk would, while binaries and failure records still land): the library keeps it in memory
/// and counts the failed write, and `jitune tune` still prints its summary but exits 1 naming
/// the shape, so a script does not take it as stored.
#[test]
fn a_winner_that_was_not_stored_is_exit_1() {
    if !gpu_or_skip("a_winner_that_was_not_stored_is_exit_1") {
        return;
    }
    let d = scratch("notstored");
    let db = d.join("cache.sqlite");
    drop(jitune::cache::store::Store::open_rw(&db).unwrap());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_entries BEFORE INSERT ON entries
             BEGIN SELECT RAISE(ABORT, 'entries refused by the test'); END;",
        )
        .unwrap();
    let o = tune_512(&d, &db, 4);
    assert_eq!(code(&o), 1);
    let rows = json(&o);
    assert_eq!(
        rows.as_array().unwrap().len(),
        1,
        "the summary still prints"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("jitune: ") && last.contains("sgemm 512x512x512"),
        "{err}"
    );
    assert!(Snapshot::load(&db).unwrap().entries.is_empty());
}
