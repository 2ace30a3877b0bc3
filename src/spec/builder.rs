//! [`SpecBuilder`]: builds a [`KernelSpec`] in Rust, and is the one place where a spec is
//! validated. The TOML reader feeds the same builder, so a spec file and the equivalent Rust
//! code give the same spec and the same id, and every error names the spec, the field and,
//! for expressions, the column.
//!
//! The builder only collects text; [`SpecBuilder::build`] checks names, parses and binds
//! every expression to the variable table (parameters, then dims, then device limits),
//! derives the tensor maps' implicit constraints, resolves the default config and computes
//! the id.

use crate::expr::Expr;
use crate::key::{Bucketing, KernelId, MAX_DIMS};
use crate::space::{Config, Param, ParamKind, Value};
use crate::{Error, Result};

use super::kernel::{canonical, KernelSpec};
use super::model::{
    ArgSpec, DeviceLimits, Dim, ElemType, Generator, Role, Swizzle, TensorMapSpec, MAX_TENSOR_MAPS,
    MAX_TENSOR_MAP_BOX, MAX_TENSOR_MAP_RANK, MAX_VARS,
};

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
    bytes: Option<String>,
    flops: Option<String>,
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
            role: Role::Scalar.name().into(),
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
            role: Role::TensorMap.name().into(),
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

    /// The bytes a launch must move at least, as an expression of the shape (and device
    /// limits): the memory roofline's numerator (see [`KernelSpec::bytes`]).
    pub fn bytes(mut self, e: &str) -> Self {
        self.bytes = Some(e.to_string());
        self
    }
    /// The floating-point operations of a launch, as an expression of the shape: the compute
    /// roofline's numerator (see [`KernelSpec::flops`]).
    pub fn flops(mut self, e: &str) -> Self {
        self.flops = Some(e.to_string());
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
                    format!("`{name}` is a tunable parameter; argument sizes, `bytes` and `flops` may only depend on the shape")
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
            let role = match Role::parse(role) {
                // A tensor map without its `map` is no buffer or scalar either.
                Some(r) if r != Role::TensorMap => r,
                _ => {
                    let other = role.as_str();
                    return Err(err(
                        &field,
                        format!("unknown role `{other}` (in, out, inout, scalar, tensor_map)"),
                    ));
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
        // The work of a launch depends on the shape only (the roofline is the config's bound).
        let bytes = match &self.bytes {
            Some(src) => Some(compile("bytes", src, false)?),
            None => None,
        };
        let flops = match &self.flops {
            Some(src) => Some(compile("flops", src, false)?),
            None => None,
        };
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
            bytes,
            flops,
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
