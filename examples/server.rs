//! A server's view of jitune: several threads launch kernels (SGEMM, softmax, and HGEMM when its
//! spec is present) for a stream of varying shapes in Background mode. Nothing waits for tuning:
//! a miss launches the best config known (a nearby shape's winner, else the spec's default) and
//! tunes in a background thread, which swaps the winner in when it is done.
//!
//! It prints what a server operator cares about: host-side launch latency (p50/p99/max of the
//! `launch` call itself) in three phases (the first pass, where every bucket misses once and
//! compiles its provisional plan inline; while background tuning runs; after it), how many tuned
//! winners were swapped in (`Tuner::swaps`), and kernel throughput before and after tuning, two
//! ways: the GPU time per launch (CUDA events) of a pass made before tuning is done against the
//! last pass, and, with the GPU otherwise idle, the default config against the tuned one timed
//! side by side (cold L2, events, median). The pass before tuning shares the GPU with the tuning
//! runs, so the quiet comparison is the cleaner of the two; it also shows what background tuning
//! under load picked.
//!
//!     cargo run --release --example server [-- --threads 4 --seconds 120 --tune-s 8
//!                                               --pause-ms 20 --cache FILE --preload]
//!
//! `--preload` (or `SERVER_PRELOAD=1`) calls `Tuner::preload` for every kernel before serving
//! starts and waits for it: the default configs (and winners already in the cache) are compiled
//! then, so the first pass launches without compiling on a serving thread.
//!
//! At the end it prints the tuner's counters (`Tuner::stats`) and a summary of its events
//! (`Tuner::on_event`: misses by decision, each search's winner against the default, swaps,
//! fallbacks, errors).
//!
//! Threads pause `--pause-ms` between passes over their shapes (requests do not arrive back to
//! back). The cache is memory-only unless `--cache` names a file (so each run starts cold).
//! Without a GPU it says why in one line and exits with status 2.

#[path = "common/mod.rs"]
mod common;
#[path = "common/events.rs"]
mod events;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cuda, KernelBuffers, Timer};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaContext;
use jitune::cache::{Cache, CacheOptions};
use jitune::internals::median;
use jitune::internals::Rng;
use jitune::tuner::{Kernel, Mode, TuneOptions, Tuner};
use jitune::{Error, Result};

fn main() -> ExitCode {
    jitune::run_if_worker();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::from(2)
        }
    }
}

/// One shape bucket of the workload: a kernel and the concrete shapes that fall into the bucket.
#[derive(Clone)]
struct Family {
    kernel: Kernel,
    gemm: bool, // false: softmax
    shapes: Vec<Vec<i64>>,
}

impl Family {
    fn label(&self) -> String {
        format!(
            "{} {}",
            self.kernel.spec.name,
            common::shape_text(&self.shapes[0])
        )
    }

    /// Useful work of one launch: FLOPs for a GEMM, compulsory bytes for softmax.
    fn work(&self, shape: &[i64]) -> f64 {
        if self.gemm {
            2.0 * shape.iter().map(|d| *d as f64).product::<f64>()
        } else {
            2.0 * 4.0 * (shape[0] * shape[1]) as f64
        }
    }

    fn unit(&self) -> &'static str {
        if self.gemm {
            "TFLOP/s"
        } else {
            "TB/s"
        }
    }

    /// The largest shape (buffers are sized for it).
    fn max_shape(&self) -> Vec<i64> {
        (0..self.shapes[0].len())
            .map(|d| self.shapes.iter().map(|s| s[d]).max().unwrap_or(1))
            .collect()
    }
}

/// Phases of a serving thread, for the latency figures.
const WARM: usize = 0; // first pass: every bucket misses once (provisional plan compiled inline)
const TUNING: usize = 1; // passes while background tuning runs
const TUNED: usize = 2; // passes after every bucket's winner is in

/// What one thread saw.
#[derive(Default)]
struct ThreadLog {
    /// Host time of each `launch` call, microseconds, per phase.
    latency_us: [Vec<f64>; 3],
    /// Per family: GPU ms per launch (with its work) in the timed pass before and after tuning.
    first: Vec<Vec<(f64, f64)>>,
    last: Vec<Vec<(f64, f64)>>,
    /// Per family: the config the timed pass before tuning launched.
    first_config: Vec<String>,
    passes: usize,
}

fn all_tuned(tuner: &Tuner, families: &[Family]) -> bool {
    tuner.tuning_in_progress() == 0
        && families
            .iter()
            .all(|f| tuner.plan(&f.kernel, &f.shapes[0]).is_some_and(|p| p.tuned))
}

/// How a serving thread runs.
#[derive(Clone, Copy)]
struct Pace {
    deadline: Instant,
    /// Idle time between passes (requests do not arrive back to back).
    pause: Duration,
    /// Untimed passes after tuning, for the steady-state latency figures.
    tuned_passes: usize,
}

/// One thread of the server: its own stream and buffers, a shuffled cycle over every
/// (family, shape). A warm pass (every bucket misses), a timed pass before tuning is done,
/// passes until tuning is done (or the deadline), steady-state passes, a timed last pass.
fn serve(
    tuner: Tuner,
    families: Vec<Family>,
    ctx: Arc<CudaContext>,
    thread: usize,
    pace: Pace,
) -> Result<ThreadLog> {
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let mut bufs = families
        .iter()
        .enumerate()
        .map(|(i, f)| {
            KernelBuffers::new(
                &f.kernel.spec.name,
                &f.max_shape(),
                &stream,
                (thread * 100 + i) as u64,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cycle: Vec<(usize, usize)> = families
        .iter()
        .enumerate()
        .flat_map(|(i, f)| (0..f.shapes.len()).map(move |j| (i, j)))
        .collect();
    let mut rng = Rng::new(thread as u64 + 7);
    for i in (1..cycle.len()).rev() {
        cycle.swap(i, rng.index(i + 1));
    }
    // Each bucket's first shape comes first (a stable sort keeps the shuffle otherwise): a
    // bucket is tuned at the shape of the launch that missed it, so whichever thread or process
    // misses first, every run tunes a bucket at the same shape and runs can be compared key by
    // key (issue 14's fleet against one process).
    cycle.sort_by_key(|&(_, si)| si != 0);
    let mut events = Vec::new();
    for _ in 0..cycle.len() {
        let ev = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("creating events"))
        };
        events.push((ev()?, ev()?));
    }
    let mut log = ThreadLog {
        first: vec![Vec::new(); families.len()],
        last: vec![Vec::new(); families.len()],
        first_config: vec![String::new(); families.len()],
        ..Default::default()
    };
    // One pass over the cycle. A timed pass brackets each launch with events (outside the
    // latency measurement); launches are enqueued back to back, so the stream stays busy and
    // the events measure GPU time, not host gaps. Timed passes never contain a miss: a miss
    // compiles on the host between the two events.
    let mut pass =
        |phase: usize, timed: bool, log: &mut ThreadLog| -> Result<Vec<(usize, f64, f64)>> {
            for (slot, &(fi, si)) in cycle.iter().enumerate() {
                let f = &families[fi];
                let shape = &f.shapes[si];
                if timed {
                    events[slot]
                        .0
                        .record(&stream)
                        .map_err(cuda("recording an event"))?;
                }
                let t = Instant::now();
                bufs[fi].launch(&tuner, &f.kernel, &stream, shape)?;
                log.latency_us[phase].push(t.elapsed().as_secs_f64() * 1e6);
                if timed {
                    events[slot]
                        .1
                        .record(&stream)
                        .map_err(cuda("recording an event"))?;
                }
            }
            stream.synchronize().map_err(cuda("serving"))?;
            log.passes += 1;
            let mut out = Vec::new();
            if timed {
                for (slot, &(fi, si)) in cycle.iter().enumerate() {
                    let ms = events[slot]
                        .0
                        .elapsed_ms(&events[slot].1)
                        .map_err(cuda("reading events"))? as f64;
                    out.push((fi, ms, families[fi].work(&families[fi].shapes[si])));
                }
            }
            Ok(out)
        };
    pass(WARM, false, &mut log)?;
    for (fi, f) in families.iter().enumerate() {
        log.first_config[fi] = tuner
            .plan(&f.kernel, &f.shapes[0])
            .map(|p| format!("{}{}", p.config, if p.tuned { " (tuned)" } else { "" }))
            .unwrap_or_default();
    }
    for (fi, ms, w) in pass(TUNING, true, &mut log)? {
        log.first[fi].push((ms, w));
    }
    while Instant::now() < pace.deadline && !all_tuned(&tuner, &families) {
        pass(TUNING, false, &mut log)?;
        std::thread::sleep(pace.pause);
    }
    for _ in 0..pace.tuned_passes {
        pass(TUNED, false, &mut log)?;
        std::thread::sleep(pace.pause);
    }
    for (fi, ms, w) in pass(TUNED, true, &mut log)? {
        log.last[fi].push((ms, w));
    }
    Ok(log)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Work per second over a set of (ms, work) launches, in units of 1e12 per second.
fn rate(v: &[(f64, f64)]) -> f64 {
    let ms: f64 = v.iter().map(|x| x.0).sum();
    let w: f64 = v.iter().map(|x| x.1).sum();
    w / ms / 1e9
}

fn run() -> Result<()> {
    let threads: usize = common::num_option("--threads", "SERVER_THREADS", 4)?;
    let seconds: f64 = common::num_option("--seconds", "SERVER_SECONDS", 120.0)?;
    let tune_s: f64 = common::num_option("--tune-s", "SERVER_TUNE_S", 8.0)?;
    let pause_ms: u64 = common::num_option("--pause-ms", "SERVER_PAUSE_MS", 20)?;
    let preload = std::env::args().any(|a| a == "--preload")
        || std::env::var("SERVER_PRELOAD").is_ok_and(|v| v == "1");
    let sgemm = common::kernel("sgemm")?;
    let softmax = common::kernel("softmax")?;
    jitune::require_cuda()?;
    let cache_opts = match common::option("--cache", "SERVER_CACHE") {
        Some(p) => CacheOptions::at(p),
        None => CacheOptions::memory_only(),
    };
    let ctx = CudaContext::new(0).map_err(cuda("opening device 0"))?;
    let tuner = Tuner::with_context(ctx.clone(), Cache::open(cache_opts)?, Mode::Background)?;
    tuner.set_tune_options(TuneOptions {
        max_evals: 80,
        max_time_s: Some(tune_s),
        ..Default::default()
    });
    let events = events::EventSummary::attach(&tuner);
    let mut families = vec![
        Family {
            kernel: sgemm.clone(),
            gemm: true,
            shapes: vec![
                vec![16, 4096, 4096],
                vec![9, 4096, 4096],
                vec![12, 4096, 4096],
            ],
        },
        Family {
            kernel: sgemm.clone(),
            gemm: true,
            shapes: vec![
                vec![1024, 1024, 1024],
                vec![1000, 1024, 1024],
                vec![777, 1024, 1000],
            ],
        },
        Family {
            kernel: sgemm,
            gemm: true,
            shapes: vec![vec![2048, 2048, 2048], vec![1536, 2048, 2048]],
        },
        Family {
            kernel: softmax.clone(),
            gemm: false,
            shapes: vec![vec![4096, 4096], vec![3000, 4096]],
        },
        Family {
            kernel: softmax,
            gemm: false,
            shapes: vec![vec![16384, 1024], vec![16384, 1000], vec![12000, 1024]],
        },
    ];
    if let Some(h) = common::optional_kernel(&common::hgemm_spec_for(
        tuner.gpu().expect("a GPU tuner has a GPU"),
        "f16",
    ))? {
        families.push(Family {
            kernel: h.clone(),
            gemm: true,
            shapes: vec![vec![4096, 4096, 4096], vec![4000, 4096, 4096]],
        });
        families.push(Family {
            kernel: h,
            gemm: true,
            shapes: vec![
                vec![16, 4096, 4096],
                vec![10, 4096, 4096],
                vec![13, 4096, 4096],
            ],
        });
    }
    // Every family's shapes must share one tuning key (the figures are per bucket).
    for f in &families {
        let key = tuner.key(&f.kernel, &f.shapes[0])?;
        for s in &f.shapes[1..] {
            if tuner.key(&f.kernel, s)? != key {
                return Err(Error::Shape(format!(
                    "{}: {s:?} is not in the bucket of {:?}",
                    f.kernel.spec.name, f.shapes[0]
                )));
            }
        }
    }
    println!(
        "device {}; {threads} threads, {} shape buckets, background tuning {tune_s} s per bucket",
        tuner.fingerprint().to_text(),
        families.len()
    );
    if preload {
        let t = Instant::now();
        let mut kernels: Vec<&Kernel> = Vec::new();
        for f in &families {
            if !kernels.iter().any(|k| k.spec.id() == f.kernel.spec.id()) {
                kernels.push(&f.kernel);
            }
        }
        let running: Vec<_> = kernels.iter().map(|k| tuner.preload(k)).collect();
        let (mut images, mut compiled, mut failed) = (0, 0, 0);
        for p in running {
            let r = p.wait();
            images += r.configs;
            compiled += r.compiled;
            failed += r.failed;
        }
        println!(
            "preloaded {images} images of {} kernels in {:.2} s ({compiled} compiled, {failed} failed)",
            kernels.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    let pace = Pace {
        deadline: start + Duration::from_secs_f64(seconds),
        pause: Duration::from_millis(pause_ms),
        tuned_passes: 50,
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (tuner, families, ctx) = (tuner.clone(), families.clone(), ctx.clone());
            std::thread::spawn(move || serve(tuner, families, ctx, t, pace))
        })
        .collect();
    let mut logs = Vec::new();
    for h in handles {
        logs.push(
            h.join()
                .map_err(|_| Error::Search("a serving thread panicked".into()))??,
        );
    }
    let wall = start.elapsed().as_secs_f64();
    if !all_tuned(&tuner, &families) {
        println!("deadline reached with tuning still running (raise --seconds)");
    }

    println!(
        "\n{} launches in {wall:.1} s ({} passes per thread, {pause_ms} ms apart)",
        logs.iter()
            .map(|l| l.latency_us.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>(),
        logs.iter().map(|l| l.passes).sum::<usize>() / logs.len().max(1)
    );
    println!("launch latency (host, the launch call itself):");
    for (phase, what) in [
        (WARM, "first pass (each bucket misses once)"),
        (TUNING, "while background tuning runs"),
        (TUNED, "after tuning (steady state)"),
    ] {
        let mut lat: Vec<f64> = logs
            .iter()
            .flat_map(|l| l.latency_us[phase].clone())
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {what:<38} {:>6} launches  p50 {:>8.1} us  p99 {:>9.1} us  max {:>9.1} us",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "tuned winners swapped in: {} (of {} buckets)",
        tuner.swaps(),
        families.len()
    );
    events::print_stats(&tuner.stats());
    events.print(20);

    println!(
        "\nGPU time per launch (CUDA events), a pass before tuning is done (shares the GPU with\n\
         the tuning runs) vs the last pass, all threads:"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>8} {:>22}  launched before tuning",
        "bucket", "before ms", "after ms", "speedup", "throughput"
    );
    for (fi, f) in families.iter().enumerate() {
        let first: Vec<(f64, f64)> = logs.iter().flat_map(|l| l.first[fi].clone()).collect();
        let last: Vec<(f64, f64)> = logs.iter().flat_map(|l| l.last[fi].clone()).collect();
        let (a, b) = (rate(&first), rate(&last));
        let per = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{:<26} {:>10.4} {:>10.4} {:>7.2}x {:>6.2} -> {:>5.2} {:<7}  {}",
            f.label(),
            per(&first),
            per(&last),
            b / a,
            a,
            b,
            f.unit(),
            logs.first()
                .map(|l| l.first_config[fi].as_str())
                .unwrap_or("")
        );
    }

    // The quiet comparison: the default config (what an untuned launch runs) against the
    // tuned winner, side by side on an otherwise idle GPU.
    println!("\nquiet re-measure, default config vs tuned (cold L2, events, median):");
    let untuned = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::CacheOnly)?;
    untuned.set_mode(Mode::CacheOnly);
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let mut timer = Timer::new(
        &ctx,
        stream.clone(),
        tuner.gpu().expect("a GPU tuner has a GPU").limits.l2_bytes,
    )?;
    println!(
        "{:<26} {:>10} {:>10} {:>8}  {:<44} tuned config",
        "bucket", "default ms", "tuned ms", "speedup", "default config"
    );
    for f in &families {
        let shape = &f.shapes[0];
        let mut b = KernelBuffers::new(&f.kernel.spec.name, shape, &stream, 99)?;
        let s = timer.compare(2, &mut |i, st| {
            if i == 0 {
                b.launch(&untuned, &f.kernel, st, shape)
            } else {
                b.launch(&tuner, &f.kernel, st, shape)
            }
        })?;
        let (d, t) = (median(&s[0]), median(&s[1]));
        let cfg = |tu: &Tuner| {
            tu.plan(&f.kernel, shape)
                .map(|p| format!("{}{}", p.config, if p.tuned { "" } else { " (untuned)" }))
                .unwrap_or_default()
        };
        println!(
            "{:<26} {:>10.4} {:>10.4} {:>7.2}x  {:<44} {}",
            f.label(),
            d,
            t,
            d / t,
            cfg(&untuned),
            cfg(&tuner)
        );
    }
    // Background searches end (and store what they measured) before the process does.
    if !tuner.shutdown(Duration::from_secs(30)) {
        eprintln!("server: background tuning still running after 30 s; exiting anyway");
    }
    Ok(())
}
