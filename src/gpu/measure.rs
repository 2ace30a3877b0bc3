//! Honest measurement of one compiled config: synthetic inputs, L2 flushing, CUDA-event timing
//! and a correctness gate.
//!
//! Inputs are made from the spec's argument descriptions (never zeros) on the tuner's own
//! stream, in buffers of its own: tuning never reads or writes the caller's buffers. Each timed
//! run starts with a cold L2, as it would in an application: a write of a buffer twice the L2
//! size comes before it (outside the events), and when the inputs are small enough to fit in L2
//! anyway, several input sets are rotated as well. When one run moves four times the L2 size or
//! more, the run itself evicts what the previous one left and the flush is skipped (the
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

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUresult};
use cudarc::driver::{
    result as cu, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DriverError,
};

use super::compare::{compare, Comparison, Operands, SCRATCH_BYTES};
use super::convert::{f32_to_bf16, f32_to_f16, to_f64};
use super::device::Gpu;
use super::launch::{launch, Arg, LaunchError, RawBuffer, Resolved, MAX_ARGS};
use crate::rng::Rng;
use crate::spec::{DeviceLimits, ElemType, Generator, Geometry, KernelSpec, Role, MAX_VARS};
use crate::{Error, Result};

/// How a launch went wrong, as the search needs to know it.
#[derive(Debug)]
pub enum LaunchFailure {
    /// The config cannot launch (too many resources, invalid geometry): an invalid config.
    Invalid(String),
    /// The context is broken (illegal address and the like): nothing more can run in it.
    Sticky(String),
}

/// Whether a CUDA error leaves the context unusable.
pub fn is_sticky(e: &DriverError) -> bool {
    matches!(
        e.0,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_ECC_UNCORRECTABLE
            | CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUresult::CUDA_ERROR_TOO_MANY_PEERS
    )
}

fn classify(e: DriverError, what: &str) -> LaunchFailure {
    if is_sticky(&e) {
        LaunchFailure::Sticky(format!("{what}: {e}"))
    } else {
        LaunchFailure::Invalid(format!("{what}: {e}"))
    }
}

fn classify_launch(f: LaunchError) -> LaunchFailure {
    match f {
        LaunchError::Args(e) => LaunchFailure::Invalid(e.to_string()),
        LaunchError::Driver(what, e) => classify(e, what),
    }
}

/// One config resolved for one shape: the variable table, the geometry, what each argument
/// needs and which arguments are zero-filled. Computed once per config, used by every launch
/// of it (the serving plans memoise the same values per shape).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub env: [i64; MAX_VARS],
    pub geometry: Geometry,
    pub need: [i64; MAX_ARGS],
    pub zero: u64,
}

impl Prepared {
    /// Resolves `spec` for a variable table holding the config's values and the device limits
    /// (see [`KernelSpec::fill_env`]) at `shape`. Allocation-free unless it fails.
    pub fn resolve(spec: &KernelSpec, env: &[i64; MAX_VARS], shape: &[i64]) -> Result<Prepared> {
        if spec.args.len() > MAX_ARGS || shape.len() != spec.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}`: more than {MAX_ARGS} arguments, or a shape of {} dims for {}",
                spec.name,
                shape.len(),
                spec.dims.len()
            )));
        }
        let mut env = *env;
        let base = spec.shape_slot();
        env[base..base + shape.len()].copy_from_slice(shape);
        let geometry = spec.geometry_in(&env)?;
        let mut need = [0i64; MAX_ARGS];
        for (n, a) in need.iter_mut().zip(&spec.args) {
            *n = a.len.eval(&env).map_err(|e| {
                Error::Eval(format!(
                    "kernel `{}`, argument `{}`: {e}",
                    spec.name, a.name
                ))
            })?;
        }
        let zero = spec.zero_mask(&env)?;
        Ok(Prepared {
            env,
            geometry,
            need,
            zero,
        })
    }

    /// For a config given as its parameter values.
    pub fn for_config(
        spec: &KernelSpec,
        values: &[i64],
        shape: &[i64],
        limits: &DeviceLimits,
    ) -> Result<Prepared> {
        if values.len() != spec.params.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}`: a config of {} values for {} parameters",
                spec.name,
                values.len(),
                spec.params.len()
            )));
        }
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(values, shape, limits, &mut env);
        Prepared::resolve(spec, &env, shape)
    }

    /// What [`launch`] takes.
    pub fn resolved(&self, spec: &KernelSpec) -> Resolved<'_> {
        Resolved {
            env: &self.env,
            geometry: self.geometry,
            need: &self.need[..spec.args.len()],
            zero: self.zero,
        }
    }
}

/// Host bytes of `n` synthetic elements.
fn generate(ty: ElemType, gen: &Generator, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * ty.size());
    for _ in 0..n {
        let (f, i) = match gen {
            Generator::Uniform(lo, hi) => {
                let f = lo + (hi - lo) * rng.next_f64();
                (f, f.round() as i64)
            }
            Generator::IntRange(lo, hi) => {
                let span = (hi - lo) as u64 + 1;
                let i = lo + rng.below(span) as i64;
                (i as f64, i)
            }
        };
        match ty {
            ElemType::F32 => out.extend_from_slice(&(f as f32).to_le_bytes()),
            ElemType::F64 => out.extend_from_slice(&f.to_le_bytes()),
            ElemType::F16 => out.extend_from_slice(&f32_to_f16(f as f32).to_le_bytes()),
            ElemType::Bf16 => out.extend_from_slice(&f32_to_bf16(f as f32).to_le_bytes()),
            ElemType::I32 => out.extend_from_slice(&(i as i32).to_le_bytes()),
            ElemType::U32 => out.extend_from_slice(&(i as u32).to_le_bytes()),
            ElemType::I64 => out.extend_from_slice(&i.to_le_bytes()),
            ElemType::U8 => out.push(i as u8),
        }
    }
    out
}

struct DeviceBuffer {
    arg: usize,
    ty: ElemType,
    role: Role,
    bytes: usize,
    /// One buffer per input set (rotation); outputs have one.
    sets: Vec<CudaSlice<u8>>,
    /// The original contents of an `inout` buffer, restored before each check.
    pristine: Option<CudaSlice<u8>>,
    /// Outputs only: the reference output, kept on the device ([`Bench::keep_reference`]).
    reference: Option<CudaSlice<u8>>,
}

/// The tuner's own buffers and timing machinery for one spec and shape.
pub struct Bench {
    pub stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    buffers: Vec<DeviceBuffer>,
    /// The spec (the launch path checks arguments against it).
    spec: KernelSpec,
    /// Per argument: its length in elements (buffers) or its value (scalars).
    lens: Vec<i64>,
    /// Per input set, per argument: the device pointer of this set's buffer (0 for scalars and
    /// tensor maps).
    ptrs: Vec<[u64; MAX_ARGS]>,
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
            if spec.args.len() > MAX_ARGS {
                return Err(Error::InvalidArgument(format!(
                    "kernel `{}` has more than {MAX_ARGS} arguments",
                    spec.name
                )));
            }
            let ctx = gpu.ctx.clone();
            let stream = ctx
                .new_stream()
                .map_err(cuda("creating the tuning stream"))?;
            let mut rng = Rng::new(seed);
            let mut lens = Vec::new();
            let mut input_bytes = 0usize;
            let mut output_bytes = 0usize;
            for a in &spec.args {
                let v = spec.arg_value(a, shape, &gpu.limits)?;
                if !matches!(a.role, Role::Scalar | Role::TensorMap) {
                    if !(0..=(1i64 << 40)).contains(&v) {
                        return Err(Error::Shape(format!(
                            "argument `{}` would have {v} elements",
                            a.name
                        )));
                    }
                    if matches!(a.role, Role::In | Role::InOut) {
                        input_bytes += v as usize * a.ty.size();
                    }
                    if matches!(a.role, Role::Out | Role::InOut) {
                        output_bytes += v as usize * a.ty.size();
                    }
                }
                lens.push(v);
            }
            // Rotate input sets when they would otherwise stay in L2 between runs.
            let l2 = gpu.limits.l2_bytes.max(1) as usize;
            let sets = if input_bytes > 0 && input_bytes < l2 {
                (2 * l2).div_ceil(input_bytes).clamp(1, 4)
            } else {
                1
            };
            let mut buffers = Vec::new();
            for (i, a) in spec.args.iter().enumerate() {
                if matches!(a.role, Role::Scalar | Role::TensorMap) {
                    continue;
                }
                let n = lens[i] as usize;
                let bytes = (n * a.ty.size()).max(a.ty.size());
                let mut slices = Vec::new();
                let mut pristine = None;
                let n_sets = if a.role == Role::Out { 1 } else { sets };
                for _ in 0..n_sets {
                    match (&a.init, a.role) {
                        (Some(g), Role::In | Role::InOut) => {
                            let host = generate(a.ty, g, n.max(1), &mut rng);
                            let dev = stream.clone_htod(&host).map_err(cuda("uploading inputs"))?;
                            if a.role == Role::InOut && pristine.is_none() {
                                pristine = Some(
                                    stream.clone_htod(&host).map_err(cuda("uploading inputs"))?,
                                );
                            }
                            slices.push(dev);
                        }
                        _ => slices.push(
                            stream
                                .alloc_zeros::<u8>(bytes)
                                .map_err(cuda("allocating outputs"))?,
                        ),
                    }
                }
                buffers.push(DeviceBuffer {
                    arg: i,
                    ty: a.ty,
                    role: a.role,
                    bytes,
                    sets: slices,
                    pristine,
                    reference: None,
                });
            }
            let mut ptrs = Vec::new();
            for s in 0..sets {
                let mut v = [0u64; MAX_ARGS];
                for b in &buffers {
                    let slice = &b.sets[s.min(b.sets.len() - 1)];
                    let (p, _sync) = slice.device_ptr(&stream);
                    v[b.arg] = p;
                }
                ptrs.push(v);
            }
            let flush = if needs_flush(input_bytes + output_bytes, l2) {
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
                buffers,
                spec: spec.clone(),
                lens,
                ptrs,
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
    /// serves the caller's launches: the bench's buffers are passed as raw pointers (they are
    /// the bench's own, alive as long as it is), scalars by value.
    fn launch_set(
        &self,
        func: &CudaFunction,
        p: &Prepared,
        set: usize,
    ) -> std::result::Result<(), LaunchFailure> {
        let ptrs = &self.ptrs[set];
        let mut args: [Arg<'_>; MAX_ARGS] = std::array::from_fn(|_| Arg::Int(0));
        let mut n = 0;
        for (i, a) in self.spec.args.iter().enumerate() {
            args[n] = match a.role {
                Role::TensorMap => continue,
                Role::Scalar => Arg::Int(self.lens[i]),
                role => Arg::Raw {
                    buffer: RawBuffer::new(ptrs[i], self.lens[i].max(1) as usize, a.ty),
                    writable: role != Role::In,
                },
            };
            n += 1;
        }
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
            for b in &self.buffers {
                if b.role == Role::Out || b.role == Role::InOut {
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
            for b in &mut self.buffers {
                if b.role != Role::Out && b.role != Role::InOut {
                    continue;
                }
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
        for b in &self.buffers {
            if b.role != Role::Out && b.role != Role::InOut {
                continue;
            }
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
            for b in &self.buffers {
                if b.role == Role::Out || b.role == Role::InOut {
                    let host = match self.stream.clone_dtoh(&b.sets[0]) {
                        Ok(h) => h,
                        Err(e) => return Ok(Err(classify(e, "reading outputs"))),
                    };
                    outs.push(to_f64(b.ty, &host));
                }
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
                let set = self.rotation % self.ptrs.len();
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

/// The rules of adaptive sampling (see [`decide`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Kernel time (ms) a measurement may spend; once spent, 3 samples are enough.
    pub budget_ms: f64,
    /// Samples a measurement takes at least while within the budget.
    pub min_reps: usize,
    /// Samples a measurement takes at most.
    pub max_reps: usize,
    /// Stop once the half-width of the median's 95% confidence interval is at most this
    /// fraction of the median.
    pub stable_within: f64,
    /// A first run slower than this many times the best median stops as [`Stop::TooSlow`];
    /// infinite: no probe and no racing (every config measured fully).
    pub too_slow_factor: f64,
}

/// Why sampling stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The first run was slower than `too_slow_factor` times the best (a failure of its own).
    TooSlow,
    /// Every run so far (two at least) was slower than the upper end of the best's interval.
    Raced,
    /// The median's interval is narrow enough.
    Stable,
    /// The time budget is spent.
    Budget,
    /// `max_reps` samples.
    MaxReps,
}

/// What [`decide`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take this many more samples.
    More(usize),
    Stop(Stop),
}

/// A sampled measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub samples: Vec<f64>,
    pub stop: Stop,
}

/// The distribution-free 95% confidence interval of the median of `samples`: the order
/// statistics `j` and `n - 1 - j` with `j = floor((n - 1.96 sqrt(n)) / 2)` (normal approximation
/// of the binomial; below 6 samples the whole range). `(0, 0)` for no samples.
pub fn median_ci(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let j = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
        .floor()
        .max(0.0) as usize;
    let j = j.min((n - 1) / 2);
    (s[j], s[n - 1 - j])
}

/// One step of adaptive sampling: given the samples so far, stop (and why) or how many more
/// to take. In order: the first run against `too_slow_factor` times the best median; racing
/// (two runs or more, all slower than the upper end of the best's interval); `max_reps`; then,
/// with at least `min_reps` samples (3 once the budget is spent), stop when the budget is spent
/// or the median's interval is within `stable_within`. Otherwise the sample doubles (limited
/// by what the budget still pays for once past the floor).
pub fn decide(samples: &[f64], rule: &Sampling, best: Option<(f64, f64)>) -> Decision {
    let n = samples.len();
    if n == 0 {
        return Decision::More(1);
    }
    let max = rule.max_reps.max(1);
    let pruning = rule.too_slow_factor.is_finite();
    if let (true, Some((best_ms, best_hi))) = (pruning, best) {
        if n == 1 && samples[0] > rule.too_slow_factor * best_ms {
            return Decision::Stop(Stop::TooSlow);
        }
        let fastest = samples.iter().copied().fold(f64::INFINITY, f64::min);
        if n >= 2 && fastest > best_hi {
            return Decision::Stop(Stop::Raced);
        }
    }
    if n >= max {
        return Decision::Stop(Stop::MaxReps);
    }
    let spent: f64 = samples.iter().sum();
    let over = spent >= rule.budget_ms;
    let floor = if over { 3 } else { rule.min_reps.max(1) }.min(max);
    let med = median(samples);
    if n >= floor {
        if over {
            return Decision::Stop(Stop::Budget);
        }
        let (lo, hi) = median_ci(samples);
        if (hi - lo) / 2.0 <= rule.stable_within * med {
            return Decision::Stop(Stop::Stable);
        }
    }
    // Below the floor: up to it, doubling (1, 2, 4, ...), so racing can stop a slow candidate
    // after its second run. Above it: double, but not beyond what the rest of the budget pays
    // for.
    let add = if n < floor {
        n.min(floor - n)
    } else {
        let affordable = if med > 0.0 {
            ((rule.budget_ms - spent) / med).ceil() as usize
        } else {
            n
        };
        n.min(affordable).max(1)
    };
    Decision::More(add.min(max - n))
}

/// Median of a sample (0 for none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Interquartile range of a sample.
pub fn iqr(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let x = p * (s.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
    };
    q(0.75) - q(0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn synthetic_inputs_are_not_zeros() {
        let mut rng = Rng::new(1);
        let v = to_f64(
            ElemType::F32,
            &generate(
                ElemType::F32,
                &Generator::Uniform(-1.0, 1.0),
                1000,
                &mut rng,
            ),
        );
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(v.iter().filter(|x| **x == 0.0).count() == 0);
        let i = to_f64(
            ElemType::I32,
            &generate(ElemType::I32, &Generator::IntRange(1, 9), 1000, &mut rng),
        );
        assert!(i.iter().all(|x| (1.0..=9.0).contains(x)));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!((iqr(&[1.0, 2.0, 3.0, 4.0, 5.0]) - 2.0).abs() < 1e-12);
    }

    fn rule() -> Sampling {
        Sampling {
            budget_ms: 20.0,
            min_reps: 5,
            max_reps: 50,
            stable_within: 0.02,
            too_slow_factor: 10.0,
        }
    }

    /// Runs `decide` against a kernel whose runs take `run(i)` ms; the samples taken and why
    /// it stopped.
    fn simulate(
        rule: &Sampling,
        best: Option<(f64, f64)>,
        run: impl Fn(usize) -> f64,
    ) -> (usize, Stop, usize) {
        let mut s = Vec::new();
        let mut rounds = 0;
        loop {
            match decide(&s, rule, best) {
                Decision::More(n) => {
                    assert!(
                        n >= 1 && s.len() + n <= rule.max_reps,
                        "{n} more after {}",
                        s.len()
                    );
                    rounds += 1;
                    for _ in 0..n {
                        let i = s.len();
                        s.push(run(i));
                    }
                }
                Decision::Stop(why) => return (s.len(), why, rounds),
            }
        }
    }

    #[test]
    fn a_stable_kernel_stops_at_the_floor_in_few_rounds() {
        let (n, why, rounds) = simulate(&rule(), None, |i| 1.0 + 0.001 * (i % 3) as f64);
        assert_eq!((n, why), (5, Stop::Stable));
        assert!(rounds <= 4, "{rounds} rounds");
    }

    #[test]
    fn a_noisy_kernel_samples_more_but_not_beyond_the_cap() {
        // +-10% noise: the interval of the median narrows only with many samples.
        let noisy = |i: usize| 0.01 * (1.0 + 0.1 * (((i * 7919) % 13) as f64 / 6.0 - 1.0));
        let (n, why, rounds) = simulate(&rule(), None, noisy);
        assert!(n > 5, "{n}");
        assert!(
            n <= 50 && matches!(why, Stop::Stable | Stop::MaxReps),
            "{n} {why:?}"
        );
        assert!(rounds <= 9, "{rounds} rounds");
    }

    #[test]
    fn the_budget_follows_the_kernel_time() {
        // A 15 ms kernel spends the 20 ms budget at its second run: 3 samples and done.
        let noisy = |i: usize| 15.0 * (1.0 + 0.1 * (i % 2) as f64);
        assert_eq!(simulate(&rule(), None, noisy).0, 3);
        // A 30 ms kernel too (never fewer than 3 samples).
        assert_eq!(simulate(&rule(), None, |_| 30.0).0, 3);
        // A 1 ms noisy kernel stops once ~20 ms are spent, not at 50 runs.
        let (n, why, _) = simulate(&rule(), None, |i| 1.0 + 0.2 * (i % 2) as f64);
        assert!((10..=25).contains(&n) && why == Stop::Budget, "{n} {why:?}");
    }

    #[test]
    fn racing_stops_a_clearly_slower_candidate_early() {
        let best = Some((1.0, 1.02));
        // 1.5x slower, steadily: stopped after 2 runs (the probe and one more).
        let (n, why, _) = simulate(&rule(), best, |_| 1.5);
        assert_eq!((n, why), (2, Stop::Raced));
        // 20x slower: the first run is the "too slow" probe.
        assert_eq!(simulate(&rule(), best, |_| 20.0).1, Stop::TooSlow);
        // One fast run among slow ones: not clearly slower, so it is measured on.
        let (n, why, _) = simulate(&rule(), best, |i| if i == 1 { 1.0 } else { 1.5 });
        assert!(n >= 5 && why != Stop::Raced, "{n} {why:?}");
        // As fast as the best: never raced.
        assert_ne!(simulate(&rule(), best, |_| 1.01).1, Stop::Raced);
        // No pruning when the factor is infinite (record, verify): measured fully.
        let full = Sampling {
            too_slow_factor: f64::INFINITY,
            ..rule()
        };
        assert_eq!(simulate(&full, best, |_| 20.0), (3, Stop::Budget, 3));
        assert_eq!(simulate(&full, best, |_| 1.5).1, Stop::Stable);
    }

    #[test]
    fn median_interval_is_the_order_statistics() {
        assert_eq!(median_ci(&[]), (0.0, 0.0));
        assert_eq!(median_ci(&[2.0]), (2.0, 2.0));
        assert_eq!(median_ci(&[3.0, 1.0, 2.0, 5.0, 4.0]), (1.0, 5.0));
        let v: Vec<f64> = (0..50).map(|i| i as f64).collect();
        // j = floor((50 - 1.96 * sqrt(50)) / 2) = 18.
        assert_eq!(median_ci(&v), (18.0, 31.0));
        let (lo, hi) = median_ci(&v[..10]);
        assert!(lo <= median(&v[..10]) && median(&v[..10]) <= hi);
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
