//! `--remote URL`: run the fleet against a shared Redis only when this jitune build really
//! shares winners through it; otherwise refuse (exit 2) rather than report a "fleet" whose
//! hosts share nothing.
//!
//! There is no flag to ask, so the probe asks the behaviour itself: one tuner (file A, the
//! remote at URL) tunes a probe key in Blocking mode, and a tuner on another file (B, the same
//! URL) must then resolve that key from the cache without searching, within a few seconds.
//! The probe's device is named `jitune fleet probe <pid>.<ms>`, so its key is no fleet key and
//! no earlier probe's; it leaves that one record in Redis.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitune::cache::remote::{open_tier, RemoteUrl};
use jitune::cache::{Cache, CacheOptions};
use jitune::replay::Cachefile;
use jitune::tuner::{Mode, SimDevice, TuneOptions, Tuner};

/// How long a winner may take to reach the other file through the remote.
const PROPAGATION: Duration = Duration::from_secs(3);

/// `Ok` when winners travel through `url`; else the message to refuse with.
pub fn check(url: &str, data: &Arc<Cachefile>, dir: &Path) -> Result<(), String> {
    let parsed = RemoteUrl::parse(url).map_err(|e| format!("--remote: {e}"))?;
    let tier = open_tier(&parsed).map_err(|e| format!("--remote {parsed}: {e}"))?;
    tier.get(
        "jitune:fleet:reachability-probe",
        Instant::now() + Duration::from_secs(2),
    )
    .map_err(|e| format!("--remote {parsed}: {e}"))?;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stamp = format!("{}.{}", std::process::id(), super::report::unix_ms());
    let fp = super::sim::fingerprint(&format!("jitune fleet probe {stamp}"));
    let dev = SimDevice::new(data.clone(), fp, format!("probe-{stamp}"), 0.0);
    let kernel = dev.kernel().map_err(|e| e.to_string())?;
    let tuner_on = |file: &str| -> Result<Tuner, String> {
        let cache = Cache::open(CacheOptions::at(dir.join(file)).with_remote(url))
            .map_err(|e| e.to_string())?;
        let t = Tuner::simulated(dev.clone(), cache, Mode::Blocking).map_err(|e| e.to_string())?;
        t.set_mode(Mode::Blocking);
        t.set_tune_options(TuneOptions {
            strategy: "random".into(),
            max_evals: 4,
            ..TuneOptions::default()
        });
        Ok(t)
    };
    let a = tuner_on("a.sqlite")?;
    let tuned = a
        .resolve(&kernel, &[1])
        .map_err(|e| format!("--remote probe: tuning the probe key failed: {e}"))?;
    let deadline = Instant::now() + PROPAGATION;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // A new file and a new tuner each time: nothing but the remote can hold the winner.
        let file = format!("b{attempt}.sqlite");
        let b = tuner_on(&file)?;
        let got = b.resolve(&kernel, &[1]);
        if let Ok(p) = &got {
            if p.tuned && b.searches() == 0 && p.config == tuned.config {
                let _ = std::fs::remove_dir_all(dir);
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let _ = std::fs::remove_dir_all(dir);
            return Err(format!(
                "--remote {parsed}: this jitune build does not share winners through the remote \
                 tier: a winner tuned against {parsed} from one cache file did not reach a tuner \
                 on another cache file within {PROPAGATION:?} (a build without the remote tier of \
                 issue 15 wired into its cache does this); refusing to run hosts that would \
                 share nothing"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
