//! The real tuner on a simulated device (recorded measurements, no GPU): a Blocking miss tunes
//! and stores the winner, the next resolve hits it, a new process (a new tuner on the same
//! file) hits it from the store, and cache-only mode serves the default.

use std::sync::Arc;

use jitune::cache::{Cache, CacheOptions};
use jitune::key::DeviceFingerprint;
use jitune::replay::Cachefile;
use jitune::tuner::{Mode, SimDevice, TuneOptions, Tuner};

fn device() -> SimDevice {
    let data = Cachefile::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/convolution_A4000.json.gz"
    )))
    .expect("recorded data");
    let fp = DeviceFingerprint {
        name: "Simulated A4000".into(),
        compute_capability: (8, 6),
        sm_count: 48,
        nvrtc_version: (13, 0),
        driver_version: Some((13, 0)),
    };
    SimDevice::new(Arc::new(data), fp, "sim-gpu-0", 0.0005)
}

#[test]
fn a_simulated_tuner_tunes_stores_and_hits() {
    let dir = std::env::temp_dir().join(format!("jitune-sim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.sqlite");
    let dev = device();
    let kernel = dev.kernel().expect("the recorded space as a kernel");
    let tuner = Tuner::simulated(
        dev.clone(),
        Cache::open(CacheOptions::at(&path)).unwrap(),
        Mode::Blocking,
    )
    .unwrap();
    tuner.set_tune_options(TuneOptions {
        max_evals: 60,
        ..TuneOptions::default()
    });
    assert!(tuner.gpu().is_none());
    let plan = tuner.resolve(&kernel, &[1]).expect("a Blocking miss tunes");
    assert!(plan.tuned);
    assert_eq!(tuner.searches(), 1);
    let again = tuner.resolve(&kernel, &[1]).unwrap();
    assert!(Arc::ptr_eq(&plan, &again), "the second resolve hits");
    let key = tuner.key(&kernel, &[1]).unwrap();
    let stored = tuner.cache().lookup(&key).unwrap().expect("stored");
    assert_eq!(stored.config, plan.config);
    // The winner is a config that ran in the recording, and better than its default.
    let data = dev.data();
    let c = data.space.parse_config_text(&plan.config).unwrap();
    let winner_ms = data.mean_time(&c).expect("the winner ran");
    // The kernel's parameters are the recording's, so its default indexes the recorded space.
    assert!(winner_ms <= data.mean_time(&kernel.spec.default).unwrap());

    // A second process on the same file: a hit from the store, no search.
    let other = Tuner::simulated(
        dev.clone(),
        Cache::open(CacheOptions::at(&path)).unwrap(),
        Mode::Blocking,
    )
    .unwrap();
    let p = other.resolve(&kernel, &[1]).unwrap();
    assert_eq!(
        (p.config.as_str(), other.searches()),
        (plan.config.as_str(), 0)
    );

    // Cache-only: an untuned key serves the default, and a simulated plan never launches.
    let co = Tuner::simulated(dev, Cache::memory_only(), Mode::CacheOnly).unwrap();
    let p = co.resolve(&kernel, &[2]).unwrap();
    assert!(!p.tuned);
    assert_eq!(co.searches(), 0);
}

/// Issue 16 through the tuner: a winner of this GPU model under another NVRTC is inherited (it
/// serves at once, counted as such), and strict mode refuses a cache-only miss with nothing
/// tuned, naming the key and why; a Blocking miss seeded by the inherited winner needs no search.
#[test]
fn inherited_winners_serve_and_strict_mode_refuses_the_rest() {
    use jitune::cache::{Decision, Entry};
    use jitune::tuner::{Event, MissDecision};
    let dev = device();
    let kernel = dev.kernel().unwrap();
    let data = dev.data().clone();
    // A winner tuned on this GPU model under NVRTC 12.9 (a shipped cache from an older toolkit).
    let old_toolchain = DeviceFingerprint {
        nvrtc_version: (12, 9),
        driver_version: Some((12, 9)),
        ..dev.fingerprint.clone()
    };
    let (best, best_ms) = data.optimum().map(|(c, t)| (c.clone(), t)).unwrap();
    let key_here = {
        let t = Tuner::simulated(dev.clone(), Cache::memory_only(), Mode::CacheOnly).unwrap();
        t.key(&kernel, &[1]).unwrap()
    };
    let shipped = Entry::new(
        key_here.kernel,
        key_here.shape,
        old_toolchain,
        &kernel.spec.name,
        &data.space.config_text(&best),
        best_ms,
    );
    let cache = Cache::memory_only();
    cache.put(shipped.clone()).unwrap();
    let tuner = Tuner::simulated(dev.clone(), cache, Mode::CacheOnly).unwrap();
    tuner.set_require_hit(true);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tuner.on_event(move |e| {
        if let Event::Miss { decision, .. } = e {
            s2.lock().unwrap().push(decision.clone());
        }
    });
    let plan = tuner
        .resolve(&kernel, &[1])
        .expect("an inherited winner serves, even strict");
    assert_eq!(plan.config, shipped.config);
    let stats = tuner.stats();
    assert_eq!(stats.misses_by_decision.inherited, 1, "{stats:?}");
    assert!(matches!(
        seen.lock().unwrap().first(),
        Some(MissDecision::Inherited { from, .. }) if *from == shipped.key
    ));
    // Shape 2 has nothing for this model: strict mode refuses, naming the key and the reason.
    let err = tuner.resolve(&kernel, &[2]).unwrap_err().to_string();
    let key2 = tuner.key(&kernel, &[2]).unwrap();
    assert!(err.contains(&key2.display()), "{err}");
    assert!(err.contains("nearest") || err.contains("default"), "{err}");
    // Without strict mode it serves the nearest tuned bucket... of this fingerprint: none here
    // (the only entry is another toolchain's, at shape 1), so the default.
    tuner.set_require_hit(false);
    let p = tuner.resolve(&kernel, &[2]).unwrap();
    assert!(!p.tuned);
    // Both misses of shape 2 came to the default (the first was refused in strict mode).
    assert_eq!(tuner.stats().misses_by_decision.default, 2);
    let ex = tuner.cache().explain(&key2, tuner.fingerprint()).unwrap();
    assert_eq!(ex.decision, Decision::Default);
}

/// `Tuner::shutdown` in Background mode: the search in flight is cancelled after its batch and
/// its best so far is stored (nothing tuned is lost), the call returns once the background
/// thread is gone, and a later miss starts no search.
#[test]
fn shutdown_cancels_background_searches_and_keeps_their_best() {
    let data = Cachefile::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/convolution_A4000.json.gz"
    )))
    .unwrap();
    // Slow evaluations (tens of ms each): a 400-evaluation search would take many seconds.
    let fp = device().fingerprint.clone();
    let dev = SimDevice::new(Arc::new(data), fp, "sim-gpu-0", 0.01);
    let kernel = dev.kernel().unwrap();
    let tuner = Tuner::simulated(dev, Cache::memory_only(), Mode::Background).unwrap();
    tuner.set_tune_options(TuneOptions {
        max_evals: 400,
        max_time_s: None,
        ..TuneOptions::default()
    });
    let first = tuner.resolve(&kernel, &[1]).unwrap();
    assert!(!first.tuned, "a Background miss serves a provisional plan");
    // Let the search get going, then shut down.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    assert!(
        tuner.shutdown(std::time::Duration::from_secs(30)),
        "the background thread ended"
    );
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "cancelled after its batch, not run to its end: {took:?}"
    );
    assert_eq!(tuner.searches(), 1);
    let key = tuner.key(&kernel, &[1]).unwrap();
    let stored = tuner
        .cache()
        .lookup(&key)
        .unwrap()
        .expect("the cancelled search stored its best");
    assert!(stored.strategy.contains("partial"), "{}", stored.strategy);
    assert!(
        stored.evaluated < 400,
        "it stopped early: {}",
        stored.evaluated
    );
    // After shutdown a miss serves without starting a search.
    let other = tuner.resolve(&kernel, &[4096]).unwrap();
    assert!(!other.tuned);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(tuner.searches(), 1, "no search after shutdown");
}

/// A launch finds its plan among its thread's recent hits without the key map, so the recent
/// hits must never serve a plan the map has moved on from: a winner swapped in (at once or on
/// request), another thread, another kernel handle, a new tuner.
#[test]
fn a_threads_recent_hits_follow_every_change_of_plan() {
    use jitune::tuner::SwapPolicy;
    let dev = device();
    let kernel = dev.kernel().expect("the recorded space as a kernel");
    let tuner = Tuner::simulated(dev.clone(), Cache::memory_only(), Mode::CacheOnly).unwrap();
    tuner.set_tune_options(TuneOptions {
        max_evals: 40,
        ..TuneOptions::default()
    });
    let shape = [1i64];
    // A miss (the default), a hit from the map (remembered), a recent hit: one plan.
    let first = tuner.launch_plan(&kernel, &shape).unwrap();
    assert!(!first.tuned);
    for _ in 0..2 {
        let p = tuner.launch_plan(&kernel, &shape).unwrap();
        assert!(Arc::ptr_eq(&p, &first));
    }
    assert_eq!((tuner.stats().hits, tuner.stats().misses), (2, 1));

    // A winner waiting for `apply_swaps` changes nothing yet; once applied, the next launch
    // launches it, on this thread and on another.
    tuner.set_swap_policy(SwapPolicy::OnRequest);
    tuner
        .warmup(&kernel, &[shape.to_vec()], |_, _, _| {})
        .unwrap();
    let p = tuner.launch_plan(&kernel, &shape).unwrap();
    assert!(Arc::ptr_eq(&p, &first), "a pending swap is not launched");
    assert_eq!(tuner.apply_swaps(), 1);
    let winner = tuner.launch_plan(&kernel, &shape).unwrap();
    assert!(winner.tuned && !Arc::ptr_eq(&winner, &first));
    let t = tuner.clone();
    let k = kernel.clone();
    let there = std::thread::spawn(move || t.launch_plan(&k, &[1]).unwrap())
        .join()
        .unwrap();
    assert!(Arc::ptr_eq(&there, &winner));

    // Swapped at once (another shape, launched and remembered first): the first launch after
    // the swap has the winner.
    tuner.set_swap_policy(SwapPolicy::Immediate);
    let default2 = tuner.launch_plan(&kernel, &[2]).unwrap();
    let again = tuner.launch_plan(&kernel, &[2]).unwrap();
    assert!(!default2.tuned && Arc::ptr_eq(&again, &default2));
    tuner.warmup(&kernel, &[vec![2]], |_, _, _| {}).unwrap();
    let now = tuner.plan(&kernel, &[2]).unwrap();
    let p = tuner.launch_plan(&kernel, &[2]).unwrap();
    assert!(p.tuned && Arc::ptr_eq(&p, &now));

    // Another handle of the same spec is another slot; it agrees with the map.
    let other = jitune::tuner::Kernel::new((*kernel.spec).clone());
    for _ in 0..2 {
        let p = tuner.launch_plan(&other, &shape).unwrap();
        assert!(Arc::ptr_eq(&p, &winner));
    }

    // A new tuner never sees the old one's plans, even for the same handle and shape.
    drop(tuner);
    let fresh = Tuner::simulated(dev, Cache::memory_only(), Mode::CacheOnly).unwrap();
    let p = fresh.launch_plan(&kernel, &shape).unwrap();
    assert!(!p.tuned, "a new tuner starts from the default");
    assert_eq!(fresh.stats().misses, 1);
}
