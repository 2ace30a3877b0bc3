//! The parent of a fleet run: starts the processes, watches their event logs, SIGKILLs a lease
//! holder in the middle of its search (`--kill-tuner`) and starts its replacement, ends the run
//! once every process has every key tuned (plus a grace period) or at the deadline, stops the
//! processes (by closing their stdin), and reads logs, reports and stores into the figures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitune::cache::store::Store;
use jitune::key::{KernelId, TuningKey};
use jitune::replay::Cachefile;

use super::args::Options;
use super::child::ChildSpec;
use super::report::{unix_ms, ChildReport, Figures, Inputs, Kill, LogReader, ProcRecord};
use super::{probe, sim, CHILD_ENV};

/// How often the parent looks at the logs.
const TICK: Duration = Duration::from_millis(25);
/// How long stopped children may take to report and exit before they are killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// A search is killed once it has run this fraction of the expected search length.
const KILL_AT: f64 = 0.35;

/// Why a run did not happen.
#[derive(Debug)]
pub enum FleetError {
    /// Bad options or data (exit 2).
    Usage(String),
    /// `--remote` refused: unreachable, or this build does not share winners through it (exit 2).
    Refused(String),
    /// The run could not be carried out (exit 1).
    Failed(String),
}

impl FleetError {
    pub fn exit_code(&self) -> u8 {
        match self {
            FleetError::Usage(_) | FleetError::Refused(_) => 2,
            FleetError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Usage(m) | FleetError::Refused(m) | FleetError::Failed(m) => f.write_str(m),
        }
    }
}

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every process had every key tuned, and the grace period passed.
    AllTuned,
    /// `--seconds` passed first.
    Deadline,
}

/// A finished run: the figures (OUT.json), what went wrong, and the details the summary prints.
#[derive(Debug)]
pub struct Run {
    pub figures: Figures,
    /// Things that make the run a failure (a child that crashed or did not report, a store
    /// that fails its integrity check, `--kill-tuner` without a kill...).
    pub problems: Vec<String>,
    pub end: End,
    pub time_scale: f64,
    /// The searches' measured wall times (seconds), from their `TuneFinished` events.
    pub search_s: Vec<f64>,
    pub kill: Option<Kill>,
    pub procs: Vec<ProcRecord>,
    /// Per host: `PRAGMA integrity_check` of its file.
    pub integrity: Vec<String>,
    pub total_s: f64,
    pub opts: Options,
}

/// A child process while it runs.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    log_path: PathBuf,
    report_path: PathBuf,
    record: ProcRecord,
}

struct Fleet<'a> {
    opts: &'a Options,
    run_dir: PathBuf,
    device_name: String,
    time_scale: f64,
    hard_deadline_ms: u64,
}

impl Fleet<'_> {
    fn host_file(&self, host: usize) -> PathBuf {
        self.opts.cache_dir.join(format!("host-{host}.sqlite"))
    }

    fn spawn(&self, slot: usize, gen: usize) -> Result<Running, FleetError> {
        let host = self.opts.host_of(slot);
        let log_path = self.run_dir.join(format!("p{slot}-{gen}.log"));
        let report_path = self.run_dir.join(format!("p{slot}-{gen}.json"));
        let spec = ChildSpec {
            data: self.opts.data.clone(),
            device_name: self.device_name.clone(),
            cache: self.host_file(host),
            remote: self.opts.remote.clone(),
            lock_id: self.opts.lock_id_of(slot),
            time_scale: self.time_scale,
            mode: self.opts.mode,
            keys: self.opts.keys,
            budget: self.opts.budget,
            seed: self.opts.seed + slot as u64,
            log: log_path.clone(),
            report: report_path.clone(),
            hard_deadline_ms: self.hard_deadline_ms,
        };
        let exe = std::env::current_exe()
            .map_err(|e| FleetError::Failed(format!("cannot find this program to re-run: {e}")))?;
        let mut child = Command::new(exe)
            .env(CHILD_ENV, spec.to_json())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| FleetError::Failed(format!("cannot start process {slot}: {e}")))?;
        Ok(Running {
            stdin: child.stdin.take(),
            child,
            log_path,
            report_path,
            record: ProcRecord {
                slot,
                gen,
                host,
                killed_at: None,
                log: LogReader::default(),
                report: None,
            },
        })
    }
}

/// The fleet's kernel id and device hash, to recognise its rows in a store.
struct Identity {
    kernel: KernelId,
    device: u64,
}

impl Identity {
    fn is_fleet(&self, key: &TuningKey) -> bool {
        key.kernel == self.kernel && key.device == self.device
    }
}

/// Removes the host files of an earlier run (the run starts cold).
fn clear_host_files(dir: &Path) -> Result<(), FleetError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| FleetError::Usage(format!("--cache-dir {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name.starts_with("host-")
            && [".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal"]
                .iter()
                .any(|s| name.ends_with(s));
        if ours {
            std::fs::remove_file(e.path())
                .map_err(|err| FleetError::Failed(format!("{}: {err}", e.path().display())))?;
        }
    }
    Ok(())
}

/// A running process in the middle of a search that has run long enough, holding the key's
/// lease when the store keeps leases: its index, the keys it searches, and whether the store
/// showed its lease (`None`: the store has no lease rows at all).
fn pick_victim(
    fleet: &Fleet<'_>,
    running: &[Running],
    min_age_ms: u64,
    id: &Identity,
) -> Option<(usize, Vec<String>, Option<bool>)> {
    let now = unix_ms();
    for (i, r) in running.iter().enumerate() {
        if r.record.killed_at.is_some() {
            continue;
        }
        let Some(pid) = r.record.log.pid() else {
            continue;
        };
        let open: Vec<String> = r
            .record
            .log
            .open_searches()
            .into_iter()
            .filter(|(_, started)| now.saturating_sub(*started) >= min_age_ms)
            .map(|(k, _)| k)
            .collect();
        if open.is_empty() {
            continue;
        }
        let leases = Store::open_read_only_live(fleet.host_file(r.record.host))
            .and_then(|s| s.leases())
            .unwrap_or_default();
        let leases: Vec<_> = leases.into_iter().filter(|l| id.is_fleet(&l.key)).collect();
        if leases.is_empty() {
            return Some((i, open, None));
        }
        let now_ms = jitune::cache::unix_ms();
        let held = open.iter().any(|k| {
            leases.iter().any(|l| {
                l.owner.pid == i64::from(pid)
                    && &l.key.shape.to_text() == k
                    && l.stale(now_ms).is_none()
            })
        });
        if held {
            return Some((i, open, Some(true)));
        }
    }
    None
}

/// Runs the fleet (see the module docs).
pub fn run(opts: &Options) -> Result<Run, FleetError> {
    opts.check().map_err(FleetError::Usage)?;
    let data: Arc<Cachefile> = sim::load(&opts.data).map_err(FleetError::Usage)?;
    // A device name of the run's own: a run never meets an earlier run's winners (in Redis).
    let run_id = format!("{}.{}", std::process::id(), unix_ms());
    let device_name = format!("{} (fleet run {run_id})", sim::model_name(&data));
    let dev = sim::device(data.clone(), &device_name, "parent", 0.0);
    let kernel = dev.kernel().map_err(|e| FleetError::Usage(e.to_string()))?;
    let cost_s = sim::search_cost_s(&data, &kernel.spec.default, opts.budget, opts.seed)
        .map_err(FleetError::Failed)?;
    let time_scale = opts.time_scale.unwrap_or(if cost_s > 0.0 {
        opts.search_s / cost_s
    } else {
        0.0
    });
    let expected_s = time_scale * cost_s;
    eprintln!(
        "fleet: {}: a search of {} evaluations costs {:.1} recorded seconds (measured on a \
         replay); time scale {:.6} ({}), so a search should take about {:.2} s",
        data.name,
        opts.budget,
        cost_s,
        time_scale,
        if opts.time_scale.is_some() {
            "--time-scale"
        } else {
            "chosen from --search-s"
        },
        expected_s
    );
    std::fs::create_dir_all(&opts.cache_dir)
        .map_err(|e| FleetError::Usage(format!("--cache-dir {}: {e}", opts.cache_dir.display())))?;
    let run_dir = opts.cache_dir.join("fleet-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| FleetError::Failed(format!("{}: {e}", run_dir.display())))?;
    if let Some(url) = &opts.remote {
        probe::check(url, &data, &run_dir.join("probe")).map_err(FleetError::Refused)?;
        eprintln!("fleet: --remote: winners travel through the remote tier; all hosts share it");
    }
    clear_host_files(&opts.cache_dir)?;

    let id = Identity {
        kernel: kernel.spec.id(),
        device: dev.fingerprint.hash64(),
    };
    let fleet = Fleet {
        opts,
        run_dir,
        device_name,
        time_scale,
        hard_deadline_ms: unix_ms() + ((opts.seconds + 60.0) * 1000.0) as u64,
    };

    let start = Instant::now();
    let start_ms = unix_ms();
    let deadline = start + Duration::from_secs_f64(opts.seconds);
    let mut running: Vec<Running> = Vec::new();
    let mut done: Vec<ProcRecord> = Vec::new();
    let mut problems = Vec::new();
    for slot in 0..opts.procs {
        running.push(fleet.spawn(slot, 0)?);
    }
    eprintln!(
        "fleet: {} processes on {} host(s) ({} mode), {} keys, at most {} s",
        opts.procs,
        opts.hosts,
        if opts.mode == jitune::Mode::Blocking {
            "blocking"
        } else {
            "background"
        },
        opts.keys,
        opts.seconds
    );
    let min_age_ms = ((KILL_AT * expected_s * 1000.0) as u64).max(20);
    let mut kill: Option<Kill> = None;
    let mut all_tuned_ms: Option<u64> = None;
    let end = loop {
        // Processes that exited by themselves are out of the run.
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            r.record.log.poll(&r.log_path);
            if let Ok(Some(status)) = r.child.try_wait() {
                problems.push(format!(
                    "process {} (slot {}, host {}) exited by itself during the run: {status}",
                    r.child.id(),
                    r.record.slot,
                    r.record.host
                ));
                done.push(running.remove(i).record);
            } else {
                i += 1;
            }
        }

        if opts.kill_tuner && kill.is_none() {
            if let Some((i, keys, lease_held)) = pick_victim(&fleet, &running, min_age_ms, &id) {
                let mut victim = running.remove(i);
                let pid = victim.child.id();
                let at_ms = unix_ms();
                // std's kill is SIGKILL on Unix: no destructor, no lease released.
                victim
                    .child
                    .kill()
                    .map_err(|e| FleetError::Failed(format!("cannot kill process {pid}: {e}")))?;
                let _ = victim.child.wait();
                victim.record.log.poll(&victim.log_path);
                victim.record.killed_at = Some(at_ms);
                let slot = victim.record.slot;
                kill = Some(Kill {
                    slot,
                    gen: victim.record.gen,
                    host: victim.record.host,
                    pid,
                    at_ms,
                    keys,
                    lease_held,
                });
                done.push(victim.record);
                // A supervisor restarts the server in its place.
                running.push(fleet.spawn(slot, 1)?);
            }
        }

        // Every live slot's process has every key tuned?
        if all_tuned_ms.is_none() && !running.is_empty() {
            let times: Option<Vec<u64>> = running
                .iter()
                .map(|r| r.record.log.all_tuned_at())
                .collect();
            all_tuned_ms = times.and_then(|t| t.into_iter().max());
        }
        if let Some(t) = all_tuned_ms {
            if unix_ms() >= t + (opts.grace_s * 1000.0) as u64 {
                break End::AllTuned;
            }
        }
        if Instant::now() >= deadline || running.is_empty() {
            break End::Deadline;
        }
        std::thread::sleep(TICK);
    };
    let end_ms = unix_ms();

    // Stop: close every stdin, then wait for the reports.
    for r in running.iter_mut() {
        r.stdin = None;
    }
    let stop_deadline = Instant::now() + STOP_WAIT;
    for mut r in running {
        loop {
            match r.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        problems.push(format!(
                            "process {} (slot {}) ended with {status}",
                            r.child.id(),
                            r.record.slot
                        ));
                    }
                    break;
                }
                Ok(None) if Instant::now() < stop_deadline => std::thread::sleep(TICK),
                _ => {
                    problems.push(format!(
                        "process {} (slot {}) did not stop within {STOP_WAIT:?}; killed",
                        r.child.id(),
                        r.record.slot
                    ));
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
            }
        }
        r.record.log.poll(&r.log_path);
        match std::fs::read_to_string(&r.report_path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .and_then(|v| ChildReport::from_json(&v))
        {
            Ok(rep) => r.record.report = Some(rep),
            Err(e) => problems.push(format!(
                "process in slot {} wrote no usable report ({}): {e}",
                r.record.slot,
                r.report_path.display()
            )),
        }
        done.push(r.record);
    }
    done.sort_by_key(|p| (p.slot, p.gen));

    // The hosts' stores at the end.
    let mut stored = Vec::new();
    let mut integrity = Vec::new();
    for h in 0..opts.hosts {
        let path = fleet.host_file(h);
        match Store::open_read_only_live(&path)
            .and_then(|s| Ok((s.entries()?, s.integrity_check()?)))
        {
            Ok((entries, check)) => {
                if check != "ok" {
                    problems.push(format!("{}: integrity_check says {check}", path.display()));
                }
                integrity.push(check);
                stored.push(Some(
                    entries
                        .iter()
                        .filter(|e| id.is_fleet(&e.key))
                        .map(|e| e.key.shape.to_text())
                        .collect::<BTreeSet<String>>(),
                ));
            }
            Err(e) => {
                problems.push(format!("{}: cannot read the store: {e}", path.display()));
                integrity.push(format!("unreadable: {e}"));
                stored.push(None);
            }
        }
    }
    if opts.kill_tuner && kill.is_none() {
        problems.push("--kill-tuner: no process was found in the middle of a search".into());
    }
    let wall_s = (all_tuned_ms.unwrap_or(end_ms).saturating_sub(start_ms)) as f64 / 1000.0;
    let figures = Figures::compute(&Inputs {
        keys: opts.keys,
        slots: opts.procs,
        procs: &done,
        stored: &stored,
        kill: kill.as_ref(),
        shared: opts.remote.is_some(),
        wall_s,
    });
    let search_s = done
        .iter()
        .flat_map(|p| p.log.lines.iter())
        .filter_map(|l| match l {
            super::report::Line::Done { wall_s, .. } => Some(*wall_s),
            _ => None,
        })
        .collect();
    Ok(Run {
        figures,
        problems,
        end,
        time_scale,
        search_s,
        kill,
        procs: done,
        integrity,
        total_s: start.elapsed().as_secs_f64(),
        opts: opts.clone(),
    })
}

impl Run {
    /// The processes in the run's last generation of each slot (the ones `winners` lists).
    pub fn final_procs(&self) -> Vec<&ProcRecord> {
        (0..self.opts.procs)
            .filter_map(|s| {
                self.procs
                    .iter()
                    .filter(|p| p.slot == s && p.killed_at.is_none())
                    .max_by_key(|p| p.gen)
            })
            .collect()
    }

    /// The run in a few lines on stderr (the figures go to stdout).
    pub fn print_summary(&self) {
        let o = &self.opts;
        let s = &self.search_s;
        let (min, max) = s
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        eprintln!(
            "fleet: {} searches started, {} finished, {:.2} s each on average (min {:.2}, max {:.2}) \
             at time scale {:.6}",
            self.figures.searches_per_key.values().sum::<u64>(),
            s.len(),
            mean,
            if s.is_empty() { 0.0 } else { min },
            max,
            self.time_scale
        );
        match self.end {
            End::AllTuned => eprintln!(
                "fleet: every process had every key tuned after {:.2} s; the run ended {:.1} s later",
                self.figures.wall_s, o.grace_s
            ),
            End::Deadline => eprintln!(
                "fleet: the run ended at the --seconds deadline ({} s) before every process had \
                 every key tuned",
                o.seconds
            ),
        }
        if let Some(k) = &self.kill {
            eprintln!(
                "fleet: killed process {} (slot {}, host {}) with SIGKILL in the middle of its \
                 search of key(s) {}; it held the lease: {}; a replacement started in its place",
                k.pid,
                k.slot,
                k.host,
                k.keys.join(", "),
                match k.lease_held {
                    Some(true) => "yes (the store's lease table said so)",
                    Some(false) => "no",
                    None => "unknown (the store has no lease rows: this jitune keeps no leases)",
                }
            );
        }
        for (h, c) in self.integrity.iter().enumerate() {
            eprintln!("fleet: host {h}: integrity_check {c}");
        }
        for p in &self.procs {
            let starts = p
                .log
                .lines
                .iter()
                .filter(|l| matches!(l, super::report::Line::Start { .. }))
                .count();
            let tuned = p
                .report
                .as_ref()
                .map(|r| r.plans.values().filter(|(_, t)| *t).count());
            eprintln!(
                "fleet: slot {} gen {} host {} {} pid {}: {} searches, {}",
                p.slot,
                p.gen,
                p.host,
                o.lock_id_of(p.slot),
                p.log.pid().unwrap_or(0),
                starts,
                match (p.killed_at, tuned) {
                    (Some(_), _) => "killed".to_string(),
                    (None, Some(n)) => format!("{n}/{} keys tuned at the end", o.keys),
                    (None, None) => "no report".to_string(),
                }
            );
        }
        eprintln!("fleet: run took {:.1} s in all", self.total_s);
    }
}
