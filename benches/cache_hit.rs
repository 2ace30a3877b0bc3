//! Benchmark of the launch hot path: bucket a raw shape, build the [`TuningKey`] and hit the
//! memory tier with [`Cache::get_memory`], with 100k entries cached.
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

use jitune::cache::{Cache, Entry};
use jitune::key::{Bucketing, DeviceFingerprint, KernelId, ShapeBucket, TuningKey, MAX_DIMS};

const ENTRIES: usize = 100_000;
const KERNELS: usize = 100;
const BATCH: usize = 1000;
const BATCHES: usize = 2000;
const THREAD_RUN: Duration = Duration::from_millis(700);

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

/// The hot path as a launch would run it.
#[inline(always)]
fn hit(
    cache: &Cache,
    kernel: &KernelId,
    device: u64,
    rule: &[Bucketing; 3],
    raw: &[i64; 3],
) -> bool {
    let mut dims = [0i64; MAX_DIMS];
    for (d, (r, v)) in dims.iter_mut().zip(rule.iter().zip(raw)) {
        *d = r.bucket(*v);
    }
    let Some(shape) = ShapeBucket::new(&dims[..raw.len()]) else {
        return false;
    };
    let key = TuningKey {
        kernel: *kernel,
        shape,
        device,
    };
    // Read what a launch needs from the entry, without taking a reference to it.
    cache
        .with_memory(&key, |e| black_box(e.config.len()))
        .is_some()
}

fn main() {
    let device = DeviceFingerprint {
        name: "NVIDIA H200".into(),
        compute_capability: (9, 0),
        sm_count: 132,
        nvrtc_version: (13, 0),
    };
    let dev_hash = device.hash64();
    let kernels: Vec<KernelId> = (0..KERNELS)
        .map(|k| KernelId(*blake3::hash(&k.to_le_bytes()).as_bytes()))
        .collect();
    let cache = Arc::new(Cache::memory_only());
    for (k, kernel) in kernels.iter().enumerate() {
        for j in 0..ENTRIES / KERNELS {
            let shape = ShapeBucket::new(&bucket_dims(j)).expect("3 dims");
            let mut e = Entry::new(
                *kernel,
                shape,
                device.clone(),
                &format!("k{k}"),
                "BM=128,BN=128",
                1.0,
            );
            e.samples = 30;
            if let Err(err) = cache.put(e) {
                eprintln!("put failed: {err}");
                std::process::exit(1);
            }
        }
    }
    assert_eq!(cache.memory_len(), ENTRIES, "every entry cached");
    let rule = [
        Bucketing::NextPow2,
        Bucketing::NextPow2,
        Bucketing::NextPow2,
    ];
    // Queries in a scrambled order so consecutive hits touch different shards and cache lines.
    let queries: Vec<(usize, [i64; 3])> = (0..ENTRIES)
        .map(|i| i.wrapping_mul(7919) % ENTRIES)
        .map(|i| (i / (ENTRIES / KERNELS), raw_shape(i)))
        .collect();
    for (k, raw) in &queries {
        assert!(
            hit(&cache, &kernels[*k], dev_hash, &rule, raw),
            "every query hits"
        );
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
                hits += hit(
                    &cache,
                    black_box(&kernels[*k]),
                    black_box(dev_hash),
                    &rule,
                    black_box(raw),
                ) as usize;
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
                let (cache, kernels, queries, start) = (
                    cache.clone(),
                    kernels.clone(),
                    queries.clone(),
                    start.clone(),
                );
                let rule = rule.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let begin = Instant::now();
                    let mut n = 0u64;
                    let mut q = t * 12_345 % queries.len();
                    while begin.elapsed() < THREAD_RUN {
                        for _ in 0..BATCH {
                            let (k, raw) = &queries[q];
                            q = (q + 1) % queries.len();
                            n += hit(&cache, &kernels[*k], dev_hash, &rule, black_box(raw)) as u64;
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

    println!("cache_hit: bucket raw shape + build key + get_memory, {ENTRIES} entries in memory, {cores} cores");
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
