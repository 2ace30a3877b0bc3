//! The one launch path: arguments as a kernel sees them, checked against the spec, outputs the
//! spec zero-fills, tensor maps, and `cuLaunchKernel`. Serving (`Plan::launch`) and timing (the
//! tuning bench) both call [`launch`], so what is timed is what is launched.
//!
//! Arguments come as [`Arg`]s: the caller's cudarc slices and views, raw device pointers (a
//! framework's tensors), or scalars; the bench passes its own buffers as raw pointers. Every
//! buffer is checked for its element type and its length against what the shape needs, whichever
//! way it came. Nothing here allocates: the argument table, the tensor-map slots and cudarc's
//! stream-ordering guards live on the stack.
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
use crate::spec::{ArgSpec, ElemType, Geometry, KernelSpec, Role, MAX_TENSOR_MAPS, MAX_VARS};
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

/// Everything about one launch that depends on the config and shape, not on the buffers: the
/// variable table (config values, shape, device limits), the geometry, each argument's required
/// length, and which arguments are zero-filled first (bit mask).
#[derive(Clone, Copy, Debug)]
pub struct Resolved<'e> {
    pub env: &'e [i64; MAX_VARS],
    pub geometry: Geometry,
    pub need: &'e [i64],
    pub zero: u64,
}

/// Launches `func` for `spec` on `stream` with `args` (the caller's order: every argument but
/// the tensor maps). Checks the arguments, zero-fills the outputs `r.zero` names, encodes the
/// tensor maps from the buffer pointers, and launches. Allocation-free.
pub fn launch(
    func: &CudaFunction,
    spec: &KernelSpec,
    r: &Resolved<'_>,
    stream: &CudaStream,
    args: &mut [Arg<'_>],
) -> std::result::Result<(), LaunchError> {
    let n_maps = spec.tensor_maps();
    let n_args = spec.args.len();
    if args.len() + n_maps != n_args || n_args > MAX_ARGS {
        return Err(LaunchError::Args(Error::InvalidArgument(format!(
            "kernel `{}` takes {} arguments{}, got {}",
            spec.name,
            n_args - n_maps,
            if n_maps > 0 {
                " (its tensor maps are made by jitune, not passed)"
            } else {
                ""
            },
            args.len()
        ))));
    }
    let mut raw = [0u64; MAX_ARGS];
    let mut guards: [Option<SyncOnDrop<'_>>; MAX_ARGS] = [const { None }; MAX_ARGS];
    // Caller arguments in spec order, skipping the tensor maps (made below).
    let spec_args = spec
        .args
        .iter()
        .enumerate()
        .filter(|(_, a)| a.role != Role::TensorMap);
    for (ci, (arg, (i, a))) in args.iter_mut().zip(spec_args).enumerate() {
        let need = r.need.get(i).copied().unwrap_or(0);
        match (arg, a.role) {
            (Arg::Int(v), Role::Scalar) => raw[i] = scalar_bits(a.ty, *v),
            (Arg::Float(v), Role::Scalar) => {
                raw[i] = match a.ty {
                    ElemType::F32 => (*v as f32).to_bits() as u64,
                    ElemType::F64 => v.to_bits(),
                    other => scalar_bits(other, *v as i64),
                }
            }
            (Arg::In(b), Role::In) => {
                check_buffer(spec, a, &**b, need)?;
                let (p, g) = b.read_ptr(stream);
                raw[i] = p;
                guards[i] = g;
            }
            (Arg::Out(b), Role::Out | Role::InOut | Role::In) => {
                check_buffer(spec, a, &**b, need)?;
                let (p, g) = b.write_ptr(stream);
                raw[i] = p;
                guards[i] = g;
            }
            (Arg::Raw { buffer, writable }, role)
                if role == Role::In || (*writable && matches!(role, Role::Out | Role::InOut)) =>
            {
                check_buffer(spec, a, buffer, need)?;
                raw[i] = buffer.ptr;
            }
            _ => {
                return Err(LaunchError::Args(Error::InvalidArgument(format!(
                    "kernel `{}`: argument {ci} (`{}`) must be {}",
                    spec.name,
                    a.name,
                    match a.role {
                        Role::Scalar => "a scalar",
                        Role::In => "a buffer",
                        _ => "a mutable buffer (Arg::Out / &mut CudaSlice / Arg::from_raw_mut)",
                    }
                ))))
            }
        }
    }
    // Outputs the kernel accumulates into start at zero (see `ArgSpec::zero`).
    for (i, a) in spec.args.iter().enumerate() {
        if r.zero & (1 << i) != 0 {
            let bytes = r.need.get(i).copied().unwrap_or(0).max(0) as usize * a.ty.size();
            unsafe { cu::memset_d8_async(raw[i], 0, bytes, stream.cu_stream()) }
                .map_err(|e| LaunchError::Driver("zero-filling an output of", e))?;
        }
    }
    let result = if n_maps == 0 {
        unsafe { launch_raw(func, &r.geometry, stream, &mut raw[..n_args], &mut [], &[]) }
    } else {
        // Tensor maps: encoded from the buffer pointers into slots on this stack.
        let mut slots = [TensorMapSlot::ZERO; MAX_TENSOR_MAPS];
        let mut map_args = [0usize; MAX_TENSOR_MAPS];
        let n = encode_all(spec, r.env, &raw[..n_args], &mut slots, &mut map_args)
            .map_err(LaunchError::Args)?;
        unsafe {
            launch_raw(
                func,
                &r.geometry,
                stream,
                &mut raw[..n_args],
                &mut slots[..n],
                &map_args[..n],
            )
        }
    };
    drop(guards);
    result.map_err(|e| LaunchError::Driver("launching", e))
}

fn check_buffer(
    spec: &KernelSpec,
    a: &ArgSpec,
    b: &dyn BufferArg,
    need: i64,
) -> std::result::Result<(), LaunchError> {
    if !b.holds(a.ty) {
        return Err(LaunchError::Args(Error::InvalidArgument(format!(
            "kernel `{}`: argument `{}` must hold {}",
            spec.name,
            a.name,
            a.ty.name()
        ))));
    }
    if (b.elems() as i64) < need {
        return Err(LaunchError::Args(Error::InvalidArgument(format!(
            "kernel `{}`: argument `{}` has {} elements, the shape needs {need}",
            spec.name,
            a.name,
            b.elems()
        ))));
    }
    Ok(())
}

/// `cuLaunchKernel` with raw argument values: `values[i]` holds argument `i` (a device pointer
/// or a scalar's bytes, little-endian in the low bytes); the parameter of argument `map_args[j]`
/// points at the 128-byte map `slots[j]` (passed by value, as a `__grid_constant__ CUtensorMap`
/// wants) instead. Allocation-free.
///
/// # Safety
/// The pointers must be valid device allocations large enough for the kernel, the values must
/// match the kernel's parameter types, and `map_args` must hold indices below `values.len()`.
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
