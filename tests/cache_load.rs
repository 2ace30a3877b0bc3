//! The cache under load and faults, without a GPU (runs in CI, seconds long): 8 processes x 4
//! threads "launch" overlapping keys against one cache file and "tune" them on a miss the way
//! the tuner does (claim the key in this process, read stale in-flight markers, mark and clear
//! candidates, record a failure, store a CUBIN, store the winner, release the claim), while the
//! parent SIGKILLs random processes midway and starts replacements. Afterwards: `PRAGMA
//! integrity_check` is clean, no key was tuned twice within one process (after a winner's write
//! returned, the same process never misses that key again), and no winner whose write returned
//! is missing. Only the measuring is simulated (a sleep); every cache and store call is real.
//!
//! `JITUNE_LOAD_SECS` sets the duration (default 8 s). `harness = false`: `main` either runs
//! the parent or, with `JITUNE_LOAD_ROLE` set, one child.

mod cache_common;
mod cache_load_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_common::{dev, entry, key, TempDir};
use cache_load_common::*;
use jitune::cache::store::BinaryKey;
use jitune::cache::{Cache, CacheOptions};
use jitune::failure::FailureClass;
use jitune::internals::Rng;

const PROCS: usize = 8;
const THREADS: usize = 4;
const KERNELS: u8 = 4;
const SHAPES: i64 = 250;

fn child(env: ChildEnv) {
    let cache = Arc::new(Cache::open(CacheOptions::at(&env.path)).expect("open"));
    assert!(cache.degraded().is_none(), "{:?}", cache.degraded());
    let env = Arc::new(env);
    let d = dev("GPU load");
    // What the tuner's `tuning` map does: one tuning run per key at a time in this process.
    let claims: Arc<Mutex<HashMap<String, ()>>> = Arc::default();
    // Keys whose winner this process wrote, and how often it tuned each.
    let tuned: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let launches = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cache, env, d) = (cache.clone(), env.clone(), d.clone());
            let (claims, tuned, launches) = (claims.clone(), tuned.clone(), launches.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(env.seed * 31 + t as u64);
                while unix_ms() < env.deadline_ms {
                    let k = 1 + rng.below(KERNELS as u64) as u8;
                    let dims = [256 * (1 + rng.below(SHAPES as u64) as i64), 64];
                    let tk = key(k, &dims, &d);
                    let text = key_text(&tk);
                    launches.fetch_add(1, Ordering::Relaxed);
                    if cache.lookup(&tk).expect("lookup").is_some() {
                        continue; // a hit: launch the winner
                    }
                    if claims.lock().unwrap().insert(text.clone(), ()).is_some() {
                        continue; // being tuned by another thread here: launch the default
                    }
                    // Looked up again under the claim, as the tuner does: a thread that missed
                    // just before another finished tuning the key would tune it again (the
                    // test counted that as a duplicate: it is the test's race, not the cache's).
                    if cache.lookup(&tk).expect("lookup").is_some() {
                        claims.lock().unwrap().remove(&text);
                        continue;
                    }
                    let before = tuned.lock().unwrap().get(&text).copied().unwrap_or(0);
                    if before > 0 {
                        env.log.line(&format!("dup {text}"));
                    }
                    // Simulated tuning, real store traffic.
                    cache.take_stale_inflight(&tk).expect("stale markers");
                    for c in 0..3 {
                        let config = format!("c={c}");
                        cache.mark_inflight(&tk, &config).expect("mark");
                        std::thread::sleep(Duration::from_micros(300 + rng.below(1500)));
                        cache.clear_inflight(&tk, &config).expect("clear");
                    }
                    cache
                        .record_failure(&tk, "c=9", FailureClass::WrongResult, "planted")
                        .expect("failure");
                    let bk = BinaryKey {
                        kernel: tk.kernel,
                        config: "c=1",
                        arch: "sm_90",
                        nvrtc: "13.0",
                    };
                    cache.put_binary(&bk, &[k; 2048]).expect("binary");
                    let winner = entry(k, &dims, &d, &format!("c=1,p={}", env.seed), 0.5);
                    let failed_before = cache.store_write_failures();
                    cache.put(winner).expect("put");
                    if cache.store_write_failures() > failed_before {
                        // The store gave up on the write (it is kept in memory, one warning):
                        // counted apart, and a failure of its own.
                        env.log.line(&format!("unpersisted {text}"));
                    } else {
                        // The write returned: from here on the winner must never be lost.
                        env.log.line(&format!("key {text}"));
                    }
                    *tuned.lock().unwrap().entry(text.clone()).or_default() += 1;
                    claims.lock().unwrap().remove(&text);
                }
            })
        })
        .collect();
    let reporter = {
        let (env, launches) = (env.clone(), launches.clone());
        std::thread::spawn(move || {
            while unix_ms() < env.deadline_ms {
                std::thread::sleep(Duration::from_millis(200));
                env.log
                    .line(&format!("launches {}", launches.load(Ordering::Relaxed)));
            }
        })
    };
    for t in threads {
        t.join().expect("a child thread panicked");
    }
    let _ = reporter.join();
    env.log
        .line(&format!("launches {}", launches.load(Ordering::Relaxed)));
}

fn main() {
    if let Some(env) = child_env() {
        child(env);
        return;
    }
    let secs: f64 = std::env::var("JITUNE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let dir = TempDir::new("cache-load");
    let load = Load {
        procs: PROCS,
        secs,
        kills: (secs / 2.0).ceil() as usize,
        grace: Duration::from_secs(30),
    };
    let report = run(&load, dir.path());
    report.print("cache load (CPU, simulated tuning)", PROCS, THREADS);
    report.check();
    println!("test cache_load ... ok");
}
