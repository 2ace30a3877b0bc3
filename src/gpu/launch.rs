//! The one launch path: arguments as a kernel sees them, checked against the spec, outputs the
//! spec zero-fills, tensor maps, and `cuLaunchKernel`. Serving (`Plan::launch`) and timing (the
//! tuning bench) both call [`launch`], so what is timed is what is launched.
//!
//! Arguments come as [`Arg`]s: the caller's cudarc slices and views, raw device pointers (a
//! framework's tensors), or scalars; the bench passes its own buffers as raw pointers. Every
//! buffer is checked for its element type and its length against what the shape needs, whichever
//! way it came. Nothing here allocates: the argument table, the tensor-map slots and cudarc's
//! stream-ordering guards live on the stack. The checks and the argument table are one step of
//! their own ([`marshal`]), which needs no GPU for raw pointers and scalars, so they are tested
//! on the CPU.
//!
//! Loading an image into a function ([`load_function`]) is here too: it is the other half of
//! what a launch needs, for plans and candidates alike.

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{
    result as cu, CudaContext, CudaFunction, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceRepr, DeviceSlice, DriverError, SyncOnDrop,
};

use super::compile::Image;
use super::convert::scalar_bits;
use super::tensor_map::{encode_all, TensorMapSlot};
use crate::spec::{ElemType, Geometry, KernelSpec, Role, MAX_TENSOR_MAPS, MAX_VARS};
use crate::{Error, Result};

/// Most kernel arguments a spec may have.
pub const MAX_ARGS: usize = 32;

/// Element types a device buffer can hold, for [`Arg`].
pub trait DeviceElem: DeviceRepr {
    /// The spec type(s) this Rust type stands for.
    fn matches(ty: ElemType) -> bool;
}

macro_rules! elem {
    ($t:ty, $($e:ident),+) => {
        impl DeviceElem for $t {
            fn matches(ty: ElemType) -> bool {
                matches!(ty, $(ElemType::$e)|+)
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);
elem!(i32, I32);
elem!(u32, U32);
elem!(i64, I64);
elem!(u8, U8);
// Half-precision data travels as raw 16-bit words.
elem!(u16, F16, Bf16);

/// A type-erased device buffer of the caller's.
pub trait BufferArg {
    /// Whether the buffer's element type is `ty`.
    fn holds(&self, ty: ElemType) -> bool;
    /// Length in elements.
    fn elems(&self) -> usize;
    /// Device pointer for reading on `stream` (cudarc's stream-ordering events included).
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>);
    /// Device pointer for writing on `stream`.
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>);
}

macro_rules! buffer_arg {
    ($($t:ident),+) => {$(
        impl<T: DeviceElem> BufferArg for $t<'_, T> {
            fn holds(&self, ty: ElemType) -> bool {
                T::matches(ty)
            }
            fn elems(&self) -> usize {
                DeviceSlice::len(self)
            }
            fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
                let (p, g) = self.device_ptr(stream);
                (p, Some(g))
            }
            fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
                buffer_arg!(@write self, stream, $t)
            }
        }
    )+};
    (@write $s:ident, $stream:ident, CudaView) => {{
        let (p, g) = $s.device_ptr($stream);
        (p, Some(g))
    }};
    (@write $s:ident, $stream:ident, CudaViewMut) => {{
        let (p, g) = $s.device_ptr_mut($stream);
        (p, Some(g))
    }};
}
buffer_arg!(CudaView, CudaViewMut);

impl<T: DeviceElem> BufferArg for cudarc::driver::CudaSlice<T> {
    fn holds(&self, ty: ElemType) -> bool {
        T::matches(ty)
    }
    fn elems(&self) -> usize {
        self.len()
    }
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
        let (p, g) = self.device_ptr(stream);
        (p, Some(g))
    }
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
        let (p, g) = self.device_ptr_mut(stream);
        (p, Some(g))
    }
}

/// A device buffer known only by its pointer (a framework's tensor, a CubeCL handle): see
/// [`Arg::from_raw`] and [`Arg::from_raw_mut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawBuffer {
    ptr: u64,
    elems: usize,
    ty: ElemType,
}

impl RawBuffer {
    /// A buffer of `elems` elements of `ty` at device address `ptr` (checked like any buffer
    /// before a launch; whether the memory is really there is the constructor's promise).
    pub(crate) fn new(ptr: u64, elems: usize, ty: ElemType) -> RawBuffer {
        RawBuffer { ptr, elems, ty }
    }
}

impl BufferArg for RawBuffer {
    fn holds(&self, ty: ElemType) -> bool {
        // A raw buffer says what it holds; half types travel as 16-bit words either way.
        self.ty == ty
    }
    fn elems(&self) -> usize {
        self.elems
    }
    fn read_ptr<'s>(&'s self, _: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
        (self.ptr, None)
    }
    fn write_ptr<'s>(&'s mut self, _: &'s CudaStream) -> (u64, Option<SyncOnDrop<'s>>) {
        (self.ptr, None)
    }
}

/// One kernel argument, in the order of the spec's `args` (tensor maps left out: jitune makes
/// them).
pub enum Arg<'a> {
    /// A buffer the kernel reads.
    In(&'a dyn BufferArg),
    /// A buffer the kernel writes (or reads and writes).
    Out(&'a mut dyn BufferArg),
    /// A buffer known by its device pointer (no stream-ordering events: ordering is the
    /// caller's, as with any raw pointer); `writable` says whether it may be an output.
    Raw {
        buffer: RawBuffer,
        writable: bool,
    },
    /// A scalar, converted to the spec's type for that argument.
    Int(i64),
    Float(f64),
}

impl Arg<'_> {
    /// An input buffer from a raw device pointer holding `elems` elements of type `ty` (a
    /// PyTorch `data_ptr`, say). The type and length are checked against the spec like any
    /// buffer's.
    ///
    /// # Safety
    /// `ptr` must be a device allocation of the launch's context holding at least `elems`
    /// elements of `ty`, valid until the kernel has run (the caller orders its use on the
    /// stream).
    pub unsafe fn from_raw(ptr: u64, elems: usize, ty: ElemType) -> Arg<'static> {
        Arg::Raw {
            buffer: RawBuffer { ptr, elems, ty },
            writable: false,
        }
    }

    /// An output (or in-out) buffer from a raw device pointer; see [`Arg::from_raw`].
    ///
    /// # Safety
    /// As [`Arg::from_raw`]; nothing else may read or write the memory while the kernel runs.
    pub unsafe fn from_raw_mut(ptr: u64, elems: usize, ty: ElemType) -> Arg<'static> {
        Arg::Raw {
            buffer: RawBuffer { ptr, elems, ty },
            writable: true,
        }
    }
}

impl<'a, T: DeviceElem> From<&'a cudarc::driver::CudaSlice<T>> for Arg<'a> {
    fn from(s: &'a cudarc::driver::CudaSlice<T>) -> Self {
        Arg::In(s)
    }
}

impl<'a, T: DeviceElem> From<&'a mut cudarc::driver::CudaSlice<T>> for Arg<'a> {
    fn from(s: &'a mut cudarc::driver::CudaSlice<T>) -> Self {
        Arg::Out(s)
    }
}

impl<'a, 'v, T: DeviceElem> From<&'a CudaView<'v, T>> for Arg<'a> {
    fn from(s: &'a CudaView<'v, T>) -> Self {
        Arg::In(s)
    }
}

impl<'a, 'v, T: DeviceElem> From<&'a mut CudaViewMut<'v, T>> for Arg<'a> {
    fn from(s: &'a mut CudaViewMut<'v, T>) -> Self {
        Arg::Out(s)
    }
}

impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Arg::Int(v as i64)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<f32> for Arg<'_> {
    fn from(v: f32) -> Self {
        Arg::Float(v as f64)
    }
}

/// How a launch went wrong.
#[derive(Debug)]
pub enum LaunchError {
    /// The arguments do not fit the spec (count, type, length) or a tensor map cannot be made:
    /// nothing was launched.
    Args(Error),
    /// A driver call failed: what it was, and the driver's error.
    Driver(&'static str, DriverError),
}

impl LaunchError {
    /// As a jitune error, naming the kernel and config.
    pub fn into_error(self, spec: &KernelSpec, config: &str) -> Error {
        match self {
            LaunchError::Args(e) => e,
            LaunchError::Driver(what, e) => {
                Error::driver(format!("{what} `{}` with {config}", spec.name), e)
            }
        }
    }
}

/// The spec's arguments as a launch walks them, compact and `Copy`: the caller's arguments in
/// order, each with its place in the spec, its role and element type. A launch reads this (a few
/// cache lines) instead of the spec's `ArgSpec`s (names, expressions, generators: many), so the
/// spec itself is read only to word an error. Made once per plan or prepared config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgLayout {
    /// Arguments of the kernel, tensor maps included.
    n_args: u8,
    /// Of which tensor maps (made by jitune at launch, not passed).
    n_maps: u8,
    /// Caller argument `c`: (its index among the kernel's arguments, role, element type).
    caller: [(u8, Role, ElemType); MAX_ARGS],
}

impl ArgLayout {
    /// The layout of `spec`'s arguments; an error when it has more than [`MAX_ARGS`].
    pub fn of(spec: &KernelSpec) -> Result<ArgLayout> {
        if spec.args.len() > MAX_ARGS {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}` has {} arguments, more than the {MAX_ARGS} a launch takes",
                spec.name,
                spec.args.len()
            )));
        }
        let mut l = ArgLayout {
            n_args: spec.args.len() as u8,
            n_maps: 0,
            caller: [(0, Role::Scalar, ElemType::I32); MAX_ARGS],
        };
        let mut c = 0;
        for (i, a) in spec.args.iter().enumerate() {
            if a.role == Role::TensorMap {
                l.n_maps += 1;
            } else {
                l.caller[c] = (i as u8, a.role, a.ty);
                c += 1;
            }
        }
        Ok(l)
    }

    /// Arguments of the kernel, tensor maps included.
    pub fn args(&self) -> usize {
        self.n_args as usize
    }

    /// Arguments a caller passes (every one but the tensor maps).
    pub fn caller_args(&self) -> usize {
        (self.n_args - self.n_maps) as usize
    }

    /// Tensor maps among the arguments.
    pub fn tensor_maps(&self) -> usize {
        self.n_maps as usize
    }
}

/// Everything about one launch that depends on the config and shape, not on the buffers: the
/// argument layout, the variable table (config values, shape, device limits), the geometry,
/// each argument's required length, and which arguments are zero-filled first (bit mask).
#[derive(Clone, Copy, Debug)]
pub struct Resolved<'e> {
    pub layout: &'e ArgLayout,
    pub env: &'e [i64; MAX_VARS],
    pub geometry: Geometry,
    pub need: &'e [i64],
    pub zero: u64,
}

/// cudarc's stream-ordering guards of the caller's slices and views in one launch, which record
/// their events when dropped (after the launch is enqueued). Only the guards taken are
/// initialised: raw pointers and scalars, the common case on the serving path, cost nothing
/// here (an array of 32 `Option`s was written and walked on every launch).
pub struct Guards<'s> {
    slots: [std::mem::MaybeUninit<SyncOnDrop<'s>>; MAX_ARGS],
    len: usize,
}

impl<'s> Guards<'s> {
    fn new() -> Guards<'s> {
        Guards {
            slots: [const { std::mem::MaybeUninit::uninit() }; MAX_ARGS],
            len: 0,
        }
    }

    fn push(&mut self, g: Option<SyncOnDrop<'s>>) {
        // At most one guard per argument, and arguments are at most MAX_ARGS (checked first).
        if let (Some(g), true) = (g, self.len < MAX_ARGS) {
            self.slots[self.len].write(g);
            self.len += 1;
        }
    }
}

impl Drop for Guards<'_> {
    fn drop(&mut self) {
        for g in &mut self.slots[..self.len] {
            // SAFETY: the first `len` slots were written by `push` and are dropped once, here.
            unsafe { g.assume_init_drop() }
        }
    }
}

/// The argument table of one launch: every argument's raw value in spec order (a device pointer
/// or a scalar's bits; tensor-map slots left 0, filled at launch), and the stream-ordering
/// guards of the caller's slices and views. Lives on the stack.
pub struct Marshalled<'s> {
    pub raw: [u64; MAX_ARGS],
    guards: Guards<'s>,
}

impl Marshalled<'_> {
    /// An empty table: every value 0, no guard.
    pub fn new() -> Self {
        Marshalled {
            raw: [0u64; MAX_ARGS],
            guards: Guards::new(),
        }
    }
}

impl Default for Marshalled<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks `args` against the layout (count, roles, element types, lengths against `r.need`)
/// and lays them out as the kernel sees them; `spec` is read only to word an error. Nothing is
/// launched and, for raw pointers and scalars, nothing touches the GPU: `stream` is only needed
/// for cudarc slices and views (their stream-ordering events), and without one such an argument
/// is refused. Allocation-free.
/// The table is filled in place (`m`, fresh from [`Marshalled::new`]): it is a kilobyte, not
/// worth moving on every launch. Inlined: on the launch hit path (see [`launch`]).
#[inline(always)]
pub fn marshal<'s>(
    spec: &KernelSpec,
    r: &Resolved<'_>,
    stream: Option<&'s CudaStream>,
    args: &'s mut [Arg<'_>],
    m: &mut Marshalled<'s>,
) -> std::result::Result<(), LaunchError> {
    let l = r.layout;
    if args.len() != l.caller_args() {
        return Err(count_error(spec, l, args.len()));
    }
    for (ci, (arg, &(i, role, ty))) in args.iter_mut().zip(&l.caller).enumerate() {
        let i = i as usize;
        let need = r.need.get(i).copied().unwrap_or(0);
        m.raw[i] = match (arg, role) {
            (Arg::Int(v), Role::Scalar) => scalar_bits(ty, *v),
            (Arg::Float(v), Role::Scalar) => match ty {
                ElemType::F32 => (*v as f32).to_bits() as u64,
                ElemType::F64 => v.to_bits(),
                other => scalar_bits(other, *v as i64),
            },
            (Arg::Raw { buffer, writable }, role)
                if role == Role::In || (*writable && matches!(role, Role::Out | Role::InOut)) =>
            {
                check_buffer(spec, i, buffer, ty, need)?;
                buffer.ptr
            }
            (Arg::In(b), Role::In) => {
                cudarc_buffer(spec, i, ty, need, Side::Read(&**b), stream, m)?
            }
            (Arg::Out(b), Role::Out | Role::InOut | Role::In) => {
                cudarc_buffer(spec, i, ty, need, Side::Write(&mut **b), stream, m)?
            }
            _ => return Err(role_error(spec, ci, i)),
        };
    }
    Ok(())
}

/// A cudarc slice or view for reading or writing.
enum Side<'a, 's> {
    Read(&'s dyn BufferArg),
    Write(&'s mut (dyn BufferArg + 'a)),
}

/// A cudarc slice or view: checked, its pointer taken on `stream` and its stream-ordering guard
/// kept in `m`. Out of line: raw pointers, the serving path's usual arguments, skip this code.
#[inline(never)]
fn cudarc_buffer<'a, 's>(
    spec: &KernelSpec,
    i: usize,
    ty: ElemType,
    need: i64,
    b: Side<'a, 's>,
    stream: Option<&'s CudaStream>,
    m: &mut Marshalled<'s>,
) -> std::result::Result<u64, LaunchError> {
    let (p, g) = match b {
        Side::Read(b) => {
            check_buffer(spec, i, b, ty, need)?;
            b.read_ptr(needs_stream(spec, i, stream)?)
        }
        Side::Write(b) => {
            check_buffer(spec, i, &*b, ty, need)?;
            b.write_ptr(needs_stream(spec, i, stream)?)
        }
    };
    m.guards.push(g);
    Ok(p)
}

#[cold]
fn count_error(spec: &KernelSpec, l: &ArgLayout, got: usize) -> LaunchError {
    LaunchError::Args(Error::InvalidArgument(format!(
        "kernel `{}` takes {} arguments{}, got {got}",
        spec.name,
        l.caller_args(),
        if l.tensor_maps() > 0 {
            " (its tensor maps are made by jitune, not passed)"
        } else {
            ""
        },
    )))
}

#[cold]
fn role_error(spec: &KernelSpec, ci: usize, i: usize) -> LaunchError {
    let a = &spec.args[i];
    LaunchError::Args(Error::InvalidArgument(format!(
        "kernel `{}`: argument {ci} (`{}`) must be {}",
        spec.name,
        a.name,
        match a.role {
            Role::Scalar => "a scalar",
            Role::In => "a buffer",
            _ => "a mutable buffer (Arg::Out / &mut CudaSlice / Arg::from_raw_mut)",
        }
    )))
}

#[cold]
fn needs_stream<'s>(
    spec: &KernelSpec,
    i: usize,
    stream: Option<&'s CudaStream>,
) -> std::result::Result<&'s CudaStream, LaunchError> {
    stream.ok_or_else(|| {
        LaunchError::Args(Error::InvalidArgument(format!(
            "kernel `{}`: argument `{}` is a cudarc buffer, which needs the launch's stream",
            spec.name, spec.args[i].name
        )))
    })
}

/// Launches `func` for `spec` on `stream` with `args` (the caller's order: every argument but
/// the tensor maps). Checks and marshals the arguments ([`marshal`]), zero-fills the outputs
/// `r.zero` names, encodes the tensor maps from the buffer pointers, and launches.
/// Allocation-free. Inlined into the hit path: after the driver's own work between launches,
/// a launch's instructions come back from memory too, and one stretch of code spans fewer
/// pages than three functions far apart (LLVM left it out of line with a plain `inline`).
#[inline(always)]
pub fn launch(
    func: &CudaFunction,
    spec: &KernelSpec,
    r: &Resolved<'_>,
    stream: &CudaStream,
    args: &mut [Arg<'_>],
) -> std::result::Result<(), LaunchError> {
    let n_args = r.layout.args();
    let mut m = Marshalled::new();
    marshal(spec, r, Some(stream), args, &mut m)?;
    let raw = &mut m.raw;
    // Outputs the kernel accumulates into start at zero (see `ArgSpec::zero`).
    if r.zero != 0 {
        zero_fill(spec, r, raw, stream)?;
    }
    let result = if r.layout.tensor_maps() == 0 {
        unsafe { launch_raw(func, &r.geometry, stream, &mut raw[..n_args], &mut [], &[]) }
    } else {
        launch_with_maps(func, spec, r, stream, &mut raw[..n_args])?
    };
    // The guards record cudarc's events now that the launch is enqueued.
    drop(m);
    result.map_err(|e| LaunchError::Driver("launching", e))
}

/// Launches with the spec's tensor maps encoded from the buffer pointers into slots on this
/// stack. Out of line: most kernels have none, and the hit path's code stays short (after the
/// driver's own work between launches, a launch's instructions come back from memory too).
#[cold]
#[inline(never)]
fn launch_with_maps(
    func: &CudaFunction,
    spec: &KernelSpec,
    r: &Resolved<'_>,
    stream: &CudaStream,
    raw: &mut [u64],
) -> std::result::Result<std::result::Result<(), DriverError>, LaunchError> {
    let mut slots = [TensorMapSlot::ZERO; MAX_TENSOR_MAPS];
    let mut map_args = [0usize; MAX_TENSOR_MAPS];
    let n = encode_all(spec, r.env, raw, &mut slots, &mut map_args).map_err(LaunchError::Args)?;
    Ok(unsafe {
        launch_raw(
            func,
            &r.geometry,
            stream,
            raw,
            &mut slots[..n],
            &map_args[..n],
        )
    })
}

/// Zero-fills the outputs `r.zero` names, on the launch's stream (out of line, as above).
#[inline(never)]
fn zero_fill(
    spec: &KernelSpec,
    r: &Resolved<'_>,
    raw: &[u64; MAX_ARGS],
    stream: &CudaStream,
) -> std::result::Result<(), LaunchError> {
    for (i, a) in spec.args.iter().enumerate() {
        if r.zero & (1 << i) != 0 {
            let bytes = r.need.get(i).copied().unwrap_or(0).max(0) as usize * a.ty.size();
            unsafe { cu::memset_d8_async(raw[i], 0, bytes, stream.cu_stream()) }
                .map_err(|e| LaunchError::Driver("zero-filling an output of", e))?;
        }
    }
    Ok(())
}

/// Checks that buffer argument `i` holds `ty` and at least `need` elements; the error, worded
/// from the spec, is built out of line.
#[inline]
fn check_buffer<B: BufferArg + ?Sized>(
    spec: &KernelSpec,
    i: usize,
    b: &B,
    ty: ElemType,
    need: i64,
) -> std::result::Result<(), LaunchError> {
    if b.holds(ty) && (b.elems() as i64) >= need {
        return Ok(());
    }
    Err(buffer_error(spec, i, b.holds(ty), b.elems(), need))
}

/// The error of buffer argument `i`: of the wrong element type, or too short for the shape.
#[cold]
fn buffer_error(spec: &KernelSpec, i: usize, holds: bool, elems: usize, need: i64) -> LaunchError {
    let a = &spec.args[i];
    LaunchError::Args(Error::InvalidArgument(if !holds {
        format!(
            "kernel `{}`: argument `{}` must hold {}",
            spec.name,
            a.name,
            a.ty.name()
        )
    } else {
        format!(
            "kernel `{}`: argument `{}` has {elems} elements, the shape needs {need}",
            spec.name, a.name
        )
    }))
}

/// `cuLaunchKernel` with raw argument values: `values[i]` holds argument `i` (a device pointer
/// or a scalar's bytes, little-endian in the low bytes); the parameter of argument `map_args[j]`
/// points at the 128-byte map `slots[j]` (passed by value, as a `__grid_constant__ CUtensorMap`
/// wants) instead. Allocation-free.
///
/// # Safety
/// The pointers must be valid device allocations large enough for the kernel, the values must
/// match the kernel's parameter types, and `map_args` must hold indices below `values.len()`.
#[inline(always)]
unsafe fn launch_raw(
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

/// Loads `image` into `ctx` and returns its function `entry`, with the dynamic shared memory
/// limit raised when `geometry` asks for more than 48 KiB.
pub fn load_function(
    ctx: &std::sync::Arc<CudaContext>,
    image: &Image,
    entry: &str,
    geometry: &Geometry,
) -> Result<CudaFunction> {
    super::guarded("loading a module", || {
        let module = ctx
            .load_module(image.to_ptx())
            .map_err(|e| Error::driver("loading a module", e))?;
        let func = module
            .load_function(entry)
            .map_err(|e| Error::driver(format!("looking up the function `{entry}`"), e))?;
        allow_shared(&func, geometry)
            .map_err(|e| Error::driver("raising the shared memory limit", e))?;
        Ok(func)
    })
}

/// Raises a function's dynamic shared memory limit when the geometry asks for more than 48 KiB.
fn allow_shared(func: &CudaFunction, g: &Geometry) -> std::result::Result<(), DriverError> {
    if g.shared_mem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            g.shared_mem as i32,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The argument checks of the launch path, on the CPU: raw pointers and scalars go through
    //! [`marshal`] without a stream, so every check a launch makes before touching the GPU is
    //! tested here (views with offsets need a GPU: `tests/gpu_graph.rs`).
    use super::*;
    use crate::spec::DeviceLimits;

    fn spec(name: &str) -> KernelSpec {
        KernelSpec::from_toml_file(format!(
            "{}/kernels/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// Marshals `args` for the spec's default config at `shape` (resolved on the CPU with an
    /// H100's limits): the raw table, or the argument error's text.
    fn marshal_at(
        spec: &KernelSpec,
        shape: &[i64],
        args: &mut [Arg<'_>],
    ) -> std::result::Result<[u64; MAX_ARGS], String> {
        let limits = DeviceLimits::h100();
        let space = spec.space_for(shape, &limits).unwrap();
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| space.int_value(&spec.default, d))
            .collect();
        let p = crate::gpu::prepared::Prepared::for_config(spec, &values, shape, &limits).unwrap();
        let mut m = Marshalled::new();
        match marshal(spec, &p.resolved(spec), None, args, &mut m) {
            Ok(()) => Ok(m.raw),
            Err(LaunchError::Args(e)) => Err(e.to_string()),
            Err(e) => panic!("not an argument error: {e:?}"),
        }
    }

    const A: u64 = 0x7f00_0000_1000;
    const B: u64 = 0x7f00_0040_0000;
    const C: u64 = 0x7f00_0080_0000;
    const SGEMM: [i64; 3] = [64, 32, 16];

    /// sgemm's arguments at [`SGEMM`] as raw buffers, with A's type, B's length and whether C
    /// may be written chosen by the test.
    fn sgemm_args(a_ty: ElemType, b_len: usize, c_writable: bool) -> [Arg<'static>; 6] {
        unsafe {
            [
                Arg::from_raw(A, 64 * 16, a_ty),
                Arg::from_raw(B, b_len, ElemType::F32),
                if c_writable {
                    Arg::from_raw_mut(C, 64 * 32, ElemType::F32)
                } else {
                    Arg::from_raw(C, 64 * 32, ElemType::F32)
                },
                Arg::from(64),
                Arg::from(32i64),
                Arg::Int(16),
            ]
        }
    }

    /// hgemm (with tensor maps) at 128 x 128 x 64 as raw buffers, A of type `a_ty`.
    fn hgemm_args(a_ty: ElemType) -> Vec<Arg<'static>> {
        unsafe {
            vec![
                Arg::from_raw(A, 128 * 64, a_ty),
                Arg::from_raw(B, 64 * 128, ElemType::F16),
                Arg::from_raw_mut(C, 128 * 128, ElemType::F32),
                Arg::from(128),
                Arg::from(128),
                Arg::from(64),
            ]
        }
    }

    #[test]
    fn raw_pointers_and_scalars_are_laid_out_in_spec_order() {
        // B longer than needed is fine (a view into a larger buffer).
        let raw = marshal_at(
            &spec("sgemm"),
            &SGEMM,
            &mut sgemm_args(ElemType::F32, 16 * 32 + 7, true),
        )
        .unwrap();
        assert_eq!(raw[..6], [A, B, C, 64, 32, 16]);
        assert!(raw[6..].iter().all(|v| *v == 0));
    }

    #[test]
    fn a_raw_buffer_too_short_is_refused_naming_the_argument() {
        let e = marshal_at(
            &spec("sgemm"),
            &SGEMM,
            &mut sgemm_args(ElemType::F32, 16 * 32 - 1, true),
        )
        .unwrap_err();
        assert!(
            e.contains("`B` has 511 elements, the shape needs 512"),
            "{e}"
        );
    }

    #[test]
    fn a_raw_buffer_of_the_wrong_type_is_refused() {
        let e = marshal_at(
            &spec("sgemm"),
            &SGEMM,
            &mut sgemm_args(ElemType::F16, 16 * 32, true),
        )
        .unwrap_err();
        assert!(e.contains("argument `A` must hold f32"), "{e}");
        // Half types: a raw buffer names its exact type (bf16 is not f16).
        let h = spec("hgemm_sm90_tma_f16");
        let e = marshal_at(&h, &[128, 128, 64], &mut hgemm_args(ElemType::Bf16)).unwrap_err();
        assert!(e.contains("argument `a` must hold f16"), "{e}");
    }

    #[test]
    fn a_read_only_raw_buffer_is_refused_as_an_output() {
        let s = spec("sgemm");
        let e = marshal_at(&s, &SGEMM, &mut sgemm_args(ElemType::F32, 16 * 32, false)).unwrap_err();
        assert!(
            e.contains("argument 2 (`C`) must be a mutable buffer"),
            "{e}"
        );
        // A writable raw buffer may be read (an input).
        let mut args = sgemm_args(ElemType::F32, 16 * 32, true);
        args[0] = unsafe { Arg::from_raw_mut(A, 64 * 16, ElemType::F32) };
        assert!(marshal_at(&s, &SGEMM, &mut args).is_ok());
    }

    #[test]
    fn counts_and_roles_are_checked() {
        let s = spec("sgemm");
        let mut args = sgemm_args(ElemType::F32, 16 * 32, true);
        let e = marshal_at(&s, &SGEMM, &mut args[..2]).unwrap_err();
        assert!(e.contains("takes 6 arguments, got 2"), "{e}");
        args[0] = Arg::from(1);
        let e = marshal_at(&s, &SGEMM, &mut args).unwrap_err();
        assert!(e.contains("argument 0 (`A`) must be a buffer"), "{e}");
        let mut args = sgemm_args(ElemType::F32, 16 * 32, true);
        args[3] = unsafe { Arg::from_raw(A, 1, ElemType::I32) };
        let e = marshal_at(&s, &SGEMM, &mut args).unwrap_err();
        assert!(e.contains("argument 3 (`M`) must be a scalar"), "{e}");
    }

    #[test]
    fn tensor_maps_are_not_passed_and_leave_their_slots_to_the_launch() {
        let h = spec("hgemm_sm90_tma_f16");
        assert!(h.tensor_maps() > 0);
        let raw = marshal_at(&h, &[128, 128, 64], &mut hgemm_args(ElemType::F16)).unwrap();
        for (i, a) in h.args.iter().enumerate() {
            if a.role == Role::TensorMap {
                assert_eq!(raw[i], 0, "map `{}` is made at launch", a.name);
            }
        }
        assert_eq!(raw[..3], [A, B, C]);
        // Passing a map's place as an argument is a count error that says why.
        let mut too_many = hgemm_args(ElemType::F16);
        too_many.push(unsafe { Arg::from_raw(A, 1, ElemType::U8) });
        let e = marshal_at(&h, &[128, 128, 64], &mut too_many).unwrap_err();
        assert!(e.contains("tensor maps are made by jitune"), "{e}");
    }

    #[test]
    fn float_scalars_take_the_spec_type() {
        // A spec with an f32 and an f64 scalar, checked through the same layout code.
        let s = KernelSpec::from_toml_str(
            r#"
name = "axpy"
source = "axpy.cu"
entry = "axpy"
dims = [{ name = "n", bucket = "pow2" }]
[params]
T = [128, 256]
[launch]
grid = ["ceil_div(n, T)", "1", "1"]
block = ["T", "1", "1"]
[[args]]
name = "x"
type = "f32"
role = "inout"
len = "n"
[[args]]
name = "a"
type = "f32"
role = "scalar"
value = "1"
[[args]]
name = "b"
type = "f64"
role = "scalar"
value = "1"
[default]
T = 128
"#,
            &|_| Ok("extern \"C\" __global__ void axpy(float*, float, double) {}".into()),
        )
        .unwrap();
        let mut args = [
            unsafe { Arg::from_raw_mut(A, 100, ElemType::F32) },
            Arg::from(1.5f32),
            Arg::Float(-2.25),
        ];
        let raw = marshal_at(&s, &[100], &mut args).unwrap();
        assert_eq!(raw[1], 1.5f32.to_bits() as u64);
        assert_eq!(raw[2], (-2.25f64).to_bits());
    }
}
