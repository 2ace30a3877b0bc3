//! Isolated tuning: candidates are loaded, checked and timed in a benchmark worker process of
//! jitune's own, so that a candidate which writes out of bounds, traps, hangs or otherwise kills
//! its process takes down only that worker. The host's CUDA context, its launches and its
//! threads carry on; the host records the config as failed with its class (`crashed`,
//! `timeout`) in the store, starts a new worker and goes on with the search. The config is
//! never tried again (the failure is in the store, which every later run reads).
//!
//! [`IsolatedEvaluator`] is an [`Evaluator`] like [`GpuEvaluator`]: strategies cannot tell them
//! apart. The host compiles (in the compile pool's worker processes, reusing CUBINs from the
//! binary table as in-process tuning does) and sends each candidate's image to the worker one
//! at a time, with a deadline per candidate; compilation of the rest of the batch overlaps.
//! The worker is a [`GpuEvaluator`] of its own on a context of its own, fed the images through
//! [`GpuEvaluator::supply_image`], so measurement and the correctness gate are the same code
//! in both modes.
//!
//! The worker is started like the compile workers (see [`super::pool`]): the program named by
//! `JITUNE_WORKER_CMD`, else the current executable when it called
//! [`run_if_worker`](super::pool::run_if_worker), with `JITUNE_WORKER=bench`. It receives the
//! spec as data (TOML text with the source inline; the worker checks that the id it rebuilds is
//! the host's), the shape, the device ordinal, the measurement options and the reference policy.
//!
//! Frames on the pipes: magic, a kind byte, a length-prefixed JSON header and a counted list of
//! length-prefixed binary blobs (images, reference outputs). Readers skip anything before the
//! magic, so stray output of the worker's program cannot derail the protocol.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as J};

use super::compile::{CompileRequest, Image};
use super::device::Gpu;
use super::evaluator::{reference_config, GpuEvaluator, MeasureOptions};
use super::pool::{CompilePool, PoolMode};
use crate::cache::store::BinaryKey;
use crate::cache::Cache;
use crate::key::TuningKey;
use crate::search::evaluator::{Evaluator, Failure, FailureClass, Measurement, Outcome};
use crate::space::{Config, SearchSpace};
use crate::spec::{wire, KernelSpec};
use crate::{Error, Result};

/// The `JITUNE_WORKER` role of a benchmark worker.
pub(crate) const ROLE: &str = "bench";

const MAGIC: &[u8; 8] = b"JITUNEb1";
const K_INIT: u8 = 1;
const K_EVALUATE: u8 = 2;
const K_REMEASURE: u8 = 3;
const K_READY: u8 = 10;
const K_OUTCOMES: u8 = 11;
/// The candidate broke the worker's context; the worker exits after sending this.
const K_CRASHED: u8 = 12;
/// The measuring machinery failed for a reason that is not the candidate's.
const K_FATAL: u8 = 13;

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
            .or_else(super::pool::worker_command)
    }
}

// ---------------------------------------------------------------------------------------------
// Frames.

#[derive(Debug)]
struct Frame {
    kind: u8,
    header: J,
    blobs: Vec<Vec<u8>>,
}

impl Frame {
    fn new(kind: u8, header: J, blobs: Vec<Vec<u8>>) -> Frame {
        Frame {
            kind,
            header,
            blobs,
        }
    }
}

fn write_frame(w: &mut impl Write, f: &Frame) -> std::io::Result<()> {
    let header = serde_json::to_vec(&f.header).map_err(std::io::Error::other)?;
    w.write_all(MAGIC)?;
    w.write_all(&[f.kind])?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(&(f.blobs.len() as u64).to_le_bytes())?;
    for b in &f.blobs {
        w.write_all(&(b.len() as u64).to_le_bytes())?;
        w.write_all(b)?;
    }
    w.flush()
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_len(r: &mut impl Read, max: u64, what: &str) -> std::io::Result<usize> {
    let n = read_u64(r)?;
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of {n} is too large"),
        ));
    }
    Ok(n as usize)
}

/// The next frame, `None` at a clean end of stream (before any magic byte).
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
    let mut matched = 0usize;
    let mut b = [0u8; 1];
    while matched < MAGIC.len() {
        if r.read(&mut b)? == 0 {
            return Ok(None);
        }
        if b[0] == MAGIC[matched] {
            matched += 1;
        } else {
            matched = usize::from(b[0] == MAGIC[0]);
        }
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    let n = read_len(r, 256 << 20, "a header")?;
    let mut header = vec![0u8; n];
    r.read_exact(&mut header)?;
    let header: J = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let count = read_len(r, 1 << 20, "a blob count")?;
    let mut blobs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let n = read_len(r, 1 << 32, "a blob")?;
        let mut v = vec![0u8; n];
        r.read_exact(&mut v)?;
        blobs.push(v);
    }
    Ok(Some(Frame {
        kind: kind[0],
        header,
        blobs,
    }))
}

fn outcome_to_json(o: &Outcome) -> J {
    match o {
        Outcome::Measured(m) => json!({ "time_ms": m.time_ms, "samples": m.samples }),
        Outcome::Failed(f) => json!({ "class": f.class.name(), "detail": f.detail }),
    }
}

fn outcome_from_json(v: &J) -> Outcome {
    if let Some(class) = v.get("class").and_then(J::as_str) {
        return Outcome::Failed(Failure {
            class: FailureClass::from_stored(class),
            detail: v
                .get("detail")
                .and_then(J::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    let samples: Vec<f64> = v
        .get("samples")
        .and_then(J::as_array)
        .map(|a| a.iter().filter_map(J::as_f64).collect())
        .unwrap_or_default();
    // JSON has no NaN: an untimed measurement comes back as null.
    let time_ms = v.get("time_ms").and_then(J::as_f64).unwrap_or(f64::NAN);
    Outcome::Measured(Measurement { time_ms, samples })
}

fn f64s_to_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The worker side.

/// Serves one host on stdin/stdout; the exit code of the worker process.
pub(crate) fn serve_stdio() -> i32 {
    match serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jitune benchmark worker: {e}");
            1
        }
    }
}

struct WorkerState {
    gpu: Arc<Gpu>,
    eval: GpuEvaluator,
}

fn err_text(e: &Error) -> String {
    e.to_string()
}

impl WorkerState {
    fn init(f: &Frame) -> Result<WorkerState> {
        let h = &f.header;
        let text = |k: &str| {
            h.get(k)
                .and_then(J::as_str)
                .ok_or_else(|| Error::InvalidArgument(format!("init frame: `{k}` missing")))
        };
        let spec = wire::read(
            text("spec")?,
            h.get("source").and_then(J::as_str).unwrap_or(""),
        )?;
        let shape: Vec<i64> = h
            .get("shape")
            .and_then(J::as_array)
            .map(|a| a.iter().filter_map(J::as_i64).collect())
            .unwrap_or_default();
        let ordinal = h.get("ordinal").and_then(J::as_u64).unwrap_or(0) as usize;
        let gpu = Arc::new(Gpu::new(ordinal)?);
        let space = spec.space_for(&shape, &gpu.limits)?;
        let default = space.parse_config_text(text("default")?)?;
        wire::check_same(&spec, text("id")?, &default)?;
        let spec = Arc::new(spec);
        // A cache of its own with no file: the host keeps the store, and images come from it.
        let mut eval = GpuEvaluator::new(
            gpu.clone(),
            spec,
            &shape,
            Arc::new(Cache::memory_only()),
            Arc::new(CompilePool::with_mode(PoolMode::InProcess, 1)),
        )?;
        let m = h.get("measure").cloned().unwrap_or(J::Null);
        let d = MeasureOptions::default();
        eval.options = MeasureOptions {
            first_budget_ms: m
                .get("first_budget_ms")
                .and_then(J::as_f64)
                .unwrap_or(d.first_budget_ms),
            min_reps: m
                .get("min_reps")
                .and_then(J::as_u64)
                .map_or(d.min_reps, |v| v as usize),
            max_reps: m
                .get("max_reps")
                .and_then(J::as_u64)
                .map_or(d.max_reps, |v| v as usize),
            too_slow_factor: m
                .get("too_slow_factor")
                .and_then(J::as_f64)
                .unwrap_or(d.too_slow_factor),
        };
        let mut blobs = f.blobs.iter();
        let reference = space.parse_config_text(text("reference_config")?)?;
        eval.set_reference_config(reference.clone());
        if let Some(img) = blobs.next() {
            eval.supply_image(reference, Image::from_bytes(img.clone()));
        }
        if let Some(outputs) = blobs.next() {
            let lens: Vec<usize> = h
                .get("reference_lens")
                .and_then(J::as_array)
                .map(|a| a.iter().filter_map(J::as_u64).map(|n| n as usize).collect())
                .unwrap_or_default();
            let all = bytes_to_f64s(outputs);
            let mut at = 0;
            let mut vecs = Vec::new();
            for n in lens {
                let end = (at + n).min(all.len());
                vecs.push(all[at..end].to_vec());
                at = end;
            }
            eval.set_reference(vecs);
        }
        // Computes the reference (and the "too slow" yardstick) now, so that a reference that
        // cannot run shows up at start-up rather than as some candidate's failure.
        eval.evaluate(&[])?;
        Ok(WorkerState { gpu, eval })
    }

    /// Loads `config` from `image` unless it is loaded already; `None` when it is ready.
    fn load(&mut self, config: &Config, image: Option<&Vec<u8>>) -> Option<Image> {
        if self.eval.is_loaded(config) {
            return None;
        }
        image.map(|b| Image::from_bytes(b.clone()))
    }

    /// A candidate's evaluation failed with an error: either it broke the context (its fault:
    /// the host records it as crashed, and this worker must go) or the machinery failed.
    fn classify_error(&self, e: &Error) -> Frame {
        let ctx_ok = self.gpu.ctx.synchronize().is_ok();
        if ctx_ok {
            Frame::new(K_FATAL, json!({ "error": err_text(e) }), vec![])
        } else {
            Frame::new(K_CRASHED, json!({ "error": err_text(e) }), vec![])
        }
    }

    fn handle(&mut self, f: &Frame) -> Frame {
        let space = self.eval.space().clone();
        let parse =
            |t: Option<&str>| -> Result<Config> { space.parse_config_text(t.unwrap_or_default()) };
        match f.kind {
            K_EVALUATE => {
                let c = match parse(f.header.get("config").and_then(J::as_str)) {
                    Ok(c) => c,
                    Err(e) => return Frame::new(K_FATAL, json!({ "error": err_text(&e) }), vec![]),
                };
                if let Some(img) = self.load(&c, f.blobs.first()) {
                    self.eval.supply_image(c.clone(), img);
                }
                match self.eval.evaluate(std::slice::from_ref(&c)) {
                    Ok(v) => Frame::new(
                        K_OUTCOMES,
                        json!({ "outcomes": v.iter().map(outcome_to_json).collect::<Vec<_>>() }),
                        vec![],
                    ),
                    Err(e) => self.classify_error(&e),
                }
            }
            K_REMEASURE => {
                let texts: Vec<&str> = f
                    .header
                    .get("configs")
                    .and_then(J::as_array)
                    .map(|a| a.iter().filter_map(J::as_str).collect())
                    .unwrap_or_default();
                let samples = f.header.get("samples").and_then(J::as_u64).unwrap_or(1) as usize;
                let mut out: Vec<Option<Outcome>> = vec![None; texts.len()];
                let mut live = Vec::new();
                for (i, t) in texts.iter().enumerate() {
                    let c = match parse(Some(t)) {
                        Ok(c) => c,
                        Err(e) => {
                            return Frame::new(K_FATAL, json!({ "error": err_text(&e) }), vec![])
                        }
                    };
                    // A worker started after a crash has not seen this config yet: load and
                    // check it first (its first measurement is discarded).
                    if let Some(img) = self.load(&c, f.blobs.get(i)) {
                        self.eval.supply_image(c.clone(), img);
                        match self.eval.evaluate(std::slice::from_ref(&c)) {
                            Ok(mut v) => {
                                if let Some(Outcome::Failed(fail)) = v.pop() {
                                    out[i] = Some(Outcome::Failed(fail));
                                    continue;
                                }
                            }
                            Err(e) => return self.classify_error(&e),
                        }
                    }
                    live.push((i, c));
                }
                let batch: Vec<Config> = live.iter().map(|(_, c)| c.clone()).collect();
                match self.eval.remeasure(&batch, samples) {
                    Ok(v) => {
                        for ((i, _), o) in live.iter().zip(v) {
                            out[*i] = Some(o);
                        }
                    }
                    Err(e) => return self.classify_error(&e),
                }
                let outcomes: Vec<J> = out
                    .iter()
                    .map(|o| match o {
                        Some(o) => outcome_to_json(o),
                        None => json!({ "class": "launch", "detail": "no result" }),
                    })
                    .collect();
                Frame::new(K_OUTCOMES, json!({ "outcomes": outcomes }), vec![])
            }
            k => Frame::new(
                K_FATAL,
                json!({ "error": format!("unknown request kind {k}") }),
                vec![],
            ),
        }
    }
}

fn serve(input: impl Read, output: impl Write) -> std::io::Result<()> {
    let mut r = BufReader::new(input);
    let mut w = BufWriter::new(output);
    let Some(init) = read_frame(&mut r)? else {
        return Ok(());
    };
    if init.kind != K_INIT {
        return Err(std::io::Error::other("the first frame must be an init"));
    }
    let mut state = match WorkerState::init(&init) {
        Ok(s) => {
            write_frame(&mut w, &Frame::new(K_READY, json!({ "ok": true }), vec![]))?;
            s
        }
        Err(e) => {
            let f = Frame::new(K_READY, json!({ "error": err_text(&e) }), vec![]);
            return write_frame(&mut w, &f);
        }
    };
    while let Some(req) = read_frame(&mut r)? {
        let reply = state.handle(&req);
        write_frame(&mut w, &reply)?;
        if reply.kind == K_CRASHED || reply.kind == K_FATAL {
            // The context is broken or the machinery failed: a fresh worker is the way on.
            return Ok(());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The host side.

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
            .env("JITUNE_WORKER", ROLE)
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
    spec: Arc<KernelSpec>,
    spec_toml: String,
    shape: Vec<i64>,
    space: SearchSpace,
    key: TuningKey,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    cmd: Vec<String>,
    opts: IsolationOptions,
    reference_outputs: Option<Vec<Vec<f64>>>,
    reference: (Config, Option<Image>),
    worker: Option<BenchWorker>,
    /// Images of configs that passed, to hand a restarted worker for remeasurement.
    images: HashMap<Config, Image>,
    failed: HashMap<String, FailureClass>,
    start: Instant,
    pub measure: MeasureOptions,
    pub stats: IsolationStats,
    /// Configs compiled by NVRTC (not found in the binary table).
    pub compiled: usize,
    /// Configs whose CUBIN came from the cache's binary table.
    pub binaries_reused: usize,
}

impl IsolatedEvaluator {
    /// Prepares isolated tuning of `spec` at `shape`; the worker starts with the first batch.
    /// Configs the store knows to have failed are failures without being run again.
    pub fn new(
        gpu: Arc<Gpu>,
        spec: Arc<KernelSpec>,
        shape: &[i64],
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
        opts: IsolationOptions,
    ) -> Result<IsolatedEvaluator> {
        let cmd = opts.resolve_worker_cmd().ok_or_else(|| {
            Error::InvalidArgument(
                "isolated tuning needs a worker program: call jitune::gpu::pool::run_if_worker() \
                 first thing in main, or set JITUNE_WORKER_CMD"
                    .into(),
            )
        })?;
        let space = spec.space_for(shape, &gpu.limits)?;
        let bucket = spec
            .bucket(shape)
            .ok_or_else(|| Error::Shape(format!("kernel `{}`: bad shape", spec.name)))?;
        let key = TuningKey {
            kernel: spec.id(),
            shape: bucket,
            device: gpu.fingerprint_hash,
        };
        let spec_toml = wire::to_wire(&spec);
        // Fail here, in the host, rather than in every worker.
        wire::from_wire(&spec_toml, &spec.source, &spec)?;
        let mut failed = HashMap::new();
        for c in cache.take_stale_inflight(&key).unwrap_or_default() {
            failed.insert(c, FailureClass::Crashed);
        }
        for (c, class, _) in cache.failures_for(&key).unwrap_or_default() {
            failed.insert(c, class);
        }
        let reference = reference_config(&spec, &space, &failed)?;
        Ok(IsolatedEvaluator {
            gpu,
            spec,
            spec_toml,
            shape: shape.to_vec(),
            space,
            key,
            cache,
            pool,
            cmd,
            opts,
            reference_outputs: None,
            reference: (reference, None),
            worker: None,
            images: HashMap::new(),
            failed,
            start: Instant::now(),
            measure: MeasureOptions::default(),
            stats: IsolationStats::default(),
            compiled: 0,
            binaries_reused: 0,
        })
    }

    /// Uses these outputs as the reference instead of the default config's (see
    /// [`GpuEvaluator::set_reference`]); every worker gets them.
    pub fn set_reference(&mut self, outputs: Vec<Vec<f64>>) {
        self.reference_outputs = Some(outputs);
    }

    /// The tuning key this evaluator measures for.
    pub fn key(&self) -> TuningKey {
        self.key
    }

    fn nvrtc_text(&self) -> String {
        format!(
            "{}.{}",
            self.gpu.fingerprint.nvrtc_version.0, self.gpu.fingerprint.nvrtc_version.1
        )
    }

    fn stored_binary(&self, text: &str) -> Option<Image> {
        let nvrtc = self.nvrtc_text();
        let key = BinaryKey {
            kernel: self.spec.id(),
            config: text,
            arch: &self.gpu.arch,
            nvrtc: &nvrtc,
        };
        self.cache
            .get_binary(&key)
            .ok()
            .flatten()
            .map(Image::from_bytes)
    }

    fn store_binary(&self, text: &str, image: &Image) {
        let nvrtc = self.nvrtc_text();
        let key = BinaryKey {
            kernel: self.spec.id(),
            config: text,
            arch: &self.gpu.arch,
            nvrtc: &nvrtc,
        };
        if let Err(e) = self.cache.put_binary(&key, &image.to_bytes()) {
            log::warn!("jitune: could not store a CUBIN: {e}");
        }
    }

    fn fail(&mut self, config: &Config, class: FailureClass, detail: String) -> Outcome {
        let text = self.space.config_text(config);
        if let Err(e) = self.cache.record_failure(&self.key, &text, class, &detail) {
            log::warn!("jitune: could not record a failure: {e}");
        }
        log::debug!(
            "jitune: {} {text}: {}: {}",
            self.spec.name,
            class.name(),
            detail.lines().next().unwrap_or("")
        );
        self.failed.insert(text, class);
        Outcome::Failed(Failure { class, detail })
    }

    /// The reference config's image: from an earlier run, the binary table or a compilation.
    fn reference_image(&mut self) -> Result<Image> {
        if let Some(img) = &self.reference.1 {
            return Ok(img.clone());
        }
        let c = self.reference.0.clone();
        let text = self.space.config_text(&c);
        let img = match self.stored_binary(&text) {
            Some(img) => img,
            None => {
                let req = CompileRequest::new(&self.spec, &c, &self.gpu.arch);
                let r =
                    self.pool.compile_all(vec![req]).pop().ok_or_else(|| {
                        Error::Search("the compile pool returned nothing".into())
                    })??;
                let img = r.map_err(Error::compile)?;
                self.compiled += 1;
                self.store_binary(&text, &img);
                img
            }
        };
        self.reference.1 = Some(img.clone());
        Ok(img)
    }

    /// The running worker, starting one (with the reference run) when there is none.
    fn worker(&mut self) -> Result<&mut BenchWorker> {
        if self.worker.is_none() {
            let image = self.reference_image()?;
            let m = &self.measure;
            let mut header = json!({
                "spec": self.spec_toml,
                "source": self.spec.source,
                "id": self.spec.id().to_hex(),
                "default": self.space.config_text(&self.spec.default),
                "shape": self.shape,
                "ordinal": self.gpu.ctx.ordinal(),
                "reference_config": self.space.config_text(&self.reference.0),
                "measure": {
                    "first_budget_ms": m.first_budget_ms,
                    "min_reps": m.min_reps,
                    "max_reps": m.max_reps,
                    "too_slow_factor": m.too_slow_factor,
                },
            });
            let mut blobs = vec![image.to_bytes()];
            if let Some(outs) = &self.reference_outputs {
                header["reference_lens"] = json!(outs.iter().map(|o| o.len()).collect::<Vec<_>>());
                blobs.push(outs.iter().flat_map(|o| f64s_to_bytes(o)).collect());
            }
            let mut w = BenchWorker::spawn(&self.cmd)?;
            self.stats.workers_started += 1;
            let ready = w.call(&Frame::new(K_INIT, header, blobs), self.opts.start_timeout);
            match ready {
                Ok(f) if f.kind == K_READY && f.header.get("ok").is_some() => {}
                Ok(f) => {
                    return Err(Error::Search(format!(
                        "kernel `{}`: the benchmark worker could not start: {}",
                        self.spec.name,
                        f.header
                            .get("error")
                            .and_then(J::as_str)
                            .unwrap_or("unexpected reply")
                    )))
                }
                Err(d) => {
                    return Err(Error::Search(format!(
                        "kernel `{}`: the benchmark worker died while starting (the reference \
                         config {} runs first): {d:?}",
                        self.spec.name,
                        self.space.config_text(&self.reference.0)
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

    /// The worker's reply to a request about `configs`: outcomes, or the death to blame.
    fn reply(
        &mut self,
        reply: std::result::Result<Frame, Death>,
    ) -> Result<std::result::Result<Vec<Outcome>, Death>> {
        match reply {
            Ok(f) if f.kind == K_OUTCOMES => Ok(Ok(f
                .header
                .get("outcomes")
                .and_then(J::as_array)
                .map(|a| a.iter().map(outcome_from_json).collect())
                .unwrap_or_default())),
            Ok(f) if f.kind == K_CRASHED => {
                let why = f
                    .header
                    .get("error")
                    .and_then(J::as_str)
                    .unwrap_or("context broken")
                    .to_string();
                Ok(Err(Death::Exited(why)))
            }
            Ok(f) => {
                self.worker = None;
                Err(Error::Search(format!(
                    "kernel `{}`: the benchmark worker failed: {}",
                    self.spec.name,
                    f.header
                        .get("error")
                        .and_then(J::as_str)
                        .unwrap_or("unexpected reply")
                )))
            }
            Err(d) => Ok(Err(d)),
        }
    }

    /// Records the worker's outcome for `config` in the store (failures) or the image table.
    fn accept(&mut self, config: &Config, image: Option<&Image>, o: Outcome) -> Outcome {
        match o {
            Outcome::Measured(m) => {
                if let Some(img) = image {
                    self.images.insert(config.clone(), img.clone());
                }
                Outcome::Measured(m)
            }
            Outcome::Failed(f) if f.detail.starts_with("failed before") => Outcome::Failed(f),
            Outcome::Failed(f) => {
                let class = f.class;
                self.fail(config, class, f.detail)
            }
        }
    }

    /// One candidate in the worker, with its deadline.
    fn candidate(&mut self, config: &Config, image: Image) -> Result<Outcome> {
        let text = self.space.config_text(config);
        let req = Frame::new(
            K_EVALUATE,
            json!({ "config": text }),
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
        let texts: Vec<String> = configs.iter().map(|c| self.space.config_text(c)).collect();
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
        &self.space
    }

    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut ready: Vec<(usize, Image)> = Vec::new();
        let mut to_compile: Vec<usize> = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let text = self.space.config_text(c);
            if let Some(class) = self.failed.get(&text) {
                out[i] = Some(Outcome::Failed(Failure {
                    class: *class,
                    detail: "failed before (recorded in the store)".into(),
                }));
            } else if let Some(img) = self.images.get(c) {
                ready.push((i, img.clone()));
            } else if let Some(img) = self.stored_binary(&text) {
                self.binaries_reused += 1;
                ready.push((i, img));
            } else {
                to_compile.push(i);
            }
        }
        let reqs: Vec<CompileRequest> = to_compile
            .iter()
            .map(|&i| CompileRequest::new(&self.spec, &batch[i], &self.gpu.arch))
            .collect();
        let rx = self.pool.submit(reqs);
        // The worker starts (context, buffers, reference run) while the batch compiles.
        if !ready.is_empty() || !to_compile.is_empty() {
            self.worker()?;
        }
        for (i, img) in ready {
            out[i] = Some(self.candidate(&batch[i], img)?);
        }
        for (j, result) in rx.iter() {
            let i = to_compile[j];
            match result? {
                Ok(image) => {
                    self.compiled += 1;
                    let text = self.space.config_text(&batch[i]);
                    self.store_binary(&text, &image);
                    out[i] = Some(self.candidate(&batch[i], image)?);
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
                        out[i] = Some(
                            match self.remeasure_some(std::slice::from_ref(&c), samples)? {
                                Ok(mut v) if v.len() == 1 => {
                                    let o = v.remove(0);
                                    self.accept(&c, None, o)
                                }
                                Ok(_) => Outcome::Failed(Failure {
                                    class: FailureClass::Launch,
                                    detail: "no result".into(),
                                }),
                                Err(d) => self.blame(&c, d),
                            },
                        );
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(Failure {
                        class: FailureClass::Launch,
                        detail: "no result".into(),
                    })
                })
            })
            .collect())
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_default_does_not_leave_a_key_without_reference() {
        let spec = KernelSpec::from_toml_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/faults.toml"
        ))
        .unwrap();
        let space = spec
            .space_for(&[1 << 20], &crate::spec::DeviceLimits::h100())
            .unwrap();
        let mut failed = HashMap::new();
        assert_eq!(
            reference_config(&spec, &space, &failed).unwrap(),
            spec.default
        );
        // A process killed while running the default left a `crashed` record.
        failed.insert(space.config_text(&spec.default), FailureClass::Launch);
        let r = reference_config(&spec, &space, &failed).unwrap();
        assert_ne!(r, spec.default);
        assert!(space.is_valid(&r));
        for c in space.iter() {
            failed.insert(space.config_text(&c), FailureClass::Launch);
        }
        assert!(reference_config(&spec, &space, &failed).is_err());
    }

    #[test]
    fn frames_round_trip_through_noise() {
        let f = Frame::new(
            K_EVALUATE,
            json!({ "config": "A=1,B=\"x\"", "n": 3 }),
            vec![vec![1, 2, 3], vec![], vec![0xFF; 1000]],
        );
        let mut buf = b"test output JITUNE noise\n".to_vec();
        write_frame(&mut buf, &f).unwrap();
        write_frame(
            &mut buf,
            &Frame::new(K_READY, json!({ "ok": true }), vec![]),
        )
        .unwrap();
        let mut r = &buf[..];
        let back = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(back.kind, K_EVALUATE);
        assert_eq!(back.header, f.header);
        assert_eq!(back.blobs, f.blobs);
        assert_eq!(read_frame(&mut r).unwrap().unwrap().kind, K_READY);
        assert!(read_frame(&mut r).unwrap().is_none());
        // A frame cut short is an error, not a hang or a panic.
        let mut cut = Vec::new();
        write_frame(&mut cut, &f).unwrap();
        cut.truncate(cut.len() - 10);
        assert!(read_frame(&mut &cut[..]).is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        let m = Outcome::Measured(Measurement {
            time_ms: 0.25,
            samples: vec![0.2, 0.25, 0.3],
        });
        assert_eq!(outcome_from_json(&outcome_to_json(&m)), m);
        let f = Outcome::Failed(Failure {
            class: FailureClass::WrongResult,
            detail: "relative error 1e-2".into(),
        });
        assert_eq!(outcome_from_json(&outcome_to_json(&f)), f);
        assert_eq!(
            bytes_to_f64s(&f64s_to_bytes(&[1.5, -2.0, f64::NAN]))[..2],
            [1.5, -2.0]
        );
    }

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
