//! Where a tuning run's wall time goes, per candidate: waiting for its image (binary table or
//! compile pool), module load, correctness check, timing (the kernel's own runs and the rest:
//! flushes, launches, synchronisations), store writes (in-flight markers, failure records), and
//! what is left (setting up inputs, the reference, re-measurements, the strategy itself, the
//! winner's store write).
//!
//! Each case tunes in process (Blocking mode) into a fresh SQLite cache file, so store costs are
//! real writes. The counters are the evaluator's own (`GpuEvaluator::stats`): a few clock reads
//! per candidate. The figure of issue 18: overhead per candidate beyond the kernel's own timed
//! runs, median <= 5 ms, also at 256 MB of output (the transpose case). A candidate whose image
//! a prefetch (LFBO's guess at the next batch, compiled by idle pool workers) made ready counts
//! as ready: its image wait is the table lookup only; the `images` line counts them.
//!
//!     cargo bench --bench tune_breakdown [-- --cases transpose,sgemm,softmax]

use std::time::Instant;

use jitune::cache::{Cache, CacheOptions};
use jitune::internals::median;
use jitune::tuner::{Kernel, Mode, TuneOptions, TuneReport, Tuner};

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("tune_breakdown bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("tune_breakdown: {e}");
        std::process::exit(1);
    }
}

struct Case {
    name: &'static str,
    spec: &'static str,
    shape: Vec<i64>,
    evals: usize,
}

fn cases() -> Vec<Case> {
    let root = env!("CARGO_MANIFEST_DIR");
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        Case {
            name: "transpose",
            spec: leak(format!("{root}/tests/data/transpose.toml")),
            shape: vec![8192, 8192],
            evals: 120,
        },
        Case {
            name: "sgemm",
            spec: leak(format!("{root}/kernels/sgemm.toml")),
            shape: vec![2048, 2048, 2048],
            evals: 60,
        },
        Case {
            name: "softmax",
            spec: leak(format!("{root}/kernels/softmax.toml")),
            shape: vec![8192, 8192],
            evals: 60,
        },
    ]
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

fn report(c: &Case, r: &TuneReport, wall_s: f64) {
    let Some(st) = &r.stats else {
        println!("{}: no stats (isolated tuning)", c.name);
        return;
    };
    let per = |f: &dyn Fn(&jitune::engine::CandidateCost) -> f64| -> f64 {
        let v: Vec<f64> = st.candidates.iter().map(|x| ms(f(x))).collect();
        median(&v)
    };
    let t = st.total();
    let timing_rest = (t.timing_s - t.kernel_s).max(0.0);
    let counted = st.setup_s
        + st.reference.image_wait_s
        + st.reference.load_s
        + st.reference.check_s
        + st.reference.timing_s
        + st.reference.store_s
        + t.image_wait_s
        + t.load_s
        + t.check_s
        + t.timing_s
        + t.store_s
        + st.remeasure_s
        + r.store_s;
    println!(
        "\n{} {:?}: {} configs in {:.2} s (tune's own wall {:.2} s), winner {} at {:.4} ms{}",
        c.name,
        c.shape,
        r.entry.evaluated,
        wall_s,
        r.wall_s,
        r.entry.config,
        r.entry.median_ms,
        match (r.roofline_ms, r.roofline_stop) {
            (Some(f), stop) => format!(
                "; {:.0}% of the roofline{}",
                100.0 * f / r.entry.median_ms,
                if stop { ", stopped there" } else { "" }
            ),
            _ => String::new(),
        }
    );
    println!(
        "  per candidate (median ms): image wait {:.2}  load {:.2}  check {:.2}  timing {:.2} \
         (kernel {:.2} + rest {:.2})  store {:.2}  samples {}  => overhead {:.2} ms (target <= 5)",
        per(&|x| x.image_wait_s),
        per(&|x| x.load_s),
        per(&|x| x.check_s),
        per(&|x| x.timing_s),
        per(&|x| x.kernel_s),
        per(&|x| (x.timing_s - x.kernel_s).max(0.0)),
        per(&|x| x.store_s),
        median(
            &st.candidates
                .iter()
                .map(|x| x.samples as f64)
                .collect::<Vec<_>>()
        ),
        per(&|x| x.overhead_s()),
    );
    println!(
        "  totals (s): setup {:.3}  reference {:.3}  image wait {:.3}  load {:.3}  check {:.3}  \
         kernel {:.3}  timing rest {:.3}  store {:.3}  remeasure {:.3}  winner store {:.3}  \
         left {:.3}  ({} candidates, {} raced)",
        st.setup_s,
        st.reference.image_wait_s
            + st.reference.load_s
            + st.reference.check_s
            + st.reference.timing_s
            + st.reference.store_s,
        t.image_wait_s,
        t.load_s,
        t.check_s,
        t.kernel_s,
        timing_rest,
        t.store_s,
        st.remeasure_s,
        r.store_s,
        (wall_s - counted).max(0.0),
        st.candidates.len(),
        st.raced
    );
    println!(
        "  images: {} compiled by the batches, {} ready (binary table or prefetch); \
         prefetched {}, of which the batches used {} (finished or joined in flight); \
         {} left to a later batch while still compiling",
        st.compiled, st.reused, st.prefetched, st.prefetch_hits, st.deferred
    );
}

fn run() -> jitune::Result<()> {
    let want: Option<Vec<String>> = std::env::args()
        .position(|a| a == "--cases")
        .and_then(|i| std::env::args().nth(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    let dir = std::env::temp_dir().join(format!("jitune-breakdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| jitune::Error::io(&dir, e))?;
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;
    for c in cases() {
        if want
            .as_ref()
            .is_some_and(|w| !w.iter().any(|x| x == c.name))
        {
            continue;
        }
        let kernel = Kernel::from_toml_file(c.spec)?;
        let cache = Cache::open(CacheOptions::at(dir.join(format!("{}.sqlite", c.name))))?;
        let tuner = Tuner::with_context(ctx.clone(), cache, Mode::Blocking)?;
        let cpu0 = CpuSnapshot::take();
        let t = Instant::now();
        let r = tuner.tune_with(
            &kernel,
            &c.shape,
            &TuneOptions {
                max_evals: c.evals,
                max_time_s: Some(120.0),
                ..Default::default()
            },
        )?;
        let wall = t.elapsed().as_secs_f64();
        let cpu1 = CpuSnapshot::take();
        report(&c, &r, wall);
        cpu1.report_since(&cpu0, wall);
        let p = tuner.compile_pool_stats();
        println!(
            "  compile pool: {} compilations, {:.1} ms mean, {:.1} ms max, {} in this process, \
             {} workers started",
            p.compiles,
            if p.compiles > 0 {
                p.compile_s * 1e3 / p.compiles as f64
            } else {
                0.0
            },
            p.max_s * 1e3,
            p.in_process,
            p.spawned
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Where the CPU went during a tuning run (Linux `/proc`; empty elsewhere): this process's
/// threads, its child processes (the compile workers; live ones from their own `stat`, ended
/// ones from this process's children totals) and the whole machine. Tells compile workers that
/// wait for a CPU from workers that work longer.
struct CpuSnapshot {
    /// (thread id, name, CPU ms) of this process's threads.
    threads: Vec<(String, String, f64)>,
    /// CPU ms of live child processes, by pid.
    children: Vec<(String, f64)>,
    /// CPU ms of ended, reaped children.
    reaped_ms: f64,
    /// Busy and total jiffies of the machine.
    machine: (f64, f64),
}

/// (name, utime + stime in ms, ppid) from a `stat` file.
fn stat_of(path: &std::path::Path) -> Option<(String, f64, String, f64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let name = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // After the name: state, ppid, ... utime is the 12th field after it, stime the 13th,
    // cutime and cstime the next two (clock ticks of 10 ms).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Some((
        name,
        (num(11) + num(12)) * 10.0,
        f.get(1).unwrap_or(&"").to_string(),
        (num(13) + num(14)) * 10.0,
    ))
}

impl CpuSnapshot {
    fn take() -> CpuSnapshot {
        let me = std::process::id().to_string();
        let mut threads = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                if let Some((name, ms, _, _)) = stat_of(&e.path().join("stat")) {
                    threads.push((e.file_name().to_string_lossy().into_owned(), name, ms));
                }
            }
        }
        let mut children = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((_, ms, ppid, _)) = stat_of(&e.path().join("stat")) {
                    if ppid == me {
                        children.push((pid, ms));
                    }
                }
            }
        }
        let reaped_ms = stat_of(std::path::Path::new("/proc/self/stat"))
            .map(|s| s.3)
            .unwrap_or(0.0);
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let v: Vec<f64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: f64 = v.iter().sum();
                let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
                Some((total - idle, total))
            })
            .unwrap_or((0.0, 0.0));
        CpuSnapshot {
            threads,
            children,
            reaped_ms,
            machine,
        }
    }

    fn report_since(&self, before: &CpuSnapshot, wall_s: f64) {
        let mut threads: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|(tid, name, ms)| {
                let was = before
                    .threads
                    .iter()
                    .find(|(t, _, _)| t == tid)
                    .map_or(0.0, |b| b.2);
                (name.clone(), ms - was)
            })
            .filter(|(_, d)| *d > 0.0)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let own: f64 = threads.iter().map(|t| t.1).sum();
        let live: f64 = self
            .children
            .iter()
            .map(|(pid, ms)| {
                ms - before
                    .children
                    .iter()
                    .find(|(p, _)| p == pid)
                    .map_or(0.0, |b| b.1)
            })
            .sum();
        let reaped = self.reaped_ms - before.reaped_ms;
        let (busy, total) = (
            self.machine.0 - before.machine.0,
            self.machine.1 - before.machine.1,
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        println!(
            "  CPU (s): this process {:.2}, compile workers {:.2} ({} live, {:.2} s of ended ones); \
             machine {:.1} of {cores} cores busy on average over {wall_s:.2} s",
            own / 1e3,
            (live + reaped) / 1e3,
            self.children.len(),
            reaped / 1e3,
            if total > 0.0 { busy / total * cores } else { 0.0 },
        );
        let top: Vec<String> = threads
            .iter()
            .take(6)
            .map(|(n, d)| format!("{n} {:.2}", d / 1e3))
            .collect();
        println!("  busiest threads of this process (s): {}", top.join(", "));
    }
}
