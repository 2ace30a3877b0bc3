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
