//! One fleet process: a simulated GPU, one tuner on its host's cache file, and a launch loop
//! over every key until the parent closes its stdin (or a hard deadline passes, should the
//! parent be gone). Events go to an append-only log as they happen (a SIGKILL leaves them
//! behind); the final plans go to a report when the child is told to stop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitune::cache::{Cache, CacheOptions};
use jitune::tuner::{Event, Mode, Plan, TuneOptions, Tuner};
use serde_json::{json, Value};

use super::report::{unix_ms, ChildReport, Line};
use super::sim;

/// Pause between rounds of launches.
const ROUND_PAUSE: Duration = Duration::from_millis(10);

/// What the parent tells a child (the JSON value of [`super::CHILD_ENV`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ChildSpec {
    pub data: PathBuf,
    /// The GPU model's name (one per run, see `parent`).
    pub device_name: String,
    /// The host's cache file.
    pub cache: PathBuf,
    pub remote: Option<String>,
    pub lock_id: String,
    pub time_scale: f64,
    pub mode: Mode,
    pub keys: usize,
    pub budget: usize,
    pub seed: u64,
    pub log: PathBuf,
    pub report: PathBuf,
    /// The child stops by itself at this unix ms, whatever the parent does.
    pub hard_deadline_ms: u64,
}

impl ChildSpec {
    pub fn to_json(&self) -> String {
        json!({
            "data": self.data,
            "device_name": self.device_name,
            "cache": self.cache,
            "remote": self.remote,
            "lock_id": self.lock_id,
            "time_scale": self.time_scale,
            "mode": if self.mode == Mode::Blocking { "blocking" } else { "background" },
            "keys": self.keys,
            "budget": self.budget,
            "seed": self.seed,
            "log": self.log,
            "report": self.report,
            "hard_deadline_ms": self.hard_deadline_ms,
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Result<ChildSpec, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("child settings: {e}"))?;
        let s = |f: &str| {
            v.get(f)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| format!("child settings: field `{f}` missing"))
        };
        let u = |f: &str| {
            v.get(f)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("child settings: field `{f}` missing"))
        };
        Ok(ChildSpec {
            data: s("data")?.into(),
            device_name: s("device_name")?,
            cache: s("cache")?.into(),
            remote: v.get("remote").and_then(Value::as_str).map(String::from),
            lock_id: s("lock_id")?,
            time_scale: v
                .get("time_scale")
                .and_then(Value::as_f64)
                .ok_or("child settings: field `time_scale` missing")?,
            mode: Mode::parse(&s("mode")?).ok_or("child settings: field `mode` unknown")?,
            keys: u("keys")? as usize,
            budget: u("budget")? as usize,
            seed: u("seed")?,
            log: s("log")?.into(),
            report: s("report")?.into(),
            hard_deadline_ms: u("hard_deadline_ms")?,
        })
    }
}

/// An append-only event log: each line is one `write` on an `O_APPEND` file.
pub struct EventLog(Mutex<std::fs::File>);

impl EventLog {
    fn open(path: &std::path::Path) -> Result<EventLog, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| EventLog(Mutex::new(f)))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn line(&self, l: Line) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(format!("{}\n", l.format()).as_bytes()) {
            eprintln!(
                "fleet child {}: cannot write its log: {e}",
                std::process::id()
            );
        }
    }
}

/// Warnings and errors of the library on stderr, each line naming the child (a logger of a
/// dozen lines rather than a logging crate for the example).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "[fleet child {}] {}: {}",
                std::process::id(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// The child's `main`.
pub fn main(spec: &str) -> ExitCode {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
    match ChildSpec::from_json(spec).and_then(|s| run(&s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet child {}: {e}", std::process::id());
            ExitCode::from(1)
        }
    }
}

/// The store failures a process has seen (see `report`'s docs for `lock_errors`).
fn store_failures(cache: &Cache) -> u64 {
    cache.store_write_failures()
        + cache.coordination_failures()
        + u64::from(cache.degraded().is_some())
}

fn run(spec: &ChildSpec) -> Result<(), String> {
    let data = sim::load(&spec.data)?;
    let dev = sim::device(data, &spec.device_name, &spec.lock_id, spec.time_scale);
    let kernel = dev.kernel().map_err(|e| e.to_string())?;
    let opts = CacheOptions::at(&spec.cache);
    // Without --remote no remote tier, whatever $JITUNE_REMOTE says: hosts share nothing.
    let opts = match &spec.remote {
        Some(url) => opts.with_remote(url.clone()),
        None => opts.without_remote(),
    };
    let cache = Cache::open(opts).map_err(|e| format!("cache {}: {e}", spec.cache.display()))?;
    let degraded = cache.degraded().is_some();
    let tuner = Tuner::simulated(dev, cache, spec.mode).map_err(|e| e.to_string())?;
    // The fleet's mode, whatever $JITUNE_MODE says.
    tuner.set_mode(spec.mode);
    tuner.set_tune_options(TuneOptions {
        max_evals: spec.budget,
        seed: spec.seed,
        ..TuneOptions::default()
    });
    let log = Arc::new(EventLog::open(&spec.log)?);
    log.line(Line::Ready {
        ms: unix_ms(),
        pid: std::process::id(),
    });
    listen(&tuner, &log, degraded);

    // The parent closes stdin to stop us (and a parent that dies closes it too).
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }

    let mut plans: Vec<Option<Arc<Plan>>> = vec![None; spec.keys];
    let mut failed = 0u64;
    let mut all_tuned = false;
    let mut seen_failures = 0u64;
    while !stop.load(Ordering::Relaxed) && unix_ms() < spec.hard_deadline_ms {
        for (i, slot) in plans.iter_mut().enumerate() {
            let shape = [i as i64 + 1];
            match tuner.resolve(&kernel, &shape) {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    failed += 1;
                    log.line(Line::Fail {
                        ms: unix_ms(),
                        key: sim::key_text(&shape),
                        message: e.to_string(),
                    });
                }
            }
        }
        if !all_tuned && plans.iter().all(|p| p.as_ref().is_some_and(|p| p.tuned)) {
            all_tuned = true;
            log.line(Line::AllTuned { ms: unix_ms() });
        }
        let f = store_failures(tuner.cache());
        if f > seen_failures {
            seen_failures = f;
            log.line(Line::StoreFail {
                ms: unix_ms(),
                count: f,
            });
        }
        std::thread::sleep(ROUND_PAUSE);
    }

    let stats = tuner.stats();
    let report = ChildReport {
        pid: std::process::id(),
        plans: plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.as_ref()
                    .map(|p| (sim::key_text(&[i as i64 + 1]), (p.config.clone(), p.tuned)))
            })
            .collect(),
        failed_launches: failed,
        store_failures: store_failures(tuner.cache()),
        searches: stats.searches,
        hits: stats.hits,
        misses: stats.misses,
        swaps: stats.swaps,
        errors: stats.errors,
        tuning_s: stats.tuning_s,
    };
    // Written whole, then renamed: the parent never reads half a report.
    let tmp = spec.report.with_extension("tmp");
    std::fs::write(&tmp, report.to_json().to_string())
        .and_then(|()| std::fs::rename(&tmp, &spec.report))
        .map_err(|e| format!("{}: {e}", spec.report.display()))?;
    // A background search may still run (the run ended at its deadline): leave it, as a
    // server that shuts down does.
    std::process::exit(0);
}

/// Logs the tuner's searches and errors. A search counts as stored when no store write
/// failed while it ran (one background search at a time per tuner, so the failures counted
/// meanwhile are its own or its failure records').
fn listen(tuner: &Tuner, log: &Arc<EventLog>, degraded: bool) {
    // The callback holds a clone of the tuner to read its cache's counters: a cycle that
    // keeps the tuner alive until the process exits, which is what a fleet process does.
    let t = tuner.clone();
    let log = log.clone();
    let at_start: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    tuner.on_event(move |e| match e {
        Event::TuneStarted { shape, .. } => {
            let key = sim::key_text(shape);
            at_start
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), store_failures(t.cache()));
            log.line(Line::Start { ms: unix_ms(), key });
        }
        Event::TuneFinished {
            shape,
            winner,
            wall_s,
            ..
        } => {
            let key = sim::key_text(shape);
            let before = at_start
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            let stored = !degraded && before == Some(store_failures(t.cache()));
            log.line(Line::Done {
                ms: unix_ms(),
                key,
                stored,
                wall_s: *wall_s,
                winner: winner.clone(),
            });
        }
        Event::Error { key, message, .. } => log.line(Line::Error {
            ms: unix_ms(),
            key: key.map_or_else(|| "-".to_string(), |k| k.shape.to_text()),
            message: message.clone(),
        }),
        _ => {}
    });
}
