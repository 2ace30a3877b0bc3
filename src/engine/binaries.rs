//! Where a candidate's image comes from, in one place: handed in by the caller (a benchmark
//! worker gets its images from the host), the cache's binary table (compiled before, by this
//! process or another, for this kernel, config, architecture and NVRTC), or the compile pool,
//! whose results are stored in the binary table as they arrive.
//!
//! A batch's images stream out as they become ready (those at hand first, then compilations in
//! completion order), so the caller can load, check and time the first while the rest compile.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;

use crate::cache::store::{nvrtc_of, BinaryKey};
use crate::cache::Cache;
use crate::gpu::compile::{CompileRequest, Image};
use crate::gpu::device::Gpu;
use crate::gpu::pool::{CompilePool, CompileResult};
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
    /// Configs whose image came from the binary table.
    pub reused: usize,
}

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
        }
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

    fn store(&self, text: &str, image: &Image) {
        if let Err(e) = self.cache.put_binary(&self.key(text), &image.to_bytes()) {
            log::warn!("jitune: could not store a CUBIN of {}: {e}", self.spec.name);
        }
    }

    /// Images for `wanted` (index, config, its canonical text, an image at hand if any), as
    /// they become ready. Compilations start now.
    pub fn fetch(&mut self, wanted: Vec<(usize, &Config, String, Option<Image>)>) -> Fetch {
        let mut ready = VecDeque::new();
        let mut compile = Vec::new();
        let mut reqs = Vec::new();
        for (i, c, text, at_hand) in wanted {
            match at_hand.or_else(|| self.stored(&text)) {
                Some(img) => ready.push_back((i, Ok(img))),
                None => {
                    reqs.push(CompileRequest::new(&self.spec, c, &self.gpu.arch));
                    compile.push((i, text));
                }
            }
        }
        let rx = (!reqs.is_empty()).then(|| self.pool.submit(reqs));
        Fetch { ready, compile, rx }
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

/// A batch's images as they become ready; see [`Binaries::fetch`].
pub struct Fetch {
    ready: VecDeque<(usize, std::result::Result<Image, String>)>,
    /// Index and text of each compile request, in request order.
    compile: Vec<(usize, String)>,
    rx: Option<mpsc::Receiver<(usize, Result<CompileResult>)>>,
}

impl Fetch {
    /// The next ready image (`Ok(Err(log))`: it does not compile), compiled images stored in
    /// the binary table on the way; `Err` when the compile machinery itself failed; `None` at
    /// the end.
    pub fn next_image(
        &mut self,
        bin: &mut Binaries,
    ) -> Option<(usize, Result<std::result::Result<Image, String>>)> {
        if let Some((i, r)) = self.ready.pop_front() {
            return Some((i, Ok(r)));
        }
        let (j, r) = self.rx.as_ref()?.recv().ok()?;
        let (i, text) = &self.compile[j];
        if let Ok(Ok(img)) = &r {
            bin.compiled += 1;
            bin.store(text, img);
        }
        Some((*i, r))
    }
}
