//! Worker processes: one entry point, [`run_if_worker`], for both kinds jitune starts.
//!
//! A program that calls [`run_if_worker`] first thing in `main` can be re-run as a worker:
//! with `JITUNE_WORKER=compile` it compiles for the compile pool ([`crate::gpu::pool`]), with
//! `JITUNE_WORKER=bench` it benchmarks candidates for an isolated evaluator ([`super::isolate`])
//! and this module is that worker's side: a [`GpuEvaluator`] on a context of its own, fed the
//! host's images, so the candidate pipeline is the same code in both modes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use serde_json::{json, Value as J};

use super::evaluator::GpuEvaluator;
use super::failures::complete;
use super::job::TuningJob;
use super::protocol::{
    error_frame, outcomes_frame, read_frame, write_frame, Frame, Init, K_CRASHED, K_EVALUATE,
    K_FATAL, K_INIT, K_READY, K_REMEASURE,
};
use crate::cache::Cache;
use crate::gpu::compile::Image;
use crate::gpu::device::Gpu;
use crate::gpu::pool::{self, CompilePool, PoolMode};
use crate::search::evaluator::{Evaluator, Outcome};
use crate::space::Config;
use crate::spec::wire;
use crate::{Error, Result};

/// The `JITUNE_WORKER` role of a benchmark worker.
pub(crate) const BENCH_ROLE: &str = "bench";

/// Call first thing in `main`. In a worker process (a compile worker of the pool, or a benchmark
/// worker of isolated tuning) it serves requests and exits; otherwise it records that this
/// executable may be re-run as a worker and returns at once.
pub fn run_if_worker() {
    match std::env::var(pool::ENV_ROLE).ok().as_deref() {
        Some(BENCH_ROLE) => std::process::exit(serve_stdio()),
        Some(pool::COMPILE_ROLE) => std::process::exit(pool::serve_stdio()),
        _ => pool::mark_worker_capable(),
    }
}

/// Serves one host on stdin/stdout; the exit code of the worker process.
fn serve_stdio() -> i32 {
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

impl WorkerState {
    fn init(f: &Frame) -> Result<WorkerState> {
        let init = Init::from_frame(f)?;
        let spec = wire::read(&init.spec_toml, &init.source)?;
        let gpu = Arc::new(Gpu::new(init.ordinal)?);
        let job = TuningJob::new(
            Arc::new(spec),
            &init.shape,
            gpu.fingerprint_hash,
            &gpu.limits,
        )?;
        let default = job.space.parse_config_text(&init.default)?;
        wire::check_same(&job.spec, &init.id_hex, &default)?;
        // A cache of its own with no file: the host keeps the store, and images come from it.
        let mut eval = GpuEvaluator::for_job(
            gpu.clone(),
            &job,
            Arc::new(Cache::memory_only()),
            Arc::new(CompilePool::with_mode(PoolMode::InProcess, 1)),
        )?;
        eval.options = init.measure;
        let reference = job.space.parse_config_text(&init.reference_config)?;
        eval.set_reference_config(reference.clone());
        eval.supply_image(reference, Image::from_bytes(init.reference_image));
        if let Some(outputs) = init.reference_outputs {
            eval.set_reference(outputs);
        }
        // Computes the reference (and the "too slow" yardstick) now, so that a reference that
        // cannot run shows up at start-up rather than as some candidate's failure.
        eval.evaluate(&[])?;
        Ok(WorkerState { gpu, eval })
    }

    /// Hands `config`'s image to the evaluator unless the config is loaded already.
    fn supply(&mut self, config: &Config, image: Option<&Vec<u8>>) -> bool {
        if self.eval.is_loaded(config) {
            return false;
        }
        match image {
            Some(b) => {
                self.eval
                    .supply_image(config.clone(), Image::from_bytes(b.clone()));
                true
            }
            None => false,
        }
    }

    /// A candidate's evaluation failed with an error: either it broke the context (its fault:
    /// the host records it as crashed, and this worker must go) or the machinery failed.
    fn classify_error(&self, e: &Error) -> Frame {
        let kind = if self.gpu.ctx.synchronize().is_ok() {
            K_FATAL
        } else {
            K_CRASHED
        };
        error_frame(kind, e)
    }

    fn handle(&mut self, f: &Frame) -> Frame {
        let space = self.eval.space().clone();
        let parse =
            |t: Option<&str>| -> Result<Config> { space.parse_config_text(t.unwrap_or_default()) };
        match f.kind {
            K_EVALUATE => {
                let c = match parse(f.header.get("config").and_then(J::as_str)) {
                    Ok(c) => c,
                    Err(e) => return error_frame(K_FATAL, &e),
                };
                self.supply(&c, f.blobs.first());
                match self.eval.evaluate(std::slice::from_ref(&c)) {
                    Ok(v) => outcomes_frame(&v),
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
                        Err(e) => return error_frame(K_FATAL, &e),
                    };
                    // A worker started after a crash has not seen this config yet: load and
                    // check it first (its first measurement is discarded).
                    if self.supply(&c, f.blobs.get(i)) {
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
                outcomes_frame(&complete(out, crate::failure::FailureClass::Launch))
            }
            k => error_frame(
                K_FATAL,
                &Error::InvalidArgument(format!("unknown request kind {k}")),
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
        Err(e) => return write_frame(&mut w, &error_frame(K_READY, &e)),
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
