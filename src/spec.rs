//! Kernel specs: everything jitune needs to know about a kernel, as data.
//!
//! A [`KernelSpec`] holds the CUDA source, entry point, compile flags, tunable parameters,
//! constraints, launch geometry, the shape's dimensions (with bucketing rules), the kernel's
//! arguments, a default config and a correctness tolerance. Specs load from a TOML file beside
//! their `.cu` (`kernels/sgemm.toml` + `kernels/sgemm.cu`) or are built in Rust with
//! [`SpecBuilder`]; both reach the same canonical form and hence the same blake3 [`KernelId`],
//! which changes whenever something that can change the best config changes (source, flags,
//! space, geometry, arguments, tolerance) and never with TOML formatting or key order.
//!
//! Being plain data, a spec hashes stably, travels to worker processes and drives the CLI.
//! Expressions are parsed and bound to one variable table (parameters, then shape dimensions,
//! then device limits) at build time, so evaluating geometry at launch allocates nothing.

use std::path::Path;

use crate::expr::Expr;
use crate::key::{Bucketing, KernelId, ShapeBucket, MAX_DIMS};
use crate::space::{Config, Param, ParamKind, SearchSpace, Value};
use crate::{Error, Result};

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
        [
            ElemType::F32,
            ElemType::F64,
            ElemType::F16,
            ElemType::Bf16,
            ElemType::I32,
            ElemType::I64,
            ElemType::U32,
            ElemType::U8,
        ]
        .into_iter()
        .find(|t| t.name() == s)
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
    fn canonical(&self) -> String {
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

/// A kernel, its tunable space and how to launch it. Build with [`SpecBuilder`] or load with
/// [`KernelSpec::from_toml_file`].
///
/// ```
/// use jitune::spec::{KernelSpec, SpecBuilder};
/// use jitune::space::Param;
/// let spec = SpecBuilder::new("scale")
///     .source("extern \"C\" __global__ void scale(float* x, int n) { int i = blockIdx.x * B + threadIdx.x; if (i < n) x[i] *= 2.0f; }")
///     .entry("scale")
///     .param(Param::ints("B", &[64, 128, 256]))
///     .dim("n", jitune::key::Bucketing::NextPow2)
///     .grid(["ceil_div(n, B)", "1", "1"])
///     .block(["B", "1", "1"])
///     .arg_buffer("x", "f32", "inout", "n", "uniform(-1, 1)")
///     .arg_scalar("n", "i32", "n")
///     .default_config(&[("B", "128")])
///     .build()
///     .unwrap();
/// assert_eq!(spec.space_for(&[1000], &jitune::spec::DeviceLimits::h100()).unwrap().count(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub name: String,
    pub source: String,
    pub entry: String,
    pub flags: Vec<String>,
    /// Sorted by name: the order of a [`Config`]'s indices.
    pub params: Vec<Param>,
    /// Named constraints, sorted by name; bound to the variable table.
    pub constraints: Vec<(String, Expr)>,
    pub grid: [Expr; 3],
    pub block: [Expr; 3],
    pub shared_mem: Expr,
    pub dims: Vec<Dim>,
    pub args: Vec<ArgSpec>,
    pub default: Config,
    pub tolerance: f64,
    /// Constraints implied by tensor-map arguments (box dims in `1..=256`, the inner box no
    /// wider than the swizzle and a multiple of 16 bytes), named `tensor_map.ARG.*`. Derived
    /// from `args`, so not part of the canonical form on their own.
    pub implicit_constraints: Vec<(String, Expr)>,
    id: KernelId,
}

impl KernelSpec {
    /// The blake3 id of the canonical form.
    pub fn id(&self) -> KernelId {
        self.id
    }

    /// The canonical text the id is the hash of. Stable across TOML formatting and key order;
    /// the spec's name and default config are left out (they cannot change the best config).
    pub fn canonical(&self) -> String {
        canonical(self)
    }

    /// Index of the first shape dimension in the variable table.
    fn dim_base(&self) -> usize {
        self.params.len()
    }

    fn limit_base(&self) -> usize {
        self.params.len() + self.dims.len()
    }

    /// Buckets a raw shape; `None` when the number of dims is wrong. Allocation-free.
    pub fn bucket(&self, shape: &[i64]) -> Option<ShapeBucket> {
        if shape.len() != self.dims.len() {
            return None;
        }
        let mut b = [0i64; MAX_DIMS];
        for (i, (d, v)) in self.dims.iter().zip(shape).enumerate() {
            b[i] = d.bucketing.bucket(*v);
        }
        ShapeBucket::new(&b[..shape.len()])
    }

    /// The search space for one shape on one device (constraints may read both).
    pub fn space_for(&self, shape: &[i64], limits: &DeviceLimits) -> Result<SearchSpace> {
        self.check_shape(shape)?;
        let mut constants: Vec<(&str, i64)> = self
            .dims
            .iter()
            .map(|d| d.name.as_str())
            .zip(shape.iter().copied())
            .collect();
        constants.extend(DeviceLimits::NAMES.iter().copied().zip(limits.values()));
        let exprs: Vec<Expr> = self
            .constraints
            .iter()
            .chain(&self.implicit_constraints)
            .map(|(_, e)| e.clone())
            .collect();
        SearchSpace::new(self.params.clone(), &exprs, &constants).map_err(|e| Error::Spec {
            spec: self.name.clone(),
            field: "constraints".into(),
            msg: e.to_string(),
        })
    }

    fn check_shape(&self, shape: &[i64]) -> Result<()> {
        if shape.len() != self.dims.len() {
            return Err(Error::Shape(format!(
                "kernel `{}` takes {} dims ({}), got {}",
                self.name,
                self.dims.len(),
                self.dims
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                shape.len()
            )));
        }
        if let Some((d, v)) = self.dims.iter().zip(shape).find(|(_, v)| **v < 0) {
            return Err(Error::Shape(format!("dim `{}` is negative ({v})", d.name)));
        }
        Ok(())
    }

    /// Fills the variable table for `config` (parameter values as expressions see them), `shape`
    /// and `limits`. Allocation-free; `env` must hold at least [`MAX_VARS`] slots.
    pub fn fill_env(
        &self,
        config_values: &[i64],
        shape: &[i64],
        limits: &DeviceLimits,
        env: &mut [i64; MAX_VARS],
    ) {
        env[..config_values.len()].copy_from_slice(config_values);
        let db = self.dim_base();
        env[db..db + shape.len()].copy_from_slice(shape);
        let lb = self.limit_base();
        env[lb..lb + DeviceLimits::NAMES.len()].copy_from_slice(&limits.values());
    }

    /// Launch geometry for a config (given as its parameter values) and a raw shape.
    /// Allocation-free; errors when an expression fails or gives a value out of range.
    pub fn geometry(
        &self,
        config_values: &[i64],
        shape: &[i64],
        limits: &DeviceLimits,
    ) -> Result<Geometry> {
        if config_values.len() != self.params.len() || shape.len() != self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "kernel `{}`: config or shape of the wrong length",
                self.name
            )));
        }
        let mut env = [0i64; MAX_VARS];
        self.fill_env(config_values, shape, limits, &mut env);
        self.geometry_in(&env)
    }

    /// Launch geometry from a variable table filled by [`KernelSpec::fill_env`].
    pub fn geometry_in(&self, env: &[i64; MAX_VARS]) -> Result<Geometry> {
        let eval = |e: &Expr, what: &'static str, min: i64| -> Result<u32> {
            let v = e.eval(env).map_err(|err| {
                Error::Eval(format!(
                    "kernel `{}`, {what} `{}`: {err}",
                    self.name,
                    e.source()
                ))
            })?;
            if v < min || v > u32::MAX as i64 {
                return Err(Error::Eval(format!(
                    "kernel `{}`, {what} `{}` = {v} is out of range",
                    self.name,
                    e.source()
                )));
            }
            Ok(v as u32)
        };
        Ok(Geometry {
            grid: [
                eval(&self.grid[0], "grid", 1)?,
                eval(&self.grid[1], "grid", 1)?,
                eval(&self.grid[2], "grid", 1)?,
            ],
            block: [
                eval(&self.block[0], "block", 1)?,
                eval(&self.block[1], "block", 1)?,
                eval(&self.block[2], "block", 1)?,
            ],
            shared_mem: eval(&self.shared_mem, "shared_mem", 0)?,
        })
    }

    /// Checks the tensor maps' box rules for the default config (every other config is held
    /// to them by [`KernelSpec::implicit_constraints`] in the search space).
    fn check_default_maps(&self) -> Result<()> {
        if self.implicit_constraints.is_empty() {
            return Ok(());
        }
        let values: Vec<i64> = self
            .params
            .iter()
            .zip(&self.default.0)
            .map(|(p, &i)| p.values[i as usize].as_i64().unwrap_or(i as i64))
            .collect();
        let mut env = [0i64; MAX_VARS];
        let shape = vec![0i64; self.dims.len()];
        self.fill_env(&values, &shape, &DeviceLimits::h100(), &mut env);
        for (name, e) in &self.implicit_constraints {
            match e.eval(&env) {
                Ok(0) => {
                    return Err(Error::Spec {
                        spec: self.name.clone(),
                        field: name.clone(),
                        msg: format!("the default config breaks `{}`", e.source()),
                    })
                }
                Ok(_) => {}
                Err(m) => {
                    return Err(Error::Spec {
                        spec: self.name.clone(),
                        field: name.clone(),
                        msg: format!("`{}`: {m}", e.source()),
                    })
                }
            }
        }
        Ok(())
    }

    /// Which arguments jitune zero-fills before a launch with the variable table `env` (filled
    /// by [`KernelSpec::fill_env`]): bit `i` is set when argument `i`'s [`ArgSpec::zero`]
    /// expression is non-zero. Allocation-free unless it fails.
    pub fn zero_mask(&self, env: &[i64]) -> Result<u64> {
        let mut mask = 0u64;
        for (i, a) in self.args.iter().enumerate() {
            let Some(z) = &a.zero else { continue };
            let on = z.eval(env).map_err(|e| {
                Error::Eval(format!(
                    "kernel `{}`, argument `{}`, zero: {e}",
                    self.name, a.name
                ))
            })?;
            if on != 0 {
                let bit = 1u64.checked_shl(i as u32).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "kernel `{}`: argument {i} is zero-filled; at most 64 arguments can be",
                        self.name
                    ))
                })?;
                mask |= bit;
            }
        }
        Ok(mask)
    }

    /// Number of tensor-map arguments (derived by jitune, not passed by callers).
    pub fn tensor_maps(&self) -> usize {
        self.args
            .iter()
            .filter(|a| a.role == Role::TensorMap)
            .count()
    }

    /// Number of arguments a caller passes to `launch` (every argument but the tensor maps).
    pub fn caller_args(&self) -> usize {
        self.args.len() - self.tensor_maps()
    }

    /// Index of the first shape dimension in the variable table (for filling it in place).
    pub fn shape_slot(&self) -> usize {
        self.dim_base()
    }

    /// Evaluates an argument's length (buffers) or value (scalars) for a raw shape.
    pub fn arg_value(&self, arg: &ArgSpec, shape: &[i64], limits: &DeviceLimits) -> Result<i64> {
        let mut env = [0i64; MAX_VARS];
        let zeros = [0i64; MAX_VARS];
        self.fill_env(&zeros[..self.params.len()], shape, limits, &mut env);
        arg.len.eval(&env).map_err(|e| {
            Error::Eval(format!(
                "kernel `{}`, argument `{}`: {e}",
                self.name, arg.name
            ))
        })
    }

    /// The `-D NAME=VALUE` defines that select `config` (booleans as 0/1, enums as their text).
    pub fn defines(&self, config: &Config) -> Vec<String> {
        self.params
            .iter()
            .zip(&config.0)
            .map(|(p, &i)| {
                let v = &p.values[i as usize];
                match v {
                    Value::Str(s) => format!("-D{}={}", p.name, s),
                    other => format!("-D{}={}", p.name, other.as_i64().unwrap_or(0)),
                }
            })
            .collect()
    }

    /// Loads a spec from a TOML file; a relative `source` path is read beside it.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<KernelSpec> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let fallback = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("spec")
            .to_string();
        crate::spec_toml::parse(&text, &fallback, &|rel: &str| {
            let p = dir.join(rel);
            std::fs::read_to_string(&p).map_err(|e| Error::io(p, e))
        })
    }

    /// Parses a spec from TOML text; `read_source` resolves the `source` file name.
    pub fn from_toml_str(
        text: &str,
        read_source: &dyn Fn(&str) -> Result<String>,
    ) -> Result<KernelSpec> {
        crate::spec_toml::parse(text, "spec", read_source)
    }
}

fn canonical(s: &KernelSpec) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    };
    line(
        "source",
        blake3::hash(s.source.as_bytes()).to_hex().to_string(),
    );
    line("entry", s.entry.clone());
    line("flags", s.flags.join("\u{1f}"));
    for p in &s.params {
        let vals: Vec<String> = p.values.iter().map(|v| format!("{v:?}")).collect();
        line(
            &format!("param.{}", p.name),
            format!("{}:[{}]", p.kind.name(), vals.join(",")),
        );
    }
    let mut cons: Vec<String> = s.constraints.iter().map(|(_, e)| e.canonical()).collect();
    cons.sort();
    line("constraints", cons.join("|"));
    for (i, e) in s.grid.iter().enumerate() {
        line(&format!("grid{i}"), e.canonical());
    }
    for (i, e) in s.block.iter().enumerate() {
        line(&format!("block{i}"), e.canonical());
    }
    line("shared_mem", s.shared_mem.canonical());
    for d in &s.dims {
        line(&format!("dim.{}", d.name), d.bucketing.canonical());
    }
    for a in &s.args {
        if let Some(m) = &a.map {
            let list = |v: &[Expr]| {
                v.iter()
                    .map(|e| e.canonical())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            line(
                &format!("arg.{}", a.name),
                format!(
                    "{}:tensor_map:of={}:dims=[{}]:box=[{}]:swizzle={}",
                    a.ty.name(),
                    s.args[m.of].name,
                    list(&m.dims),
                    list(&m.box_dims),
                    m.swizzle.name()
                ),
            );
            continue;
        }
        line(
            &format!("arg.{}", a.name),
            format!(
                "{}:{}:{}:{}{}",
                a.ty.name(),
                a.role.name(),
                a.len.canonical(),
                a.init.as_ref().map(|g| g.canonical()).unwrap_or_default(),
                // Only specs that zero-fill get the field, so every other id stays as it was.
                a.zero
                    .as_ref()
                    .map(|z| format!(":zero={}", z.canonical()))
                    .unwrap_or_default()
            ),
        );
    }
    line("tolerance", format!("{:?}", s.tolerance));
    out
}

/// Builds a [`KernelSpec`] in Rust. Every string expression is parsed in [`SpecBuilder::build`],
/// where errors name the spec, the field and the column.
#[derive(Clone, Debug, Default)]
pub struct SpecBuilder {
    name: String,
    source: String,
    entry: String,
    flags: Vec<String>,
    params: Vec<Param>,
    constraints: Vec<(String, String)>,
    grid: [String; 3],
    block: [String; 3],
    shared_mem: String,
    dims: Vec<Dim>,
    args: Vec<ArgDecl>,
    default: Vec<(String, String)>,
    tolerance: Option<f64>,
    /// `zero_fill` calls naming no argument declared before (an error in `build`).
    unknown_zero_fill: Vec<String>,
}

/// An argument as the builder received it (parsed in [`SpecBuilder::build`]).
#[derive(Clone, Debug)]
struct ArgDecl {
    name: String,
    ty: String,
    role: String,
    len: String,
    init: Option<String>,
    map: Option<MapDecl>,
    zero: Option<String>,
}

#[derive(Clone, Debug)]
struct MapDecl {
    of: String,
    dims: Vec<String>,
    box_dims: Vec<String>,
    swizzle: String,
}

impl SpecBuilder {
    /// A builder for a spec called `name`.
    pub fn new(name: &str) -> SpecBuilder {
        SpecBuilder {
            name: name.to_string(),
            shared_mem: "0".into(),
            ..Default::default()
        }
    }
    /// The CUDA source text.
    pub fn source(mut self, src: &str) -> Self {
        self.source = src.to_string();
        self
    }
    /// The `extern "C"` entry point.
    pub fn entry(mut self, entry: &str) -> Self {
        self.entry = entry.to_string();
        self
    }
    /// An NVRTC flag (`-O3`, `--use_fast_math`, ...).
    pub fn flag(mut self, flag: &str) -> Self {
        self.flags.push(flag.to_string());
        self
    }
    /// A tunable parameter.
    pub fn param(mut self, p: Param) -> Self {
        self.params.push(p);
        self
    }
    /// A named constraint: configs where it evaluates to 0 are invalid.
    pub fn constraint(mut self, name: &str, expr: &str) -> Self {
        self.constraints.push((name.to_string(), expr.to_string()));
        self
    }
    /// Grid dimensions.
    pub fn grid(mut self, g: [&str; 3]) -> Self {
        self.grid = g.map(String::from);
        self
    }
    /// Block dimensions.
    pub fn block(mut self, b: [&str; 3]) -> Self {
        self.block = b.map(String::from);
        self
    }
    /// Dynamic shared memory in bytes (default `0`).
    pub fn shared_mem(mut self, e: &str) -> Self {
        self.shared_mem = e.to_string();
        self
    }
    /// A shape dimension (in order) with its bucketing rule.
    pub fn dim(mut self, name: &str, bucketing: Bucketing) -> Self {
        self.dims.push(Dim {
            name: name.to_string(),
            bucketing,
        });
        self
    }
    /// A buffer argument: type name, role (`in`/`out`/`inout`), length expression, generator.
    pub fn arg_buffer(mut self, name: &str, ty: &str, role: &str, len: &str, init: &str) -> Self {
        let init = (!init.is_empty()).then(|| init.to_string());
        self.args.push(ArgDecl {
            name: name.into(),
            ty: ty.into(),
            role: role.into(),
            len: len.into(),
            init,
            map: None,
            zero: None,
        });
        self
    }
    /// Asks jitune to zero-fill the buffer argument `arg` (declared before) before every launch
    /// of a config for which `when` (an expression of params and shape) is non-zero. See
    /// [`ArgSpec::zero`].
    pub fn zero_fill(mut self, arg: &str, when: &str) -> Self {
        if let Some(a) = self.args.iter_mut().rev().find(|a| a.name == arg) {
            a.zero = Some(when.into());
        } else {
            self.unknown_zero_fill.push(arg.into());
        }
        self
    }
    /// A scalar argument whose value is an expression of the shape.
    pub fn arg_scalar(mut self, name: &str, ty: &str, value: &str) -> Self {
        self.args.push(ArgDecl {
            name: name.into(),
            ty: ty.into(),
            role: "scalar".into(),
            len: value.into(),
            init: None,
            map: None,
            zero: None,
        });
        self
    }
    /// A tensor-map argument (see [`TensorMapSpec`]): a TMA descriptor of the buffer argument
    /// `of`, with global `dims` (expressions of the shape) and `box_dims` (expressions of the
    /// parameters), both innermost first, and a swizzle (`none`, `32B`, `64B`, `128B`).
    pub fn arg_tensor_map(
        mut self,
        name: &str,
        of: &str,
        dims: &[&str],
        box_dims: &[&str],
        swizzle: &str,
    ) -> Self {
        self.args.push(ArgDecl {
            name: name.into(),
            ty: String::new(),
            role: "tensor_map".into(),
            len: "0".into(),
            init: None,
            zero: None,
            map: Some(MapDecl {
                of: of.into(),
                dims: dims.iter().map(|d| d.to_string()).collect(),
                box_dims: box_dims.iter().map(|d| d.to_string()).collect(),
                swizzle: swizzle.into(),
            }),
        });
        self
    }
    /// Declares the element type of the tensor-map argument `name` added last by
    /// [`SpecBuilder::arg_tensor_map`]: optional, checked against the described buffer's type.
    pub fn arg_type_check(mut self, name: &str, ty: &str) -> Self {
        if let Some(a) = self.args.iter_mut().rev().find(|a| a.name == name) {
            a.ty = ty.to_string();
        }
        self
    }
    /// The default config, as parameter name and value text.
    pub fn default_config(mut self, values: &[(&str, &str)]) -> Self {
        self.default = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
    /// Correctness tolerance (relative L2 error against the reference); default 1e-4.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = Some(t);
        self
    }

    /// Validates everything and computes the id.
    pub fn build(self) -> Result<KernelSpec> {
        let spec_name = self.name.clone();
        let err = |field: &str, msg: String| Error::Spec {
            spec: spec_name.clone(),
            field: field.to_string(),
            msg,
        };
        if self.name.trim().is_empty() {
            return Err(err("name", "empty".into()));
        }
        if self.source.trim().is_empty() {
            return Err(err("source", "empty".into()));
        }
        if !is_identifier(&self.entry) {
            return Err(err(
                "entry",
                format!("`{}` is not a C identifier", self.entry),
            ));
        }
        if self.params.is_empty() {
            return Err(err(
                "params",
                "a spec needs at least one tunable parameter".into(),
            ));
        }
        if let Some(a) = self.unknown_zero_fill.first() {
            return Err(err(
                &format!("args.{a}.zero"),
                "no such argument declared before".into(),
            ));
        }
        let mut params = self.params;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        for w in params.windows(2) {
            if w[0].name == w[1].name {
                return Err(err(
                    &format!("params.{}", w[0].name),
                    "defined twice".into(),
                ));
            }
        }
        for p in &params {
            if !is_identifier(&p.name) {
                return Err(err(
                    &format!("params.{}", p.name),
                    "not a C identifier (it becomes a -D define)".into(),
                ));
            }
            if p.values.is_empty() {
                return Err(err(
                    &format!("params.{}", p.name),
                    "no candidate values".into(),
                ));
            }
            if p.kind == ParamKind::Enum && p.values.iter().any(|v| matches!(v, Value::Str(s) if !is_identifier(s) && s.parse::<i64>().is_err())) {
                return Err(err(&format!("params.{}", p.name), "enum values must be identifiers or integers".into()));
            }
        }
        if self.dims.len() > MAX_DIMS {
            return Err(err("dims", format!("at most {MAX_DIMS} dimensions")));
        }
        for d in &self.dims {
            if !is_identifier(&d.name) {
                return Err(err("dims", format!("`{}` is not an identifier", d.name)));
            }
            if let Bucketing::Edges(e) = &d.bucketing {
                if e.is_empty() || e.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(err(
                        &format!("dims.{}", d.name),
                        "bucket edges must be non-empty and ascending".into(),
                    ));
                }
            }
        }
        // The variable table: parameters, then dims, then device limits.
        let mut table: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        for d in &self.dims {
            if table.contains(&d.name.as_str()) {
                return Err(err(
                    "dims",
                    format!("`{}` is both a parameter and a dimension", d.name),
                ));
            }
            table.push(&d.name);
        }
        for l in DeviceLimits::NAMES {
            if table.contains(&l) {
                return Err(err(
                    "params",
                    format!("`{l}` is reserved for a device limit"),
                ));
            }
            table.push(l);
        }
        if table.len() > MAX_VARS {
            return Err(err(
                "params",
                format!("at most {MAX_VARS} parameters, dimensions and limits together"),
            ));
        }
        let n_params = params.len();
        let compile = |field: &str, src: &str, allow_params: bool| -> Result<Expr> {
            let e = Expr::parse(src).map_err(|pe| Error::Expr {
                spec: spec_name.clone(),
                field: field.to_string(),
                column: pe.column,
                msg: pe.msg,
            })?;
            e.bind(|name| {
                table.iter().position(|t| *t == name).filter(|&p| allow_params || p >= n_params).map(|p| p as u16)
            })
            .map_err(|name| Error::Expr {
                spec: spec_name.clone(),
                field: field.to_string(),
                column: src.find(name.as_str()).map(|c| c + 1).unwrap_or(1),
                msg: if allow_params || !table.contains(&name.as_str()) {
                    format!("unknown name `{name}`")
                } else {
                    format!("`{name}` is a tunable parameter; argument sizes may only depend on the shape")
                },
            })
        };
        let mut constraints = Vec::new();
        for (name, src) in &self.constraints {
            constraints.push((
                name.clone(),
                compile(&format!("constraints.{name}"), src, true)?,
            ));
        }
        constraints.sort_by(|a, b| a.0.cmp(&b.0));
        let geom = |field: &str, v: &[String; 3]| -> Result<[Expr; 3]> {
            Ok([
                compile(&format!("{field}[0]"), &v[0], true)?,
                compile(&format!("{field}[1]"), &v[1], true)?,
                compile(&format!("{field}[2]"), &v[2], true)?,
            ])
        };
        let grid = geom("launch.grid", &self.grid)?;
        let block = geom("launch.block", &self.block)?;
        let shared_mem = compile("launch.shared_mem", &self.shared_mem, true)?;
        let mut args = Vec::new();
        for decl in &self.args {
            let (name, ty, role, len, init) =
                (&decl.name, &decl.ty, &decl.role, &decl.len, &decl.init);
            let field = format!("args.{name}");
            if args.iter().any(|a: &ArgSpec| a.name == *name) {
                return Err(err(&field, "defined twice".into()));
            }
            if decl.map.is_some() {
                // Resolved below, once every buffer is known (`of` may come later).
                args.push(ArgSpec {
                    name: name.clone(),
                    ty: ElemType::U8,
                    role: Role::TensorMap,
                    len: compile(&format!("{field}.len"), "0", false)?,
                    init: None,
                    map: None,
                    zero: None,
                });
                continue;
            }
            let ty =
                ElemType::parse(ty).ok_or_else(|| err(&field, format!("unknown type `{ty}`")))?;
            let role = match role.as_str() {
                "in" => Role::In,
                "out" => Role::Out,
                "inout" => Role::InOut,
                "scalar" => Role::Scalar,
                other => {
                    return Err(err(
                        &field,
                        format!("unknown role `{other}` (in, out, inout, scalar, tensor_map)"),
                    ))
                }
            };
            let len = compile(
                &format!(
                    "{field}.{}",
                    if role == Role::Scalar { "value" } else { "len" }
                ),
                len,
                false,
            )?;
            let init = match init {
                Some(g) => Some(Generator::parse(g).map_err(|m| err(&format!("{field}.init"), m))?),
                None if matches!(role, Role::In | Role::InOut) => Some(if ty.is_float() {
                    Generator::Uniform(-1.0, 1.0)
                } else {
                    Generator::IntRange(1, 9)
                }),
                None => None,
            };
            let zero = match &decl.zero {
                Some(_) if !matches!(role, Role::Out | Role::InOut) => {
                    return Err(err(
                        &format!("{field}.zero"),
                        "only an `out` or `inout` buffer can be zero-filled".into(),
                    ))
                }
                Some(z) => Some(compile(&format!("{field}.zero"), z, true)?),
                None => None,
            };
            args.push(ArgSpec {
                name: name.clone(),
                ty,
                role,
                len,
                init,
                map: None,
                zero,
            });
        }
        if self.args.iter().filter(|a| a.map.is_some()).count() > MAX_TENSOR_MAPS {
            return Err(err(
                "args",
                format!("at most {MAX_TENSOR_MAPS} tensor-map arguments"),
            ));
        }
        let mut implicit_constraints = Vec::new();
        for (i, decl) in self.args.iter().enumerate() {
            let Some(m) = &decl.map else { continue };
            let field = format!("args.{}", decl.name);
            let of = args.iter().position(|a| a.name == m.of).ok_or_else(|| {
                err(
                    &format!("{field}.of"),
                    format!("unknown argument `{}`", m.of),
                )
            })?;
            if !matches!(args[of].role, Role::In | Role::Out | Role::InOut) {
                return Err(err(
                    &format!("{field}.of"),
                    format!(
                        "`{}` is a {} argument; a tensor map describes a buffer (in, out or inout)",
                        m.of,
                        args[of].role.name()
                    ),
                ));
            }
            if m.dims.is_empty() || m.dims.len() > MAX_TENSOR_MAP_RANK {
                return Err(err(
                    &format!("{field}.dims"),
                    format!(
                        "rank {} (a tensor map has 1 to {MAX_TENSOR_MAP_RANK} dims)",
                        m.dims.len()
                    ),
                ));
            }
            if m.box_dims.len() != m.dims.len() {
                return Err(err(
                    &format!("{field}.box"),
                    format!(
                        "{} box dims for {} dims (one per dim, innermost first)",
                        m.box_dims.len(),
                        m.dims.len()
                    ),
                ));
            }
            let swizzle = Swizzle::parse(&m.swizzle).ok_or_else(|| {
                err(
                    &format!("{field}.swizzle"),
                    format!("unknown swizzle `{}` (none, 32B, 64B, 128B)", m.swizzle),
                )
            })?;
            if !decl.ty.is_empty() && ElemType::parse(&decl.ty) != Some(args[of].ty) {
                return Err(err(
                    &format!("{field}.type"),
                    format!(
                        "`{}` differs from the type of `{}` ({}); leave it out",
                        decl.ty,
                        m.of,
                        args[of].ty.name()
                    ),
                ));
            }
            let dims = m
                .dims
                .iter()
                .enumerate()
                .map(|(d, src)| compile(&format!("{field}.dims[{d}]"), src, false))
                .collect::<Result<Vec<Expr>>>()?;
            let mut box_dims = Vec::new();
            for (d, src) in m.box_dims.iter().enumerate() {
                let bf = format!("{field}.box[{d}]");
                let e = compile(&bf, src, true)?;
                if let Some(dim) = self.dims.iter().find(|x| e.variables().contains(&x.name)) {
                    return Err(err(
                        &bf,
                        format!(
                            "`{src}` reads the dimension `{}`; a box may only depend on parameters",
                            dim.name
                        ),
                    ));
                }
                box_dims.push(e);
            }
            let elem = args[of].ty.size() as i64;
            let mut rules = Vec::new();
            for (d, b) in box_dims.iter().enumerate() {
                rules.push((
                    format!("tensor_map.{}.box{d}", decl.name),
                    format!("({0}) >= 1 && ({0}) <= {MAX_TENSOR_MAP_BOX}", b.source()),
                ));
            }
            let inner = box_dims[0].source();
            rules.push((
                format!("tensor_map.{}.inner16", decl.name),
                format!("(({inner}) * {elem}) % 16 == 0"),
            ));
            if swizzle != Swizzle::None {
                rules.push((
                    format!("tensor_map.{}.swizzle", decl.name),
                    format!("({inner}) * {elem} <= {}", swizzle.bytes()),
                ));
            }
            for (rname, rsrc) in rules {
                implicit_constraints.push((rname.clone(), compile(&rname, &rsrc, true)?));
            }
            args[i].ty = args[of].ty;
            args[i].map = Some(TensorMapSpec {
                of,
                dims,
                box_dims,
                swizzle,
            });
        }
        if args.is_empty() {
            return Err(err("args", "a kernel needs at least one argument".into()));
        }
        if !args
            .iter()
            .any(|a| matches!(a.role, Role::Out | Role::InOut))
        {
            return Err(err(
                "args",
                "no `out` or `inout` buffer: nothing to check for correctness".into(),
            ));
        }
        let tolerance = self.tolerance.unwrap_or(1e-4);
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(err(
                "tolerance",
                format!("{tolerance} is not a finite, non-negative number"),
            ));
        }
        let mut default = vec![None; params.len()];
        for (k, v) in &self.default {
            let d = params
                .iter()
                .position(|p| p.name == *k)
                .ok_or_else(|| err("default", format!("unknown parameter `{k}`")))?;
            let i = params[d]
                .index_of_text(v)
                .ok_or_else(|| err("default", format!("`{v}` is not a value of `{k}`")))?;
            default[d] = Some(i as u16);
        }
        let default = Config(
            default
                .iter()
                .zip(&params)
                .map(|(i, p)| i.ok_or_else(|| err("default", format!("no value for `{}`", p.name))))
                .collect::<Result<Vec<u16>>>()?,
        );
        let mut spec = KernelSpec {
            name: self.name,
            source: self.source,
            entry: self.entry,
            flags: self.flags,
            params,
            constraints,
            grid,
            block,
            shared_mem,
            dims: self.dims,
            args,
            default,
            tolerance,
            implicit_constraints,
            id: KernelId([0; 32]),
        };
        spec.check_default_maps()?;
        spec.id = KernelId(*blake3::hash(canonical(&spec).as_bytes()).as_bytes());
        Ok(spec)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}
