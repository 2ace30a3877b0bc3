//! Replay of recorded GPU tuning data: Kernel Tuner cachefiles as an [`Evaluator`].
//!
//! Search strategies are developed and tested against exhaustively measured spaces (the
//! AutoTuningAssociation benchmark_hub cachefiles), so every change can be scored on real GPU
//! data in seconds, without a GPU and without nondeterminism beyond the seed. A cachefile
//! (`.json` or `.json.gz`) holds `tune_params_keys`, `tune_params` and `cache`: key
//! `"v1,v2,..."` → record with `time` (ms, or a string naming a failure), `times` (per-run
//! samples) and `compile_time`/`verification_time`/`benchmark_time` (ms).
//!
//! The space comes from `tune_params`; configs absent from the cache are invalid (a space filter,
//! as in Kernel Tuner's restricted spaces). Each evaluation returns one recorded per-run time drawn
//! at random, so replay carries the real measurement noise, and charges the config's recorded
//! compile + verification + benchmark time as simulated time. Re-measurement draws further
//! recorded samples and charges the benchmark time again.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::rng::Rng;
use crate::search::{Evaluator, Failure, FailureClass, Measurement, Outcome, Prior};
use crate::space::{Config, Param, ParamKind, SearchSpace, Value};
use crate::{Error, Result};

/// Kernel Tuner's numeric error value; times at or above it are failures.
const KT_ERROR_VALUE: f64 = 1e20;

/// One recorded config.
#[derive(Clone, Debug)]
pub struct Record {
    /// The recorded mean time in ms, or the failure string (`CompilationFailedConfig`, ...).
    pub time: std::result::Result<f64, String>,
    /// Per-run samples in ms (for a success: at least one; the mean time if none were recorded).
    pub times: Vec<f64>,
    /// Compile time in ms.
    pub compile_ms: f64,
    /// Verification time in ms.
    pub verification_ms: f64,
    /// Benchmarking time in ms (all runs).
    pub benchmark_ms: f64,
}

impl Record {
    /// Simulated cost of evaluating this config, in seconds.
    pub fn cost_s(&self) -> f64 {
        (self.compile_ms + self.verification_ms + self.benchmark_ms) / 1000.0
    }
}

/// A parsed Kernel Tuner cachefile.
#[derive(Clone, Debug)]
pub struct Cachefile {
    /// File name without `.json.gz` / `.json`.
    pub name: String,
    /// The space from `tune_params`, restricted to the recorded configs.
    pub space: SearchSpace,
    /// Every recorded config.
    pub records: HashMap<Config, Record>,
}

fn jerr(what: &str, msg: impl Into<String>) -> Error {
    Error::Json {
        what: what.to_string(),
        msg: msg.into(),
    }
}

/// Python's `str()` of a float (`1.0`, `0.5`, `1e-05`), as Kernel Tuner writes float values in keys.
fn py_float(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes `1e-5`; Python writes `1e-05`.
        let s = format!("{x:e}");
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// A number field of a record: missing or unusable (negative, non-finite) counts as 0.
fn num_field(rec: &serde_json::Map<String, Json>, k: &str) -> f64 {
    rec.get(k)
        .and_then(Json::as_f64)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(0.0)
}

impl Cachefile {
    /// Reads a cachefile (`.json.gz` is decompressed).
    pub fn load(path: &Path) -> Result<Cachefile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        let fname = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if fname.ends_with(".gz") {
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .map_err(|e| Error::io(path, e))?;
        } else {
            std::io::BufReader::new(file)
                .read_to_string(&mut text)
                .map_err(|e| Error::io(path, e))?;
        }
        let name = fname
            .trim_end_matches(".gz")
            .trim_end_matches(".json")
            .to_string();
        Cachefile::parse(&name, &text)
    }

    /// Parses a cachefile's JSON text; `name` is used in errors and traces.
    pub fn parse(name: &str, text: &str) -> Result<Cachefile> {
        let doc: Json = serde_json::from_str(text).map_err(|e| jerr(name, e.to_string()))?;
        let keys = doc
            .get("tune_params_keys")
            .and_then(Json::as_array)
            .ok_or_else(|| jerr(name, "`tune_params_keys` missing or not a list"))?;
        let tp = doc
            .get("tune_params")
            .and_then(Json::as_object)
            .ok_or_else(|| jerr(name, "`tune_params` missing or not an object"))?;
        let mut params = Vec::with_capacity(keys.len());
        for k in keys {
            let k = k
                .as_str()
                .ok_or_else(|| jerr(name, "`tune_params_keys` holds a non-string"))?;
            let vals = tp
                .get(k)
                .and_then(Json::as_array)
                .ok_or_else(|| jerr(name, format!("`tune_params` has no list for `{k}`")))?;
            params.push(param_from_json(name, k, vals)?);
        }
        // Value text → index, per parameter, to map cache keys onto configs.
        let lookup: Vec<HashMap<String, u16>> = params
            .iter()
            .map(|p| {
                p.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.to_string(), i as u16))
                    .collect()
            })
            .collect();
        let cache = doc
            .get("cache")
            .and_then(Json::as_object)
            .ok_or_else(|| jerr(name, "`cache` missing or not an object"))?;
        let mut records = HashMap::with_capacity(cache.len());
        for (key, rec) in cache {
            let parts: Vec<&str> = key.split(',').collect();
            if parts.len() != params.len() {
                return Err(jerr(
                    name,
                    format!(
                        "cache key `{key}` has {} values, expected {}",
                        parts.len(),
                        params.len()
                    ),
                ));
            }
            let mut c = Vec::with_capacity(parts.len());
            for (d, part) in parts.iter().enumerate() {
                let i = lookup[d].get(part.trim()).ok_or_else(|| {
                    jerr(
                        name,
                        format!(
                            "cache key `{key}`: `{part}` is not a value of `{}`",
                            params[d].name
                        ),
                    )
                })?;
                c.push(*i);
            }
            let rec = rec
                .as_object()
                .ok_or_else(|| jerr(name, format!("cache entry `{key}` is not an object")))?;
            let time = match rec.get("time") {
                Some(Json::String(s)) => Err(s.clone()),
                Some(Json::Number(n)) => match n.as_f64() {
                    Some(t) if t.is_finite() && (0.0..KT_ERROR_VALUE).contains(&t) => Ok(t),
                    _ => Err("InvalidConfig".to_string()),
                },
                _ => {
                    return Err(jerr(
                        name,
                        format!("cache entry `{key}`: `time` missing or neither number nor string"),
                    ))
                }
            };
            let mut times: Vec<f64> = match rec.get("times") {
                Some(Json::Array(a)) => a
                    .iter()
                    .filter_map(Json::as_f64)
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .collect(),
                _ => Vec::new(),
            };
            if let Ok(t) = time {
                if times.is_empty() {
                    times.push(t);
                }
            } else {
                times.clear();
            }
            records.insert(
                Config(c),
                Record {
                    time,
                    times,
                    compile_ms: num_field(rec, "compile_time"),
                    verification_ms: num_field(rec, "verification_time"),
                    benchmark_ms: num_field(rec, "benchmark_time"),
                },
            );
        }
        if records.is_empty() {
            return Err(jerr(name, "the cache holds no configs"));
        }
        let present: HashSet<Config> = records.keys().cloned().collect();
        let space =
            SearchSpace::new(params, &[], &[])?.with_filter(move |c| present.contains(c))?;
        Ok(Cachefile {
            name: name.to_string(),
            space,
            records,
        })
    }

    /// The cachefile key of `c`: values in `tune_params_keys` order, as Python's `str()` writes
    /// them, joined by commas.
    pub fn key(&self, c: &Config) -> String {
        self.space
            .values(c)
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// This file's successful configs with their recorded times, as a [`Prior`] for a search of
    /// `target` (the same kernel recorded elsewhere): configs are matched by their cachefile
    /// key, so only configs valid in both count; the source label is this file's name. `None`
    /// when the two files do not name the same parameters in the same order.
    pub fn prior_for(&self, target: &Cachefile) -> Option<Prior> {
        let names = |c: &Cachefile| -> Vec<String> {
            c.space.params().iter().map(|p| p.name.clone()).collect()
        };
        if names(self) != names(target) {
            return None;
        }
        let by_key: HashMap<String, &Config> =
            target.records.keys().map(|c| (target.key(c), c)).collect();
        let mut obs: Vec<(Config, f64)> = self
            .records
            .iter()
            .filter_map(|(c, r)| {
                let t = *r.time.as_ref().ok()?;
                let there = by_key.get(&self.key(c))?;
                target.mean_time(there).map(|_| ((*there).clone(), t))
            })
            .collect();
        obs.sort_by(|a, b| a.0.cmp(&b.0));
        Some(Prior::new(self.name.clone(), obs))
    }

    /// The recorded mean time of `c`; `None` for failures and unrecorded configs.
    pub fn mean_time(&self, c: &Config) -> Option<f64> {
        self.records
            .get(c)
            .and_then(|r| r.time.as_ref().ok().copied())
    }

    /// The fastest recorded config and its mean time; `None` if every config failed.
    pub fn optimum(&self) -> Option<(&Config, f64)> {
        self.records
            .iter()
            .filter_map(|(c, r)| r.time.as_ref().ok().map(|t| (c, *t)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)))
    }

    /// The slowest recorded successful mean time (the scorer's value for "nothing found yet").
    pub fn worst_time(&self) -> Option<f64> {
        self.records
            .values()
            .filter_map(|r| r.time.as_ref().ok().copied())
            .max_by(f64::total_cmp)
    }
}

fn param_from_json(file: &str, name: &str, vals: &[Json]) -> Result<Param> {
    if vals.is_empty() {
        return Err(jerr(file, format!("`tune_params.{name}` is empty")));
    }
    if let Some(ints) = vals.iter().map(Json::as_i64).collect::<Option<Vec<i64>>>() {
        return Ok(Param::ints(name, &ints));
    }
    // Floats, booleans and strings: kept as their Python text so keys round-trip; ordered when
    // all numeric (the feature is then the index), otherwise unordered.
    let mut numeric = true;
    let values = vals
        .iter()
        .map(|v| match v {
            Json::Number(n) => Ok(Value::Str(n.as_i64().map_or_else(
                || py_float(n.as_f64().unwrap_or(f64::NAN)),
                |i| i.to_string(),
            ))),
            Json::Bool(b) => {
                numeric = false;
                Ok(Value::Bool(*b))
            }
            Json::String(s) => {
                numeric = false;
                Ok(Value::Str(s.clone()))
            }
            _ => Err(jerr(
                file,
                format!("`tune_params.{name}` holds a value that is not a number, bool or string"),
            )),
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(Param {
        name: name.to_string(),
        values,
        kind: if numeric {
            ParamKind::Ordered
        } else {
            ParamKind::Enum
        },
    })
}

/// An [`Evaluator`] answering from a [`Cachefile`] with recorded noise and simulated time.
#[derive(Clone, Debug)]
pub struct ReplayEvaluator {
    data: Arc<Cachefile>,
    rng: Rng,
    elapsed_s: f64,
}

impl ReplayEvaluator {
    /// A replay of `data`; `seed` fixes which recorded samples are drawn.
    pub fn new(data: Arc<Cachefile>, seed: u64) -> Self {
        ReplayEvaluator {
            data,
            rng: Rng::new(seed ^ 0x5EED_0F2E_91A7),
            elapsed_s: 0.0,
        }
    }

    /// The cachefile replayed.
    pub fn data(&self) -> &Cachefile {
        &self.data
    }

    fn draw(&mut self, c: &Config, samples: usize, charge_all: bool) -> Outcome {
        let Some(r) = self.data.records.get(c) else {
            return Outcome::Failed(Failure {
                class: FailureClass::Launch,
                detail: "config not in the recorded data".into(),
            });
        };
        self.elapsed_s += if charge_all {
            r.cost_s()
        } else {
            r.benchmark_ms / 1000.0
        };
        match &r.time {
            Err(s) => Outcome::Failed(Failure {
                class: failure_class(s),
                detail: s.clone(),
            }),
            Ok(_) => {
                let samples: Vec<f64> = (0..samples.max(1))
                    .map(|_| r.times[self.rng.index(r.times.len())])
                    .collect();
                match Measurement::from_samples(samples) {
                    Some(m) => Outcome::Measured(m),
                    None => Outcome::Failed(Failure {
                        class: FailureClass::Launch,
                        detail: "unusable samples".into(),
                    }),
                }
            }
        }
    }
}

/// Kernel Tuner's failure strings mapped onto classes.
fn failure_class(s: &str) -> FailureClass {
    if s.contains("Compil") {
        FailureClass::Compile
    } else if s.contains("Timeout") || s.contains("TimedOut") {
        FailureClass::Timeout
    } else if s.contains("Verif") || s.contains("Wrong") {
        FailureClass::WrongResult
    } else {
        // RuntimeFailedConfig, InvalidConfig and anything newer.
        FailureClass::Launch
    }
}

impl Evaluator for ReplayEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.data.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        Ok(batch.iter().map(|c| self.draw(c, 1, true)).collect())
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        Ok(batch.iter().map(|c| self.draw(c, samples, false)).collect())
    }

    fn elapsed_s(&self) -> f64 {
        self.elapsed_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
        "tune_params_keys": ["bx", "t", "f"],
        "tune_params": {"bx": [16, 32, 64], "t": [1, 2], "f": [0.5, 1.0]},
        "cache": {
            "16,1,0.5": {"time": 3.0, "times": [2.9, 3.1], "compile_time": 100, "verification_time": 0, "benchmark_time": 50},
            "32,1,0.5": {"time": 2.0, "times": [1.9, 2.1], "compile_time": 100, "verification_time": 0, "benchmark_time": 50},
            "64,2,1.0": {"time": "CompilationFailedConfig", "compile_time": 500, "benchmark_time": 0},
            "32,2,1.0": {"time": 1.5, "compile_time": 100, "benchmark_time": 50}
        }}"#;

    #[test]
    fn parses_space_keys_and_records() {
        let cf = Cachefile::parse("small", SMALL).unwrap();
        assert_eq!(cf.space.count(), 4, "absent configs are invalid");
        let keys: HashSet<String> = cf.space.iter().map(|c| cf.key(&c)).collect();
        assert!(keys.contains("32,2,1.0") && keys.contains("16,1,0.5"));
        let (best, t) = cf.optimum().unwrap();
        assert_eq!(cf.key(best), "32,2,1.0");
        assert_eq!(t, 1.5);
        assert_eq!(cf.worst_time(), Some(3.0));
    }

    #[test]
    fn replays_samples_failures_and_time() {
        let cf = Arc::new(Cachefile::parse("small", SMALL).unwrap());
        let find = |k: &str| cf.space.iter().find(|c| cf.key(c) == k).unwrap();
        let (a, fail) = (find("16,1,0.5"), find("64,2,1.0"));
        let mut ev = ReplayEvaluator::new(cf.clone(), 1);
        let out = ev.evaluate(&[a.clone(), fail]).unwrap();
        let t = out[0].time_ms().unwrap();
        assert!(t == 2.9 || t == 3.1);
        assert!(matches!(&out[1], Outcome::Failed(f) if f.class == FailureClass::Compile));
        assert!((ev.elapsed_s() - (0.15 + 0.5)).abs() < 1e-12);
        let again = ev.remeasure(&[a], 3).unwrap();
        assert!(matches!(&again[0], Outcome::Measured(m) if m.samples.len() == 3));
        assert!(
            (ev.elapsed_s() - 0.7).abs() < 1e-12,
            "re-measurement charges benchmark time"
        );
    }

    #[test]
    fn prior_keeps_configs_valid_in_both() {
        let target = Cachefile::parse("small", SMALL).unwrap();
        // Another GPU: the values listed in another order, one config only recorded there, one
        // that failed there, one that failed in the target.
        let other = Cachefile::parse(
            "other",
            r#"{"tune_params_keys": ["bx", "t", "f"],
            "tune_params": {"bx": [64, 32, 16], "t": [2, 1], "f": [1.0, 0.5]},
            "cache": {
                "16,1,0.5": {"time": 9.0}, "32,1,0.5": {"time": "RuntimeFailedConfig"},
                "64,2,1.0": {"time": 1.0}, "32,2,1.0": {"time": 4.0}, "64,1,0.5": {"time": 2.0}
            }}"#,
        )
        .unwrap();
        let p = other.prior_for(&target).unwrap();
        assert_eq!(p.source, "other");
        let mut got: Vec<(String, f64)> = p
            .observations
            .iter()
            .map(|(c, t)| (target.key(c), *t))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![("16,1,0.5".into(), 9.0), ("32,2,1.0".into(), 4.0)]
        );
        let renamed = Cachefile::parse(
            "renamed",
            r#"{"tune_params_keys": ["bx", "t", "g"],
            "tune_params": {"bx": [16], "t": [1], "g": [0.5]}, "cache": {"16,1,0.5": {"time": 1}}}"#,
        )
        .unwrap();
        assert!(renamed.prior_for(&target).is_none());
    }

    #[test]
    fn malformed_files_are_errors() {
        for bad in [
            "not json",
            r#"{"tune_params": {}, "cache": {}}"#,
            r#"{"tune_params_keys": ["a"], "tune_params": {"a": [1]}, "cache": {"1,2": {"time": 1}}}"#,
            r#"{"tune_params_keys": ["a"], "tune_params": {"a": [1]}, "cache": {"7": {"time": 1}}}"#,
            r#"{"tune_params_keys": ["a"], "tune_params": {"a": [1]}, "cache": {"1": {}}}"#,
            r#"{"tune_params_keys": ["a"], "tune_params": {"a": [1]}, "cache": {}}"#,
        ] {
            assert!(Cachefile::parse("bad", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn python_float_text() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(2.5e20), "2.5e+20");
    }
}
