//! Honest measurement of one compiled config: synthetic inputs, L2 flushing, CUDA-event timing
//! and a correctness gate.
//!
//! Inputs are made from the spec's argument descriptions (never zeros) on the tuner's own
//! stream, in buffers of its own: tuning never reads or writes the caller's buffers. Every timed
//! run is preceded by a write of a buffer twice the L2 size, so each run starts with a cold L2 as
//! it would in an application; when the inputs are small enough to fit in L2 anyway, several
//! input sets are rotated as well. Before each correctness check the outputs are poisoned with
//! an all-ones byte pattern (NaN for floats), so an element the kernel forgot to write fails.

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUresult};
use cudarc::driver::{
    result as cu, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DriverError,
};

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

/// Relative L2 error of `out` against `reference`; `None` when `out` holds a NaN/inf or the
/// lengths differ (never a pass).
pub fn relative_error(out: &[f64], reference: &[f64]) -> Option<f64> {
    if out.len() != reference.len() || out.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (o, r) in out.iter().zip(reference) {
        num += (o - r) * (o - r);
        den += r * r;
    }
    Some((num / den.max(f64::MIN_POSITIVE)).sqrt())
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
    flush: CudaSlice<u8>,
    events: Vec<(CudaEvent, CudaEvent)>,
    rotation: usize,
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
            let flush = stream
                .alloc_zeros::<u8>(2 * l2)
                .map_err(cuda("allocating the L2 flush buffer"))?;
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
            })
        })
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
        let (p, _sync) = self.flush.device_ptr(&self.stream);
        unsafe { cu::memset_d8_async(p, 0, self.flush.len(), self.stream.cu_stream()) }
    }

    /// Runs the kernel once on poisoned outputs (and restored in-out buffers) and returns each
    /// output buffer as f64 values, in argument order.
    pub fn run_checked(
        &mut self,
        func: &CudaFunction,
        p: &Prepared,
    ) -> Result<std::result::Result<Vec<Vec<f64>>, LaunchFailure>> {
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

    /// Times with a budget: a few runs estimate the time, then enough runs to fill `budget_ms`
    /// (between `min_reps` and `max_reps`). Returns all samples.
    pub fn time_budgeted(
        &mut self,
        func: &CudaFunction,
        p: &Prepared,
        budget_ms: f64,
        min_reps: usize,
        max_reps: usize,
    ) -> Result<std::result::Result<Vec<f64>, LaunchFailure>> {
        let mut samples = match self.time(func, p, 3)? {
            Ok(s) => s,
            Err(f) => return Ok(Err(f)),
        };
        let est = median(&samples).max(1e-4);
        let want = ((budget_ms / est) as usize).clamp(min_reps, max_reps.max(min_reps));
        if want > samples.len() {
            match self.time(func, p, want - samples.len())? {
                Ok(more) => samples.extend(more),
                Err(f) => return Ok(Err(f)),
            }
        }
        Ok(Ok(samples))
    }
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
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), Some(0.0));
        assert_eq!(relative_error(&[f64::NAN, 2.0], &[1.0, 2.0]), None);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), None);
        assert!(relative_error(&[1.1, 2.0], &[1.0, 2.0]).unwrap() > 0.01);
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
}
