//! The bench: one compiled config measured honestly, a correctness run and CUDA-event timing,
//! on synthetic inputs ([`super::inputs`]) through the launch path that serves.
//!
//! Each timed run starts with a cold L2, as it would in an application: a write of a buffer twice
//! the L2 size comes before it (outside the events), and when the inputs are small enough to fit
//! in L2 anyway, several input sets are rotated as well. When one run moves four times the L2
//! size or more, the run itself evicts what the previous one left and the flush is skipped (the
//! previous run's dirty lines are written back during the next run either way).
//!
//! Before each correctness check the outputs are poisoned with an all-ones byte pattern (NaN
//! for floats), so an element the kernel forgot to write fails. The reference outputs stay on
//! the device ([`Bench::keep_reference`]) and candidates are compared with them there
//! ([`super::compare`]); only a reference the user gives on the host is compared on the host.
//!
//! Sampling is adaptive ([`decide`]): rounds of runs, each round one synchronisation, until the
//! median's confidence interval is narrow, the time budget is spent, or the candidate is clearly
//! slower than the best so far (racing).
//!
//! What the bench needs but is no part of measuring lives beside it: the buffers in
//! [`super::inputs`], the sampling rule in [`super::sampling`], the resolved config in
//! [`super::prepared`] and the sorting of failures in [`super::fault`], each a file of its own.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    result as cu, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DriverError,
};

use super::compare::{compare, Comparison, Operands, SCRATCH_BYTES};
use super::convert::to_f64;
use super::device::Gpu;
use super::fault::{classify, classify_launch, LaunchFailure};
use super::inputs::{check_arity, Inputs};
use super::launch::launch;
use super::prepared::Prepared;
use super::sampling::{decide, Decision, Sampled, Sampling};
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// The tuner's own buffers and timing machinery for one spec and shape.
pub struct Bench {
    pub stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    /// The synthetic buffers (never the caller's).
    inputs: Inputs,
    /// The spec (the launch path checks arguments against it).
    spec: KernelSpec,
    /// The L2 flush buffer; `None` when runs move enough memory to evict L2 themselves.
    flush: Option<CudaSlice<u8>>,
    events: Vec<(CudaEvent, CudaEvent)>,
    rotation: usize,
    /// The NVRTC target (the comparison kernel is compiled for it).
    arch: String,
    /// Partials and result of the device comparison (allocated with the first reference).
    scratch: Option<CudaSlice<u8>>,
}

fn cuda(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::driver(what, e)
}

impl Bench {
    /// Allocates and fills synthetic inputs for `spec` at `shape` on a new stream of `gpu`.
    pub fn new(gpu: &Gpu, spec: &KernelSpec, shape: &[i64], seed: u64) -> Result<Bench> {
        super::guarded("allocating tuning buffers", || {
            check_arity(spec)?;
            let ctx = gpu.ctx.clone();
            let stream = ctx
                .new_stream()
                .map_err(cuda("creating the tuning stream"))?;
            let inputs = Inputs::new(gpu, &stream, spec, shape, seed)?;
            let l2 = gpu.limits.l2_bytes.max(1) as usize;
            let flush = if needs_flush(inputs.bytes_per_run, l2) {
                Some(
                    stream
                        .alloc_zeros::<u8>(2 * l2)
                        .map_err(cuda("allocating the L2 flush buffer"))?,
                )
            } else {
                None
            };
            Ok(Bench {
                stream,
                ctx,
                inputs,
                spec: spec.clone(),
                flush,
                events: Vec::new(),
                rotation: 0,
                arch: gpu.arch.clone(),
                scratch: None,
            })
        })
    }

    /// Whether each timed run is preceded by an L2 flush (see the module docs).
    pub fn flushes(&self) -> bool {
        self.flush.is_some()
    }

    fn event_pair(&mut self, i: usize) -> Result<()> {
        while self.events.len() <= i {
            let a = self
                .ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("creating events"))?;
            let b = self
                .ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("creating events"))?;
            self.events.push((a, b));
        }
        Ok(())
    }

    /// Launches input set `set` with the prepared config `p`, through the launch path that
    /// serves the caller's launches (the arguments: [`Inputs::args`]).
    fn launch_set(
        &self,
        func: &CudaFunction,
        p: &Prepared,
        set: usize,
    ) -> std::result::Result<(), LaunchFailure> {
        let (mut args, n) = self.inputs.args(&self.spec, set);
        launch(
            func,
            &self.spec,
            &p.resolved(&self.spec),
            &self.stream,
            &mut args[..n],
        )
        .map_err(classify_launch)
    }

    fn flush_l2(&self) -> std::result::Result<(), DriverError> {
        let Some(flush) = &self.flush else {
            return Ok(());
        };
        let (p, _sync) = flush.device_ptr(&self.stream);
        unsafe { cu::memset_d8_async(p, 0, flush.len(), self.stream.cu_stream()) }
    }

    /// Runs the kernel once on poisoned outputs (and restored in-out buffers), for a
    /// correctness check: [`Bench::keep_reference`], [`Bench::compare_with_reference`] or
    /// [`Bench::read_outputs`] come next.
    pub fn run_for_check(
        &mut self,
        func: &CudaFunction,
        p: &Prepared,
    ) -> Result<std::result::Result<(), LaunchFailure>> {
        super::guarded("checking a candidate", || {
            for b in &self.inputs.buffers {
                if b.is_output() {
                    let (p, _s) = b.sets[0].device_ptr(&self.stream);
                    unsafe { cu::memset_d8_async(p, 0xFF, b.bytes, self.stream.cu_stream()) }
                        .map_err(cuda("poisoning outputs"))?;
                }
                if let Some(orig) = &b.pristine {
                    let (src, _s1) = orig.device_ptr(&self.stream);
                    let (dst, _s2) = b.sets[0].device_ptr(&self.stream);
                    unsafe { cu::memcpy_dtod_async(dst, src, b.bytes, self.stream.cu_stream()) }
                        .map_err(cuda("restoring in-out buffers"))?;
                }
            }
            if let Err(f) = self.launch_set(func, p, 0) {
                return Ok(Err(f));
            }
            if let Err(e) = self.stream.synchronize() {
                return Ok(Err(classify(e, "running the kernel")));
            }
            Ok(Ok(()))
        })
    }

    /// Keeps the outputs of the last [`Bench::run_for_check`] on the device as the reference
    /// that [`Bench::compare_with_reference`] compares later runs with.
    pub fn keep_reference(&mut self) -> Result<std::result::Result<(), LaunchFailure>> {
        super::guarded("keeping the reference outputs", || {
            if self.scratch.is_none() {
                self.scratch = Some(
                    self.stream
                        .alloc_zeros::<u8>(SCRATCH_BYTES)
                        .map_err(cuda("allocating the comparison scratch"))?,
                );
            }
            for b in self.inputs.buffers.iter_mut().filter(|b| b.is_output()) {
                if b.reference.is_none() {
                    b.reference = Some(
                        self.stream
                            .alloc_zeros::<u8>(b.bytes)
                            .map_err(cuda("allocating a reference output"))?,
                    );
                }
                if let Some(r) = &b.reference {
                    let (src, _s1) = b.sets[0].device_ptr(&self.stream);
                    let (dst, _s2) = r.device_ptr(&self.stream);
                    let copied = unsafe {
                        cu::memcpy_dtod_async(dst, src, b.bytes, self.stream.cu_stream())
                    };
                    if let Err(e) = copied {
                        return Ok(Err(classify(e, "keeping the reference outputs")));
                    }
                }
            }
            if let Err(e) = self.stream.synchronize() {
                return Ok(Err(classify(e, "keeping the reference outputs")));
            }
            Ok(Ok(()))
        })
    }

    /// Compares the outputs of the last [`Bench::run_for_check`] with the kept reference on
    /// the device, one [`Comparison`] per output buffer in argument order (32 bytes read back
    /// per output; nothing else leaves the device).
    pub fn compare_with_reference(
        &mut self,
    ) -> Result<std::result::Result<Vec<Comparison>, LaunchFailure>> {
        let Some(scratch) = &self.scratch else {
            return Err(Error::Search(
                "comparing with a reference that was not kept".into(),
            ));
        };
        let (scratch, _s) = scratch.device_ptr(&self.stream);
        let mut out = Vec::new();
        for b in self.inputs.outputs() {
            let Some(r) = &b.reference else {
                return Err(Error::Search("an output has no kept reference".into()));
            };
            let (o, _s1) = b.sets[0].device_ptr(&self.stream);
            let (rp, _s2) = r.device_ptr(&self.stream);
            let op = Operands {
                ty: b.ty,
                out: o,
                reference: rp,
                n: b.bytes / b.ty.size(),
                scratch,
            };
            match compare(&self.ctx, &self.arch, &self.stream, op)? {
                Ok(c) => out.push(c),
                Err(e) => return Ok(Err(classify(e, "comparing outputs"))),
            }
        }
        Ok(Ok(out))
    }

    /// The outputs of the last [`Bench::run_for_check`] on the host as f64 values, one vector
    /// per output buffer in argument order (for a reference the user gave on the host).
    pub fn read_outputs(&self) -> Result<std::result::Result<Vec<Vec<f64>>, LaunchFailure>> {
        super::guarded("reading outputs", || {
            let mut outs = Vec::new();
            for b in self.inputs.outputs() {
                let host = match self.stream.clone_dtoh(&b.sets[0]) {
                    Ok(h) => h,
                    Err(e) => return Ok(Err(classify(e, "reading outputs"))),
                };
                outs.push(to_f64(b.ty, &host));
            }
            Ok(Ok(outs))
        })
    }

    /// Times `reps` runs, each after an L2 flush, with CUDA events; milliseconds per run.
    pub fn time(
        &mut self,
        func: &CudaFunction,
        p: &Prepared,
        reps: usize,
    ) -> Result<std::result::Result<Vec<f64>, LaunchFailure>> {
        let reps = reps.max(1);
        self.event_pair(reps)?;
        super::guarded("timing a candidate", || {
            for i in 0..reps {
                if let Err(e) = self.flush_l2() {
                    return Ok(Err(classify(e, "flushing L2")));
                }
                let set = self.rotation % self.inputs.sets();
                self.rotation += 1;
                let (start, end) = &self.events[i];
                start
                    .record(&self.stream)
                    .map_err(cuda("recording an event"))?;
                if let Err(f) = self.launch_set(func, p, set) {
                    return Ok(Err(f));
                }
                end.record(&self.stream)
                    .map_err(cuda("recording an event"))?;
            }
            if let Err(e) = self.stream.synchronize() {
                return Ok(Err(classify(e, "running the kernel")));
            }
            let mut out = Vec::with_capacity(reps);
            for (start, end) in &self.events[..reps] {
                match start.elapsed_ms(end) {
                    Ok(ms) => out.push(ms as f64),
                    Err(e) => return Ok(Err(classify(e, "reading events"))),
                }
            }
            Ok(Ok(out))
        })
    }

    /// Times in rounds until [`decide`] says stop: a first run (the "too slow" probe), then
    /// rounds that double the sample, each one synchronisation. `best` is the best config's
    /// median and the upper end of its confidence interval, for racing.
    pub fn sample(
        &mut self,
        func: &CudaFunction,
        p: &Prepared,
        rule: &Sampling,
        best: Option<(f64, f64)>,
    ) -> Result<std::result::Result<Sampled, LaunchFailure>> {
        let mut samples = Vec::new();
        loop {
            match decide(&samples, rule, best) {
                Decision::More(n) => match self.time(func, p, n)? {
                    Ok(s) => samples.extend(s),
                    Err(f) => return Ok(Err(f)),
                },
                Decision::Stop(stop) => return Ok(Ok(Sampled { samples, stop })),
            }
        }
    }
}

/// Whether timed runs need an L2 flush: not when one run moves at least four times the L2
/// size (it evicts what the previous run left by itself).
fn needs_flush(bytes_per_run: usize, l2: usize) -> bool {
    bytes_per_run < 4 * l2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ElemType;

    #[test]
    fn error_metric_never_passes_nan() {
        let rel = |o: &[f64], r: &[f64]| {
            let c = Comparison::of_host(o, r);
            (c.nonfinite == 0).then(|| c.relative_error())
        };
        assert_eq!(rel(&[1.0, 2.0], &[1.0, 2.0]), Some(0.0));
        assert_eq!(rel(&[f64::NAN, 2.0], &[1.0, 2.0]), None);
        assert_eq!(rel(&[1.0], &[1.0, 2.0]), None);
        assert!(rel(&[1.1, 2.0], &[1.0, 2.0]).unwrap() > 0.01);
        let poisoned = to_f64(ElemType::F32, &[0xFF; 8]);
        assert!(poisoned.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn the_flush_is_skipped_only_when_a_run_evicts_l2_itself() {
        let l2 = 60 << 20;
        // Transpose 8192^2 f32: 256 MB in, 256 MB out.
        assert!(!needs_flush(512 << 20, l2));
        // SGEMM 4096^3 f32: 192 MB.
        assert!(needs_flush(192 << 20, l2));
        assert!(needs_flush(0, l2));
    }
}
