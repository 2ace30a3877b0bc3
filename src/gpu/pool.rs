//! A compile pool that really runs in parallel: the pool farms compilations out to worker
//! processes of jitune's own, each compiling one request at a time, and falls back to compiling
//! in this process (one at a time) when workers cannot start. Why processes: NVRTC 12 serialised
//! inside one process (16 threads compiled no faster than one, H200, 2026-11); with NVRTC 13
//! threads do run in parallel, but each compilation inside a tuning process took 194-627 ms
//! against 23-28 ms in a worker process (`benches/compile`, 2026-12-02).
//!
//! A worker is any program that calls [`run_if_worker`](crate::run_if_worker) first thing in `main` (jitune's examples,
//! benches and CLI do): started with `JITUNE_WORKER=compile`, it answers requests on
//! stdin/stdout until stdin closes. The pool uses the program named by `JITUNE_WORKER_CMD`
//! (a command line, split on spaces), else the current executable if it called
//! `run_if_worker` (so it is known to be safe to re-run), else no worker at all.
//! Identical requests in a batch compile once; results stream back as they finish, so the
//! caller can benchmark the first while the rest still compile.
//!
//! Speculative prefetch: a search measures a batch while the pool compiles it, and proposes
//! fewer configs per batch than the pool has workers, so the strategy's guesses at the next
//! batch are handed over as prefetches ([`CompilePool::prefetch`]). They use only the slots real
//! submits leave idle (a real submit never waits for one), a newer guess replaces queued ones,
//! and a real submit of a request being prefetched joins it instead of compiling it twice.
//! Workers can be started ahead of the first batch ([`CompilePool::warm`]).
//!
//! Frames: request = magic, then length-prefixed name, arch, options and source; response =
//! magic, a status byte (0 CUBIN, 1 PTX, 2 compile log) and a length-prefixed payload. The reader
//! skips anything before the magic, so stray output of the worker's program cannot derail it.

use std::collections::{HashMap, VecDeque};
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
    match serve(std::io::stdin().lock(), std::io::stdout().lock(), |req| {
        compile_in_process(req).unwrap_or_else(|e| Err(format!("worker could not run NVRTC: {e}")))
    }) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jitune compile worker: {e}");
            1
        }
    }
}

fn serve(
    input: impl Read,
    output: impl Write,
    compile: impl Fn(&CompileRequest) -> CompileResult,
) -> std::io::Result<()> {
    let mut r = BufReader::new(input);
    let mut w = BufWriter::new(output);
    loop {
        let req = match read_request(&mut r) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (status, payload) = match compile(&req) {
            Ok(Image::Cubin(b)) => (0u8, b),
            Ok(Image::Ptx(p)) => (1u8, p.into_bytes()),
            Err(log) => (2u8, log.into_bytes()),
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
    /// In this process only, one compilation at a time.
    InProcess,
}

/// The outcome of one request: the image, or the compile log.
pub type CompileResult = std::result::Result<Image, String>;

/// Where a pool's time went: how long each compilation took where it ran (a worker's round
/// trip, or NVRTC in this process; a worker's start-up is not in it), and how many workers were
/// started (warmed ones included). Tells a slow compiler
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

/// What a finished prefetch calls with its result (image or compile log), on the compiling
/// thread, before any real submit that joined it gets the same result. Not called for a
/// prefetch that was dropped (replaced while queued, a dead worker, the pool closing).
pub type PrefetchDone = Box<dyn FnOnce(&CompileResult) + Send>;

/// One speculative compilation (see [`CompilePool::prefetch`]).
pub struct PrefetchJob {
    /// What to compile.
    pub req: CompileRequest,
    /// Where the result goes.
    pub done: PrefetchDone,
}

/// Counters of the pool's prefetching, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Prefetches that started compiling.
    pub started: usize,
    /// Prefetches that finished with a result (handed to their `done`).
    pub finished: usize,
    /// Queued prefetches dropped by a newer call, a real submit of the same request, or
    /// [`CompilePool::cancel_prefetch`].
    pub replaced: usize,
    /// Prefetches lost to a dead worker (or one that would not start).
    pub lost: usize,
    /// Requests of real submits that joined a prefetch in flight instead of compiling again.
    pub joined: usize,
    /// The most compilations (real threads and prefetches) busy when a prefetch started; never
    /// above the pool's size.
    pub peak_busy: usize,
}

/// Where results of a real submit go: its channel and the indices that asked for the request.
type Waiter = (mpsc::Sender<(usize, Result<CompileResult>)>, Vec<usize>);

struct Queued {
    owner: u64,
    digest: [u8; 32],
    job: PrefetchJob,
}

/// Who compiles what: real threads, prefetches and their queue (see [`CompilePool::prefetch`]).
#[derive(Default)]
struct Sched {
    /// Real compile threads running.
    real: usize,
    /// Prefetches compiling.
    prefetching: usize,
    /// Prefetches not started yet, oldest first.
    queue: VecDeque<Queued>,
    /// Prefetches compiling now, by request digest, with the real submits waiting for them.
    inflight: HashMap<[u8; 32], Vec<Waiter>>,
    /// The pool was dropped: nothing new starts.
    closed: bool,
    stats: PrefetchStats,
}

struct Shared {
    mode: PoolMode,
    size: usize,
    /// Idle workers, reused across batches (start-up costs tens of milliseconds); at most
    /// twice `size` are kept (see [`park`]).
    idle: Mutex<Vec<Worker>>,
    sched: Mutex<Sched>,
    /// Whether the workers were warmed ([`CompilePool::warm`]).
    warmed: AtomicBool,
    counters: Counters,
}

/// Parallel NVRTC compilation in worker processes; see the module docs.
pub struct CompilePool {
    shared: Arc<Shared>,
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
            shared: Arc::new(Shared {
                mode,
                size: size.max(1),
                idle: Mutex::new(Vec::new()),
                sched: Mutex::new(Sched::default()),
                warmed: AtomicBool::new(false),
                counters: Counters::default(),
            }),
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
        &self.shared.mode
    }

    /// At most this many compilations run at once (real submits' threads are never held back
    /// by prefetches; prefetches use what they leave idle).
    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// The prefetch counters so far.
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.shared.sched.lock().stats
    }

    /// Idle worker processes kept for the next compilations.
    pub fn idle_workers(&self) -> usize {
        self.shared.idle.lock().len()
    }

    /// Starts the pool's worker processes ahead of the first batch, once per pool, in the
    /// background (starting one costs tens of milliseconds, and its first NVRTC call as much
    /// again): up to `size` workers, each compiling a trivial kernel for `arch` so NVRTC is
    /// loaded, then kept idle. Nothing in process mode; a worker that fails to start is skipped
    /// (the compilations start their own, as before).
    pub fn warm(&self, arch: &str) {
        let PoolMode::Processes(cmd) = &self.shared.mode else {
            return;
        };
        if self.shared.warmed.swap(true, Ordering::SeqCst) {
            return;
        }
        let want = self
            .shared
            .size
            .saturating_sub(self.shared.idle.lock().len());
        let req = CompileRequest {
            source: "extern \"C\" __global__ void jitune_warm() {}\n".into(),
            name: "jitune_warm.cu".into(),
            arch: arch.to_string(),
            options: Vec::new(),
        };
        for _ in 0..want {
            let (shared, cmd, req) = (self.shared.clone(), cmd.clone(), req.clone());
            let spawned = std::thread::Builder::new()
                .name("jitune-warm".into())
                .spawn(move || {
                    if let Ok(mut w) = spawn_worker(&shared, &cmd) {
                        if w.compile(&req).is_ok() {
                            park(&shared, w);
                        }
                    }
                });
            if spawned.is_err() {
                break;
            }
        }
    }

    /// Where its time went so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        PoolStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            compile_s: c.compile_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            max_s: c.max_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            in_process: c.in_process.load(Ordering::Relaxed),
            spawned: c.spawned.load(Ordering::Relaxed),
        }
    }

    /// Compiles every request; results arrive on the returned channel as `(index, result)` in
    /// completion order, each request exactly once. Identical requests are compiled once, and
    /// a request that a prefetch is compiling right now is not compiled again: its result
    /// arrives when the prefetch finishes. A queued prefetch of the same request is dropped.
    pub fn submit(
        &self,
        reqs: Vec<CompileRequest>,
    ) -> mpsc::Receiver<(usize, Result<CompileResult>)> {
        let (tx, rx) = mpsc::channel();
        // Deduplicate: each distinct request once, fanned out to every index that asked for it.
        let mut by_digest: HashMap<[u8; 32], usize> = HashMap::new();
        let mut unique: Vec<(CompileRequest, [u8; 32], Vec<usize>)> = Vec::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let d = r.digest();
            match by_digest.get(&d) {
                Some(&u) => unique[u].2.push(i),
                None => {
                    by_digest.insert(d, unique.len());
                    unique.push((r, d, vec![i]));
                }
            }
        }
        let mut own: VecDeque<(CompileRequest, Vec<usize>)> = VecDeque::new();
        let threads = {
            let mut s = self.shared.sched.lock();
            for (req, d, indices) in unique {
                if let Some(waiting) = s.inflight.get_mut(&d) {
                    waiting.push((tx.clone(), indices));
                    s.stats.joined += 1;
                    continue;
                }
                if let Some(k) = s.queue.iter().position(|q| q.digest == d) {
                    s.queue.remove(k);
                    s.stats.replaced += 1;
                }
                own.push_back((req, indices));
            }
            let threads = match &self.shared.mode {
                _ if own.is_empty() => 0,
                PoolMode::InProcess => 1,
                PoolMode::Processes(_) => self.shared.size.min(own.len()),
            };
            s.real += threads;
            threads
        };
        let queue = Arc::new(Mutex::new(own));
        for _ in 0..threads {
            let queue = queue.clone();
            let tx = tx.clone();
            let shared = self.shared.clone();
            let started = std::thread::Builder::new()
                .name("jitune-compile".into())
                .spawn(move || {
                    let mut worker: Option<Worker> = None;
                    compile_queue(&shared, &queue, &tx, &mut worker);
                    if let Some(w) = worker {
                        park(&shared, w);
                    }
                    shared.sched.lock().real -= 1;
                    pump(&shared);
                });
            if started.is_err() {
                // No thread: the others (or none) take the queue; unserved indices end the
                // channel early, which callers report as a failed compile.
                self.shared.sched.lock().real -= 1;
            }
        }
        rx
    }

    /// Compiles `jobs` speculatively with capacity the real submits leave idle: a job starts
    /// only while real compile threads and prefetches together are fewer than the pool's size,
    /// so a real [`submit`](Self::submit) never waits for a worker slot (it may join a prefetch
    /// of the same request in flight instead of compiling it again). `owner`'s queued (not yet
    /// started) prefetches are replaced by these: stale guesses are dropped; prefetches in
    /// flight finish. Requests already compiling as a prefetch are skipped. Each finished
    /// job's result goes to its `done`. A worker that dies on a prefetch loses that prefetch
    /// and nothing else. Nothing in process mode (one compilation at a time there: a prefetch would
    /// hold up the real compilation).
    pub fn prefetch(&self, owner: u64, jobs: Vec<PrefetchJob>) {
        if !matches!(self.shared.mode, PoolMode::Processes(_)) {
            return;
        }
        {
            let mut s = self.shared.sched.lock();
            if s.closed {
                return;
            }
            let before = s.queue.len();
            s.queue.retain(|q| q.owner != owner);
            s.stats.replaced += before - s.queue.len();
            for job in jobs {
                let digest = job.req.digest();
                if s.inflight.contains_key(&digest) || s.queue.iter().any(|q| q.digest == digest) {
                    continue;
                }
                s.queue.push_back(Queued { owner, digest, job });
            }
        }
        pump(&self.shared);
    }

    /// Drops `owner`'s queued prefetches (its search ended); those in flight finish.
    pub fn cancel_prefetch(&self, owner: u64) {
        self.prefetch(owner, Vec::new());
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

impl Drop for CompilePool {
    /// Queued prefetches are dropped; those in flight end with their compilation (their
    /// results are not handed on) on threads nobody waits for, so dropping never blocks.
    fn drop(&mut self) {
        let mut s = self.shared.sched.lock();
        s.closed = true;
        let n = s.queue.len();
        s.queue.clear();
        s.stats.replaced += n;
    }
}

/// A real submit's thread: takes requests off its queue until it is empty.
fn compile_queue(
    shared: &Shared,
    queue: &Mutex<VecDeque<(CompileRequest, Vec<usize>)>>,
    tx: &mpsc::Sender<(usize, Result<CompileResult>)>,
    worker: &mut Option<Worker>,
) {
    loop {
        let Some((req, indices)) = queue.lock().pop_front() else {
            return;
        };
        let result = match &shared.mode {
            PoolMode::InProcess => compile_here(shared, &req),
            PoolMode::Processes(cmd) => compile_with_worker(worker, shared, cmd, &req),
        };
        for i in indices {
            if tx.send((i, copy_result(&result))).is_err() {
                return;
            }
        }
    }
}

/// A result for one more receiver (the machinery's error as its text).
fn copy_result(r: &Result<CompileResult>) -> Result<CompileResult> {
    match r {
        Ok(r) => Ok(r.clone()),
        Err(e) => Err(Error::cuda(e.to_string())),
    }
}

/// Keeps a worker for later, up to twice the pool's size (beyond it, the worker ends). Real
/// compilations never wait for prefetches, so a batch that starts while the last batch's
/// prefetches still compile runs up to `2 × size` workers at once; keeping only `size` ended
/// the others after every batch and started new ones for the next: the quickstart started 124
/// workers for a pool of 16 on the H200 (device call I), each paying its start-up and its
/// first NVRTC call again.
fn park(shared: &Shared, w: Worker) {
    let mut idle = shared.idle.lock();
    if idle.len() < 2 * shared.size {
        idle.push(w);
    }
}

/// Takes the next prefetch if the pool has an idle slot, marking it in flight.
fn next_prefetch(shared: &Shared, s: &mut Sched) -> Option<Queued> {
    if s.closed || s.real + s.prefetching >= shared.size {
        return None;
    }
    let q = s.queue.pop_front()?;
    s.prefetching += 1;
    s.stats.started += 1;
    s.stats.peak_busy = s.stats.peak_busy.max(s.real + s.prefetching);
    s.inflight.insert(q.digest, Vec::new());
    Some(q)
}

/// Starts queued prefetches on the idle slots.
fn pump(shared: &Arc<Shared>) {
    let mut s = shared.sched.lock();
    while let Some(q) = next_prefetch(shared, &mut s) {
        let digest = q.digest;
        let sh = shared.clone();
        let started = std::thread::Builder::new()
            .name("jitune-prefetch".into())
            .spawn(move || prefetch_thread(&sh, q));
        if started.is_err() {
            // Nobody joined yet (the lock is held): forget it.
            s.prefetching -= 1;
            s.stats.lost += 1;
            s.inflight.remove(&digest);
            return;
        }
    }
}

/// A prefetch thread: compiles its job, hands the result on, then takes further queued jobs
/// while a slot stays idle.
fn prefetch_thread(shared: &Shared, first: Queued) {
    let PoolMode::Processes(cmd) = &shared.mode else {
        return;
    };
    let mut worker: Option<Worker> = None;
    let mut next = Some(first);
    while let Some(q) = next.take() {
        let closed = shared.sched.lock().closed;
        let result = if closed {
            None
        } else {
            prefetch_once(&mut worker, shared, cmd, &q.job.req)
        };
        let finished = result.is_some();
        if let (Some(r), false) = (&result, closed) {
            // A panicking callback must not leave a joined submit waiting forever.
            let done = q.job.done;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(r))).is_err() {
                log::warn!("jitune: a prefetch's result handler panicked; result dropped");
            }
        }
        let waiting = shared
            .sched
            .lock()
            .inflight
            .remove(&q.digest)
            .unwrap_or_default();
        if !waiting.is_empty() {
            // A real submit waits for this one: a lost prefetch is compiled for it now, as
            // its own thread would have.
            let r = match result {
                Some(r) => Ok(r),
                None => compile_with_worker(&mut worker, shared, cmd, &q.job.req),
            };
            for (tx, indices) in waiting {
                for i in indices {
                    let _ = tx.send((i, copy_result(&r)));
                }
            }
        }
        let mut s = shared.sched.lock();
        s.prefetching -= 1;
        if finished {
            s.stats.finished += 1;
        } else {
            s.stats.lost += 1;
        }
        next = next_prefetch(shared, &mut s);
    }
    if let Some(w) = worker {
        park(shared, w);
    }
}

/// One prefetch compilation: an idle worker or a new one, one attempt. `None` when the worker
/// dies or none starts (a prefetch never falls back to compiling in this process).
fn prefetch_once(
    worker: &mut Option<Worker>,
    shared: &Shared,
    cmd: &[String],
    req: &CompileRequest,
) -> Option<CompileResult> {
    if worker.is_none() {
        *worker = worker_for(shared, cmd).ok();
    }
    match compile_on(shared, worker.as_mut()?, req) {
        Ok(r) => Some(r),
        Err(e) => {
            log::debug!("jitune: a compile worker died on a prefetch ({e}); dropped");
            *worker = None;
            None
        }
    }
}

/// An idle worker, else a new one.
fn worker_for(shared: &Shared, cmd: &[String]) -> std::io::Result<Worker> {
    match shared.idle.lock().pop() {
        Some(w) => Ok(w),
        None => spawn_worker(shared, cmd),
    }
}

/// Starts a worker process, counted in the pool's [`PoolStats::spawned`].
fn spawn_worker(shared: &Shared, cmd: &[String]) -> std::io::Result<Worker> {
    let w = Worker::spawn(cmd)?;
    shared.counters.spawned.fetch_add(1, Ordering::Relaxed);
    Ok(w)
}

/// One compilation on `w`, its duration counted (`Err`: the worker died).
fn compile_on(
    shared: &Shared,
    w: &mut Worker,
    req: &CompileRequest,
) -> std::io::Result<CompileResult> {
    let t = std::time::Instant::now();
    let r = w.compile(req)?;
    shared.counters.note(t.elapsed(), false);
    Ok(r)
}

/// One compilation in this process, its duration counted.
fn compile_here(shared: &Shared, req: &CompileRequest) -> Result<CompileResult> {
    let t = std::time::Instant::now();
    let r = compile_in_process(req);
    shared.counters.note(t.elapsed(), true);
    r
}

/// Compiles with a worker process: reuses an idle one or starts one; if the worker dies (NVRTC
/// itself crashing on this source, say) it is replaced once, and a second death is reported as
/// a compile failure of this request; if no worker can start, compiles in process.
fn compile_with_worker(
    worker: &mut Option<Worker>,
    shared: &Shared,
    cmd: &[String],
    req: &CompileRequest,
) -> Result<CompileResult> {
    for attempt in 0..2 {
        let w = match worker {
            Some(w) => w,
            None => match worker_for(shared, cmd) {
                Ok(w) => worker.insert(w),
                Err(e) => {
                    log::warn!("jitune: cannot start a compile worker ({e}); compiling in process");
                    return compile_here(shared, req);
                }
            },
        };
        match compile_on(shared, w, req) {
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
    use std::time::{Duration, Instant};

    /// Run as a compile worker by the pool tests (this test binary re-run with
    /// `JITUNE_WORKER=compile`): answers frames by the fake compiler below. In a normal test
    /// run it does nothing.
    #[test]
    fn fake_compile_worker() {
        if std::env::var(ENV_ROLE).as_deref() != Ok(COMPILE_ROLE) {
            return;
        }
        let _ = serve(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            fake_compile,
        );
        std::process::exit(0);
    }

    /// The source is `key=value` lines: `ms` (sleep), `log` (a file each compile appends the
    /// request's name to), `end` = `fail` (a compile log) or `die` (the worker exits).
    fn fake_compile(req: &CompileRequest) -> CompileResult {
        let get = |k: &str| {
            req.source
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if let Some(path) = get("log") {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                // One write: concurrent workers append whole lines.
                let _ = f.write_all(format!("{}\n", req.name).as_bytes());
            }
        }
        let ms = get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        match get("end") {
            Some("die") => std::process::exit(3),
            Some("fail") => Err(format!("{}: fake error", req.name)),
            _ => Ok(Image::Cubin(req.name.as_bytes().to_vec())),
        }
    }

    fn fake_pool(size: usize) -> CompilePool {
        let exe = std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let cmd = [
            exe.as_str(),
            "--exact",
            "gpu::pool::tests::fake_compile_worker",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ];
        CompilePool::with_mode(
            PoolMode::Processes(cmd.iter().map(|s| s.to_string()).collect()),
            size,
        )
    }

    struct Log(std::path::PathBuf);

    impl Log {
        fn new(test: &str) -> Log {
            let p =
                std::env::temp_dir().join(format!("jitune-pool-{test}-{}.log", std::process::id()));
            let _ = std::fs::remove_file(&p);
            Log(p)
        }
        fn req(&self, name: &str, ms: u64, end: &str) -> CompileRequest {
            CompileRequest {
                source: format!("ms={ms}\nlog={}\nend={end}\n", self.0.display()),
                name: name.into(),
                arch: "sm_90".into(),
                options: vec![],
            }
        }
        fn compiled(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_to_string(&self.0)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Log {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    type Got = Arc<Mutex<Vec<(String, CompileResult)>>>;

    fn jobs(got: &Got, reqs: Vec<CompileRequest>) -> Vec<PrefetchJob> {
        reqs.into_iter()
            .map(|req| {
                let (got, name) = (got.clone(), req.name.clone());
                PrefetchJob {
                    req,
                    done: Box::new(move |r: &CompileResult| got.lock().push((name, r.clone()))),
                }
            })
            .collect()
    }

    /// Waits (bounded) until no prefetch is queued or compiling.
    fn settle(pool: &CompilePool) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            {
                let s = pool.shared.sched.lock();
                if s.queue.is_empty() && s.prefetching == 0 && s.real == 0 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the pool did not settle");
    }

    #[test]
    fn prefetches_use_only_idle_slots_and_never_delay_a_submit() {
        let log = Log::new("idle");
        let pool = fake_pool(2);
        let got: Got = Arc::default();
        // Long enough that waiting for a slot would show even on a loaded 2-core machine.
        let guesses = (0..3)
            .map(|i| log.req(&format!("p{i}"), 1500, "ok"))
            .collect();
        pool.prefetch(1, jobs(&got, guesses));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            pool.prefetch_stats().started,
            2,
            "two slots, two prefetches"
        );
        // Both slots are busy with prefetches; a real compile still starts at once.
        let t = Instant::now();
        let out = pool.compile_all(vec![log.req("real", 20, "ok")]);
        let took = t.elapsed();
        assert!(matches!(&out[0], Ok(Ok(Image::Cubin(b))) if b == b"real"));
        assert!(
            took < Duration::from_millis(1000),
            "the submit waited for a prefetch: {took:?}"
        );
        settle(&pool);
        let st = pool.prefetch_stats();
        assert_eq!((st.started, st.finished, st.lost), (3, 3, 0));
        assert!(
            st.peak_busy <= 2,
            "prefetches went beyond the idle slots: {st:?}"
        );
        assert_eq!(got.lock().len(), 3);
        assert!(got
            .lock()
            .iter()
            .all(|(n, r)| matches!(r, Ok(Image::Cubin(b)) if b == n.as_bytes())));
        assert_eq!(log.compiled().len(), 4);
    }

    #[test]
    fn a_busy_pool_holds_prefetches_back_until_a_slot_is_idle() {
        let log = Log::new("busy");
        let pool = fake_pool(2);
        let got: Got = Arc::default();
        let rx = pool.submit(vec![log.req("r1", 400, "ok"), log.req("r2", 400, "ok")]);
        std::thread::sleep(Duration::from_millis(50));
        pool.prefetch(1, jobs(&got, vec![log.req("p", 10, "ok")]));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(pool.prefetch_stats().started, 0, "no idle slot yet");
        assert_eq!(rx.iter().count(), 2);
        settle(&pool);
        assert_eq!(pool.prefetch_stats().finished, 1);
        assert_eq!(got.lock().len(), 1);
    }

    #[test]
    fn a_new_prefetch_replaces_the_queued_ones() {
        let log = Log::new("replace");
        let pool = fake_pool(1);
        let got: Got = Arc::default();
        pool.prefetch(
            7,
            jobs(
                &got,
                vec![
                    log.req("a", 300, "ok"),
                    log.req("b", 10, "ok"),
                    log.req("c", 10, "ok"),
                ],
            ),
        );
        std::thread::sleep(Duration::from_millis(50));
        pool.prefetch(7, jobs(&got, vec![log.req("d", 10, "ok")]));
        // Another owner's queue is its own.
        pool.prefetch(8, jobs(&got, vec![log.req("e", 10, "ok")]));
        settle(&pool);
        assert_eq!(log.compiled(), ["a", "d", "e"], "b and c were stale");
        let st = pool.prefetch_stats();
        assert_eq!((st.started, st.finished, st.replaced), (3, 3, 2));
        pool.prefetch(
            8,
            jobs(&got, vec![log.req("f", 500, "ok"), log.req("g", 10, "ok")]),
        );
        pool.cancel_prefetch(8);
        settle(&pool);
        assert_eq!(log.compiled(), ["a", "d", "e", "f"]);
    }

    #[test]
    fn a_submit_joins_the_prefetch_in_flight_instead_of_compiling_twice() {
        let log = Log::new("join");
        let pool = fake_pool(4);
        let got: Got = Arc::default();
        pool.prefetch(
            1,
            jobs(
                &got,
                vec![log.req("x", 300, "ok"), log.req("bad", 300, "fail")],
            ),
        );
        std::thread::sleep(Duration::from_millis(80));
        let out = pool.compile_all(vec![
            log.req("x", 300, "ok"),
            log.req("y", 10, "ok"),
            log.req("bad", 300, "fail"),
            log.req("x", 300, "ok"),
        ]);
        assert!(matches!(&out[0], Ok(Ok(Image::Cubin(b))) if b == b"x"));
        assert!(matches!(&out[1], Ok(Ok(Image::Cubin(b))) if b == b"y"));
        assert!(
            matches!(&out[2], Ok(Err(l)) if l.contains("fake error")),
            "{:?}",
            out[2]
        );
        assert!(matches!(&out[3], Ok(Ok(Image::Cubin(b))) if b == b"x"));
        // The prefetch's handler ran first (so what it stores is there when the batch looks).
        assert_eq!(got.lock().len(), 2);
        settle(&pool);
        assert_eq!(log.compiled(), ["bad", "x", "y"], "each compiled once");
        assert_eq!(pool.prefetch_stats().joined, 2);
    }

    #[test]
    fn a_dead_worker_loses_only_its_prefetch_and_a_joined_submit_still_gets_an_answer() {
        let log = Log::new("dead");
        let pool = fake_pool(2);
        let got: Got = Arc::default();
        pool.prefetch(1, jobs(&got, vec![log.req("boom", 200, "die")]));
        std::thread::sleep(Duration::from_millis(50));
        // Joins the dying prefetch: compiled for it again (dies twice more), then reported.
        let out = pool.compile_all(vec![log.req("boom", 200, "die"), log.req("ok", 10, "ok")]);
        assert!(
            matches!(&out[0], Ok(Err(l)) if l.contains("died")),
            "{:?}",
            out[0]
        );
        assert!(matches!(&out[1], Ok(Ok(_))));
        settle(&pool);
        assert!(got.lock().is_empty(), "a lost prefetch hands nothing on");
        assert_eq!(pool.prefetch_stats().lost, 1);
        // The pool goes on working.
        assert!(matches!(
            &pool.compile_all(vec![log.req("z", 1, "ok")])[0],
            Ok(Ok(_))
        ));
    }

    #[test]
    fn dropping_the_pool_with_prefetches_in_flight_does_not_wait() {
        let log = Log::new("drop");
        let pool = fake_pool(2);
        let got: Got = Arc::default();
        let guesses = (0..5)
            .map(|i| log.req(&format!("slow{i}"), 3000, "ok"))
            .collect();
        pool.prefetch(1, jobs(&got, guesses));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        drop(pool);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_batch_beside_prefetches_in_flight_reuses_its_workers_next_time() {
        let log = Log::new("reuse");
        let pool = fake_pool(2);
        let got: Got = Arc::default();
        // Each round: two prefetches take both slots, then a real batch of two starts beside
        // them (it never waits), so four workers run at once.
        let round = |r: usize| {
            let guesses = (0..2)
                .map(|i| log.req(&format!("p{r}{i}"), 400, "ok"))
                .collect();
            pool.prefetch(1, jobs(&got, guesses));
            std::thread::sleep(Duration::from_millis(50));
            let reqs = (0..2)
                .map(|i| log.req(&format!("r{r}{i}"), 100, "ok"))
                .collect();
            let out = pool.compile_all(reqs);
            assert!(out.iter().all(|o| matches!(o, Ok(Ok(_)))));
            settle(&pool);
        };
        round(0);
        let after_first = pool.stats().spawned;
        assert_eq!(after_first, 4, "four at once in the first round");
        round(1);
        round(2);
        assert_eq!(
            pool.stats().spawned,
            after_first,
            "later rounds start no worker: the four are kept"
        );
    }

    #[test]
    fn warming_starts_the_workers_once() {
        let pool = fake_pool(3);
        pool.warm("sm_90");
        pool.warm("sm_90");
        let t = Instant::now();
        while pool.idle_workers() < 3 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.idle_workers(), 3);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.idle_workers(), 3, "bounded by the size, started once");
        // In process mode there is nothing to warm or prefetch.
        let local = CompilePool::with_mode(PoolMode::InProcess, 2);
        local.warm("sm_90");
        local.prefetch(
            1,
            jobs(&Got::default(), vec![Log::new("local").req("q", 1, "ok")]),
        );
        assert_eq!(local.prefetch_stats(), PrefetchStats::default());
        assert_eq!(local.idle_workers(), 0);
    }

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
