//! Benchmark of the lookup a launch makes on a hit: bucket the raw shape with the kernel's spec
//! and build the [`TuningKey`] (the tuner's own `key_of`), then read the key's plan from the
//! tuner's key map ([`KeyStates::plan`]: one shard read and a reference count), with 100k keys
//! ready. The plan here is a stand-in (no GPU is needed); the map, the key and the lookup are
//! the ones `Tuner::launch` runs.
//!
//! Prints p50/p99 nanoseconds per hit on one thread (percentiles of the means of batches of
//! 1000 hits, for a hot set of 64 keys and for random keys over all entries) and the aggregate
//! hit rate from 1 and 8 threads. Targets: p50 at most 100 ns, and at least 6 times the rate
//! with 8 threads on a machine with at least 8 free cores.
//!
//! Run with `cargo bench --bench cache_hit`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitune::internals::{key_of, KeyStates};
use jitune::key::{Bucketing, ShapeBucket, TuningKey};
use jitune::space::Param;
use jitune::spec::{KernelSpec, SpecBuilder};

const ENTRIES: usize = 100_000;
const KERNELS: usize = 100;
const BATCH: usize = 1000;
const BATCHES: usize = 2000;
const THREAD_RUN: Duration = Duration::from_millis(700);
const DEVICE: u64 = 0x5eed_cafe_f00d_0001;

/// What a launch reads from its plan (a stand-in for `Plan`, which needs a GPU).
struct Plan {
    config: String,
}

/// A raw (unbucketed) problem shape for query `i`: it buckets (pow2) onto one cached entry.
fn raw_shape(i: usize) -> [i64; 3] {
    let j = i % (ENTRIES / KERNELS);
    // Cached buckets are (2^(j%10 + 4), 2^(j/10%10 + 4), 2^(j/100 + 4)); ask for a bit less.
    [
        (1i64 << (j % 10 + 4)) - 3,
        (1i64 << (j / 10 % 10 + 4)) - 1,
        (1i64 << (j / 100 + 4)) - 5,
    ]
}

fn bucket_dims(j: usize) -> [i64; 3] {
    [
        1i64 << (j % 10 + 4),
        1i64 << (j / 10 % 10 + 4),
        1i64 << (j / 100 + 4),
    ]
}

/// Kernel `k`: a spec of three pow2-bucketed dims (its source makes its id its own).
fn spec(k: usize) -> KernelSpec {
    SpecBuilder::new(&format!("k{k}"))
        .source(&format!(
            "extern \"C\" __global__ void k(float* y) {{ /* {k} */ }}"
        ))
        .entry("k")
        .param(Param::ints("B", &[64, 128]))
        .dim("m", Bucketing::NextPow2)
        .dim("n", Bucketing::NextPow2)
        .dim("k", Bucketing::NextPow2)
        .grid(["1", "1", "1"])
        .block(["B", "1", "1"])
        .arg_buffer("y", "f32", "out", "m", "")
        .default_config(&[("B", "64")])
        .build()
        .expect("the bench's spec is valid")
}

/// The hot path as a launch runs it: the key, then the plan.
#[inline(always)]
fn hit(states: &KeyStates<Plan>, spec: &KernelSpec, raw: &[i64; 3]) -> bool {
    let Ok(key) = key_of(spec, raw, DEVICE) else {
        return false;
    };
    match states.plan(&key) {
        Some(p) => {
            black_box(p.config.len());
            true
        }
        None => false,
    }
}

fn main() {
    let specs: Arc<Vec<KernelSpec>> = Arc::new((0..KERNELS).map(spec).collect());
    let states: Arc<KeyStates<Plan>> = Arc::new(KeyStates::default());
    for (k, spec) in specs.iter().enumerate() {
        for j in 0..ENTRIES / KERNELS {
            let key = TuningKey {
                kernel: spec.id(),
                shape: ShapeBucket::new(&bucket_dims(j)).expect("3 dims"),
                device: DEVICE,
            };
            states.install(
                key,
                Arc::new(Plan {
                    config: format!("B=128,k={k}"),
                }),
            );
        }
    }
    assert_eq!(states.len(), ENTRIES, "every key ready");
    // Queries in a scrambled order so consecutive hits touch different shards and cache lines.
    let queries: Vec<(usize, [i64; 3])> = (0..ENTRIES)
        .map(|i| i.wrapping_mul(7919) % ENTRIES)
        .map(|i| (i / (ENTRIES / KERNELS), raw_shape(i)))
        .collect();
    for (k, raw) in &queries {
        assert!(hit(&states, &specs[*k], raw), "every query hits");
    }

    // Single thread: means of batches of BATCH hits, over a hot working set (what a program
    // launching a few kernels over and over sees: the entries stay in CPU caches) and over all
    // 100k entries in scrambled order (every hit misses the CPU caches: DRAM latency bound).
    let single = |working_set: usize| -> (f64, f64) {
        let mut per_hit = Vec::with_capacity(BATCHES);
        let mut q = 0usize;
        for _ in 0..BATCHES {
            let t = Instant::now();
            let mut hits = 0usize;
            for _ in 0..BATCH {
                let (k, raw) = &queries[q];
                q += 1;
                if q == working_set {
                    q = 0;
                }
                hits += hit(&states, black_box(&specs[*k]), black_box(raw)) as usize;
            }
            per_hit.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
            black_box(hits);
        }
        per_hit.sort_by(f64::total_cmp);
        let pct = |p: f64| per_hit[((per_hit.len() - 1) as f64 * p).round() as usize];
        (pct(0.50), pct(0.99))
    };
    let (hot50, hot99) = single(64);
    let (all50, all99) = single(queries.len());

    let rate = |threads: usize| -> f64 {
        // Threads walk the 100k entries from different offsets (a shared hot set would measure
        // contention on a few shard locks and reference counts instead).
        let start = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (states, specs, queries, start) = (
                    states.clone(),
                    specs.clone(),
                    queries.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    start.wait();
                    let begin = Instant::now();
                    let mut n = 0u64;
                    let mut q = t * 12_345 % queries.len();
                    while begin.elapsed() < THREAD_RUN {
                        for _ in 0..BATCH {
                            let (k, raw) = &queries[q];
                            q = (q + 1) % queries.len();
                            n += hit(&states, &specs[*k], black_box(raw)) as u64;
                        }
                    }
                    n as f64 / begin.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    };
    let r1 = rate(1);
    let r8 = rate(8);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    println!("cache_hit: bucket raw shape + build key + the tuner's key map, {ENTRIES} keys ready, {cores} cores");
    println!("{:<34} {:>14}", "metric", "value");
    println!(
        "{:<34} {:>11.1} ns",
        "1 thread p50, hot set of 64 keys", hot50
    );
    println!(
        "{:<34} {:>11.1} ns",
        "1 thread p99, hot set of 64 keys", hot99
    );
    println!(
        "{:<34} {:>11.1} ns",
        "1 thread p50, random over 100k", all50
    );
    println!(
        "{:<34} {:>11.1} ns",
        "1 thread p99, random over 100k", all99
    );
    println!(
        "{:<34} {:>11.2} M/s",
        "1 thread aggregate hit rate",
        r1 / 1e6
    );
    println!(
        "{:<34} {:>11.2} M/s",
        "8 threads aggregate hit rate",
        r8 / 1e6
    );
    println!("{:<34} {:>12.2}x", "8-thread / 1-thread ratio", r8 / r1);
    println!(
        "targets: hot p50 <= 100 ns ({}), ratio >= 6x ({}{})",
        if hot50 <= 100.0 { "met" } else { "MISSED" },
        if r8 / r1 >= 6.0 { "met" } else { "not met" },
        if cores < 8 {
            ", needs >= 8 cores to be meaningful"
        } else {
            ""
        }
    );
}
