//! The cache under load and faults on a GPU (about two minutes): 8 processes x 4 threads launch
//! softmax, layernorm and reduction at 29 overlapping shapes through real `Tuner`s in
//! Background mode on one cache file, tuning every miss, while the parent SIGKILLs random
//! processes midway and starts replacements. Each child logs a key when the tuner reports its
//! winner stored (the tuner logs "tuned" only after the write returned). Afterwards: `PRAGMA
//! integrity_check` clean, every logged key present, no key tuned twice within one process.
//! Prints launches/s, processes, minutes, kills and rows lost. No background tuning run may
//! fail (a process killed while running a key's reference config must not make the key
//! untunable for the processes that come after).
//!
//! Tuning is isolated (Background mode's default: one benchmark worker per process at a time,
//! since a tuner's background runs take turns); `JITUNE_ISOLATION=in-process` tunes in process.
//! `JITUNE_LOAD_SECS` sets the duration (default 120). Without `JITUNE_GPU_TESTS=1` and the
//! CUDA libraries it prints why it skips and passes. `harness = false`: `main` runs the parent,
//! a child (`JITUNE_LOAD_ROLE`) or a jitune worker (`run_if_worker`).

mod cache_load_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_load_common::*;
use cudarc::driver::{CudaContext, CudaSlice};
use jitune::cache::{Cache, CacheOptions};
use jitune::engine::Isolation;
use jitune::internals::Rng;
use jitune::spec::Role;
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};

const PROCS: usize = 8;
const THREADS: usize = 4;

/// "tuned NAME SHAPE:" prefixes of the tuner's log line, mapped to key texts, and the log.
struct Hook {
    keys: HashMap<String, String>,
    log: ChildLog,
    tuned: Mutex<HashMap<String, u32>>,
}

static HOOK: OnceLock<Hook> = OnceLock::new();

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args().to_string();
        let Some(hook) = HOOK.get() else { return };
        if r.level() <= log::Level::Warn {
            eprintln!("[child {}] {msg}", std::process::id());
            if msg.contains("background tuning of") {
                hook.log.line(&format!("tunefail {msg}"));
            }
        }
        let Some(colon) = msg.find("]:") else { return };
        let Some(key) = hook.keys.get(&msg[..colon + 2]) else {
            return;
        };
        let mut tuned = hook.tuned.lock().unwrap_or_else(|e| e.into_inner());
        let n = tuned.entry(key.clone()).or_default();
        *n += 1;
        if *n > 1 {
            hook.log.line(&format!("dup {key}"));
        }
        hook.log.line(&format!("key {key}"));
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

fn kernels() -> Vec<(Kernel, Vec<Vec<i64>>)> {
    let k = |n: &str| {
        Kernel::from_toml_file(format!("{}/kernels/{n}.toml", env!("CARGO_MANIFEST_DIR")))
            .expect("spec")
    };
    let mut two_d = Vec::new();
    for rows in [256i64, 512, 1024] {
        for cols in [256i64, 512, 1024, 2048] {
            two_d.push(vec![rows, cols]);
        }
    }
    vec![
        (k("softmax"), two_d.clone()),
        (k("layernorm"), two_d),
        (k("reduction"), (16..21).map(|p| vec![1i64 << p]).collect()),
    ]
}

/// One thread's buffers for one kernel and shape.
struct Buffers {
    bufs: Vec<Option<CudaSlice<f32>>>,
    scalars: Vec<i64>,
}

fn child(env: ChildEnv) {
    let ctx = CudaContext::new(0).expect("device");
    let cache = Cache::open(CacheOptions::at(&env.path)).expect("cache");
    let tuner = Tuner::with_context(ctx.clone(), cache, Mode::Background).expect("tuner");
    // The tuner reads `JITUNE_ISOLATION` itself; without it, Background mode isolates.
    let expected = Isolation::from_env().unwrap_or(Isolation::Process);
    assert_eq!(tuner.isolation(), expected);
    tuner.set_tune_options(TuneOptions {
        strategy: "random".into(),
        max_evals: 12,
        max_time_s: Some(10.0),
        seed: env.seed,
        ..Default::default()
    });
    let work = Arc::new(kernels());
    let mut keys = HashMap::new();
    for (k, shapes) in work.iter() {
        for s in shapes {
            let key = tuner.key(k, s).expect("key");
            keys.insert(
                format!("jitune: tuned {} {:?}:", k.spec.name, s),
                key_text(&key),
            );
        }
    }
    let env = Arc::new(env);
    let _ = HOOK.set(Hook {
        keys,
        log: ChildLog::open(&std::path::PathBuf::from(
            std::env::var_os(LOG).expect("log path"),
        )),
        tuned: Mutex::default(),
    });
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);

    let launches = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tuner, env, work, launches) =
                (tuner.clone(), env.clone(), work.clone(), launches.clone());
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                let stream = ctx.new_stream().expect("stream");
                let mut rng = Rng::new(env.seed * 17 + t as u64);
                let mut mine: HashMap<(usize, usize), Buffers> = HashMap::new();
                let mut n = 0u64;
                while unix_ms() < env.deadline_ms {
                    let ki = rng.below(work.len() as u64) as usize;
                    let (kernel, shapes) = &work[ki];
                    let si = rng.below(shapes.len() as u64) as usize;
                    let shape = &shapes[si];
                    let b = mine.entry((ki, si)).or_insert_with(|| {
                        let limits = &tuner.gpu().expect("a GPU tuner has a GPU").limits;
                        let mut bufs = Vec::new();
                        let mut scalars = Vec::new();
                        for a in &kernel.spec.args {
                            let v = kernel.spec.arg_value(a, shape, limits).expect("arg");
                            scalars.push(v);
                            bufs.push(if a.role == Role::Scalar {
                                None
                            } else {
                                let host: Vec<f32> =
                                    (0..v).map(|i| ((i % 17) as f32) * 0.1 - 0.8).collect();
                                Some(stream.clone_htod(&host).expect("upload"))
                            });
                        }
                        Buffers { bufs, scalars }
                    });
                    let mut args: Vec<Arg<'_>> = Vec::new();
                    for ((a, buf), v) in kernel
                        .spec
                        .args
                        .iter()
                        .zip(b.bufs.iter_mut())
                        .zip(&b.scalars)
                    {
                        args.push(match (a.role, buf) {
                            (Role::Scalar, _) | (_, None) => Arg::Int(*v),
                            (Role::In, Some(s)) => Arg::In(&*s),
                            (_, Some(s)) => Arg::Out(s),
                        });
                    }
                    tuner
                        .launch(kernel, &stream, shape, &mut args)
                        .expect("launch");
                    n += 1;
                    if n % 64 == 0 {
                        stream.synchronize().expect("sync");
                        launches.fetch_add(64, Ordering::Relaxed);
                    }
                }
                stream.synchronize().expect("sync");
                launches.fetch_add(n % 64, Ordering::Relaxed);
            })
        })
        .collect();
    while unix_ms() < env.deadline_ms {
        std::thread::sleep(Duration::from_millis(500));
        env.log
            .line(&format!("launches {}", launches.load(Ordering::Relaxed)));
    }
    for t in threads {
        t.join().expect("a launching thread panicked");
    }
    env.log
        .line(&format!("launches {}", launches.load(Ordering::Relaxed)));
    // Background runs still going finish and store their winners before the process exits.
    let t = Instant::now();
    while tuner.tuning_in_progress() > 0 && t.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    jitune::run_if_worker();
    if let Some(env) = child_env() {
        child(env);
        return;
    }
    if let Err(why) = jitune::internals::gpu_tests_enabled() {
        println!("skipping cache_load_gpu: {why}");
        return;
    }
    let secs: f64 = std::env::var("JITUNE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    let dir = std::env::temp_dir().join(format!("jitune-cache-load-gpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let load = Load {
        procs: PROCS,
        secs,
        kills: ((secs / 20.0).ceil() as usize).max(2),
        grace: Duration::from_secs(60),
    };
    let report = run(&load, &dir);
    report.print("cache load (GPU, real tuning)", PROCS, THREADS);
    report.check();
    // A process killed mid-tuning leaves its in-flight configs recorded as crashed; that must
    // never make a key untunable for the processes that come after.
    assert!(
        report.tune_failures.is_empty(),
        "tuning runs failed: {:?}",
        &report.tune_failures[..report.tune_failures.len().min(5)]
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("test cache_load_gpu ... ok");
}
