//! Tensor maps (`CUtensorMap`, the descriptors of Hopper's bulk tensor copies), encoded on the
//! host for [`Role::TensorMap`](crate::spec::Role::TensorMap) arguments.
//!
//! A map is encoded at every launch from the device pointer of the buffer it describes, into a
//! [`TensorMapSlot`] on the launching thread's stack (128 bytes, 128-byte aligned: the driver
//! wants 64); the kernel-params entry of the argument points at the slot, which is how a
//! `const __grid_constant__ CUtensorMap` parameter is passed by value. Nothing is allocated.
//!
//! The contract with kernels: when the shape makes the map unencodable (see
//! [`unencodable`]), the kernel receives an all-zero map and must take a path without TMA; it
//! can test the same conditions itself or test the map for zeros. Every other encoding failure
//! (a box the driver rejects, a driver without `cuTensorMapEncodeTiled`) is an [`Error`].

use crate::spec::{ElemType, KernelSpec, Swizzle, TensorMapSpec, MAX_TENSOR_MAP_BOX};
use crate::spec::{MAX_TENSOR_MAP_RANK, MAX_VARS};
use crate::{Error, Result};

/// One encoded `CUtensorMap`: 128 opaque bytes, aligned as the driver requires.
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMapSlot(pub [u64; 16]);

impl TensorMapSlot {
    /// The all-zero map a kernel receives when the shape cannot be described (its cue to take
    /// the path without TMA).
    pub const ZERO: TensorMapSlot = TensorMapSlot([0; 16]);

    /// Whether this is [`TensorMapSlot::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// A map's global dims and box for one config and shape, innermost first (`rank` used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDims {
    pub rank: usize,
    pub dims: [i64; MAX_TENSOR_MAP_RANK],
    pub box_dims: [i64; MAX_TENSOR_MAP_RANK],
}

impl MapDims {
    /// A 2-D map: `inner` x `outer` elements (innermost first), boxes of `box_inner` x `box_outer`.
    pub fn two_d(inner: i64, outer: i64, box_inner: i64, box_outer: i64) -> MapDims {
        let mut d = MapDims {
            rank: 2,
            dims: [0; MAX_TENSOR_MAP_RANK],
            box_dims: [0; MAX_TENSOR_MAP_RANK],
        };
        (d.dims[0], d.dims[1]) = (inner, outer);
        (d.box_dims[0], d.box_dims[1]) = (box_inner, box_outer);
        d
    }
}

/// Evaluates a map's dims and box from a variable table filled by
/// [`KernelSpec::fill_env`]. Allocation-free.
pub fn map_dims(
    spec: &KernelSpec,
    arg: &str,
    m: &TensorMapSpec,
    env: &[i64; MAX_VARS],
) -> Result<MapDims> {
    let mut out = MapDims {
        rank: m.dims.len().min(MAX_TENSOR_MAP_RANK),
        dims: [0; MAX_TENSOR_MAP_RANK],
        box_dims: [0; MAX_TENSOR_MAP_RANK],
    };
    let eval = |e: &crate::expr::Expr| {
        e.eval(env).map_err(|err| {
            Error::Eval(format!(
                "kernel `{}`, tensor map `{arg}`, `{}`: {err}",
                spec.name,
                e.source()
            ))
        })
    };
    for d in 0..out.rank {
        out.dims[d] = eval(&m.dims[d])?;
        out.box_dims[d] = eval(&m.box_dims[d])?;
    }
    Ok(out)
}

/// Why a dense tensor at `addr` with these dims cannot be described by a tensor map (the
/// kernel then gets zeros), or `None` when it can: every dim in `1..=2^32`, every row stride a
/// multiple of 16 bytes below 2^40, the address 16-byte aligned.
pub fn unencodable(ty: ElemType, addr: u64, d: &MapDims) -> Option<&'static str> {
    if addr % 16 != 0 {
        return Some("the base address is not 16-byte aligned");
    }
    if d.dims[..d.rank]
        .iter()
        .any(|&x| !(1..=(1i64 << 32)).contains(&x))
    {
        return Some("a dim is outside 1..=2^32");
    }
    let mut stride = ty.size() as i128;
    for &x in &d.dims[..d.rank.saturating_sub(1)] {
        stride *= x as i128;
        if stride % 16 != 0 {
            return Some("a row stride is not a multiple of 16 bytes");
        }
        if stride >= 1i128 << 40 {
            return Some("a row stride is 2^40 bytes or more");
        }
    }
    None
}

/// Checks a box against the driver's rules (the search space's implicit constraints keep
/// every tuned config within them; a config from elsewhere may not be).
fn check_box(ty: ElemType, swizzle: Swizzle, d: &MapDims) -> std::result::Result<(), String> {
    if d.rank == 0 || d.rank > MAX_TENSOR_MAP_RANK {
        return Err(format!(
            "rank {} is outside 1..={MAX_TENSOR_MAP_RANK}",
            d.rank
        ));
    }
    if let Some(b) = d.box_dims[..d.rank]
        .iter()
        .find(|&&b| !(1..=MAX_TENSOR_MAP_BOX).contains(&b))
    {
        return Err(format!("box dim {b} is outside 1..={MAX_TENSOR_MAP_BOX}"));
    }
    let inner = d.box_dims[0] * ty.size() as i64;
    if inner % 16 != 0 {
        return Err(format!(
            "the inner box is {inner} bytes, not a multiple of 16"
        ));
    }
    if swizzle != Swizzle::None && inner > swizzle.bytes() {
        return Err(format!(
            "the inner box is {inner} bytes, wider than the {} swizzle",
            swizzle.name()
        ));
    }
    Ok(())
}

/// Encodes a tiled map of the dense tensor at `addr` into `out`: `Ok(true)` when encoded,
/// `Ok(false)` when the shape is [`unencodable`] (then `out` is zeroed), an error when the box
/// breaks the driver's rules or the driver refuses. Allocation-free.
pub fn encode_tiled(
    ty: ElemType,
    addr: u64,
    d: &MapDims,
    swizzle: Swizzle,
    out: &mut TensorMapSlot,
) -> Result<bool> {
    *out = TensorMapSlot::ZERO;
    check_box(ty, swizzle, d).map_err(|m| Error::InvalidArgument(format!("tensor map: {m}")))?;
    if unencodable(ty, addr, d).is_some() {
        return Ok(false);
    }
    driver::encode(ty, addr, d, swizzle, out)?;
    Ok(true)
}

#[cfg(not(any(
    feature = "cuda-11040",
    feature = "cuda-11050",
    feature = "cuda-11060",
    feature = "cuda-11070",
    feature = "cuda-11080"
)))]
mod driver {
    use cudarc::driver::sys::{
        self, CUresult, CUtensorMapDataType as Dt, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
        CUtensorMapL2promotion, CUtensorMapSwizzle as Sw,
    };

    use super::{MapDims, TensorMapSlot};
    use crate::spec::{ElemType, Swizzle, MAX_TENSOR_MAP_RANK};
    use crate::{Error, Result};

    pub(super) fn encode(
        ty: ElemType,
        addr: u64,
        d: &MapDims,
        swizzle: Swizzle,
        out: &mut TensorMapSlot,
    ) -> Result<()> {
        let dt = match ty {
            ElemType::F16 => Dt::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            ElemType::Bf16 => Dt::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            ElemType::F32 => Dt::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            ElemType::F64 => Dt::CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
            ElemType::I32 => Dt::CU_TENSOR_MAP_DATA_TYPE_INT32,
            ElemType::U32 => Dt::CU_TENSOR_MAP_DATA_TYPE_UINT32,
            ElemType::I64 => Dt::CU_TENSOR_MAP_DATA_TYPE_INT64,
            ElemType::U8 => Dt::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        };
        let sw = match swizzle {
            Swizzle::None => Sw::CU_TENSOR_MAP_SWIZZLE_NONE,
            Swizzle::B32 => Sw::CU_TENSOR_MAP_SWIZZLE_32B,
            Swizzle::B64 => Sw::CU_TENSOR_MAP_SWIZZLE_64B,
            Swizzle::B128 => Sw::CU_TENSOR_MAP_SWIZZLE_128B,
        };
        let mut dims = [0u64; MAX_TENSOR_MAP_RANK];
        let mut strides = [0u64; MAX_TENSOR_MAP_RANK];
        let mut boxes = [0u32; MAX_TENSOR_MAP_RANK];
        let elem_strides = [1u32; MAX_TENSOR_MAP_RANK];
        let mut stride = ty.size() as u64;
        for i in 0..d.rank {
            dims[i] = d.dims[i] as u64;
            boxes[i] = d.box_dims[i] as u32;
            stride *= d.dims[i] as u64;
            if i + 1 < d.rank {
                strides[i] = stride;
            }
        }
        let r = crate::gpu::guarded("encoding a tensor map", || {
            // SAFETY: every array holds at least `rank` entries, `out` is 128 bytes aligned to
            // 128, and the driver only reads the address (never dereferences it on the host).
            let r = unsafe {
                sys::cuTensorMapEncodeTiled(
                    out as *mut TensorMapSlot as *mut sys::CUtensorMap,
                    dt,
                    d.rank as u32,
                    addr as *mut std::ffi::c_void,
                    dims.as_ptr(),
                    strides.as_ptr(),
                    boxes.as_ptr(),
                    elem_strides.as_ptr(),
                    CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                    sw,
                    CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                    CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                )
            };
            Ok(r)
        })?;
        if r != CUresult::CUDA_SUCCESS {
            *out = TensorMapSlot::ZERO;
            return Err(Error::cuda(format!(
                "cuTensorMapEncodeTiled ({} dims {:?}, box {:?}, swizzle {}): {r:?}",
                ty.name(),
                &d.dims[..d.rank],
                &d.box_dims[..d.rank],
                swizzle.name()
            )));
        }
        Ok(())
    }
}

#[cfg(any(
    feature = "cuda-11040",
    feature = "cuda-11050",
    feature = "cuda-11060",
    feature = "cuda-11070",
    feature = "cuda-11080"
))]
mod driver {
    use super::{MapDims, TensorMapSlot};
    use crate::spec::{ElemType, Swizzle};
    use crate::{Error, Result};

    pub(super) fn encode(
        _: ElemType,
        _: u64,
        _: &MapDims,
        _: Swizzle,
        _: &mut TensorMapSlot,
    ) -> Result<()> {
        Err(Error::cuda(
            "tensor maps need CUDA 12 or newer (build jitune with a cuda-12xxx or cuda-13xxx feature)",
        ))
    }
}

/// Encodes every tensor-map argument of `spec` for one launch: `values[i]` holds the device
/// pointer of argument `i` (buffers), `env` the variable table of the config and shape. Writes
/// slot `j` and `map_args[j]` (the argument index) for the `j`-th map; returns the number of
/// maps. Allocation-free.
pub fn encode_all(
    spec: &KernelSpec,
    env: &[i64; MAX_VARS],
    values: &[u64],
    slots: &mut [TensorMapSlot; crate::spec::MAX_TENSOR_MAPS],
    map_args: &mut [usize; crate::spec::MAX_TENSOR_MAPS],
) -> Result<usize> {
    let mut n = 0;
    for (i, a) in spec.args.iter().enumerate() {
        let Some(m) = &a.map else { continue };
        if n == slots.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}` has more than {} tensor maps",
                spec.name,
                slots.len()
            )));
        }
        let d = map_dims(spec, &a.name, m, env)?;
        encode_tiled(a.ty, values[m.of], &d, m.swizzle, &mut slots[n]).map_err(|e| {
            Error::InvalidArgument(format!(
                "kernel `{}`, tensor map `{}`: {e}",
                spec.name, a.name
            ))
        })?;
        map_args[n] = i;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_128_bytes_and_aligned() {
        assert_eq!(std::mem::size_of::<TensorMapSlot>(), 128);
        assert_eq!(std::mem::align_of::<TensorMapSlot>() % 64, 0);
        let slots = [TensorMapSlot::ZERO; 3];
        for s in &slots {
            assert_eq!(s as *const _ as usize % 64, 0);
        }
        assert!(TensorMapSlot::ZERO.is_zero());
    }

    #[test]
    fn unencodable_shapes_are_recognised() {
        let f16 = ElemType::F16;
        assert_eq!(
            unencodable(f16, 256, &MapDims::two_d(4096, 4096, 64, 128)),
            None
        );
        assert!(unencodable(f16, 256, &MapDims::two_d(4100, 4096, 64, 128)).is_some());
        assert!(unencodable(f16, 8, &MapDims::two_d(4096, 4096, 64, 128)).is_some());
        assert!(unencodable(f16, 256, &MapDims::two_d(0, 4096, 64, 128)).is_some());
        // The outermost dim has no stride: K % 8 == 0 is all a row-major f16 matrix needs.
        assert_eq!(unencodable(f16, 256, &MapDims::two_d(8, 3, 64, 128)), None);
        assert!(unencodable(f16, 256, &MapDims::two_d(200, 257, 64, 128)).is_none());
        assert!(unencodable(f16, 256, &MapDims::two_d(129, 200, 64, 64)).is_some());
    }

    #[test]
    fn bad_boxes_are_errors_not_fallbacks() {
        let mut slot = TensorMapSlot([7; 16]);
        let e = encode_tiled(
            ElemType::F16,
            256,
            &MapDims::two_d(4096, 4096, 128, 64),
            Swizzle::B128,
            &mut slot,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("wider than the 128B swizzle"));
        assert!(slot.is_zero());
        let e = encode_tiled(
            ElemType::F16,
            256,
            &MapDims::two_d(4096, 4096, 64, 512),
            Swizzle::B128,
            &mut slot,
        );
        assert!(e.unwrap_err().to_string().contains("outside 1..=256"));
        // Unencodable shape: zeros, no driver call (this test runs without a GPU).
        let ok = encode_tiled(
            ElemType::F16,
            256,
            &MapDims::two_d(4100, 4096, 64, 128),
            Swizzle::B128,
            &mut slot,
        );
        assert!(!ok.unwrap());
        assert!(slot.is_zero());
    }
}
