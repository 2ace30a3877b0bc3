//! `jitune tune` and `jitune verify` driven as subprocesses where no GPU is needed: bad
//! arguments and inputs give their documented exit codes before anything touches the GPU, and
//! without CUDA both say why in one line and exit 3 (never a panic); `verify --against` checks
//! its file first. Also: the exit codes in
//! `jitune --help` and in the README table are the same set, and a compile worker survives the
//! Ctrl-C that a terminal sends to the whole process group (so `tune` can finish its batch).
//! The GPU side of tune and verify is in `tests/gpu_cli.rs`.

/// The exit codes the `jitune` binary returns (its own source file).
#[path = "../src/bin/jitune/cli/exit.rs"]
mod exit;

mod cli_common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_common::*;

const SGEMM: &str = "kernels/sgemm.toml";

#[test]
fn verify_bad_arguments_and_inputs_give_documented_codes() {
    let d = scratch("verify-args");
    // Usage errors (2): no specs, unknown option, malformed or negative numbers.
    for args in [
        vec!["verify"],
        vec!["verify", SGEMM, "--bogus"],
        vec!["verify", SGEMM, "--threshold", "ten"],
        vec!["verify", SGEMM, "--threshold=-5"],
        vec!["verify", SGEMM, "--threshold", "NaN"],
        vec!["verify", SGEMM, "--samples", "-1"],
        vec!["verify", SGEMM, "--device", "x"],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    // A spec that does not exist or does not parse (1), before any GPU check.
    let o = jitune(&d, &["verify", s(&d.join("nope.toml"))]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[params\n").unwrap();
    let o = jitune(&d, &["verify", s(&bad), "--cache", FIXTURE]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // --kernel naming none of the specs: nothing matched (5).
    let o = jitune(
        &d,
        &["verify", SGEMM, "--kernel", "softmax", "--cache", FIXTURE],
    );
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("softmax"), "{}", stderr(&o));
}

/// `verify --against FILE`: FILE is checked before anything touches the GPU, so a missing,
/// corrupt or foreign file is a cache error (4) naming `--against` and the file, in one line,
/// on any machine; the file is only read.
#[test]
fn verify_against_bad_files_are_cache_errors_naming_the_file() {
    let d = scratch("verify-against");
    // Usage errors (2): no FILE, or a bad threshold next to a good FILE.
    for args in [
        vec!["verify", SGEMM, "--against"],
        vec!["verify", SGEMM, "--against", FIXTURE, "--threshold=-3"],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    let missing = d.join("missing.sqlite");
    let garbage = d.join("garbage.sqlite");
    std::fs::write(&garbage, b"\x00\x01not a cache at all").unwrap();
    let torn = d.join("torn.sqlite");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend_from_slice(&[0xAB; 200]);
    std::fs::write(&torn, &bytes).unwrap();
    let foreign = d.join("foreign.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('hi');")
        .unwrap();
    let json = d.join("bad.json");
    std::fs::write(&json, "{\"format\": \"something-else\"}").unwrap();
    for (file, says) in [
        (&missing, "does not exist"),
        (&garbage, ""),
        (&torn, "not a usable jitune cache"),
        (&foreign, "not a usable jitune cache"),
        (&json, "format"),
    ] {
        let before = std::fs::read(file).ok();
        let o = jitune(
            &d,
            &["verify", SGEMM, "--cache", FIXTURE, "--against", s(file)],
        );
        let err = stderr(&o);
        assert_eq!(code(&o), 4, "{file:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("jitune: --against: "), "{err}");
        assert!(err.contains(s(file)) && err.contains(says), "{err}");
        assert!(o.stdout.is_empty(), "{file:?}");
        assert_eq!(std::fs::read(file).ok(), before, "{file:?} was changed");
    }
    assert!(!missing.exists(), "a missing --against file is not created");
}

#[test]
fn tune_bad_budgets_are_usage_errors() {
    let d = scratch("tune-args");
    let shapes = d.join("shapes.toml");
    std::fs::write(&shapes, "sgemm = [[256, 256, 256]]\n").unwrap();
    for args in [
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--budget", "0"],
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--budget", "-4"],
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--time-limit", "0"],
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--time-limit=-2"],
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--time-limit", "inf"],
        vec!["tune", SGEMM],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    // Shapes that are not positive integers: a runtime error naming the file (1).
    std::fs::write(d.join("neg.toml"), "sgemm = [[256, -1, 256]]\n").unwrap();
    let o = jitune(&d, &["tune", SGEMM, "--shapes", s(&d.join("neg.toml"))]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("neg.toml"), "{}", stderr(&o));
}

#[test]
fn verify_and_tune_without_gpu_exit_3_in_one_line() {
    if jitune::require_cuda().is_ok() {
        eprintln!("skipping the no-GPU exit code checks: CUDA is present here");
        return;
    }
    let d = scratch("nogpu");
    let shapes = d.join("shapes.toml");
    std::fs::write(&shapes, "sgemm = [[256, 256, 256]]\n").unwrap();
    let db = d.join("c.sqlite");
    // A valid --against cache (SQLite): read, then the GPU check fails; the file is untouched.
    let other = d.join("other.sqlite");
    let o = jitune(&d, &["import", FIXTURE, "--cache", s(&other)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let other_bytes = std::fs::read(&other).unwrap();
    for args in [
        vec!["verify", SGEMM, "--cache", FIXTURE, "--against", s(&other)],
        vec![
            "verify",
            SGEMM,
            "--cache",
            s(&other),
            "--against",
            FIXTURE,
            "--json",
            "--threshold",
            "3",
        ],
        vec!["verify", SGEMM, "--cache", FIXTURE],
        vec!["verify", SGEMM, "--cache", FIXTURE, "--json"],
        vec!["verify", SGEMM, "--cache", s(&db), "--threshold", "5"],
        vec!["tune", SGEMM, "--shapes", s(&shapes), "--cache", s(&db)],
        vec![
            "tune",
            SGEMM,
            "--shapes",
            s(&shapes),
            "--cache",
            s(&db),
            "--json",
            "--budget",
            "8",
        ],
    ] {
        let o = jitune(&d, &args);
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("jitune: ") && err.contains("CUDA unavailable"),
            "{err}"
        );
        assert!(o.stdout.is_empty(), "nothing on stdout: {args:?}");
    }
    // Nothing was created: the GPU check comes before the cache is opened.
    assert!(!db.exists());
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
}

/// The codes of `jitune --help`'s "Exit codes:" block.
fn help_codes(help: &str) -> BTreeSet<i32> {
    let block = help
        .split("Exit codes:")
        .nth(1)
        .expect("an Exit codes block");
    block
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The codes of the README's exit-code table.
fn readme_codes(readme: &str) -> BTreeSet<i32> {
    let table = readme
        .split("Exit codes (also in `jitune --help`)")
        .nth(1)
        .expect("the README's exit-code table");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_matches('|').split('|').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn help_and_readme_list_the_same_exit_codes() {
    let d = scratch("codes");
    let o = jitune(&d, &["--help"]);
    assert_eq!(code(&o), 0);
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(help.contains("verify"), "verify is listed: {help}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (h, r) = (help_codes(&help), readme_codes(&readme));
    assert_eq!(h, r, "--help and README disagree");
    for c in [0, 1, 2, 3, 4, 5, 6, 130] {
        assert!(h.contains(&c), "code {c} documented");
    }
    // The constants the code returns are the documented ones.
    for c in [
        exit::OK,
        exit::RUNTIME,
        exit::USAGE,
        exit::NO_CUDA,
        exit::CACHE,
        exit::NOT_FOUND,
        exit::DRIFT,
        exit::INTERRUPTED,
    ] {
        assert!(h.contains(&c), "exit code {c} is in --help");
    }
    assert!(readme.contains("jitune verify"), "README shows verify");
}

/// A terminal's Ctrl-C reaches the compile workers too; they must outlive it so the batch in
/// flight can finish. The worker ends normally when its parent closes its stdin.
#[test]
fn compile_worker_survives_sigint_and_exits_on_eof() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jitune"))
        .env("JITUNE_WORKER", "compile")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give it time to install its handler (the worker reads stdin until then and beyond).
    std::thread::sleep(Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker died of SIGINT"
    );
    // Closing stdin (as the pool does) ends it cleanly.
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.flush();
    drop(stdin);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0), "{status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "worker did not exit on EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
