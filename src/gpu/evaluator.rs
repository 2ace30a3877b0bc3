//! The GPU engine behind the search's [`Evaluator`] interface.
//!
//! A batch is compiled in the worker pool (CUBINs already in the cache's binary table are
//! loaded instead) and each config is measured as soon as its compilation finishes, so
//! benchmarking overlaps the rest of the batch's compilation. Each new candidate is checked
//! against the reference output before it is timed: a wrong config is a failure, never a
//! winner. Before a candidate's first launch, an in-flight marker is written to the store; if the
//! candidate kills the process, the marker survives, and the next process records the config
//! as crashed and never tries it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::CudaFunction;

use super::compile::{CompileRequest, Image};
use super::device::Gpu;
use super::measure::{median, relative_error, Bench, LaunchFailure};
use super::pool::CompilePool;
use crate::cache::store::BinaryKey;
use crate::cache::Cache;
use crate::key::TuningKey;
use crate::search::evaluator::{Evaluator, Failure, FailureClass, Measurement, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::{Geometry, KernelSpec};
use crate::{Error, Result};

/// Knobs of the measurement.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Time budget of a first measurement, milliseconds of kernel time.
    pub first_budget_ms: f64,
    pub min_reps: usize,
    pub max_reps: usize,
    /// A candidate slower than this many times the best so far stops being timed.
    pub too_slow_factor: f64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            first_budget_ms: 20.0,
            min_reps: 5,
            max_reps: 50,
            too_slow_factor: 10.0,
        }
    }
}

struct Loaded {
    func: CudaFunction,
    geometry: Geometry,
    /// The config's parameter values as expressions see them (for tensor maps).
    values: Vec<i64>,
}

/// Compiles, checks and times configs of one spec at one shape on one GPU.
pub struct GpuEvaluator {
    gpu: Arc<Gpu>,
    spec: Arc<KernelSpec>,
    shape: Vec<i64>,
    space: SearchSpace,
    key: TuningKey,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    bench: Bench,
    reference: Option<Vec<Vec<f64>>>,
    loaded: HashMap<Config, Loaded>,
    /// Images handed in by the caller (an isolated worker gets them from its host), used
    /// instead of the binary table or a compilation.
    supplied: HashMap<Config, Image>,
    /// The config whose outputs are the reference, when the caller chose it.
    reference_config: Option<Config>,
    failed: HashMap<String, FailureClass>,
    best_ms: f64,
    start: Instant,
    pub options: MeasureOptions,
    /// Configs compiled by NVRTC (not found in the binary table).
    pub compiled: usize,
    /// Configs whose CUBIN came from the cache's binary table.
    pub binaries_reused: usize,
}

impl GpuEvaluator {
    /// Prepares synthetic inputs for `spec` at `shape`; configs the store knows to have failed
    /// (stale in-flight markers included) are failures without being run again.
    pub fn new(
        gpu: Arc<Gpu>,
        spec: Arc<KernelSpec>,
        shape: &[i64],
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
    ) -> Result<GpuEvaluator> {
        let space = spec.space_for(shape, &gpu.limits)?;
        let bucket = spec
            .bucket(shape)
            .ok_or_else(|| Error::Shape(format!("kernel `{}`: bad shape", spec.name)))?;
        let key = TuningKey {
            kernel: spec.id(),
            shape: bucket,
            device: gpu.fingerprint_hash,
        };
        let bench = Bench::new(&gpu, &spec, shape, 0x5EED ^ spec.id().0[0] as u64)?;
        let mut failed = HashMap::new();
        for c in cache.take_stale_inflight(&key).unwrap_or_default() {
            log::warn!(
                "jitune: {} config {c} was running when a process died; it will not be tried again",
                spec.name
            );
            failed.insert(c, FailureClass::Crashed);
        }
        for (c, class, _) in cache.failures_for(&key).unwrap_or_default() {
            failed.insert(c, class);
        }
        Ok(GpuEvaluator {
            gpu,
            spec,
            shape: shape.to_vec(),
            space,
            key,
            cache,
            pool,
            bench,
            reference: None,
            loaded: HashMap::new(),
            supplied: HashMap::new(),
            reference_config: None,
            failed,
            best_ms: f64::INFINITY,
            start: Instant::now(),
            options: MeasureOptions::default(),
            compiled: 0,
            binaries_reused: 0,
        })
    }

    /// Uses these outputs (one vector per `out`/`inout` argument, in order) as the reference
    /// instead of the default config's.
    pub fn set_reference(&mut self, outputs: Vec<Vec<f64>>) {
        self.reference = Some(outputs);
    }

    /// Uses `image` for `config` the next time it has to be loaded, instead of the binary table
    /// or NVRTC (an isolated benchmark worker receives its images from the host this way).
    pub fn supply_image(&mut self, config: Config, image: Image) {
        self.supplied.insert(config, image);
    }

    /// Runs `config` for the reference outputs instead of the one [`reference_config`] picks
    /// (an isolated worker runs the reference its host picked from the store's failures).
    pub fn set_reference_config(&mut self, config: Config) {
        self.reference_config = Some(config);
    }

    /// Whether `config` has been loaded and checked (so it can be timed or remeasured).
    pub fn is_loaded(&self, config: &Config) -> bool {
        self.loaded.contains_key(config)
    }

    /// The tuning key this evaluator measures for.
    pub fn key(&self) -> TuningKey {
        self.key
    }

    fn binary_key<'a>(&'a self, config_text: &'a str, nvrtc: &'a str) -> BinaryKey<'a> {
        BinaryKey {
            kernel: self.spec.id(),
            config: config_text,
            arch: &self.gpu.arch,
            nvrtc,
        }
    }

    fn nvrtc_text(&self) -> String {
        format!(
            "{}.{}",
            self.gpu.fingerprint.nvrtc_version.0, self.gpu.fingerprint.nvrtc_version.1
        )
    }

    fn fail(&mut self, config: &Config, class: FailureClass, detail: String) -> Outcome {
        let text = self.space.config_text(config);
        if let Err(e) = self.cache.record_failure(&self.key, &text, class, &detail) {
            log::warn!("jitune: could not record a failure: {e}");
        }
        log::debug!(
            "jitune: {} {text}: {class}: {}",
            self.spec.name,
            detail.lines().next().unwrap_or("")
        );
        self.failed.insert(text, class);
        Outcome::Failed(Failure { class, detail })
    }

    /// Loads an image and checks the config's output; `Ok(None)` when it passed.
    fn load_and_check(&mut self, config: &Config, image: Image) -> Result<Option<Outcome>> {
        let values: Vec<i64> = (0..self.spec.params.len())
            .map(|d| self.space.int_value(config, d))
            .collect();
        let geometry = match self.spec.geometry(&values, &self.shape, &self.gpu.limits) {
            Ok(g) => g,
            Err(e) => return Ok(Some(self.fail(config, FailureClass::Launch, e.to_string()))),
        };
        let ctx = self.gpu.ctx.clone();
        let entry = self.spec.entry.clone();
        let func = super::guarded("loading a module", || {
            let module = ctx
                .load_module(image.to_ptx())
                .map_err(|e| Error::driver("loading a module", e))?;
            module
                .load_function(&entry)
                .map_err(|e| Error::driver("looking up the kernel function", e))
        });
        let func = match func {
            Ok(f) => f,
            Err(e) => {
                return Ok(Some(self.fail(
                    config,
                    FailureClass::Launch,
                    format!("loading the module: {e}"),
                )))
            }
        };
        let text = self.space.config_text(config);
        self.cache.mark_inflight(&self.key, &text)?;
        let checked = self.bench.run_checked(&func, &geometry, &values)?;
        let outcome = match checked {
            Err(LaunchFailure::Invalid(m)) => Some(self.fail(config, FailureClass::Launch, m)),
            Err(LaunchFailure::Sticky(m)) => {
                // The context is unusable: record the config as crashed and stop the search.
                let _ = self
                    .cache
                    .record_failure(&self.key, &text, FailureClass::Crashed, &m);
                let _ = self.cache.clear_inflight(&self.key, &text);
                return Err(Error::cuda(format!(
                    "config {text} broke the CUDA context: {m}"
                )));
            }
            Ok(outputs) => match &self.reference {
                None => {
                    self.reference = Some(outputs);
                    None
                }
                Some(reference) => {
                    let mut worst = 0.0f64;
                    let mut bad = false;
                    for (o, r) in outputs.iter().zip(reference) {
                        match relative_error(o, r) {
                            Some(e) => worst = worst.max(e),
                            None => bad = true,
                        }
                    }
                    if bad || worst > self.spec.tolerance {
                        let what = if bad {
                            "NaN, infinity or unwritten elements".to_string()
                        } else {
                            format!("relative error {worst:.3e}")
                        };
                        Some(self.fail(
                            config,
                            FailureClass::WrongResult,
                            format!("{what} (tolerance {:.1e})", self.spec.tolerance),
                        ))
                    } else {
                        None
                    }
                }
            },
        };
        self.cache.clear_inflight(&self.key, &text)?;
        if outcome.is_none() {
            self.loaded.insert(
                config.clone(),
                Loaded {
                    func,
                    geometry,
                    values,
                },
            );
        }
        Ok(outcome)
    }

    fn time(
        &mut self,
        config: &Config,
        budget_ms: f64,
        min_reps: usize,
        max_reps: usize,
    ) -> Result<Outcome> {
        let Some(l) = self.loaded.get(config) else {
            return Err(Error::Search("timing a config that was not loaded".into()));
        };
        let (func, g, v) = (l.func.clone(), l.geometry, l.values.clone());
        // A first look: if the candidate is far slower than the best, do not spend more on it.
        let probe = match self.bench.time(&func, &g, &v, 1)? {
            Ok(s) => s,
            Err(LaunchFailure::Invalid(m)) => {
                return Ok(self.fail(config, FailureClass::Launch, m))
            }
            Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
        };
        if probe[0] > self.options.too_slow_factor * self.best_ms {
            let detail = format!(
                "too slow: {:.3} ms against a best of {:.3} ms",
                probe[0], self.best_ms
            );
            return Ok(self.fail(config, FailureClass::TooSlow, detail));
        }
        let samples = match self
            .bench
            .time_budgeted(&func, &g, &v, budget_ms, min_reps, max_reps)?
        {
            Ok(s) => s,
            Err(LaunchFailure::Invalid(m)) => {
                return Ok(self.fail(config, FailureClass::Launch, m))
            }
            Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
        };
        let m = median(&samples);
        self.best_ms = self.best_ms.min(m);
        Ok(Outcome::Measured(Measurement {
            time_ms: m,
            samples,
        }))
    }

    /// Makes sure the reference exists: the spec's default config (or the first valid config
    /// when the default is not valid at this shape) is compiled and run first.
    fn ensure_reference(&mut self) -> Result<()> {
        if self.reference.is_some() {
            return Ok(());
        }
        let default = match &self.reference_config {
            Some(c) => c.clone(),
            None => reference_config(&self.spec, &self.space, &self.failed)?,
        };
        let outcomes = self.evaluate_inner(std::slice::from_ref(&default), false)?;
        if self.reference.is_none() {
            return Err(Error::Search(format!(
                "kernel `{}`: the reference config {} failed ({:?}); nothing to check candidates against",
                self.spec.name,
                self.space.config_text(&default),
                outcomes.first().and_then(|o| match o {
                    Outcome::Failed(f) => Some(f.detail.lines().next().unwrap_or("").to_string()),
                    _ => None,
                })
            )));
        }
        // The reference config's time is the yardstick for "too slow" until something faster
        // is measured (batches finish compiling in any order, so the first timed candidate may
        // be a slow one).
        if let Some(l) = self.loaded.get(&default) {
            let (func, g, v) = (l.func.clone(), l.geometry, l.values.clone());
            match self.bench.time(&func, &g, &v, 3)? {
                Ok(s) => self.best_ms = self.best_ms.min(median(&s)),
                Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
                Err(LaunchFailure::Invalid(_)) => {}
            }
        }
        Ok(())
    }

    /// Loads and checks a new image (when given), then times the config.
    fn process(&mut self, c: &Config, image: Option<Image>, timed: bool) -> Result<Outcome> {
        if let Some(img) = image {
            if let Some(f) = self.load_and_check(c, img)? {
                return Ok(f);
            }
        }
        if timed {
            let o = self.options.clone();
            self.time(c, o.first_budget_ms, o.min_reps, o.max_reps)
        } else {
            Ok(Outcome::Measured(Measurement {
                time_ms: f64::NAN,
                samples: vec![],
            }))
        }
    }

    fn evaluate_inner(&mut self, batch: &[Config], timed: bool) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let nvrtc = self.nvrtc_text();
        let mut to_compile = Vec::new();
        let mut ready: Vec<(usize, Image)> = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let text = self.space.config_text(c);
            if let Some(class) = self.failed.get(&text) {
                out[i] = Some(Outcome::Failed(Failure {
                    class: *class,
                    detail: "failed before (recorded in the store)".into(),
                }));
            } else if self.loaded.contains_key(c) {
                ready.push((i, Image::Cubin(Vec::new()))); // already loaded: only timing left
            } else if let Some(img) = self.supplied.remove(c) {
                ready.push((i, img));
            } else if let Ok(Some(bin)) = self.cache.get_binary(&self.binary_key(&text, &nvrtc)) {
                self.binaries_reused += 1;
                ready.push((i, Image::from_bytes(bin)));
            } else {
                to_compile.push(i);
            }
        }
        let reqs: Vec<CompileRequest> = to_compile
            .iter()
            .map(|&i| CompileRequest::new(&self.spec, &batch[i], &self.gpu.arch))
            .collect();
        let rx = self.pool.submit(reqs);
        for (i, img) in ready {
            let image = if self.loaded.contains_key(&batch[i]) {
                None
            } else {
                Some(img)
            };
            out[i] = Some(self.process(&batch[i], image, timed)?);
        }
        for (j, result) in rx.iter() {
            let i = to_compile[j];
            match result? {
                Ok(image) => {
                    self.compiled += 1;
                    let text = self.space.config_text(&batch[i]);
                    if let Err(e) = self
                        .cache
                        .put_binary(&self.binary_key(&text, &nvrtc), &image.to_bytes())
                    {
                        log::warn!("jitune: could not store a CUBIN: {e}");
                    }
                    out[i] = Some(self.process(&batch[i], Some(image), timed)?);
                }
                Err(log) => out[i] = Some(self.fail(&batch[i], FailureClass::Compile, log)),
            }
        }
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(Failure {
                        class: FailureClass::Compile,
                        detail: "no result".into(),
                    })
                })
            })
            .collect())
    }
}

/// The config whose outputs candidates are checked against: the spec's default when it is
/// valid here and not recorded as failed, else the first valid config not recorded as failed.
/// (A process killed while running the default leaves an in-flight marker that turns into a
/// `crashed` record; that must not make the key untunable for ever.)
pub(crate) fn reference_config(
    spec: &KernelSpec,
    space: &SearchSpace,
    failed: &HashMap<String, FailureClass>,
) -> Result<Config> {
    let usable = |c: &Config| !failed.contains_key(&space.config_text(c));
    if space.is_valid(&spec.default) && usable(&spec.default) {
        return Ok(spec.default.clone());
    }
    space.iter().find(usable).ok_or_else(|| {
        Error::Search(format!(
            "kernel `{}`: every config is recorded as failed; nothing to use as the reference",
            spec.name
        ))
    })
}

impl Evaluator for GpuEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        self.ensure_reference()?;
        self.evaluate_inner(batch, true)
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        // Interleaved: one run of each config per round, so clock drift hits all alike.
        let mut collected: Vec<Vec<f64>> = vec![Vec::new(); batch.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; batch.len()];
        for _ in 0..samples.max(1) {
            for (i, c) in batch.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                let Some(l) = self.loaded.get(c) else {
                    failed[i] = Some(Outcome::Failed(Failure {
                        class: FailureClass::Launch,
                        detail: "not measured before".into(),
                    }));
                    continue;
                };
                let (func, g, v) = (l.func.clone(), l.geometry, l.values.clone());
                match self.bench.time(&func, &g, &v, 1)? {
                    Ok(s) => collected[i].extend(s),
                    Err(LaunchFailure::Invalid(m)) => {
                        failed[i] = Some(self.fail(c, FailureClass::Launch, m))
                    }
                    Err(LaunchFailure::Sticky(m)) => return Err(Error::cuda(m)),
                }
            }
        }
        Ok(collected
            .into_iter()
            .zip(failed)
            .map(|(s, f)| {
                f.unwrap_or_else(|| {
                    Outcome::Measured(Measurement {
                        time_ms: median(&s),
                        samples: s,
                    })
                })
            })
            .collect())
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
