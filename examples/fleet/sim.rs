//! The simulated device every fleet process builds, what a search costs on it (for the time
//! scale that makes a search take about a given time), and how a key is written.

use std::path::Path;
use std::sync::Arc;

use jitune::key::DeviceFingerprint;
use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::evaluator::Evaluator;
use jitune::search::{strategy_by_name, SearchOptions};
use jitune::space::Config;
use jitune::tuner::{SimDevice, TuneOptions};

/// The name of the fleet's GPU model.
pub fn model_name(data: &Cachefile) -> String {
    format!("Simulated GPU replaying {}", data.name)
}

/// One GPU model for the whole fleet: every process has this fingerprint, so keys, leases and
/// winners are shared between them (physical GPUs differ by lock id only).
pub fn fingerprint(name: &str) -> DeviceFingerprint {
    DeviceFingerprint {
        name: name.to_string(),
        compute_capability: (9, 0),
        sm_count: 132,
        nvrtc_version: (13, 0),
        driver_version: Some((13, 0)),
    }
}

/// Loads the recording; the error names the file.
pub fn load(path: &Path) -> Result<Arc<Cachefile>, String> {
    Cachefile::load(path)
        .map(Arc::new)
        .map_err(|e| format!("--data {}: {e}", path.display()))
}

/// The simulated GPU `lock_id` of the model `name`.
pub fn device(data: Arc<Cachefile>, name: &str, lock_id: &str, time_scale: f64) -> SimDevice {
    SimDevice::new(data, fingerprint(name), lock_id, time_scale)
}

/// The recorded seconds one search of the tuner's strategy spends on `data` with `budget`
/// evaluations, starting from `default` as the tuner does: measured by running that search on a
/// replay of the recording (compile, verification and benchmark costs of what it evaluates, and
/// the benchmark costs of its re-measurements), averaged over three seeds. Takes a fraction of
/// a second of CPU and no simulated time.
pub fn search_cost_s(
    data: &Arc<Cachefile>,
    default: &Config,
    budget: usize,
    seed: u64,
) -> Result<f64, String> {
    let name = TuneOptions::default().strategy;
    let strategy = strategy_by_name(&name).ok_or(format!("no strategy `{name}`"))?;
    let mut total = 0.0;
    for s in 0..3 {
        let mut eval = ReplayEvaluator::new(data.clone(), seed + s);
        let mut opts = SearchOptions::new(seed + s, budget);
        opts.start.push(default.clone());
        strategy
            .search(&mut eval, &opts)
            .map_err(|e| format!("calibration search on {}: {e}", data.name))?;
        total += eval.elapsed_s();
    }
    Ok(total / 3.0)
}

/// A key as the fleet writes it: the shape text of the one dimension (`"3"`).
pub fn key_text(shape: &[i64]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}
