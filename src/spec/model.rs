//! The plain types a kernel spec is made of: device limits, element types, argument roles,
//! tensor-map descriptions, input generators, shape dimensions and launch geometry.
//!
//! They sit in a file of their own, below everything else in `spec/`, because every other part
//! (the [`KernelSpec`](super::KernelSpec) computations, the builder, the TOML reader and
//! writer) names them, while they need nothing of those parts: that keeps the folder free of
//! import loops. Each type that has a text form in spec files (`f32`, `inout`, `128B`,
//! `uniform(-1, 1)`) names and parses it here, once.

use crate::expr::Expr;
use crate::key::Bucketing;

/// Most variables (parameters + dims + device limits) a spec's expressions can refer to.
pub const MAX_VARS: usize = 64;

/// Device limits that spec expressions may read, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceLimits {
    pub max_threads_per_block: i64,
    /// Shared memory per block without opting in (48 KiB on every recent GPU).
    pub max_shared_per_block: i64,
    /// Shared memory per block after opting in through `cuFuncSetAttribute`.
    pub max_shared_per_block_optin: i64,
    pub max_shared_per_sm: i64,
    pub sm_count: i64,
    pub regs_per_sm: i64,
    pub regs_per_block: i64,
    pub warp_size: i64,
    pub cc_major: i64,
    pub cc_minor: i64,
    pub l2_bytes: i64,
}

impl DeviceLimits {
    /// The names, in the order of [`DeviceLimits::values`].
    pub const NAMES: [&'static str; 11] = [
        "max_threads_per_block",
        "max_shared_per_block",
        "max_shared_per_block_optin",
        "max_shared_per_sm",
        "sm_count",
        "regs_per_sm",
        "regs_per_block",
        "warp_size",
        "cc_major",
        "cc_minor",
        "l2_bytes",
    ];

    /// The values in the order of [`DeviceLimits::NAMES`].
    pub fn values(&self) -> [i64; 11] {
        [
            self.max_threads_per_block,
            self.max_shared_per_block,
            self.max_shared_per_block_optin,
            self.max_shared_per_sm,
            self.sm_count,
            self.regs_per_sm,
            self.regs_per_block,
            self.warp_size,
            self.cc_major,
            self.cc_minor,
            self.l2_bytes,
        ]
    }

    /// The limits of an H100 SXM (for CPU-side tests and tools; the engine reads the real ones).
    pub fn h100() -> DeviceLimits {
        DeviceLimits {
            max_threads_per_block: 1024,
            max_shared_per_block: 49152,
            max_shared_per_block_optin: 232448,
            max_shared_per_sm: 233472,
            sm_count: 132,
            regs_per_sm: 65536,
            regs_per_block: 65536,
            warp_size: 32,
            cc_major: 9,
            cc_minor: 0,
            l2_bytes: 50 * 1024 * 1024,
        }
    }
}

/// Element type of a kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    Bf16,
    I32,
    I64,
    U32,
    U8,
}

impl ElemType {
    /// Every element type.
    pub const ALL: [ElemType; 8] = [
        ElemType::F32,
        ElemType::F64,
        ElemType::F16,
        ElemType::Bf16,
        ElemType::I32,
        ElemType::I64,
        ElemType::U32,
        ElemType::U8,
    ];

    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F16 | ElemType::Bf16 => 2,
            ElemType::U8 => 1,
        }
    }

    /// Name used in spec files.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::U32 => "u32",
            ElemType::U8 => "u8",
        }
    }

    /// Parses [`ElemType::name`]'s form.
    pub fn parse(s: &str) -> Option<ElemType> {
        ElemType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::F32 | ElemType::F64 | ElemType::F16 | ElemType::Bf16
        )
    }
}

/// What the kernel does with an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    In,
    Out,
    InOut,
    /// Passed by value; its value is an expression of the shape.
    Scalar,
    /// A `CUtensorMap` (TMA descriptor) of another buffer argument, encoded by jitune at every
    /// launch from that buffer's device pointer and passed by value (a
    /// `const __grid_constant__ CUtensorMap` parameter). See [`TensorMapSpec`].
    TensorMap,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::In,
        Role::Out,
        Role::InOut,
        Role::Scalar,
        Role::TensorMap,
    ];

    /// Parses [`Role::name`]'s form.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The name used in spec files.
    pub fn name(self) -> &'static str {
        match self {
            Role::In => "in",
            Role::Out => "out",
            Role::InOut => "inout",
            Role::Scalar => "scalar",
            Role::TensorMap => "tensor_map",
        }
    }
}

/// The shared-memory swizzle of a tensor map's box (`CU_TENSOR_MAP_SWIZZLE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Swizzle {
    None,
    B32,
    B64,
    B128,
}

impl Swizzle {
    /// Name used in spec files: `none`, `32B`, `64B`, `128B`.
    pub fn name(self) -> &'static str {
        match self {
            Swizzle::None => "none",
            Swizzle::B32 => "32B",
            Swizzle::B64 => "64B",
            Swizzle::B128 => "128B",
        }
    }

    /// Parses [`Swizzle::name`]'s form.
    pub fn parse(s: &str) -> Option<Swizzle> {
        [Swizzle::None, Swizzle::B32, Swizzle::B64, Swizzle::B128]
            .into_iter()
            .find(|w| w.name() == s)
    }

    /// The swizzle span in bytes (0 for none): the inner box dimension may not exceed it.
    pub fn bytes(self) -> i64 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 32,
            Swizzle::B64 => 64,
            Swizzle::B128 => 128,
        }
    }
}

/// Most dimensions of a tensor map (the driver's limit).
pub const MAX_TENSOR_MAP_RANK: usize = 5;

/// Most tensor-map arguments a spec may have.
pub const MAX_TENSOR_MAPS: usize = 8;

/// Largest box dimension of a tensor map (the driver's limit).
pub const MAX_TENSOR_MAP_BOX: i64 = 256;

/// A tensor-map argument: a TMA descriptor of the buffer argument `of`, tiled.
///
/// In TOML:
/// ```toml
/// [[args]]
/// name = "a_map"
/// role = "tensor_map"
/// of = "a"                 # a buffer argument; the element type is its type
/// dims = ["K", "M"]        # global dims, innermost first: expressions of the shape
/// box = ["64", "BM"]       # box (shared-memory tile) dims, innermost first: expressions of params
/// swizzle = "128B"         # none, 32B, 64B or 128B (default none)
/// ```
/// The buffer is dense: the stride of dimension `d + 1` is the product of `dims[0..=d]` times
/// the element size. Elements outside the global dims read as zero (OOB fill none).
///
/// **Launch contract.** jitune encodes the map at every launch from the device pointer of the
/// `of` buffer (the caller's on [`crate::tuner::Tuner::launch`], the tuner's own while tuning).
/// When the shape makes the map unencodable (a dim out of `1..=2^32`, a row stride that is no
/// multiple of 16 bytes or over 2^40, a base address that is not 16-byte aligned), the kernel
/// gets an all-zero map instead: the kernel must then take a path without TMA. It can test the
/// same conditions (e.g. `K % 8 == 0` for f16 rows of K elements) or test the map for zeros.
/// Callers do not pass tensor-map arguments: `launch` takes the other arguments, in order.
#[derive(Clone, Debug)]
pub struct TensorMapSpec {
    /// Index (in [`KernelSpec::args`]) of the buffer the map describes.
    pub of: usize,
    /// Global dims, innermost first (expressions of the shape).
    pub dims: Vec<Expr>,
    /// Box dims, innermost first (expressions of the parameters).
    pub box_dims: Vec<Expr>,
    pub swizzle: Swizzle,
}

/// How synthetic inputs are generated (never zeros: they hide unwritten outputs).
#[derive(Clone, Debug, PartialEq)]
pub enum Generator {
    /// Uniform floats in `[lo, hi)`.
    Uniform(f64, f64),
    /// Uniform integers in `[lo, hi]`.
    IntRange(i64, i64),
}

impl Generator {
    /// The generator's text in the canonical form (part of the spec id); [`Generator::parse`]
    /// reads it back, so spec files may use it too.
    pub(super) fn canonical(&self) -> String {
        match self {
            Generator::Uniform(a, b) => format!("uniform({a:?},{b:?})"),
            Generator::IntRange(a, b) => format!("int({a},{b})"),
        }
    }

    /// Parses `uniform(-1, 1)` or `int(0, 9)`.
    pub fn parse(s: &str) -> std::result::Result<Generator, String> {
        let s = s.trim();
        let (name, rest) = s
            .split_once('(')
            .ok_or_else(|| format!("`{s}`: expected uniform(lo, hi) or int(lo, hi)"))?;
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{s}`: missing `)`"))?;
        let (a, b) = inner
            .split_once(',')
            .ok_or_else(|| format!("`{s}`: expected two bounds"))?;
        match name.trim() {
            "uniform" => {
                let lo: f64 = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{}` is not a number", a.trim()))?;
                let hi: f64 = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{}` is not a number", b.trim()))?;
                if lo >= hi || !lo.is_finite() || !hi.is_finite() {
                    return Err(format!("`{s}`: need finite lo < hi"));
                }
                Ok(Generator::Uniform(lo, hi))
            }
            "int" => {
                let lo: i64 = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{}` is not an integer", a.trim()))?;
                let hi: i64 = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{}` is not an integer", b.trim()))?;
                if lo > hi {
                    return Err(format!("`{s}`: need lo <= hi"));
                }
                Ok(Generator::IntRange(lo, hi))
            }
            other => Err(format!("unknown generator `{other}` (known: uniform, int)")),
        }
    }
}

/// One kernel argument.
#[derive(Clone, Debug)]
pub struct ArgSpec {
    pub name: String,
    pub ty: ElemType,
    pub role: Role,
    /// Number of elements (buffers) or the value (scalars), as an expression of the shape.
    pub len: Expr,
    /// Generator for inputs (`In`/`InOut` buffers).
    pub init: Option<Generator>,
    /// The map of a [`Role::TensorMap`] argument (`None` for every other role); its `ty` is
    /// the described buffer's and its `len` is `0`.
    pub map: Option<TensorMapSpec>,
    /// `Out`/`InOut` buffers only: when this expression of the config and shape is non-zero,
    /// jitune zero-fills the buffer's `len` elements on the launch stream right before the
    /// kernel (for kernels that accumulate into their output, e.g. split-K with atomics). The
    /// fill is part of every launch and of every timed run.
    pub zero: Option<Expr>,
}

/// A shape dimension and its bucketing rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dim {
    pub name: String,
    pub bucketing: Bucketing,
}

/// Launch geometry of one config and shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
}
