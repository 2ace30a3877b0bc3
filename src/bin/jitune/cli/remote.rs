//! The command line's side of the fleet-wide remote tier (issue 15): reading Redis where
//! `ls`, `show` and `export` read a cache file (`--remote URL`), `jitune push` (seed a fleet
//! from a shipped cache) and `jitune pull` (fill a local cache from the fleet).
//!
//! Everything read goes through the library's [`Remote`], so a record is checked exactly as a
//! lookup checks it (checksum, the fleet key's MAC when `JITUNE_REMOTE_KEY` is set, the key it
//! is stored under); a record that fails is skipped, named on stderr, and never written
//! anywhere. Binaries travel only with the fleet key, and are only taken with a valid MAC and
//! the hash their entry names. Unlike a tuner on a miss, a command wants to know when Redis
//! is away: a server that cannot be reached is exit 1 with one line naming the URL (never its
//! password).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{exit, open_writable, print_json, CliError, CliResult};
use jitune::cache::export::Snapshot;
use jitune::cache::remote::{Rejection, Remote, RemoteError, RemoteSettings, RemoteUrl};
use jitune::cache::store::{arch_of, nvrtc_of, BinaryRecord, OnConflict};
use jitune::cache::unix_now;

/// How long listing the whole remote tier may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one write or one failure map read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `jitune push` arguments.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The cache to push: a JSON export or a SQLite cache (a shipped file).
    #[arg(value_name = "FILE_OR_DB")]
    pub file: PathBuf,
    /// The remote tier: `redis://[:password@]host:port/db`.
    #[arg(long, value_name = "URL")]
    pub remote: String,
    /// Print what was pushed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jitune pull` arguments.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// The remote tier: `redis://[:password@]host:port/db`.
    #[arg(long, value_name = "URL")]
    pub remote: String,
    /// Print what was pulled as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The remote tier at `url`, with the fleet key of `$JITUNE_REMOTE_KEY`. A malformed URL is a
/// usage error; a build without the `redis` feature a runtime error. No connection yet.
pub fn open(url: &str) -> CliResult<Remote> {
    let parsed = RemoteUrl::parse(url).map_err(|e| {
        let why = match e {
            RemoteError::Config(m) => m,
            other => other.to_string(),
        };
        CliError::new(exit::USAGE, format!("--remote: {why}"))
    })?;
    Remote::open(&parsed, RemoteSettings::from_env()).map_err(remote_err)
}

/// A remote call that failed: exit 1, the message names the server (password hidden).
fn remote_err(e: RemoteError) -> CliError {
    CliError::new(exit::RUNTIME, e.to_string())
}

/// Names the records that failed their checks on stderr (they are left out of everything).
fn report_rejected(rejected: &[(String, Rejection)]) {
    for (name, why) in rejected {
        eprintln!("jitune: warning: skipped remote record {name}: {why}");
    }
}

/// What the remote tier holds, as a snapshot: every verified winner; with `failures`, the
/// verified failure records of their keys; with `binaries` (and a fleet key), the winners'
/// verified binaries. Records that fail their checks are named on stderr and left out.
pub fn snapshot(remote: &Remote, failures: bool, binaries: bool) -> CliResult<Snapshot> {
    let listing = remote
        .list(LIST_TIMEOUT, binaries && remote.has_fleet_key())
        .map_err(remote_err)?;
    let mut rejected = listing.rejected;
    let mut snap = Snapshot::default();
    for hit in listing.hits {
        if failures {
            let (ok, bad) = remote
                .fetch_failures(&hit.entry.key, CALL_TIMEOUT)
                .map_err(remote_err)?;
            snap.failures.extend(ok);
            rejected.extend(bad);
        }
        if let Some(cubin) = hit.binary {
            snap.binaries.push(BinaryRecord {
                kernel: hit.entry.key.kernel,
                config: hit.entry.config.clone(),
                arch: arch_of(&hit.entry.device),
                nvrtc: nvrtc_of(&hit.entry.device),
                cubin,
                created_at: unix_now(),
            });
        }
        snap.entries.push(hit.entry);
    }
    report_rejected(&rejected);
    // Winners of several shapes share one binary: de-duplicated here.
    snap.normalize();
    Ok(snap)
}

/// Runs `jitune push`: every entry of the file (with its winner's binary when the fleet key is
/// set and the file has it) and every failure record whose device the file names.
pub fn push(args: PushArgs) -> CliResult {
    // The file first: a bad file is reported before anything is sent.
    let snap = Snapshot::load(&args.file)?;
    let remote = open(&args.remote)?;
    let keyed = remote.has_fleet_key();
    let mut binaries = 0;
    for (i, e) in snap.entries.iter().enumerate() {
        let (arch, nvrtc) = (arch_of(&e.device), nvrtc_of(&e.device));
        let binary = snap
            .binaries
            .iter()
            .find(|b| {
                b.kernel == e.key.kernel
                    && b.config == e.config
                    && b.arch == arch
                    && b.nvrtc == nvrtc
            })
            .filter(|_| keyed)
            .map(|b| b.cubin.as_slice());
        remote
            .push(e, binary, CALL_TIMEOUT)
            .map_err(|err| partial(err, i, snap.entries.len(), "entries"))?;
        binaries += usize::from(binary.is_some());
    }
    // A failure record travels with the fingerprint of the device it was measured on; the file
    // names it only through an entry of the same device.
    let mut failures = 0;
    let mut no_device = 0;
    for f in &snap.failures {
        let Some(device) = snap
            .entries
            .iter()
            .find(|e| e.key.device == f.key.device)
            .map(|e| &e.device)
        else {
            no_device += 1;
            continue;
        };
        remote
            .push_failure(f, device, CALL_TIMEOUT)
            .map_err(|err| partial(err, failures, snap.failures.len(), "failure records"))?;
        failures += 1;
    }
    let where_to = remote.describe();
    if args.json {
        return print_json(&json!({
            "remote": where_to,
            "entries": snap.entries.len(),
            "failures": failures,
            "failures_without_device": no_device,
            "binaries": binaries,
            "fleet_key": keyed,
        }));
    }
    println!(
        "pushed {} entries, {failures} failure records and {binaries} binaries to {where_to}{}{}",
        snap.entries.len(),
        if keyed {
            ""
        } else {
            " (no binaries: JITUNE_REMOTE_KEY is not set)"
        },
        if no_device > 0 {
            format!("; {no_device} failure records skipped (no entry of their device in the file)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A push that stopped part way: what landed, and why the rest did not.
fn partial(e: RemoteError, done: usize, of: usize, what: &str) -> CliError {
    CliError::new(
        exit::RUNTIME,
        format!("{e} (pushed {done} of {of} {what} before that)"),
    )
}

/// Runs `jitune pull`: the verified winners of the remote tier, their failure records and
/// (with the fleet key) their binaries, into the SQLite cache `path` (its entries replace the
/// same keys, as `import` does).
pub fn pull(path: &Path, args: PullArgs) -> CliResult {
    let remote = open(&args.remote)?;
    let snap = snapshot(&remote, true, true)?;
    let store = open_writable(path)?;
    let r = snap.apply(&store, OnConflict::Replace)?;
    let where_from = remote.describe();
    if args.json {
        return print_json(&json!({
            "remote": where_from,
            "entries": r.entries_written,
            "failures": r.failures,
            "binaries": r.binaries,
            "fleet_key": remote.has_fleet_key(),
        }));
    }
    println!(
        "pulled {} entries, {} failure records and {} binaries from {where_from} into {}{}",
        r.entries_written,
        r.failures,
        r.binaries,
        path.display(),
        if remote.has_fleet_key() {
            ""
        } else {
            " (no binaries: JITUNE_REMOTE_KEY is not set)"
        }
    );
    Ok(())
}
