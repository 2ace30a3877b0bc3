//! The `jitune` command line: argument definitions (clap), exit codes, and the subcommands that
//! read and write cache files (`ls`, `show`, `export`, `import`, `merge`, `prune`), tune on the
//! GPU (`tune`), re-measure cached winners on the GPU (`verify`), and draw reports (`report`,
//! in [`report`]).
//!
//! Every failure becomes a [`CliError`] with one of the documented [`exit`] codes and a one-line
//! message; nothing a user or a file can get wrong panics.

pub mod pairing;
pub mod prune;
pub mod remote;
pub mod report;
pub mod tune;
pub mod verify;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use jitune::cache::export::{self, Snapshot};
use jitune::cache::store::Store;
use jitune::cache::{CacheOptions, Entry};
use jitune::Error;

pub mod exit;
pub mod explain;

/// The exit-code table printed by `jitune --help` (kept in sync with README.md).
pub const EXIT_CODES: &str = "Exit codes:
  0    success
  1    runtime error (bad spec, shapes or trace file, CUDA failure, failed write, a winner
       tune could not store, remote tier unreachable)
  2    usage error (unknown option, missing argument, malformed KEY or --remote URL)
  3    no GPU, or libcuda / libnvrtc missing (tune, verify, prune --this-gpu, explain without
       --device)
  4    cache file problem: missing, unreadable, corrupt, malformed JSON, newer schema
  5    nothing matched (show KEY; verify: no cached winner of the specs for this GPU, or
       with --against no key in both caches)
  6    verify flagged an entry (drift beyond --threshold, slower than the default or the
       --against winner, or failing)
  130  tune interrupted by Ctrl-C (the best so far of the shape in flight and every finished
       shape are kept in the cache)";

/// A failure with its exit code; printed as `jitune: <message>`.
#[derive(Debug)]
pub struct CliError {
    /// One of the [`exit`] codes.
    pub code: i32,
    /// One line saying what went wrong.
    pub msg: String,
}

impl CliError {
    /// An error with an explicit code.
    pub fn new(code: i32, msg: impl Into<String>) -> CliError {
        CliError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        let code = match &e {
            Error::NoCuda(_) => exit::NO_CUDA,
            Error::Store { .. }
            | Error::NewerSchema { .. }
            | Error::Json { .. }
            | Error::Io { .. } => exit::CACHE,
            _ => exit::RUNTIME,
        };
        CliError::new(code, e.to_string())
    }
}

/// For inputs that are not cache files (specs, shapes, traces, output folders): every error,
/// I/O included, is a runtime error (exit 1), but a missing CUDA stays exit 3.
pub fn input_err(e: Error) -> CliError {
    match e {
        Error::NoCuda(_) => e.into(),
        e => CliError::new(exit::RUNTIME, e.to_string()),
    }
}

/// `Result` of a subcommand.
pub type CliResult<T = ()> = std::result::Result<T, CliError>;

/// jitune: tune CUDA kernels and manage the tuning cache.
#[derive(Parser, Debug)]
#[command(name = "jitune", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// The cache file (SQLite; JSON exports are accepted where a file is only read).
    /// Default: $JITUNE_CACHE, else $XDG_CACHE_HOME/jitune/cache.sqlite, else
    /// ~/.cache/jitune/cache.sqlite.
    #[arg(long, global = true, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Search strategies `tune` offers.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Strategy {
    /// Likelihood-free Bayesian optimisation pattern search (default).
    Lfbo,
    /// Uniform random sampling.
    Random,
    /// Pattern search.
    Pattern,
    /// Every config (small spaces only).
    Exhaustive,
}

impl Strategy {
    /// The library's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Lfbo => "lfbo",
            Strategy::Random => "random",
            Strategy::Pattern => "pattern",
            Strategy::Exhaustive => "exhaustive",
        }
    }
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tune kernels for the shapes of a shapes file and store the winners (needs a GPU).
    Tune(tune::TuneArgs),
    /// Re-measure the cached winners of the given specs on this GPU against each spec's
    /// default config (or, with --against FILE, against FILE's winners of the same keys) and
    /// flag drift beyond a threshold (needs a GPU; never writes either cache).
    Verify(verify::VerifyArgs),
    /// List cached entries.
    Ls {
        /// Only entries of this kernel (name or kernel id prefix).
        #[arg(long)]
        kernel: Option<String>,
        /// Only entries whose device fingerprint contains this text, or whose device hash
        /// starts with it.
        #[arg(long)]
        device: Option<String>,
        /// JSON output (the export's entry objects, each with its `key`; with `--remote`,
        /// also its `remote_key` in Redis).
        #[arg(long)]
        json: bool,
        /// List the winners in the remote tier (Redis) instead of a cache file.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
    },
    /// What a launch of KERNEL/SHAPE on this GPU (or on `--device FINGERPRINT`) would use from
    /// this cache, and why: hit, inherited (same GPU model, other toolchain), provisional (same
    /// compute capability), nearest (another shape here) or default.
    Explain(explain::ExplainArgs),
    /// Show the entries matching KEY (`KERNEL/SHAPE[/DEVICE]`, as `ls` prints; KERNEL is a
    /// name or id prefix, DEVICE a hash prefix).
    Show {
        /// The key.
        key: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Read the remote tier (Redis) instead of a cache file.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
    },
    /// Export the cache to FILE: JSON when FILE ends in .json (reviewable), else a
    /// self-contained SQLite file (shippable as a read-only layer) carrying the winners' binaries
    /// only (the default; `--all-binaries` keeps every compiled candidate).
    Export {
        /// The file to write (replaced atomically).
        file: PathBuf,
        /// Force the format.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Keep only the winners' binaries in a SQLite export (the default).
        #[arg(long, conflicts_with = "all_binaries")]
        winners_only: bool,
        /// Keep every compiled binary in a SQLite export, not only the winners'.
        #[arg(long)]
        all_binaries: bool,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
        /// Export the remote tier (Redis) instead of a cache file: its verified winners and
        /// failure records, and the winners' binaries when JITUNE_REMOTE_KEY is set.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
    },
    /// Import a JSON export or SQLite cache into the cache (its entries replace same keys).
    Import {
        /// The file to import.
        file: PathBuf,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Merge two caches (JSON or SQLite) into a third; per key the faster winner stays.
    Merge {
        /// First cache file.
        a: PathBuf,
        /// Second cache file.
        b: PathBuf,
        /// The SQLite cache to write (created if missing; its own entries take part).
        #[arg(long, value_name = "FILE")]
        into: PathBuf,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seed a fleet's remote tier (Redis) from a shipped cache: its entries, failure records,
    /// and (only with JITUNE_REMOTE_KEY set) its winners' binaries, each signed.
    Push(remote::PushArgs),
    /// Fill the cache (`--cache DB`) from the remote tier (Redis): its verified winners and
    /// their failure records, and (only with JITUNE_REMOTE_KEY set) binaries whose MAC verifies.
    Pull(remote::PullArgs),
    /// Remove entries whose kernel is gone or changed (not among the given specs), or whose
    /// device fingerprint is stale on this GPU.
    Prune(prune::PruneArgs),
    /// Write a convergence plot (SVG, PNG) of tuning traces and an HTML summary of a cache.
    Report(report::ReportArgs),
}

/// Export formats.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Pretty-printed JSON (binaries left out).
    Json,
    /// A self-contained SQLite file.
    Sqlite,
}

/// Parses the command line and runs it; returns the exit code.
pub fn main_with_args() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jitune: {}", one_line(&e.msg));
            e.code
        }
    }
}

/// An error message on one line, as scripts reading stderr expect: multi-line messages (a TOML
/// parser's caret diagram, a compiler log) keep their text lines joined with `; ` and lose the
/// diagram lines (`  |`, `2 | [params`, `  |   ^`).
pub fn one_line(msg: &str) -> String {
    let diagram = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !diagram(l))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs a parsed command line; `Ok` holds the exit code (0; 130 after Ctrl-C; 6 when `verify`
/// flagged an entry).
pub fn run(cli: Cli) -> CliResult<i32> {
    let cache = cli.cache;
    match cli.command {
        Command::Tune(args) => tune::run(cache, args),
        Command::Verify(args) => verify::run(cache, args),
        Command::Ls {
            kernel,
            device,
            json,
            remote,
        } => {
            let source = Source::new(cache, remote)?;
            cmd_ls(source, kernel.as_deref(), device.as_deref(), json).map(|_| exit::OK)
        }
        Command::Show { key, json, remote } => {
            cmd_show(Source::new(cache, remote)?, &key, json).map(|_| exit::OK)
        }
        Command::Explain(args) => explain::run(cache, args).map(|_| exit::OK),
        Command::Export {
            file,
            format,
            winners_only: _,
            all_binaries,
            json,
            remote,
        } => cmd_export(
            Source::new(cache, remote)?,
            &file,
            format,
            all_binaries,
            json,
        )
        .map(|_| exit::OK),
        Command::Import { file, json } => cmd_import(cache, &file, json).map(|_| exit::OK),
        Command::Merge { a, b, into, json } => cmd_merge(&a, &b, &into, json).map(|_| exit::OK),
        Command::Push(args) => {
            if cache.is_some() {
                return Err(CliError::new(
                    exit::USAGE,
                    "push takes the cache to push as its argument, not --cache",
                ));
            }
            remote::push(args).map(|_| exit::OK)
        }
        Command::Pull(args) => remote::pull(&cache_path(cache)?, args).map(|_| exit::OK),
        Command::Prune(args) => prune::run(cache, args).map(|_| exit::OK),
        Command::Report(args) => report::run(cache, args).map(|_| exit::OK),
    }
}

/// Where `ls`, `show` and `export` read: a cache file, or the remote tier.
pub enum Source {
    /// `--cache FILE`, else the user cache.
    File(Option<PathBuf>),
    /// `--remote URL`.
    Remote(String),
}

impl Source {
    /// The source the options name; both at once is a usage error.
    pub fn new(cache: Option<PathBuf>, remote: Option<String>) -> CliResult<Source> {
        match (cache, remote) {
            (Some(_), Some(_)) => Err(CliError::new(
                exit::USAGE,
                "--cache and --remote name two sources; give one",
            )),
            (_, Some(url)) => Ok(Source::Remote(url)),
            (cache, None) => Ok(Source::File(cache)),
        }
    }

    /// Everything the source holds (`binaries`: the remote winners' binaries too, with the
    /// fleet key), and its name for messages.
    fn load(&self, failures: bool, binaries: bool) -> CliResult<(String, Snapshot)> {
        match self {
            Source::File(cache) => {
                let (path, snap) = load_cache(cache.clone())?;
                Ok((path.display().to_string(), snap))
            }
            Source::Remote(url) => {
                let r = remote::open(url)?;
                Ok((r.describe(), remote::snapshot(&r, failures, binaries)?))
            }
        }
    }
}

/// The cache file `--cache` names, else the user cache.
pub fn cache_path(cache: Option<PathBuf>) -> CliResult<PathBuf> {
    match cache {
        Some(p) => Ok(p),
        None => CacheOptions::default().resolve_user_path().ok_or_else(|| {
            CliError::new(
                exit::CACHE,
                "no cache file: JITUNE_CACHE is `memory` or no home directory; pass --cache FILE",
            )
        }),
    }
}

/// Reads everything in the cache file (SQLite or JSON); a missing file is an error.
pub fn load_cache(cache: Option<PathBuf>) -> CliResult<(PathBuf, Snapshot)> {
    let path = cache_path(cache)?;
    if !path.exists() {
        return Err(CliError::new(
            exit::CACHE,
            format!("cache file {} does not exist", path.display()),
        ));
    }
    let snap = Snapshot::load(&path)?;
    Ok((path, snap))
}

/// Opens a SQLite cache for writing, never degrading: a newer schema or a corrupt file is an
/// error (exit 4) and the file is left alone. Its binaries are capped as the library caps the
/// user cache's (`JITUNE_BINARY_CAP`, default 256 MiB of non-winners' binaries).
pub fn open_writable(path: &Path) -> CliResult<Store> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::from(Error::io(dir, e)))?;
    }
    if path.exists() && looks_like_json(path) {
        return Err(CliError::new(
            exit::CACHE,
            format!(
                "{} is a JSON export; write into a SQLite cache (jitune import {} --cache DB)",
                path.display(),
                path.display()
            ),
        ));
    }
    let store = Store::open_rw_strict(path)?;
    // What a command writes into a cache is capped like what the library writes there.
    store.set_binary_cap(CacheOptions::default().resolve_binary_cap());
    Ok(store)
}

/// Whether a cache file is a JSON export (it starts with `{`) rather than SQLite.
pub fn looks_like_json(path: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut b))
        .map(|n| n == 1 && b[0] == b'{')
        .unwrap_or(false)
}

/// The JSON object of one entry as exports write it, with `key` (the `ls` form) added.
pub fn entry_json(e: &Entry) -> Value {
    let snap = Snapshot {
        entries: vec![e.clone()],
        ..Snapshot::default()
    };
    let mut v = snap.to_json()["entries"][0].clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), e.key.display().into());
    }
    v
}

fn kernel_matches(e: &Entry, pat: &str) -> bool {
    e.kernel_name == pat || (!pat.is_empty() && e.key.kernel.to_hex().starts_with(pat))
}

/// Whether `pat` names this spec: its name, or a prefix of its kernel id (as `--kernel` takes).
pub fn kernel_matches_spec(s: &jitune::spec::KernelSpec, pat: &str) -> bool {
    s.name == pat || (!pat.is_empty() && s.id().to_hex().starts_with(pat))
}

fn device_matches(e: &Entry, pat: &str) -> bool {
    e.device.to_text().contains(pat) || format!("{:016x}", e.key.device).starts_with(pat)
}

fn print_json(v: &Value) -> CliResult {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::new(exit::RUNTIME, format!("JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}

fn cmd_ls(source: Source, kernel: Option<&str>, device: Option<&str>, json: bool) -> CliResult {
    let (_, snap) = source.load(false, false)?;
    let entries: Vec<&Entry> = snap
        .entries
        .iter()
        .filter(|e| kernel.is_none_or(|k| kernel_matches(e, k)))
        .filter(|e| device.is_none_or(|d| device_matches(e, d)))
        .collect();
    if json {
        // With --remote, each entry's key in Redis too (the tier's own key names).
        let keys = match &source {
            Source::Remote(url) => Some(remote::open(url)?.keys().clone()),
            Source::File(_) => None,
        };
        return print_json(&Value::Array(
            entries
                .iter()
                .map(|e| {
                    let mut v = entry_json(e);
                    if let (Some(keys), Some(o)) = (&keys, v.as_object_mut()) {
                        o.insert("remote_key".into(), keys.entry(&e.key).into());
                    }
                    v
                })
                .collect(),
        ));
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.key.display(),
                e.kernel_name.clone(),
                e.device.name.clone(),
                format!("{:.4}", e.median_ms),
                e.evaluated.to_string(),
                e.config.clone(),
            ]
        })
        .collect();
    print_table(
        &["KEY", "KERNEL", "DEVICE", "MEDIAN_MS", "EVALS", "CONFIG"],
        &rows,
    );
    Ok(())
}

/// Prints left-aligned columns (the last one unpadded).
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        w[i] = h.len();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Entries matching `KERNEL/SHAPE[/DEVICE]`.
pub fn match_key<'a>(entries: &'a [Entry], key: &str) -> CliResult<Vec<&'a Entry>> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() < 2 || parts.len() > 3 || parts[0].is_empty() {
        return Err(CliError::new(
            exit::USAGE,
            format!("key `{key}` is not KERNEL/SHAPE[/DEVICE], e.g. sgemm/1024x1024x1024"),
        ));
    }
    Ok(entries
        .iter()
        .filter(|e| kernel_matches(e, parts[0]))
        .filter(|e| e.key.shape.to_text() == parts[1])
        .filter(|e| {
            parts
                .get(2)
                .is_none_or(|d| format!("{:016x}", e.key.device).starts_with(d))
        })
        .collect())
}

fn cmd_show(source: Source, key: &str, json: bool) -> CliResult {
    // A malformed key is a usage error before anything is read.
    match_key(&[], key)?;
    let (name, snap) = source.load(false, false)?;
    let found = match_key(&snap.entries, key)?;
    if found.is_empty() {
        return Err(CliError::new(
            exit::NOT_FOUND,
            format!("no entry matches `{key}` in {name}"),
        ));
    }
    if json {
        return print_json(&Value::Array(found.iter().map(|e| entry_json(e)).collect()));
    }
    for (i, e) in found.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("key:          {}", e.key.display());
        println!(
            "kernel:       {} ({})",
            e.kernel_name,
            e.key.kernel.to_hex()
        );
        println!("shape:        {}", e.key.shape.to_text());
        println!("config:       {}", e.config);
        println!(
            "median:       {:.4} ms (spread {:.4} ms over {} samples)",
            e.median_ms, e.spread_ms, e.samples
        );
        println!("evaluations:  {}", e.evaluated);
        println!("strategy:     {}", e.strategy);
        println!(
            "fingerprint:  {} ({:016x})",
            e.device.to_text(),
            e.key.device
        );
        println!(
            "tuned:        {} (updated {}) by jitune {}",
            format_time(e.created_at),
            format_time(e.updated_at),
            e.jitune_version
        );
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn counts_json(r: &export::ImportReport) -> Value {
    serde_json::json!({
        "entries_read": r.entries_read,
        "entries_written": r.entries_written,
        "failures": r.failures,
        "binaries": r.binaries,
    })
}

fn cmd_export(
    source: Source,
    file: &Path,
    format: Option<Format>,
    all_binaries: bool,
    json: bool,
) -> CliResult {
    let format = format.unwrap_or_else(|| {
        if file
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("json"))
        {
            Format::Json
        } else {
            Format::Sqlite
        }
    });
    let (_, mut snap) = source.load(true, format == Format::Sqlite)?;
    let mut dropped = 0;
    match format {
        Format::Json => snap.write_json(file)?,
        Format::Sqlite => {
            if !all_binaries {
                dropped = snap.retain_winner_binaries();
            }
            snap.write_sqlite(file)?
        }
    }
    let fmt = if format == Format::Json {
        "json"
    } else {
        "sqlite"
    };
    if json {
        return print_json(&serde_json::json!({
            "file": file.display().to_string(),
            "format": fmt,
            "entries": snap.entries.len(),
            "failures": snap.failures.len(),
            "binaries": if format == Format::Json { 0 } else { snap.binaries.len() },
            "binaries_dropped": dropped,
        }));
    }
    println!(
        "exported {} entries and {} failures to {} ({fmt}){}",
        snap.entries.len(),
        snap.failures.len(),
        file.display(),
        match format {
            Format::Json => String::new(),
            Format::Sqlite => format!(
                ", {} binaries (the winners'{})",
                snap.binaries.len(),
                if all_binaries { " and every other" } else { "" }
            ),
        }
    );
    Ok(())
}

fn cmd_import(cache: Option<PathBuf>, file: &Path, json: bool) -> CliResult {
    let path = cache_path(cache)?;
    // Read the source first: a bad file must not create an empty cache.
    let snap = Snapshot::load(file)?;
    let store = open_writable(&path)?;
    let r = snap.apply(&store, jitune::cache::store::OnConflict::Replace)?;
    if json {
        return print_json(&counts_json(&r));
    }
    println!(
        "imported {} of {} entries ({} failures, {} binaries) into {}",
        r.entries_written,
        r.entries_read,
        r.failures,
        r.binaries,
        path.display()
    );
    Ok(())
}

fn cmd_merge(a: &Path, b: &Path, into: &Path, json: bool) -> CliResult {
    let merged = Snapshot::merge(&Snapshot::load(a)?, &Snapshot::load(b)?);
    let store = open_writable(into)?;
    let r = merged.apply(&store, jitune::cache::store::OnConflict::KeepFaster)?;
    if json {
        return print_json(&counts_json(&r));
    }
    println!(
        "merged {} entries into {} ({} written; slower duplicates kept out)",
        r.entries_read,
        into.display(),
        r.entries_written
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn messages_become_one_line_without_diagrams() {
        let toml = "not valid TOML: TOML parse error at line 2, column 8\n  |\n2 | [params\n  |        ^\nunclosed table, expected `]`\n";
        assert_eq!(
            super::one_line(toml),
            "not valid TOML: TOML parse error at line 2, column 8; unclosed table, expected `]`"
        );
        assert_eq!(super::one_line("plain"), "plain");
        assert_eq!(super::one_line("a\n\n  b  "), "a; b");
    }

    #[test]
    fn formats_unix_time() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
