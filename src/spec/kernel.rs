//! [`KernelSpec`]: a validated kernel spec and what it computes for the tuner and a launch:
//! its id (the blake3 hash of one canonical text), the shape bucket, the search space of a
//! shape on a device, the variable table, the launch geometry, zero-fill masks, argument
//! values and the `-D` defines of a config.
//!
//! A spec is only made by [`SpecBuilder::build`](super::SpecBuilder::build) (the TOML reader
//! goes through the builder too), which validates it and computes the id from
//! [`KernelSpec::canonical`]. That text is what names a kernel in every cache file: it must
//! stay byte-identical for an unchanged kernel, so changes here are changes of every id.

use crate::expr::Expr;
use crate::key::{KernelId, ShapeBucket, ShapeRules};
use crate::space::{Config, Param, SearchSpace, Value};
use crate::{Error, Result};

use super::model::{ArgSpec, DeviceLimits, Dim, Geometry, Role, MAX_VARS};

/// A kernel, its tunable space and how to launch it. Build with
/// [`SpecBuilder`](super::SpecBuilder) or load with [`KernelSpec::from_toml_file`].
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
    /// The bytes a launch must move at least (an expression of the shape and device limits),
    /// when the spec gives it: with the device's copy bandwidth, the memory roofline that lets
    /// tuning stop once the best config is close to it.
    pub bytes: Option<Expr>,
    /// The floating-point operations of a launch (an expression of the shape), when the spec
    /// gives it: with the device's FP32 peak, the compute roofline.
    pub flops: Option<Expr>,
    /// Set by the builder, from [`KernelSpec::canonical`].
    pub(super) id: KernelId,
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

    /// Buckets a raw shape; `None` when the number of dims is wrong. Allocation-free. The
    /// rules are the ones a kernel handle keeps for its launches ([`ShapeRules`]).
    pub fn bucket(&self, shape: &[i64]) -> Option<ShapeBucket> {
        ShapeRules::of(self.dims.iter().map(|d| &d.bucketing))?
            .bucket(shape, |i| &self.dims[i].bucketing)
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
    pub(super) fn check_default_maps(&self) -> Result<()> {
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

    /// The variable table of a raw shape on a device, every parameter 0 (for the expressions
    /// that depend on the shape only: argument lengths, `bytes`, `flops`).
    fn shape_env(&self, shape: &[i64], limits: &DeviceLimits) -> [i64; MAX_VARS] {
        let mut env = [0i64; MAX_VARS];
        self.fill_env(&[], shape, limits, &mut env);
        env
    }

    /// Evaluates an argument's length (buffers) or value (scalars) for a raw shape.
    pub fn arg_value(&self, arg: &ArgSpec, shape: &[i64], limits: &DeviceLimits) -> Result<i64> {
        let env = self.shape_env(shape, limits);
        arg.len.eval(&env).map_err(|e| {
            Error::Eval(format!(
                "kernel `{}`, argument `{}`: {e}",
                self.name, arg.name
            ))
        })
    }

    /// The spec's `bytes` and `flops` at a raw shape (`None` where the spec gives none). Errors
    /// name the spec and the field.
    pub fn work(&self, shape: &[i64], limits: &DeviceLimits) -> Result<(Option<i64>, Option<i64>)> {
        self.check_shape(shape)?;
        let env = self.shape_env(shape, limits);
        let eval = |e: &Option<Expr>, field: &str| -> Result<Option<i64>> {
            let Some(e) = e else { return Ok(None) };
            let v = e.eval(&env).map_err(|m| {
                Error::Eval(format!(
                    "kernel `{}`, {field} `{}`: {m}",
                    self.name,
                    e.source()
                ))
            })?;
            Ok(Some(v))
        };
        Ok((eval(&self.bytes, "bytes")?, eval(&self.flops, "flops")?))
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
}

/// The canonical text of [`KernelSpec::canonical`] (the builder hashes it into the id).
pub(super) fn canonical(s: &KernelSpec) -> String {
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
    // Only specs that declare their work get these lines, so every other id stays as it was.
    if let Some(b) = &s.bytes {
        line("bytes", b.canonical());
    }
    if let Some(f) = &s.flops {
        line("flops", f.canonical());
    }
    out
}
