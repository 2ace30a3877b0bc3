//! Helpers shared by the tests that drive the `jitune` binary as a subprocess: a scratch
//! directory, the runner (a scratch user cache, none of the caller's remote settings, and no
//! run may panic), and readers of its output.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The CLI fixture: a JSON export of 7 entries and 1 failure record.
pub const FIXTURE: &str = "tests/data/cli/fixture_cache.json";

/// A fresh directory for one test (emptied if it exists).
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("jitune-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary with `args`, not started: a scratch user cache in `dir` (`JITUNE_CACHE`) and
/// none of the caller's `JITUNE_REMOTE`, `JITUNE_REMOTE_KEY` and `JITUNE_BINARY_CAP` (a test
/// must not publish to the developer's Redis).
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jitune"));
    cmd.args(args)
        .env("JITUNE_CACHE", dir.join("default-user-cache.sqlite"))
        .env_remove("JITUNE_REMOTE")
        .env_remove("JITUNE_REMOTE_KEY")
        .env_remove("JITUNE_BINARY_CAP");
    cmd
}

/// Runs the binary with `args`; see [`jitune_env`].
pub fn jitune(dir: &Path, args: &[&str]) -> Output {
    jitune_env(dir, args, &[])
}

/// Runs the binary with `args` and the environment `env` on top of a scratch user cache in
/// `dir` (`JITUNE_CACHE`) and without the caller's `JITUNE_REMOTE`, `JITUNE_REMOTE_KEY` and
/// `JITUNE_BINARY_CAP`. No run may panic (a panic would exit 101 and say "panicked").
pub fn jitune_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(dir, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && o.status.code() != Some(101),
        "{args:?}: {err}"
    );
    o
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout as JSON, after checking the run succeeded.
pub fn json(o: &Output) -> Value {
    assert_eq!(code(o), 0, "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
