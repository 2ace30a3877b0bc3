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

use cudarc::driver::sys::{CUevent_flags, CUfunction_attribute_enum, CUresult};
use cudarc::driver::{
    result as cu, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DriverError,
};

use super::device::Gpu;
use super::tensor_map::{encode_all, TensorMapSlot};
use crate::rng::Rng;
use crate::spec::{
    DeviceLimits, ElemType, Generator, Geometry, KernelSpec, Role, MAX_TENSOR_MAPS, MAX_VARS,
};
use crate::{Error, Result};

/// Most kernel arguments a spec may have.
pub const MAX_ARGS: usize = 32;

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

/// Launches `func` with raw argument values. `values[i]` holds argument `i` (a device pointer or
/// a scalar's bytes, little-endian in the low bytes). Allocation-free.
///
/// # Safety
/// The pointers must be valid device allocations large enough for the kernel, and the values
/// must match the kernel's parameter types.
pub unsafe fn launch_raw(
    func: &CudaFunction,
    g: &Geometry,
    stream: &CudaStream,
    values: &mut [u64],
) -> std::result::Result<(), DriverError> {
    unsafe { launch_raw_maps(func, g, stream, values, &mut [], &[]) }
}

/// Like [`launch_raw`], for kernels with tensor-map arguments: the kernel parameter of argument
/// `map_args[j]` points at the 128-byte map `slots[j]` (passed by value, as a
/// `__grid_constant__ CUtensorMap` wants) instead of at its `values` entry. Allocation-free.
///
/// # Safety
/// As [`launch_raw`]; `map_args` must hold argument indices below `values.len()`.
pub unsafe fn launch_raw_maps(
    func: &CudaFunction,
    g: &Geometry,
    stream: &CudaStream,
    values: &mut [u64],
    slots: &mut [TensorMapSlot],
    map_args: &[usize],
) -> std::result::Result<(), DriverError> {
    let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_ARGS];
    let n = values.len().min(MAX_ARGS);
    for i in 0..n {
        params[i] = (&mut values[i]) as *mut u64 as *mut std::ffi::c_void;
    }
    for (slot, &arg) in slots.iter_mut().zip(map_args) {
        if arg < n {
            params[arg] = slot as *mut TensorMapSlot as *mut std::ffi::c_void;
        }
    }
    cu::launch_kernel(
        func.cu_function(),
        (g.grid[0], g.grid[1], g.grid[2]),
        (g.block[0], g.block[1], g.block[2]),
        g.shared_mem,
        stream.cu_stream(),
        &mut params[..n],
    )
}

/// Raises a function's dynamic shared memory limit when the geometry asks for more than 48 KiB.
pub fn allow_shared(func: &CudaFunction, g: &Geometry) -> std::result::Result<(), DriverError> {
    if g.shared_mem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            g.shared_mem as i32,
        )?;
    }
    Ok(())
}

/// The bytes of a scalar argument's value, packed in a u64.
pub fn scalar_bits(ty: ElemType, v: i64) -> u64 {
    match ty {
        ElemType::F32 => (v as f32).to_bits() as u64,
        ElemType::F64 => (v as f64).to_bits(),
        ElemType::F16 => f32_to_f16(v as f32) as u64,
        ElemType::Bf16 => f32_to_bf16(v as f32) as u64,
        ElemType::I32 => v as i32 as u32 as u64,
        ElemType::U32 => v as u32 as u64,
        ElemType::I64 => v as u64,
        ElemType::U8 => v as u8 as u64,
    }
}

/// IEEE half from f32, round to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let rounded = man + 0xfff + ((man >> 13) & 1);
    let (e, m) = if rounded & 0x80_0000 != 0 {
        (e + 1, 0)
    } else {
        (e, rounded >> 13)
    };
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    sign | ((e as u16) << 10) | m as u16
}

/// f32 from IEEE half.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 from f32, round to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
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

/// Host bytes of a buffer as f64 values (for comparison).
pub fn to_f64(ty: ElemType, bytes: &[u8]) -> Vec<f64> {
    let chunks = bytes.chunks_exact(ty.size());
    match ty {
        ElemType::F32 => chunks
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::F64 => chunks
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        ElemType::F16 => chunks
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64)
            .collect(),
        ElemType::Bf16 => chunks
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
            .collect(),
        ElemType::I32 => chunks
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::U32 => chunks
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::I64 => chunks
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        ElemType::U8 => bytes.iter().map(|b| *b as f64).collect(),
    }
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
    /// Argument values per input set (device pointers and scalar bits).
    values: Vec<Vec<u64>>,
    flush: CudaSlice<u8>,
    events: Vec<(CudaEvent, CudaEvent)>,
    rotation: usize,
    /// The spec, shape and limits when the spec has tensor maps (encoded per config and input
    /// set at each launch) or zero-filled outputs (filled per config before each launch, inside
    /// the timed region); `None` otherwise (launches exactly as before either existed).
    per_config: Option<(KernelSpec, Vec<i64>, DeviceLimits)>,
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
            let mut values = Vec::new();
            for s in 0..sets {
                let mut v = vec![0u64; spec.args.len()];
                for (i, a) in spec.args.iter().enumerate() {
                    if a.role == Role::Scalar {
                        v[i] = scalar_bits(a.ty, lens[i]);
                    }
                }
                for b in &buffers {
                    let slice = &b.sets[s.min(b.sets.len() - 1)];
                    let (p, _sync) = slice.device_ptr(&stream);
                    v[b.arg] = p;
                }
                values.push(v);
            }
            let flush = stream
                .alloc_zeros::<u8>(2 * l2)
                .map_err(cuda("allocating the L2 flush buffer"))?;
            Ok(Bench {
                stream,
                ctx,
                buffers,
                values,
                flush,
                events: Vec::new(),
                rotation: 0,
                per_config: (spec.tensor_maps() > 0 || spec.args.iter().any(|a| a.zero.is_some()))
                    .then(|| (spec.clone(), shape.to_vec(), gpu.limits)),
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

    /// Launches input set `set` with the config `config` (parameter values as expressions see
    /// them): outputs the spec zero-fills for this config are filled first, and tensor maps, if
    /// any, are encoded from this set's buffers for this config.
    fn launch_set(
        &self,
        func: &CudaFunction,
        g: &Geometry,
        set: usize,
        config: &[i64],
    ) -> std::result::Result<(), LaunchFailure> {
        let mut values = self.values[set].clone();
        let Some((spec, shape, limits)) = &self.per_config else {
            return unsafe { launch_raw(func, g, &self.stream, &mut values) }
                .map_err(|e| classify(e, "launch"));
        };
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(config, shape, limits, &mut env);
        let zero = spec
            .zero_mask(&env)
            .map_err(|e| LaunchFailure::Invalid(e.to_string()))?;
        for b in self.buffers.iter().filter(|b| zero & (1 << b.arg) != 0) {
            unsafe { cu::memset_d8_async(values[b.arg], 0, b.bytes, self.stream.cu_stream()) }
                .map_err(|e| classify(e, "zero-filling an output"))?;
        }
        if spec.tensor_maps() == 0 {
            return unsafe { launch_raw(func, g, &self.stream, &mut values) }
                .map_err(|e| classify(e, "launch"));
        }
        let mut slots = [TensorMapSlot::ZERO; MAX_TENSOR_MAPS];
        let mut map_args = [0usize; MAX_TENSOR_MAPS];
        let n = encode_all(spec, &env, &values, &mut slots, &mut map_args)
            .map_err(|e| LaunchFailure::Invalid(format!("encoding tensor maps: {e}")))?;
        unsafe {
            launch_raw_maps(
                func,
                g,
                &self.stream,
                &mut values,
                &mut slots[..n],
                &map_args[..n],
            )
        }
        .map_err(|e| classify(e, "launch"))
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
        g: &Geometry,
        config: &[i64],
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
            if let Err(e) = allow_shared(func, g) {
                return Ok(Err(classify(e, "setting the shared memory limit")));
            }
            if let Err(f) = self.launch_set(func, g, 0, config) {
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
    /// `config` holds the parameter values (as expressions see them) for tensor maps.
    pub fn time(
        &mut self,
        func: &CudaFunction,
        g: &Geometry,
        config: &[i64],
        reps: usize,
    ) -> Result<std::result::Result<Vec<f64>, LaunchFailure>> {
        let reps = reps.max(1);
        self.event_pair(reps)?;
        super::guarded("timing a candidate", || {
            for i in 0..reps {
                if let Err(e) = self.flush_l2() {
                    return Ok(Err(classify(e, "flushing L2")));
                }
                let set = self.rotation % self.values.len();
                self.rotation += 1;
                let (start, end) = &self.events[i];
                start
                    .record(&self.stream)
                    .map_err(cuda("recording an event"))?;
                if let Err(f) = self.launch_set(func, g, set, config) {
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
        g: &Geometry,
        config: &[i64],
        budget_ms: f64,
        min_reps: usize,
        max_reps: usize,
    ) -> Result<std::result::Result<Vec<f64>, LaunchFailure>> {
        let mut samples = match self.time(func, g, config, 3)? {
            Ok(s) => s,
            Err(f) => return Ok(Err(f)),
        };
        let est = median(&samples).max(1e-4);
        let want = ((budget_ms / est) as usize).clamp(min_reps, max_reps.max(min_reps));
        if want > samples.len() {
            match self.time(func, g, config, want - samples.len())? {
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
    fn half_conversions_round_trip() {
        for x in [0.0f32, 1.0, -2.5, 0.333, 65504.0, 1e-5, -1e-7, 3.0e5] {
            let h = f32_to_f16(x);
            let back = f16_to_f32(h);
            if x.abs() > 65504.0 {
                assert!(back.is_infinite());
            } else {
                assert!((back - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x} -> {back}");
            }
        }
        assert!(f16_to_f32(0xFFFF).is_nan());
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
    }

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
