//! Isolated tuning: candidates are loaded, checked and timed in a benchmark worker process of
//! jitune's own, so that a candidate which writes out of bounds, traps, hangs or otherwise kills
//! its process takes down only that worker. The host's CUDA context, its launches and its
//! threads carry on; the host records the config as failed with its class (`crashed`,
//! `timeout`) in the store, starts a new worker and goes on with the search. The config is
//! never tried again (the failure is in the store, which every later run reads).
//!
//! [`IsolatedEvaluator`] is an [`Evaluator`] like [`GpuEvaluator`](super::GpuEvaluator):
//! strategies cannot tell them apart. The host gets each candidate's image where in-process
//! tuning does ([`Binaries`]: binary table, else the compile pool) and sends it to the worker
//! one at a time, with a deadline per candidate; compilation of the rest of the batch overlaps.
//! The worker ([`super::worker`]) runs the in-process pipeline on a context of its own.
//!
//! The worker is started like the compile workers (see [`crate::gpu::pool`]): the program named
//! by `JITUNE_WORKER_CMD`, else the current executable when it called
//! [`run_if_worker`](super::run_if_worker), with `JITUNE_WORKER=bench`. What travels on the
//! pipes is in [`super::protocol`].

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::binaries::Binaries;
use super::evaluator::MeasureOptions;
use super::failures::{complete, FailureBook};
use super::job::TuningJob;
use super::protocol::{
    error_text, outcomes_of, read_frame, write_frame, Frame, Init, K_CRASHED, K_EVALUATE,
    K_OUTCOMES, K_READY, K_REMEASURE,
};
use super::worker::BENCH_ROLE;
use crate::cache::Cache;
use crate::failure::FailureClass;
use crate::gpu::compile::Image;
use crate::gpu::device::Gpu;
use crate::gpu::pool::{worker_command, CompilePool};
use crate::search::evaluator::{Evaluator, Failure, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::wire;
use crate::{Error, Result};

/// Where candidates are benchmarked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// In the tuning process itself (fastest; a crashing candidate takes the process down, and
    /// the in-flight marker makes the next process skip it).
    InProcess,
    /// In a benchmark worker process (see the module docs).
    Process,
}

impl Isolation {
    /// `process` / `isolated` or `in-process` / `inprocess` / `none` (also the values of
    /// `JITUNE_ISOLATION`).
    pub fn parse(s: &str) -> Option<Isolation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "process" | "isolated" | "worker" => Some(Isolation::Process),
            "in-process" | "inprocess" | "in_process" | "none" => Some(Isolation::InProcess),
            _ => None,
        }
    }

    /// The isolation named by `JITUNE_ISOLATION`, if it names one.
    pub fn from_env() -> Option<Isolation> {
        std::env::var("JITUNE_ISOLATION")
            .ok()
            .and_then(|v| Isolation::parse(&v))
    }
}

/// Knobs of isolated tuning.
#[derive(Clone, Debug)]
pub struct IsolationOptions {
    /// Longest a candidate may take (load, correctness check and timing) before its worker is
    /// killed and the config recorded as `timeout`.
    pub candidate_timeout: Duration,
    /// Longest a worker may take to start (CUDA context, buffers, the reference run).
    pub start_timeout: Duration,
    /// The worker program; `None`: as the compile pool finds it (`JITUNE_WORKER_CMD`, else the
    /// current executable if it called `run_if_worker`).
    pub worker_cmd: Option<Vec<String>>,
}

impl Default for IsolationOptions {
    fn default() -> Self {
        IsolationOptions {
            candidate_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            worker_cmd: None,
        }
    }
}

impl IsolationOptions {
    /// The worker command line these options name or find, if any.
    pub fn resolve_worker_cmd(&self) -> Option<Vec<String>> {
        self.worker_cmd
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(worker_command)
    }
}

/// How a request to a worker ended when it did not end with a reply.
#[derive(Debug)]
enum Death {
    /// No reply by the deadline; the worker was killed.
    TimedOut,
    /// The worker went away (a signal, an exit); why, as far as known.
    Exited(String),
}

struct BenchWorker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    replies: mpsc::Receiver<std::io::Result<Frame>>,
}

impl BenchWorker {
    fn spawn(cmd: &[String]) -> Result<BenchWorker> {
        let (prog, args) = cmd
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("empty worker command".into()))?;
        let mut child = Command::new(prog)
            .args(args)
            .env(crate::gpu::pool::ENV_ROLE, BENCH_ROLE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("JITUNE_WORKER_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|e| Error::io(prog, e))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::InvalidArgument("worker pipes missing".into()));
            }
        };
        // Replies are read on a thread of their own so that the host can wait with a deadline.
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("jitune-bench-reader".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    let f = match read_frame(&mut r) {
                        Ok(Some(f)) => Ok(f),
                        Ok(None) => Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the worker closed its output",
                        )),
                        Err(e) => Err(e),
                    };
                    let end = f.is_err();
                    if tx.send(f).is_err() || end {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Search(format!("cannot start a reader thread: {e}")));
        }
        Ok(BenchWorker {
            child,
            stdin: BufWriter::new(stdin),
            replies: rx,
        })
    }

    /// Sends `req` and waits for the reply until `timeout`; kills the worker on a timeout.
    fn call(&mut self, req: &Frame, timeout: Duration) -> std::result::Result<Frame, Death> {
        if let Err(e) = write_frame(&mut self.stdin, req) {
            return Err(self.exited(format!("writing to the worker: {e}")));
        }
        match self.replies.recv_timeout(timeout) {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(self.exited(e.to_string())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(Death::TimedOut)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(self.exited("the reader thread ended".into()))
            }
        }
    }

    fn exited(&mut self, why: String) -> Death {
        // Give a dying worker a moment to be reaped, so that its signal can be reported.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Death::Exited(format!("{why}; the worker {status}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Death::Exited(why);
                }
            }
        }
    }
}

impl Drop for BenchWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What isolated tuning went through, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsolationStats {
    /// Workers started (the first one included).
    pub workers_started: usize,
    /// Candidates that killed or broke their worker.
    pub crashed: usize,
    /// Candidates killed at their deadline.
    pub timed_out: usize,
}

/// The [`Evaluator`] of isolated tuning; see the module docs.
pub struct IsolatedEvaluator {
    gpu: Arc<Gpu>,
    job: TuningJob,
    spec_toml: String,
    binaries: Binaries,
    failures: FailureBook,
    cmd: Vec<String>,
    opts: IsolationOptions,
    reference_outputs: Option<Vec<Vec<f64>>>,
    reference: (Config, Option<Image>),
    worker: Option<BenchWorker>,
    /// Images of configs that passed, to hand a restarted worker for remeasurement (and the
    /// tuner the winner's).
    images: HashMap<Config, Image>,
    start: Instant,
    pub measure: MeasureOptions,
    pub stats: IsolationStats,
}

impl IsolatedEvaluator {
    /// Prepares isolated tuning of `spec` at `shape`; the worker starts with the first batch.
    /// Configs the store knows to have failed are failures without being run again.
    pub fn new(
        gpu: Arc<Gpu>,
        spec: Arc<crate::spec::KernelSpec>,
        shape: &[i64],
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
        opts: IsolationOptions,
    ) -> Result<IsolatedEvaluator> {
        let job = TuningJob::new(spec, shape, gpu.fingerprint_hash, &gpu.limits)?;
        IsolatedEvaluator::for_job(gpu, &job, cache, pool, opts)
    }

    /// The isolated evaluator of a job built by the tuner.
    pub fn for_job(
        gpu: Arc<Gpu>,
        job: &TuningJob,
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
        opts: IsolationOptions,
    ) -> Result<IsolatedEvaluator> {
        // A search's first batch should not wait for worker processes to start (one-off
        // compilations, which also use `Binaries`, do not warm the pool).
        pool.warm(&gpu.arch);
        let cmd = opts.resolve_worker_cmd().ok_or_else(|| {
            Error::InvalidArgument(
                "isolated tuning needs a worker program: call jitune::run_if_worker() first \
                 thing in main, or set JITUNE_WORKER_CMD"
                    .into(),
            )
        })?;
        let spec = &job.spec;
        let spec_toml = wire::to_wire(spec);
        // Fail here, in the host, rather than in every worker.
        wire::from_wire(&spec_toml, &spec.source, spec)?;
        let failures = FailureBook::load(cache.clone(), job.key, &spec.name);
        let reference = failures.reference_config(spec, &job.space)?;
        Ok(IsolatedEvaluator {
            binaries: Binaries::new(gpu.clone(), spec.clone(), cache, pool),
            failures,
            gpu,
            job: job.clone(),
            spec_toml,
            cmd,
            opts,
            reference_outputs: None,
            reference: (reference, None),
            worker: None,
            images: HashMap::new(),
            start: Instant::now(),
            measure: MeasureOptions::default(),
            stats: IsolationStats::default(),
        })
    }

    /// Uses these outputs as the reference instead of the default config's (see
    /// [`GpuEvaluator::set_reference`](super::GpuEvaluator::set_reference)); every worker gets
    /// them.
    pub fn set_reference(&mut self, outputs: Vec<Vec<f64>>) {
        self.reference_outputs = Some(outputs);
    }

    /// The tuning key this evaluator measures for.
    pub fn key(&self) -> crate::key::TuningKey {
        self.job.key
    }

    /// Configs compiled by NVRTC so far (not found in the binary table).
    pub fn compiled(&self) -> usize {
        self.binaries.compiled
    }

    /// Configs whose image came from the binary table so far.
    pub fn binaries_reused(&self) -> usize {
        self.binaries.reused
    }

    /// The image of a config that passed in the worker (the tuner loads the winner from it
    /// rather than read the binary table again).
    pub fn image(&self, config: &Config) -> Option<&Image> {
        self.images.get(config)
    }

    fn fail(&mut self, config: &Config, class: FailureClass, detail: String) -> Outcome {
        let text = self.job.text(config);
        self.failures.record(&text, class, &detail);
        Outcome::Failed(Failure { class, detail })
    }

    /// The reference config's image: from an earlier run, the binary table or a compilation.
    fn reference_image(&mut self) -> Result<Image> {
        if let Some(img) = &self.reference.1 {
            return Ok(img.clone());
        }
        let c = self.reference.0.clone();
        let img = self.binaries.one(&c, &self.job.text(&c))?;
        self.reference.1 = Some(img.clone());
        Ok(img)
    }

    /// The running worker, starting one (with the reference run) when there is none.
    fn worker(&mut self) -> Result<&mut BenchWorker> {
        if self.worker.is_none() {
            let init = Init {
                spec_toml: self.spec_toml.clone(),
                source: self.job.spec.source.clone(),
                id_hex: self.job.spec.id().to_hex(),
                default: self.job.text(&self.job.spec.default),
                shape: self.job.shape.clone(),
                ordinal: self.gpu.ctx.ordinal(),
                reference_config: self.job.text(&self.reference.0),
                measure: self.measure,
                reference_image: self.reference_image()?.to_bytes(),
                reference_outputs: self.reference_outputs.clone(),
            };
            let mut w = BenchWorker::spawn(&self.cmd)?;
            self.stats.workers_started += 1;
            let name = &self.job.spec.name;
            match w.call(&init.to_frame(), self.opts.start_timeout) {
                Ok(f) if f.kind == K_READY && f.header.get("ok").is_some() => {}
                Ok(f) => {
                    return Err(Error::Search(format!(
                        "kernel `{name}`: the benchmark worker could not start: {}",
                        error_text(&f, "unexpected reply")
                    )))
                }
                Err(d) => {
                    return Err(Error::Search(format!(
                        "kernel `{name}`: the benchmark worker died while starting (the reference \
                         config {} runs first): {d:?}",
                        init.reference_config
                    )))
                }
            }
            self.worker = Some(w);
        }
        self.worker
            .as_mut()
            .ok_or_else(|| Error::Search("no benchmark worker".into()))
    }

    /// What a request that ended in the worker's death means for `config`: it is recorded
    /// (crashed or timeout) and never tried again; the next request starts a new worker.
    fn blame(&mut self, config: &Config, death: Death) -> Outcome {
        self.worker = None;
        match death {
            Death::TimedOut => {
                self.stats.timed_out += 1;
                let detail = format!(
                    "killed after {:.1} s without a result (hang or runaway kernel)",
                    self.opts.candidate_timeout.as_secs_f64()
                );
                self.fail(config, FailureClass::Timeout, detail)
            }
            Death::Exited(why) => {
                self.stats.crashed += 1;
                let detail = format!("the benchmark worker died: {why}");
                self.fail(config, FailureClass::Crashed, detail)
            }
        }
    }

    /// The worker's reply to a request: outcomes, or the death to blame.
    fn reply(
        &mut self,
        reply: std::result::Result<Frame, Death>,
    ) -> Result<std::result::Result<Vec<Outcome>, Death>> {
        match reply {
            Ok(f) if f.kind == K_OUTCOMES => Ok(Ok(outcomes_of(&f))),
            Ok(f) if f.kind == K_CRASHED => Ok(Err(Death::Exited(
                error_text(&f, "context broken").to_string(),
            ))),
            Ok(f) => {
                self.worker = None;
                Err(Error::Search(format!(
                    "kernel `{}`: the benchmark worker failed: {}",
                    self.job.spec.name,
                    error_text(&f, "unexpected reply")
                )))
            }
            Err(d) => Ok(Err(d)),
        }
    }

    /// Takes the worker's outcome for `config`: a pass keeps its image; a failure the host did
    /// not know yet is recorded in the store.
    fn accept(&mut self, config: &Config, image: Option<&Image>, o: Outcome) -> Outcome {
        match o {
            Outcome::Measured(m) => {
                if let Some(img) = image {
                    self.images.insert(config.clone(), img.clone());
                }
                Outcome::Measured(m)
            }
            Outcome::Failed(f) if self.failures.known(&self.job.text(config)).is_some() => {
                Outcome::Failed(f)
            }
            Outcome::Failed(f) => self.fail(config, f.class, f.detail),
        }
    }

    /// One candidate in the worker, with its deadline.
    fn candidate(&mut self, config: &Config, image: Image) -> Result<Outcome> {
        let req = Frame::new(
            K_EVALUATE,
            json!({ "config": self.job.text(config) }),
            vec![image.to_bytes()],
        );
        let timeout = self.opts.candidate_timeout;
        let reply = self.worker()?.call(&req, timeout);
        match self.reply(reply)? {
            Ok(mut v) if v.len() == 1 => {
                let o = v.remove(0);
                Ok(self.accept(config, Some(&image), o))
            }
            Ok(v) => Err(Error::Search(format!(
                "the benchmark worker returned {} outcomes for one config",
                v.len()
            ))),
            Err(d) => Ok(self.blame(config, d)),
        }
    }

    fn remeasure_some(
        &mut self,
        configs: &[Config],
        samples: usize,
    ) -> Result<std::result::Result<Vec<Outcome>, Death>> {
        let texts: Vec<String> = configs.iter().map(|c| self.job.text(c)).collect();
        let blobs: Vec<Vec<u8>> = configs
            .iter()
            .map(|c| self.images.get(c).map(Image::to_bytes).unwrap_or_default())
            .collect();
        let req = Frame::new(
            K_REMEASURE,
            json!({ "configs": texts, "samples": samples }),
            blobs,
        );
        let timeout = self.opts.candidate_timeout * configs.len().max(1) as u32;
        let reply = self.worker()?.call(&req, timeout);
        self.reply(reply)
    }
}

impl Evaluator for IsolatedEvaluator {
    fn space(&self) -> &SearchSpace {
        &self.job.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut wanted = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let text = self.job.text(c);
            if let Some(known) = self.failures.known_outcome(&text) {
                out[i] = Some(known);
            } else {
                let at_hand = self.images.get(c).cloned();
                wanted.push((i, c, text, at_hand));
            }
        }
        let any = !wanted.is_empty();
        let mut fetch = self.binaries.fetch(wanted);
        // The worker starts (context, buffers, reference run) while the batch compiles.
        if any {
            self.worker()?;
        }
        while let Some((i, r)) = fetch.next_image(&mut self.binaries) {
            out[i] = Some(match r? {
                Ok(image) => self.candidate(&batch[i], image)?,
                Err(log) => self.fail(&batch[i], FailureClass::Compile, log),
            });
        }
        Ok(complete(out, FailureClass::Compile))
    }

    /// As the in-process evaluator: the configs without an image or a known failure are
    /// compiled by the pool's idle workers (see [`Binaries::prefetch`]).
    fn prefetch(&self, configs: &[Config]) {
        let new = configs.iter().filter(|c| !self.images.contains_key(*c));
        self.binaries
            .prefetch_unknown(new, &self.job, &self.failures);
    }

    /// As the in-process evaluator: the compile pool's parallelism.
    fn parallelism(&self) -> usize {
        self.binaries.parallelism()
    }

    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut live: Vec<usize> = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            if self.images.contains_key(c) {
                live.push(i);
            } else {
                out[i] = Some(Outcome::Failed(Failure {
                    class: FailureClass::Launch,
                    detail: "not measured before".into(),
                }));
            }
        }
        if !live.is_empty() {
            let configs: Vec<Config> = live.iter().map(|&i| batch[i].clone()).collect();
            match self.remeasure_some(&configs, samples)? {
                Ok(v) if v.len() == live.len() => {
                    for (&i, o) in live.iter().zip(v) {
                        out[i] = Some(self.accept(&batch[i], None, o));
                    }
                }
                Ok(v) => {
                    return Err(Error::Search(format!(
                        "the benchmark worker returned {} outcomes for {} configs",
                        v.len(),
                        live.len()
                    )))
                }
                Err(_) => {
                    // Someone in the batch killed the worker: one at a time, to find whom.
                    self.worker = None;
                    for &i in &live {
                        let c = batch[i].clone();
                        // No result: left for `complete` to fill.
                        out[i] = match self.remeasure_some(std::slice::from_ref(&c), samples)? {
                            Ok(mut v) if v.len() == 1 => {
                                let o = v.remove(0);
                                Some(self.accept(&c, None, o))
                            }
                            Ok(_) => None,
                            Err(d) => Some(self.blame(&c, d)),
                        };
                    }
                }
            }
        }
        Ok(complete(out, FailureClass::Launch))
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::protocol::K_INIT;

    #[test]
    fn a_missing_or_dying_worker_is_an_error_not_a_panic() {
        assert!(BenchWorker::spawn(&["/nonexistent/jitune-worker".to_string()]).is_err());
        // `true` exits at once without answering: reported as dead, not waited for.
        let Ok(mut w) = BenchWorker::spawn(&["true".to_string()]) else {
            return;
        };
        let d = w.call(
            &Frame::new(K_INIT, json!({}), vec![]),
            Duration::from_secs(10),
        );
        assert!(matches!(d, Err(Death::Exited(_))), "{d:?}");
    }

    #[test]
    fn a_silent_worker_is_killed_at_its_deadline() {
        // `sleep` never answers: the call must come back at the deadline with the worker gone.
        let Ok(mut w) = BenchWorker::spawn(&["sleep".to_string(), "30".to_string()]) else {
            return;
        };
        let t = Instant::now();
        let d = w.call(
            &Frame::new(K_INIT, json!({}), vec![]),
            Duration::from_millis(300),
        );
        assert!(matches!(d, Err(Death::TimedOut)), "{d:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            w.child.try_wait().unwrap().is_some(),
            "the worker was not killed"
        );
    }
}
