//! Fault injection on the GPU: a spec whose space plants configs that write through a null
//! pointer, trap, spin for 30 s, write NaN and ask for more shared memory than exists
//! (`tests/data/faults.{toml,cu}`), tuned in Background mode (isolated by default) while the
//! host keeps launching and checking its own kernel. The host must survive with a working
//! context, tuning must complete with a correct winner, each fault must be in the store with
//! its class, and a later in-process run must never run a recorded fault again. A second test
//! measures what isolation costs: the same tuning run, in process and isolated.
//!
//! `harness = false`: `main` calls `run_if_worker` first, so this binary is its own benchmark
//! worker. Without `JITUNE_GPU_TESTS=1` and the CUDA libraries it prints why it skips and passes.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use jitune::cache::{Cache, CacheOptions};
use jitune::engine::{Isolation, IsolationOptions};
use jitune::internals::Rng;
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jitune-gpu-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The faults kernel's buffers: x random, y written by the kernel; the expected y.
struct Problem {
    n: usize,
    dx: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    expected: Vec<f32>,
}

impl Problem {
    fn new(stream: &Arc<CudaStream>, n: usize) -> Problem {
        let mut r = Rng::new(42);
        let x: Vec<f32> = (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect();
        let expected = x.iter().map(|v| 2.0 * v + 1.0).collect();
        Problem {
            n,
            dx: stream.clone_htod(&x).expect("upload"),
            dy: stream.alloc_zeros::<f32>(n).expect("alloc"),
            expected,
        }
    }

    /// Launches through the tuner on the host's stream and checks every element.
    fn launch_and_check(&mut self, tuner: &Tuner, kernel: &Kernel, stream: &Arc<CudaStream>) {
        stream.memset_zeros(&mut self.dy).expect("clear y");
        let n = self.n as i64;
        tuner
            .launch(
                kernel,
                stream,
                &[n],
                &mut [
                    Arg::from(&self.dx),
                    Arg::from(&mut self.dy),
                    Arg::from(n as i32),
                ],
            )
            .expect("host launch");
        let y = stream
            .clone_dtoh(&self.dy)
            .expect("the host's context must still work");
        let bad = y
            .iter()
            .zip(&self.expected)
            .filter(|(a, b)| (**a - **b).abs() > 1e-6)
            .count();
        assert_eq!(bad, 0, "{bad} wrong elements from the host's launch");
    }
}

fn faults_are_survived_and_recorded() {
    let ctx = CudaContext::new(0).expect("device 0");
    let stream = ctx.new_stream().expect("stream");
    let dir = temp_dir("survive");
    let path = dir.join("cache.sqlite");
    let kernel = Kernel::from_toml_file(data("faults.toml")).expect("faults spec");
    let tuner = Tuner::with_context(
        ctx.clone(),
        Cache::open(CacheOptions::at(&path)).expect("cache"),
        Mode::Background,
    )
    .expect("tuner");
    assert_eq!(
        tuner.isolation(),
        Isolation::Process,
        "Background mode isolates by default"
    );
    tuner.set_isolation_options(IsolationOptions {
        candidate_timeout: Duration::from_secs(4),
        ..IsolationOptions::default()
    });
    tuner.set_tune_options(TuneOptions {
        strategy: "exhaustive".into(),
        max_evals: 100,
        max_time_s: Some(240.0),
        seed: 1,
    });
    let n = 1usize << 20;
    let mut p = Problem::new(&stream, n);

    // The host launches and checks its own kernel all the while the worker crashes and hangs.
    let start = Instant::now();
    let mut launches = 0usize;
    loop {
        p.launch_and_check(&tuner, &kernel, &stream);
        launches += 1;
        if tuner.swaps() >= 1 && tuner.tuning_in_progress() == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(280),
            "tuning did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tuned_s = start.elapsed().as_secs_f64();
    let plan = tuner.plan(&kernel, &[n as i64]).expect("a plan");
    assert!(plan.tuned, "the tuned winner was swapped in");
    assert!(plan.config.contains("FAULT=0"), "winner {}", plan.config);
    p.launch_and_check(&tuner, &kernel, &stream);

    let key = tuner.key(&kernel, &[n as i64]).expect("key");
    let failures: BTreeMap<String, (String, String)> = tuner
        .cache()
        .failures_for(&key)
        .expect("failures")
        .into_iter()
        .map(|(c, class, msg)| (c, (class.name().to_string(), msg)))
        .collect();
    println!(
        "faults: tuned in {tuned_s:.1} s while the host launched {launches} times; winner {}",
        plan.config
    );
    for (c, (class, msg)) in &failures {
        println!("  {c}: {class}: {}", msg.lines().next().unwrap_or(""));
    }
    let expect = [
        ("B=128,FAULT=1,ITEMS=1", "crashed"),
        ("B=128,FAULT=2,ITEMS=1", "launch"),
        ("B=128,FAULT=3,ITEMS=1", "timeout"),
        ("B=128,FAULT=4,ITEMS=1", "wrong_result"),
        ("B=128,FAULT=5,ITEMS=1", "crashed"),
    ];
    for (config, class) in expect {
        let got = failures.get(config).map(|(c, _)| c.as_str());
        assert_eq!(got, Some(class), "{config}");
    }
    let good_failed: Vec<&String> = failures.keys().filter(|c| c.contains("FAULT=0")).collect();
    assert!(
        good_failed.is_empty(),
        "good configs failed: {good_failed:?}"
    );
    let entry = tuner
        .cache()
        .lookup(&key)
        .expect("lookup")
        .expect("stored winner");
    assert_eq!(entry.config, plan.config);
    assert_eq!(
        entry.evaluated, 14,
        "every config of the space was evaluated"
    );
    println!(
        "faults: {} injected, {} recorded with their class, host survived, winner correct",
        expect.len(),
        expect.len()
    );
    drop(tuner);

    // A new process-like tuner on the same store, tuning in process: a recorded fault must
    // never run again (running FAULT=1 here would take this process down).
    let again = Tuner::with_context(
        ctx.clone(),
        Cache::open(CacheOptions::at(&path)).expect("cache"),
        Mode::Blocking,
    )
    .expect("tuner");
    assert_eq!(again.isolation(), Isolation::InProcess);
    let t = Instant::now();
    let r = again
        .tune_with(
            &kernel,
            &[n as i64],
            &TuneOptions {
                strategy: "exhaustive".into(),
                max_evals: 100,
                max_time_s: Some(60.0),
                seed: 2,
            },
        )
        .expect("in-process retune over recorded faults");
    assert!(r.entry.config.contains("FAULT=0"));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the 30 s spin ran again"
    );
    let mut q = Problem::new(&stream, n);
    q.launch_and_check(&again, &kernel, &stream);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tuning wall time of the same run in process and isolated. A warm-up run fills the binary
/// table, and each measured run starts from a copy of that cache, so both modes start alike.
fn isolation_cost() {
    let ctx = CudaContext::new(0).expect("device 0");
    let dir = temp_dir("cost");
    let warm = dir.join("warm.sqlite");
    let kernel =
        Kernel::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/softmax.toml"))
            .expect("softmax spec");
    let shape = [4096i64, 4096];
    let opts = TuneOptions {
        strategy: "random".into(),
        max_evals: 48,
        max_time_s: Some(120.0),
        seed: 7,
    };
    {
        let t = Tuner::with_context(
            ctx.clone(),
            Cache::open(CacheOptions::at(&warm)).expect("cache"),
            Mode::Blocking,
        )
        .expect("tuner");
        t.set_isolation(Some(Isolation::InProcess));
        let r = t.tune_with(&kernel, &shape, &opts).expect("warm-up run");
        println!(
            "isolation cost: warm-up run {:.2} s, {} compiled",
            r.wall_s, r.compiled
        );
    }
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut evaluated: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for round in 0..2 {
        for (name, iso) in [
            ("in-process", Isolation::InProcess),
            ("isolated", Isolation::Process),
        ] {
            let path = dir.join(format!("{name}-{round}.sqlite"));
            std::fs::copy(&warm, &path).expect("copy the warm cache");
            let t = Tuner::with_context(
                ctx.clone(),
                Cache::open(CacheOptions::at(&path)).expect("cache"),
                Mode::Blocking,
            )
            .expect("tuner");
            t.set_isolation(Some(iso));
            let r = t.tune_with(&kernel, &shape, &opts).expect("tuning");
            assert_eq!(r.compiled, 0, "{name}: the warm binary table is used");
            println!(
                "isolation cost: {name:>10} round {round}: {:.2} s, {} configs, winner {} at {:.4} ms",
                r.wall_s, r.entry.evaluated, r.entry.config, r.entry.median_ms
            );
            times.entry(name).or_default().push(r.wall_s);
            evaluated.entry(name).or_default().push(r.entry.evaluated);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let (ip, iso) = (mean(&times["in-process"]), mean(&times["isolated"]));
    let configs = evaluated["isolated"][0] as f64;
    println!(
        "isolation cost: in-process {ip:.2} s, isolated {iso:.2} s: {:+.2} s ({:+.0}%), {:+.1} ms per config",
        iso - ip,
        100.0 * (iso - ip) / ip,
        1000.0 * (iso - ip) / configs
    );
    assert_eq!(
        evaluated["in-process"], evaluated["isolated"],
        "both modes ran the same search"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::internals::gpu_tests_enabled() {
        println!("skipping gpu_faults: {why}");
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 2] = [
        (
            "faults_are_survived_and_recorded",
            faults_are_survived_and_recorded,
        ),
        ("isolation_cost", isolation_cost),
    ];
    let mut failed = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
