//! The fleet's options, parsed by hand (the example builds without the `cli` feature's clap).

use std::path::PathBuf;

use jitune::tuner::{Mode, TuneOptions};

pub const USAGE: &str =
    "usage: fleet --procs N --hosts H --data FILE.json.gz --keys K --cache-dir DIR \
[--kill-tuner] [--remote URL] [--seconds S] [--time-scale X | --search-s S] \
[--mode background|blocking] [--gpus-per-host G] [--grace-s S] [--budget N] [--seed N] \
[--json OUT.json]   (--help explains)";

pub const HELP: &str = "\
fleet: N processes on H simulated hosts tune the K keys of one recorded kernel through the real
tuner, cache, store, leases and adoption (no GPU), and report what the fleet did.

  --procs N          processes (default 8), spread round-robin over the hosts: process p runs on
                     host p % H
  --hosts H          hosts (default 1); a host is the processes sharing DIR/host-<h>.sqlite;
                     hosts share no store unless --remote
  --data FILE        a Kernel Tuner cachefile (tests/data/*.json.gz): the simulated kernel's
                     space, times, failures and per-evaluation costs
  --keys K           keys 1..=K (default 20): shape buckets of the simulated kernel's one
                     dimension `key`, each tuned on the recorded space
  --cache-dir DIR    where the host files go; existing DIR/host-*.sqlite files are removed first
                     (the run starts cold); logs and reports go to DIR/fleet-run/
  --kill-tuner       SIGKILL one process in the middle of a search (one holding the key's lease
                     when the store has lease rows), then start a replacement in its place (same
                     host, same GPU), as a supervisor restarting a server would
  --remote URL       every host also uses the remote tier at URL (redis://host:port/db): all
                     hosts share that Redis. Refused (exit 2) unless this jitune build shares
                     winners through it: a probe tunes one key under a probe device name against
                     one file and must find it from another file through URL (it leaves that one
                     probe record in Redis)
  --seconds S        the longest run (default 60); it ends earlier once every process has every
                     key tuned and --grace-s passed
  --grace-s S        how long the run goes on after every process has every key tuned
                     (default 2)
  --time-scale X     each evaluation sleeps its recorded cost times X; default: chosen so one
                     search of --budget evaluations takes about --search-s seconds (the
                     recording's mean cost per evaluation x budget; printed)
  --search-s S       the search length the default time scale aims at (default 1)
  --mode M           background (default: launches serve a provisional plan while a background
                     thread tunes) or blocking (a miss tunes before it returns)
  --gpus-per-host G  simulated physical GPUs per host (default: one per process); process p uses
                     the GPU lock id `host<h>-gpu<i>`, i = (p / H) % G: processes on one GPU
                     share its tuning lock. Every process has the same fingerprint (one GPU
                     model), so keys and winners are shared
  --budget N         evaluations per search (default: the tuner's, 120)
  --seed N           base seed (default 1); process p searches with seed + p, as two GPUs'
                     timings differ
  --json OUT.json    also write the figures there

OUT.json: searches_per_key (key -> searches started for it, all processes, the killed one
included), winners (key -> per process slot the tuned config it ends with, null if untuned),
failed_launches, lock_errors, lease_takeovers, rows_lost, wall_s. Keys are the shape text
(\"1\"..\"K\"). See examples/fleet/report.rs for each definition.";

/// What a fleet run is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub procs: usize,
    pub hosts: usize,
    pub data: PathBuf,
    pub keys: usize,
    pub cache_dir: PathBuf,
    pub kill_tuner: bool,
    pub remote: Option<String>,
    pub seconds: f64,
    pub grace_s: f64,
    pub time_scale: Option<f64>,
    pub search_s: f64,
    pub mode: Mode,
    pub gpus_per_host: Option<usize>,
    pub budget: usize,
    pub seed: u64,
    pub json: Option<PathBuf>,
}

impl Options {
    /// The defaults, with the three things that have none.
    pub fn new(data: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            procs: 8,
            hosts: 1,
            data: data.into(),
            keys: 20,
            cache_dir: cache_dir.into(),
            kill_tuner: false,
            remote: None,
            seconds: 60.0,
            grace_s: 2.0,
            time_scale: None,
            search_s: 1.0,
            mode: Mode::Background,
            gpus_per_host: None,
            budget: TuneOptions::default().max_evals,
            seed: 1,
            json: None,
        }
    }

    /// Checks the values together; the message names the option.
    pub fn check(&self) -> Result<(), String> {
        if self.procs == 0 {
            return Err("--procs: at least 1 process".into());
        }
        if self.hosts == 0 || self.hosts > self.procs {
            return Err(format!(
                "--hosts: between 1 and --procs ({}); a host is the processes sharing a file",
                self.procs
            ));
        }
        if self.keys == 0 {
            return Err("--keys: at least 1 key".into());
        }
        if self.budget == 0 {
            return Err("--budget: at least 1 evaluation".into());
        }
        if self.gpus_per_host == Some(0) {
            return Err("--gpus-per-host: at least 1".into());
        }
        for (flag, v) in [
            ("--seconds", self.seconds),
            ("--search-s", self.search_s),
            ("--grace-s", self.grace_s),
        ] {
            if !v.is_finite() || v < 0.0 || (flag != "--grace-s" && v == 0.0) {
                return Err(format!("{flag}: `{v}` is not a positive number of seconds"));
            }
        }
        if let Some(x) = self.time_scale {
            if !x.is_finite() || x < 0.0 {
                return Err(format!("--time-scale: `{x}` is not a non-negative factor"));
            }
        }
        Ok(())
    }

    /// The host of process slot `p`.
    pub fn host_of(&self, p: usize) -> usize {
        p % self.hosts
    }

    /// The GPU lock id of process slot `p`: `host<h>-gpu<i>`.
    pub fn lock_id_of(&self, p: usize) -> String {
        let per_host = self.procs.div_ceil(self.hosts);
        let gpus = self.gpus_per_host.unwrap_or(per_host).max(1);
        format!("host{}-gpu{}", self.host_of(p), (p / self.hosts) % gpus)
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: `{v}` is not a valid number"))
}

/// Parses the command line (without the program name). `Ok(None)`: `--help` was asked for.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut data = None;
    let mut dir = None;
    let mut o = Options::new("", "");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--procs" => o.procs = num(flag, &value()?)?,
            "--hosts" => o.hosts = num(flag, &value()?)?,
            "--data" => data = Some(PathBuf::from(value()?)),
            "--keys" => o.keys = num(flag, &value()?)?,
            "--cache-dir" => dir = Some(PathBuf::from(value()?)),
            "--kill-tuner" => o.kill_tuner = true,
            "--remote" => o.remote = Some(value()?),
            "--seconds" => o.seconds = num(flag, &value()?)?,
            "--grace-s" => o.grace_s = num(flag, &value()?)?,
            "--time-scale" => o.time_scale = Some(num(flag, &value()?)?),
            "--search-s" => o.search_s = num(flag, &value()?)?,
            "--mode" => {
                let v = value()?;
                o.mode = match Mode::parse(&v) {
                    Some(m @ (Mode::Background | Mode::Blocking)) => m,
                    _ => return Err(format!("--mode: `{v}` is not background or blocking")),
                }
            }
            "--gpus-per-host" => o.gpus_per_host = Some(num(flag, &value()?)?),
            "--budget" => o.budget = num(flag, &value()?)?,
            "--seed" => o.seed = num(flag, &value()?)?,
            "--json" => o.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    o.data = data.ok_or("--data FILE.json.gz is required")?;
    o.cache_dir = dir.ok_or("--cache-dir DIR is required")?;
    o.check()?;
    Ok(Some(o))
}
