//! Where a candidate's image comes from, in one place: handed in by the caller (a benchmark
//! worker gets its images from the host), the cache's binary table (compiled before, by this
//! process or another, for this kernel, config, architecture and NVRTC), or the compile pool,
//! whose results are stored in the binary table as they arrive.
//!
//! A batch's images stream out as they become ready (those at hand first, then compilations in
//! completion order), so the caller can load, check and time the first while the rest compile.
//!
//! Prefetch ([`Binaries::prefetch`]): the search's guesses at its next batch are compiled by
//! the pool's idle workers while this batch is measured. A finished prefetch is stored in the
//! binary table as a batch's compilation is, and kept here (image or compile log) until a batch
//! asks for it; a batch that asks while it still compiles joins it in the pool. A prefetched
//! compile log reaches the evaluator exactly as a batch's does, so its failure is recorded the
//! same way; a prefetch the pool loses is simply compiled by the batch that needs it.
//!
//! Every compilation a batch starts reports to this source, not to the batch: a batch may stop
//! waiting for its stragglers ([`Fetch`] dropped early, see `Evaluator::evaluate_some`), and
//! their images, arriving later, are stored and kept like a finished prefetch's; a later batch
//! that wants one still compiling waits for it instead of compiling it again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::cache::store::{nvrtc_of, BinaryKey};
use crate::cache::Cache;
use crate::gpu::compile::{CompileRequest, Image};
use crate::gpu::device::Gpu;
use crate::gpu::pool::{CompilePool, CompileResult, PrefetchJob};
use crate::space::Config;
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// The image source of one kernel on one GPU.
pub struct Binaries {
    gpu: Arc<Gpu>,
    spec: Arc<KernelSpec>,
    cache: Arc<Cache>,
    pool: Arc<CompilePool>,
    /// NVRTC's version text, part of every binary's key.
    nvrtc: String,
    /// Configs compiled by NVRTC (not found in the binary table).
    pub compiled: usize,
    /// Configs whose image came from the binary table (or a finished prefetch).
    pub reused: usize,
    /// Configs of batches whose image (or compile log) came from a prefetch.
    pub prefetch_hits: usize,
    /// This source's prefetches in the pool (one owner per `Binaries`).
    owner: u64,
    prefetched: Arc<Prefetched>,
    /// Where every compilation a batch started reports (config text, result), whether or not
    /// a batch still waits for it.
    arrivals: (Sender<Arrival>, mpsc::Receiver<Arrival>),
    /// Config texts compiling for a batch, not arrived yet.
    pending: HashSet<String>,
    /// Results that arrived after their batch stopped waiting, until a batch wants them.
    late: HashMap<String, CompileResult>,
}

type Arrival = (String, Result<CompileResult>);
type Sender<T> = mpsc::Sender<T>;

/// Finished prefetches waiting for a batch, and the count of them.
#[derive(Default)]
struct Prefetched {
    /// Results by config text, oldest first in `order`; at most [`KEEP`] are kept (they are
    /// in the binary table too; a compile log is compiled again if it drops out).
    results: Mutex<(HashMap<String, CompileResult>, VecDeque<String>)>,
    /// Prefetches that finished with an image.
    images: AtomicUsize,
}

/// Finished prefetches kept in memory.
const KEEP: usize = 64;

impl Prefetched {
    fn put(&self, text: String, r: CompileResult) {
        let mut g = self.results.lock();
        let (map, order) = &mut *g;
        if map.insert(text.clone(), r).is_none() {
            order.push_back(text);
        }
        while order.len() > KEEP {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn take(&self, text: &str) -> Option<CompileResult> {
        let mut g = self.results.lock();
        let r = g.0.remove(text)?;
        g.1.retain(|t| t != text);
        Some(r)
    }

    fn has(&self, text: &str) -> bool {
        self.results.lock().0.contains_key(text)
    }
}

static OWNERS: AtomicU64 = AtomicU64::new(1);

impl Binaries {
    pub fn new(
        gpu: Arc<Gpu>,
        spec: Arc<KernelSpec>,
        cache: Arc<Cache>,
        pool: Arc<CompilePool>,
    ) -> Binaries {
        Binaries {
            nvrtc: nvrtc_of(&gpu.fingerprint),
            gpu,
            spec,
            cache,
            pool,
            compiled: 0,
            reused: 0,
            prefetch_hits: 0,
            owner: OWNERS.fetch_add(1, Ordering::Relaxed),
            prefetched: Arc::default(),
            arrivals: mpsc::channel(),
            pending: HashSet::new(),
            late: HashMap::new(),
        }
    }

    /// Prefetches that finished with an image so far.
    pub fn prefetched(&self) -> usize {
        self.prefetched.images.load(Ordering::Relaxed)
    }

    /// How many compilations run at once: the pool's size with worker processes, 1 in process
    /// (the pool compiles one at a time there).
    pub fn parallelism(&self) -> usize {
        match self.pool.mode() {
            crate::gpu::pool::PoolMode::Processes(_) => self.pool.size(),
            crate::gpu::pool::PoolMode::InProcess => 1,
        }
    }

    /// Prefetches `configs` (those the caller has no image for) except the ones `failures`
    /// already knows the outcome of: both evaluators' [`Evaluator::prefetch`].
    ///
    /// [`Evaluator::prefetch`]: crate::search::Evaluator::prefetch
    pub fn prefetch_unknown<'c>(
        &self,
        configs: impl Iterator<Item = &'c Config>,
        job: &super::job::TuningJob,
        failures: &super::failures::FailureBook,
    ) {
        let todo: Vec<(&Config, String)> = configs
            .map(|c| (c, job.text(c)))
            .filter(|(_, t)| failures.known_outcome(t).is_none())
            .collect();
        self.prefetch(&todo);
    }

    /// Starts compiling `configs` (config, canonical text) with the pool's idle workers, those
    /// not stored or prefetched already; replaces this source's earlier queued guesses. See the
    /// module docs.
    pub fn prefetch(&self, configs: &[(&Config, String)]) {
        let mut jobs = Vec::new();
        for (c, text) in configs {
            if self.prefetched.has(text) || self.cache.has_binary(&self.key(text)) {
                continue;
            }
            let (cache, state, text) = (self.cache.clone(), self.prefetched.clone(), text.clone());
            let (kernel, arch, nvrtc) = (self.spec.id(), self.gpu.arch.clone(), self.nvrtc.clone());
            let name = self.spec.name.clone();
            jobs.push(PrefetchJob {
                req: CompileRequest::new(&self.spec, c, &self.gpu.arch),
                done: Box::new(move |r: &CompileResult| {
                    if let Ok(img) = r {
                        state.images.fetch_add(1, Ordering::Relaxed);
                        let key = BinaryKey {
                            kernel,
                            config: &text,
                            arch: &arch,
                            nvrtc: &nvrtc,
                        };
                        store(&cache, &key, &name, img);
                    }
                    state.put(text, r.clone());
                }),
            });
        }
        self.pool.prefetch(self.owner, jobs);
    }

    fn key<'a>(&'a self, text: &'a str) -> BinaryKey<'a> {
        BinaryKey {
            kernel: self.spec.id(),
            config: text,
            arch: &self.gpu.arch,
            nvrtc: &self.nvrtc,
        }
    }

    /// The stored image of `config` (canonical text), if any.
    pub fn stored(&mut self, text: &str) -> Option<Image> {
        let img = self.cache.get_binary(&self.key(text)).ok().flatten()?;
        self.reused += 1;
        Some(Image::from_bytes(img))
    }

    /// Images for `wanted` (index, config, its canonical text, an image at hand if any), as
    /// they become ready. Compilations start now, except of configs an earlier batch started
    /// and stopped waiting for (waited for here).
    pub fn fetch(&mut self, wanted: Vec<(usize, &Config, String, Option<Image>)>) -> Fetch {
        let mut ready = VecDeque::new();
        let mut awaited = HashMap::new();
        let mut reqs = Vec::new();
        let mut texts = Vec::new();
        for (i, c, text, at_hand) in wanted {
            if at_hand.is_none() {
                if let Some(r) = self.late.remove(&text) {
                    ready.push_back((i, r));
                    continue;
                }
                if let Some(r) = self.prefetched.take(&text) {
                    self.prefetch_hits += 1;
                    if r.is_ok() {
                        self.reused += 1;
                    }
                    ready.push_back((i, r));
                    continue;
                }
            }
            match at_hand.or_else(|| self.stored(&text)) {
                Some(img) => ready.push_back((i, Ok(img))),
                None if self.pending.contains(&text) => {
                    awaited.insert(text, i);
                }
                None => {
                    reqs.push(CompileRequest::new(&self.spec, c, &self.gpu.arch));
                    self.pending.insert(text.clone());
                    texts.push(text.clone());
                    awaited.insert(text, i);
                }
            }
        }
        if !reqs.is_empty() {
            // The pool reports by request index; this source's arrivals by config text.
            let rx = self.pool.submit(reqs);
            let tx = self.arrivals.0.clone();
            let names = texts.clone();
            let forwarded = std::thread::Builder::new()
                .name("jitune-arrivals".into())
                .spawn(move || {
                    let mut sent = vec![false; names.len()];
                    for (j, r) in rx {
                        let (Some(done), Some(name)) = (sent.get_mut(j), names.get(j)) else {
                            continue;
                        };
                        *done = true;
                        if tx.send((name.clone(), r)).is_err() {
                            return;
                        }
                    }
                    // The pool's channel closed short of some results: they arrive as errors,
                    // or a batch waiting for them would wait forever.
                    for (j, _) in sent.iter().enumerate().filter(|(_, s)| !**s) {
                        let lost = Err(Error::cuda("the compile pool ended before this result"));
                        if tx.send((names[j].clone(), lost)).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = forwarded {
                // No thread: these configs end as failed compilations of this batch.
                log::warn!("jitune: could not start a thread for compile results ({e})");
                for t in &texts {
                    self.pending.remove(t);
                }
            }
        }
        Fetch { ready, awaited }
    }

    /// Takes one arrival, waiting at most until `deadline`: stored in the binary table (unless
    /// a prefetch it joined stored it), counted.
    fn arrive(&mut self, deadline: Option<Instant>) -> Arrived {
        if self.pending.is_empty() {
            return Arrived::Nothing;
        }
        let got = match deadline {
            None => self.arrivals.1.recv().map_err(|_| false),
            Some(d) => self
                .arrivals
                .1
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .map_err(|e| e == mpsc::RecvTimeoutError::Timeout),
        };
        let (text, r) = match got {
            Ok(a) => a,
            Err(true) => return Arrived::TimedOut,
            Err(false) => return Arrived::Nothing,
        };
        self.pending.remove(&text);
        if self.prefetched.take(&text).is_some() {
            // It joined a prefetch in flight, which stored it already.
            self.prefetch_hits += 1;
        } else if let Ok(Ok(img)) = &r {
            self.compiled += 1;
            store(&self.cache, &self.key(&text), &self.spec.name, img);
        }
        Arrived::Some((text, r))
    }

    /// The image of one config: stored, else compiled now (and stored).
    pub fn one(&mut self, config: &Config, text: &str) -> Result<Image> {
        let mut f = self.fetch(vec![(0, config, text.to_string(), None)]);
        match f.next_image(self) {
            Some((_, r)) => r?.map_err(Error::compile),
            None => Err(Error::Search("the compile pool returned nothing".into())),
        }
    }
}

impl Drop for Binaries {
    /// The search is over (or cancelled): its guesses not started yet are dropped.
    fn drop(&mut self) {
        self.pool.cancel_prefetch(self.owner);
    }
}

/// Stores a compiled image in the binary table (a batch's compilation or a finished
/// prefetch); a refused write is a warning, the image is used anyway.
fn store(cache: &Cache, key: &BinaryKey<'_>, kernel: &str, image: &Image) {
    if let Err(e) = cache.put_binary(key, &image.to_bytes()) {
        log::warn!("jitune: could not store a CUBIN of {kernel}: {e}");
    }
}

/// A batch's images as they become ready; see [`Binaries::fetch`]. Dropping it before the end
/// stops waiting, not compiling: the rest arrive at the source and are kept for a later batch.
pub struct Fetch {
    ready: VecDeque<(usize, std::result::Result<Image, String>)>,
    /// The batch index of each config text compiling for it.
    awaited: HashMap<String, usize>,
}

/// What [`Fetch::next_until`] found.
pub enum Next {
    /// A config's image (`Ok(Err(log))`: it does not compile; `Err`: the compile machinery
    /// itself failed).
    Image(usize, Result<std::result::Result<Image, String>>),
    /// The deadline passed first.
    TimedOut,
    /// Every image of the batch was handed out.
    End,
}

impl Fetch {
    /// The next ready image (`Ok(Err(log))`: it does not compile), compiled images stored in
    /// the binary table on the way; `Err` when the compile machinery itself failed; `None` at
    /// the end.
    pub fn next_image(
        &mut self,
        bin: &mut Binaries,
    ) -> Option<(usize, Result<std::result::Result<Image, String>>)> {
        match self.next_until(bin, None) {
            Next::Image(i, r) => Some((i, r)),
            Next::TimedOut | Next::End => None,
        }
    }

    /// Configs of the batch waiting for their compilation.
    pub fn compiling(&self) -> usize {
        self.awaited.len()
    }

    /// Configs of the batch whose images were ready at once (handed out before any compiled
    /// one).
    pub fn ready_now(&self) -> usize {
        self.ready.len()
    }

    /// The next image, waiting at most until `deadline` (`None`: as long as it takes).
    pub fn next_until(&mut self, bin: &mut Binaries, deadline: Option<Instant>) -> Next {
        if let Some((i, r)) = self.ready.pop_front() {
            return Next::Image(i, Ok(r));
        }
        while !self.awaited.is_empty() {
            let (text, r) = match bin.arrive(deadline) {
                Arrived::Some(a) => a,
                Arrived::TimedOut => return Next::TimedOut,
                Arrived::Nothing => {
                    // Nothing compiles for the awaited any more (the pool's machinery ended).
                    let Some((text, i)) = self.awaited.drain().next() else {
                        return Next::End;
                    };
                    bin.pending.remove(&text);
                    return Next::Image(i, Err(Error::cuda("compile results ended early")));
                }
            };
            if let Some(i) = self.awaited.remove(&text) {
                return Next::Image(i, r);
            }
            // An earlier batch's straggler: kept for the batch that wants it.
            if let Ok(r) = r {
                bin.late.insert(text, r);
            }
        }
        Next::End
    }
}

/// What [`Binaries::arrive`] found.
enum Arrived {
    Some(Arrival),
    TimedOut,
    /// Nothing compiles for this source.
    Nothing,
}
