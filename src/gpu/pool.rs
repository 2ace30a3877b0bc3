//! A compile pool that really runs in parallel: NVRTC serialises inside one process (16 threads
//! of one process compile no faster than one), so the pool farms compilations out to worker
//! processes of jitune's own, each compiling one request at a time, and falls back to compiling
//! in this process when workers cannot start.
//!
//! A worker is any program that calls [`run_if_worker`](crate::run_if_worker) first thing in `main` (jitune's examples,
//! benches and CLI do): started with `JITUNE_WORKER=compile`, it answers requests on
//! stdin/stdout until stdin closes. The pool uses the program named by `JITUNE_WORKER_CMD`
//! (a command line, split on spaces), else the current executable if it called
//! `run_if_worker` (so it is known to be safe to re-run), else no worker at all.
//! Identical requests in a batch compile once; results stream back as they finish, so the
//! caller can benchmark the first while the rest still compile.
//!
//! Frames: request = magic, then length-prefixed name, arch, options and source; response =
//! magic, a status byte (0 CUBIN, 1 PTX, 2 compile log) and a length-prefixed payload. The reader
//! skips anything before the magic, so stray output of the worker's program cannot derail it.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

use super::compile::{compile_in_process, CompileRequest, Image};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"JITUNEw1";
const ENV_CMD: &str = "JITUNE_WORKER_CMD";

static SELF_IS_WORKER_CAPABLE: AtomicBool = AtomicBool::new(false);

/// The `JITUNE_WORKER` variable that tells a re-run program which worker it is.
pub(crate) const ENV_ROLE: &str = "JITUNE_WORKER";
/// The role of a compile worker.
pub(crate) const COMPILE_ROLE: &str = "compile";

/// Records that this executable may be re-run as a worker (it called `run_if_worker`).
pub(crate) fn mark_worker_capable() {
    SELF_IS_WORKER_CAPABLE.store(true, Ordering::SeqCst);
}

/// Serves compile requests on stdin/stdout until stdin closes; the worker's exit code.
pub(crate) fn serve_stdio() -> i32 {
    match serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jitune compile worker: {e}");
            1
        }
    }
}

fn serve(input: impl Read, output: impl Write) -> std::io::Result<()> {
    let mut r = BufReader::new(input);
    let mut w = BufWriter::new(output);
    loop {
        let req = match read_request(&mut r) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (status, payload) = match compile_in_process(&req) {
            Ok(Ok(Image::Cubin(b))) => (0u8, b),
            Ok(Ok(Image::Ptx(p))) => (1u8, p.into_bytes()),
            Ok(Err(log)) => (2u8, log.into_bytes()),
            Err(e) => (2u8, format!("worker could not run NVRTC: {e}").into_bytes()),
        };
        w.write_all(MAGIC)?;
        w.write_all(&[status])?;
        w.write_all(&(payload.len() as u64).to_le_bytes())?;
        w.write_all(&payload)?;
        w.flush()?;
    }
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let n = read_u64(r)?;
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes is too large"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    String::from_utf8(read_bytes(r, 256 << 20)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Skips to just after the next magic; `Ok(false)` at a clean end of stream.
fn sync_to_magic(r: &mut impl Read) -> std::io::Result<bool> {
    let mut matched = 0usize;
    let mut b = [0u8; 1];
    loop {
        if r.read(&mut b)? == 0 {
            return Ok(false);
        }
        if b[0] == MAGIC[matched] {
            matched += 1;
            if matched == MAGIC.len() {
                return Ok(true);
            }
        } else {
            matched = usize::from(b[0] == MAGIC[0]);
        }
    }
}

fn write_request(w: &mut impl Write, req: &CompileRequest) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    write_str(w, &req.name)?;
    write_str(w, &req.arch)?;
    w.write_all(&(req.options.len() as u64).to_le_bytes())?;
    for o in &req.options {
        write_str(w, o)?;
    }
    write_str(w, &req.source)?;
    w.flush()
}

fn read_request(r: &mut impl Read) -> std::io::Result<Option<CompileRequest>> {
    if !sync_to_magic(r)? {
        return Ok(None);
    }
    let name = read_string(r)?;
    let arch = read_string(r)?;
    let n = read_u64(r)?;
    if n > 4096 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "too many options",
        ));
    }
    let options = (0..n)
        .map(|_| read_string(r))
        .collect::<std::io::Result<Vec<_>>>()?;
    let source = read_string(r)?;
    Ok(Some(CompileRequest {
        source,
        name,
        arch,
        options,
    }))
}

fn read_response(r: &mut impl Read) -> std::io::Result<std::result::Result<Image, String>> {
    if !sync_to_magic(r)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "worker closed its output",
        ));
    }
    let mut status = [0u8; 1];
    r.read_exact(&mut status)?;
    let payload = read_bytes(r, 1 << 30)?;
    Ok(match status[0] {
        0 => Ok(Image::Cubin(payload)),
        1 => Ok(Image::Ptx(String::from_utf8_lossy(&payload).into_owned())),
        _ => Err(String::from_utf8_lossy(&payload).into_owned()),
    })
}

struct Worker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(cmd: &[String]) -> std::io::Result<Worker> {
        let (prog, args) = cmd
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty worker command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .env(ENV_ROLE, COMPILE_ROLE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        Ok(Worker {
            child,
            stdin: BufWriter::new(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    fn compile(
        &mut self,
        req: &CompileRequest,
    ) -> std::io::Result<std::result::Result<Image, String>> {
        write_request(&mut self.stdin, req)?;
        read_response(&mut self.stdout)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the pool compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Worker processes started with this command line.
    Processes(Vec<String>),
    /// In this process only (serialised by NVRTC anyway).
    InProcess,
}

/// The outcome of one request: the image, or the compile log.
pub type CompileResult = std::result::Result<Image, String>;

/// Where a pool's time went: how long each compilation took where it ran (a worker's round
/// trip, or NVRTC in this process), and how many workers were started. Tells a slow compiler
/// from a waiting caller in the tuning breakdown.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    /// Compilations run (distinct requests).
    pub compiles: usize,
    /// Their summed duration, seconds.
    pub compile_s: f64,
    /// The longest one, seconds.
    pub max_s: f64,
    /// Of them, compiled in this process (no worker).
    pub in_process: usize,
    /// Worker processes started.
    pub spawned: usize,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicUsize,
    compile_ns: AtomicU64,
    max_ns: AtomicU64,
    in_process: AtomicUsize,
    spawned: AtomicUsize,
}

impl Counters {
    fn note(&self, took: std::time::Duration, in_process: bool) {
        let ns = took.as_nanos() as u64;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.compile_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        if in_process {
            self.in_process.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Parallel NVRTC compilation in worker processes; see the module docs.
pub struct CompilePool {
    mode: PoolMode,
    size: usize,
    /// Idle workers, reused across batches (start-up costs tens of milliseconds).
    idle: Arc<Mutex<Vec<Worker>>>,
    counters: Arc<Counters>,
}

impl CompilePool {
    /// A pool of `size` workers, using the worker command found as the module docs describe,
    /// or compiling in process when there is none.
    pub fn new(size: usize) -> CompilePool {
        let mode = match worker_command() {
            Some(cmd) => PoolMode::Processes(cmd),
            None => PoolMode::InProcess,
        };
        CompilePool::with_mode(mode, size)
    }

    /// A pool with an explicit mode.
    pub fn with_mode(mode: PoolMode, size: usize) -> CompilePool {
        CompilePool {
            mode,
            size: size.max(1),
            idle: Arc::new(Mutex::new(Vec::new())),
            counters: Arc::new(Counters::default()),
        }
    }

    /// A pool sized to the machine (one worker per core, at most 16).
    pub fn default_sized() -> CompilePool {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16);
        CompilePool::new(n)
    }

    /// How it compiles.
    pub fn mode(&self) -> &PoolMode {
        &self.mode
    }

    /// Where its time went so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        PoolStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            compile_s: c.compile_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            max_s: c.max_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            in_process: c.in_process.load(Ordering::Relaxed),
            spawned: c.spawned.load(Ordering::Relaxed),
        }
    }

    /// Compiles every request; results arrive on the returned channel as `(index, result)` in
    /// completion order, each request exactly once. Identical requests are compiled once.
    pub fn submit(
        &self,
        reqs: Vec<CompileRequest>,
    ) -> mpsc::Receiver<(usize, Result<CompileResult>)> {
        let (tx, rx) = mpsc::channel();
        // Deduplicate: each distinct request once, fanned out to every index that asked for it.
        let mut by_digest: HashMap<[u8; 32], usize> = HashMap::new();
        let mut unique: Vec<(CompileRequest, Vec<usize>)> = Vec::new();
        for (i, r) in reqs.into_iter().enumerate() {
            match by_digest.get(&r.digest()) {
                Some(&u) => unique[u].1.push(i),
                None => {
                    by_digest.insert(r.digest(), unique.len());
                    unique.push((r, vec![i]));
                }
            }
        }
        let queue = Arc::new(Mutex::new(
            unique
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let threads = match &self.mode {
            PoolMode::InProcess => 1,
            PoolMode::Processes(_) => self.size.min(queue.lock().len()).max(1),
        };
        for _ in 0..threads {
            let queue = queue.clone();
            let tx = tx.clone();
            let mode = self.mode.clone();
            let idle = self.idle.clone();
            let counters = self.counters.clone();
            std::thread::spawn(move || {
                let mut worker: Option<Worker> = None;
                loop {
                    let Some((req, indices)) = queue.lock().pop_front() else {
                        break;
                    };
                    let t = std::time::Instant::now();
                    let result = match &mode {
                        PoolMode::InProcess => compile_in_process(&req),
                        PoolMode::Processes(cmd) => {
                            compile_with_worker(&mut worker, &idle, cmd, &req, &counters)
                        }
                    };
                    counters.note(
                        t.elapsed(),
                        matches!(mode, PoolMode::InProcess) || worker.is_none(),
                    );
                    for i in indices {
                        let r = match &result {
                            Ok(r) => Ok(r.clone()),
                            Err(e) => Err(Error::cuda(e.to_string())),
                        };
                        if tx.send((i, r)).is_err() {
                            return;
                        }
                    }
                }
                if let Some(w) = worker {
                    idle.lock().push(w);
                }
            });
        }
        rx
    }

    /// Compiles every request and waits for all of them; results in request order.
    pub fn compile_all(&self, reqs: Vec<CompileRequest>) -> Vec<Result<CompileResult>> {
        let n = reqs.len();
        let rx = self.submit(reqs);
        let mut out: Vec<Option<Result<CompileResult>>> = (0..n).map(|_| None).collect();
        for (i, r) in rx.iter() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::cuda("compile thread ended early"))))
            .collect()
    }
}

/// Compiles with a worker process: reuses an idle one or starts one; if the worker dies (NVRTC
/// itself crashing on this source, say) it is replaced once, and a second death is reported as
/// a compile failure of this request; if no worker can start, compiles in process.
fn compile_with_worker(
    worker: &mut Option<Worker>,
    idle: &Mutex<Vec<Worker>>,
    cmd: &[String],
    req: &CompileRequest,
    counters: &Counters,
) -> Result<CompileResult> {
    for attempt in 0..2 {
        if worker.is_none() {
            *worker = idle.lock().pop();
        }
        if worker.is_none() {
            match Worker::spawn(cmd) {
                Ok(w) => {
                    counters.spawned.fetch_add(1, Ordering::Relaxed);
                    *worker = Some(w)
                }
                Err(e) => {
                    log::warn!("jitune: cannot start a compile worker ({e}); compiling in process");
                    return compile_in_process(req);
                }
            }
        }
        let Some(w) = worker.as_mut() else { continue };
        match w.compile(req) {
            Ok(r) => return Ok(r),
            Err(e) => {
                log::warn!(
                    "jitune: compile worker failed ({e}); attempt {}",
                    attempt + 1
                );
                *worker = None;
            }
        }
    }
    Ok(Err("the compile worker died twice on this source".into()))
}

/// The worker command line: `JITUNE_WORKER_CMD`, else this executable if it called
/// `run_if_worker`, else none.
pub fn worker_command() -> Option<Vec<String>> {
    if let Ok(cmd) = std::env::var(ENV_CMD) {
        let parts: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if !parts.is_empty() {
            return Some(parts);
        }
    }
    if SELF_IS_WORKER_CAPABLE.load(Ordering::SeqCst) {
        if let Ok(exe) = std::env::current_exe() {
            return Some(vec![exe.to_string_lossy().into_owned()]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_skip_noise() {
        let req = CompileRequest {
            source: "k".repeat(1000),
            name: "a.cu".into(),
            arch: "sm_90".into(),
            options: vec!["-DX=1".into(), "-O3".into()],
        };
        let mut buf = b"running 1 test\n".to_vec();
        write_request(&mut buf, &req).unwrap();
        write_request(&mut buf, &req).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_request(&mut r).unwrap(), Some(req.clone()));
        assert_eq!(read_request(&mut r).unwrap(), Some(req));
        assert_eq!(read_request(&mut r).unwrap(), None);

        let mut resp = b"JITUNE noise JITUNEw".to_vec();
        resp.extend_from_slice(MAGIC);
        resp.push(2);
        resp.extend_from_slice(&5u64.to_le_bytes());
        resp.extend_from_slice(b"error");
        assert_eq!(
            read_response(&mut &resp[..]).unwrap(),
            Err("error".to_string())
        );
        assert!(read_response(&mut &b"nothing"[..]).is_err());
    }

    #[test]
    fn oversized_frames_are_rejected_not_allocated() {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_request(&mut &buf[..]).is_err());
    }

    #[test]
    fn a_missing_worker_program_falls_back_to_in_process() {
        let pool = CompilePool::with_mode(
            PoolMode::Processes(vec!["/nonexistent/jitune-worker".into()]),
            2,
        );
        let req = CompileRequest {
            source: "x".into(),
            name: "a.cu".into(),
            arch: "sm_90".into(),
            options: vec![],
        };
        let out = pool.compile_all(vec![req.clone(), req]);
        assert_eq!(out.len(), 2);
        // Without CUDA this is a clear error; with it, a compile log. Never a panic or a hang.
        for r in out {
            match r {
                Ok(Err(log)) => assert!(!log.is_empty()),
                Ok(Ok(_)) => panic!("`x` is not CUDA"),
                Err(e) => assert!(
                    e.to_string().contains("CUDA") || e.to_string().contains("libnvrtc"),
                    "{e}"
                ),
            }
        }
    }
}
