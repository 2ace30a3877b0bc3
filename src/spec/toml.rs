//! The TOML form of kernel specs (`kernels/NAME.toml` beside `kernels/NAME.cu`).
//!
//! The file is read into a TOML value tree and walked by hand, not deserialised by derive, so
//! that every error can name the spec and the exact field. The result goes through the same
//! [`SpecBuilder`] as a spec built in Rust, which is what makes the two forms hash alike.
//!
//! ```toml
//! name = "sgemm"
//! source = "sgemm.cu"              # read beside this file
//! entry = "sgemm"
//! flags = ["-O3"]
//! tolerance = 1e-4
//! dims = [{ name = "m", bucket = "pow2" }, { name = "k", bucket = [16, 64, 256] }]
//! [params]
//! BM = [32, 64, 128]               # integers (powers of two are encoded as log2)
//! PAD = [false, true]              # booleans
//! LAYOUT = ["row", "col"]          # enums
//! [constraints]
//! threads = "BM * 4 <= max_threads_per_block"
//! [launch]
//! grid = ["ceil_div(m, BM)", "1", "1"]
//! block = ["BM", "1", "1"]
//! shared_mem = "0"
//! [[args]]
//! name = "A"
//! type = "f32"
//! role = "in"                      # in, out, inout, scalar (scalars take `value` instead of `len`)
//! len = "m * k"
//! init = "uniform(-1, 1)"
//! [[args]]                         # a TMA descriptor of `A`, encoded by jitune at launch
//! name = "A_map"
//! role = "tensor_map"
//! of = "A"                         # the element type is A's
//! dims = ["k", "m"]                # global dims, innermost first (expressions of the shape)
//! box = ["64", "BM"]               # box dims, innermost first (expressions of the parameters)
//! swizzle = "128B"                 # none, 32B, 64B, 128B (default none)
//! [default]
//! BM = 64
//! ```

use std::path::Path;

// `::toml`: the crate, not this module.
use ::toml::{Table, Value as T};

use crate::key::Bucketing;
use crate::space::Param;
use crate::{Error, Result};

use super::builder::SpecBuilder;
use super::kernel::KernelSpec;
use super::model::Role;

impl KernelSpec {
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
        parse(&text, &fallback, &|rel: &str| {
            let p = dir.join(rel);
            std::fs::read_to_string(&p).map_err(|e| Error::io(p, e))
        })
    }

    /// Parses a spec from TOML text; `read_source` resolves the `source` file name.
    pub fn from_toml_str(
        text: &str,
        read_source: &dyn Fn(&str) -> Result<String>,
    ) -> Result<KernelSpec> {
        parse(text, "spec", read_source)
    }
}

fn parse(
    text: &str,
    fallback_name: &str,
    read_source: &dyn Fn(&str) -> Result<String>,
) -> Result<KernelSpec> {
    let table: Table = text.parse::<Table>().map_err(|e| Error::Spec {
        spec: fallback_name.to_string(),
        field: "(file)".into(),
        msg: format!("not valid TOML: {}", e.to_string().trim()),
    })?;
    let name = match table.get("name") {
        Some(T::String(s)) => s.clone(),
        Some(_) => return Err(spec_err(fallback_name, "name", "must be a string")),
        None => fallback_name.to_string(),
    };
    let n = name.as_str();
    const KNOWN: [&str; 11] = [
        "name",
        "source",
        "entry",
        "flags",
        "tolerance",
        "dims",
        "params",
        "constraints",
        "launch",
        "args",
        "default",
    ];
    if let Some(k) = table.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(spec_err(
            n,
            k,
            &format!("unknown field (known: {})", KNOWN.join(", ")),
        ));
    }
    let mut b = SpecBuilder::new(n);
    let source_file = req_str(n, &table, "source")?;
    let source = read_source(source_file).map_err(|e| spec_err(n, "source", &e.to_string()))?;
    b = b.source(&source).entry(req_str(n, &table, "entry")?);
    if let Some(flags) = table.get("flags") {
        for (i, f) in array(n, "flags", flags)?.iter().enumerate() {
            b = b.flag(
                f.as_str()
                    .ok_or_else(|| spec_err(n, &format!("flags[{i}]"), "must be a string"))?,
            );
        }
    }
    match table.get("tolerance") {
        Some(T::Float(f)) => b = b.tolerance(*f),
        Some(T::Integer(i)) => b = b.tolerance(*i as f64),
        Some(_) => return Err(spec_err(n, "tolerance", "must be a number")),
        None => {}
    }
    if let Some(dims) = table.get("dims") {
        for (i, d) in array(n, "dims", dims)?.iter().enumerate() {
            let field = format!("dims[{i}]");
            let t = d.as_table().ok_or_else(|| {
                spec_err(n, &field, "must be a table { name = ..., bucket = ... }")
            })?;
            let dname = req_str(n, t, "name")
                .map_err(|_| spec_err(n, &format!("{field}.name"), "missing or not a string"))?;
            let bucketing = read_bucketing(t.get("bucket"))
                .map_err(|m| spec_err(n, &format!("{field}.bucket"), m))?;
            b = b.dim(dname, bucketing);
        }
    }
    let params = table
        .get("params")
        .and_then(T::as_table)
        .ok_or_else(|| spec_err(n, "params", "missing table [params]"))?;
    for (pname, vals) in params {
        let field = format!("params.{pname}");
        let vals = array(n, &field, vals)?;
        let param = if vals.iter().all(T::is_integer) {
            Param::ints(
                pname,
                &vals.iter().filter_map(T::as_integer).collect::<Vec<_>>(),
            )
        } else if vals.iter().all(T::is_bool) {
            let bools: Vec<bool> = vals.iter().filter_map(T::as_bool).collect();
            if bools != [false, true] {
                return Err(spec_err(
                    n,
                    &field,
                    "a boolean parameter must be [false, true]",
                ));
            }
            Param::boolean(pname)
        } else if vals.iter().all(T::is_str) {
            Param::choices(
                pname,
                &vals.iter().filter_map(T::as_str).collect::<Vec<_>>(),
            )
        } else {
            return Err(spec_err(
                n,
                &field,
                "values must be all integers, [false, true], or all strings",
            ));
        };
        b = b.param(param);
    }
    if let Some(c) = table.get("constraints") {
        let c = c.as_table().ok_or_else(|| {
            spec_err(n, "constraints", "must be a table of name = \"expression\"")
        })?;
        for (cname, e) in c {
            b = b.constraint(
                cname,
                e.as_str().ok_or_else(|| {
                    spec_err(n, &format!("constraints.{cname}"), "must be a string")
                })?,
            );
        }
    }
    let launch = table
        .get("launch")
        .and_then(T::as_table)
        .ok_or_else(|| spec_err(n, "launch", "missing table [launch]"))?;
    let triple = |key: &str| -> Result<[String; 3]> {
        let field = format!("launch.{key}");
        let a = array(
            n,
            &field,
            launch
                .get(key)
                .ok_or_else(|| spec_err(n, &field, "missing"))?,
        )?;
        if a.len() != 3 {
            return Err(spec_err(n, &field, "must list three expressions (x, y, z)"));
        }
        let s = |i: usize| {
            expr_text(&a[i])
                .ok_or_else(|| spec_err(n, &format!("{field}[{i}]"), "must be a string or integer"))
        };
        Ok([s(0)?, s(1)?, s(2)?])
    };
    let (grid, block) = (triple("grid")?, triple("block")?);
    b = b
        .grid([&grid[0], &grid[1], &grid[2]])
        .block([&block[0], &block[1], &block[2]]);
    if let Some(s) = launch.get("shared_mem") {
        b = b.shared_mem(
            &expr_text(s)
                .ok_or_else(|| spec_err(n, "launch.shared_mem", "must be a string or integer"))?,
        );
    }
    let args = array(
        n,
        "args",
        table
            .get("args")
            .ok_or_else(|| spec_err(n, "args", "missing [[args]]"))?,
    )?;
    for (i, a) in args.iter().enumerate() {
        let field = format!("args[{i}]");
        let t = a
            .as_table()
            .ok_or_else(|| spec_err(n, &field, "must be a table"))?;
        let get = |k: &str| t.get(k).and_then(expr_text);
        let aname = get("name").ok_or_else(|| spec_err(n, &format!("{field}.name"), "missing"))?;
        let role =
            get("role").ok_or_else(|| spec_err(n, &format!("args.{aname}.role"), "missing"))?;
        if role == Role::TensorMap.name() {
            b = tensor_map_arg(n, &aname, t, b)?;
            continue;
        }
        let known_role = ["in", "out", "inout", "scalar"].contains(&role.as_str());
        if let Some(k) = ["of", "dims", "box", "swizzle"]
            .iter()
            .find(|k| known_role && t.contains_key(**k))
        {
            return Err(spec_err(
                n,
                &format!("args.{aname}.{k}"),
                "only a `tensor_map` argument takes this key",
            ));
        }
        let ty =
            get("type").ok_or_else(|| spec_err(n, &format!("args.{aname}.type"), "missing"))?;
        if role == "scalar" {
            let v = get("value")
                .ok_or_else(|| spec_err(n, &format!("args.{aname}.value"), "missing"))?;
            b = b.arg_scalar(&aname, &ty, &v);
        } else {
            let len =
                get("len").ok_or_else(|| spec_err(n, &format!("args.{aname}.len"), "missing"))?;
            b = b.arg_buffer(&aname, &ty, &role, &len, &get("init").unwrap_or_default());
        }
        if let Some(z) = get("zero") {
            b = b.zero_fill(&aname, &z);
        }
    }
    let default = table
        .get("default")
        .and_then(T::as_table)
        .ok_or_else(|| spec_err(n, "default", "missing table [default]"))?;
    let pairs: Vec<(String, String)> = default
        .iter()
        .map(|(k, v)| match v {
            T::String(s) => Ok((k.clone(), s.clone())),
            T::Integer(i) => Ok((k.clone(), i.to_string())),
            T::Boolean(x) => Ok((k.clone(), x.to_string())),
            _ => Err(spec_err(
                n,
                &format!("default.{k}"),
                "must be an integer, boolean or string",
            )),
        })
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    b.default_config(&refs).build()
}

/// A `role = "tensor_map"` argument: `of`, `dims`, `box`, optional `swizzle` (and optional
/// `type`, which must then be the described buffer's).
fn tensor_map_arg(n: &str, aname: &str, t: &Table, b: SpecBuilder) -> Result<SpecBuilder> {
    const KNOWN: [&str; 7] = ["name", "role", "type", "of", "dims", "box", "swizzle"];
    if let Some(k) = t.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(spec_err(
            n,
            &format!("args.{aname}.{k}"),
            &format!("unknown key for a tensor map (known: {})", KNOWN.join(", ")),
        ));
    }
    let field = |k: &str| format!("args.{aname}.{k}");
    let of = match t.get("of") {
        Some(T::String(s)) => s.clone(),
        Some(_) => return Err(spec_err(n, &field("of"), "must be a string")),
        None => {
            return Err(spec_err(
                n,
                &field("of"),
                "missing (the buffer argument the map describes)",
            ))
        }
    };
    let list = |k: &str| -> Result<Vec<String>> {
        let v = t.get(k).ok_or_else(|| spec_err(n, &field(k), "missing"))?;
        array(n, &field(k), v)?
            .iter()
            .enumerate()
            .map(|(i, e)| {
                expr_text(e).ok_or_else(|| {
                    spec_err(
                        n,
                        &format!("{}[{i}]", field(k)),
                        "must be a string or integer",
                    )
                })
            })
            .collect()
    };
    let (dims, boxes) = (list("dims")?, list("box")?);
    let swizzle = match t.get("swizzle") {
        Some(T::String(s)) => s.clone(),
        Some(_) => return Err(spec_err(n, &field("swizzle"), "must be a string")),
        None => "none".to_string(),
    };
    let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
    let boxes: Vec<&str> = boxes.iter().map(String::as_str).collect();
    let b = b.arg_tensor_map(aname, &of, &dims, &boxes, &swizzle);
    Ok(match t.get("type") {
        Some(T::String(ty)) => b.arg_type_check(aname, ty),
        Some(_) => return Err(spec_err(n, &field("type"), "must be a string")),
        None => b,
    })
}

fn spec_err(spec: &str, field: &str, msg: &str) -> Error {
    Error::Spec {
        spec: spec.to_string(),
        field: field.to_string(),
        msg: msg.to_string(),
    }
}

fn req_str<'a>(spec: &str, t: &'a Table, key: &str) -> Result<&'a str> {
    match t.get(key) {
        Some(T::String(s)) => Ok(s),
        Some(_) => Err(spec_err(spec, key, "must be a string")),
        None => Err(spec_err(spec, key, "missing")),
    }
}

fn array<'a>(spec: &str, field: &str, v: &'a T) -> Result<&'a Vec<T>> {
    v.as_array()
        .ok_or_else(|| spec_err(spec, field, "must be an array"))
}

/// Expressions may be written as strings or, when constant, as bare integers.
fn expr_text(v: &T) -> Option<String> {
    match v {
        T::String(s) => Some(s.clone()),
        T::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Reads a dimension's `bucket = ...` value: `"exact"`, `"pow2"` or a list of edges; a
/// missing `bucket` is exact. The error is the message.
fn read_bucketing(v: Option<&T>) -> std::result::Result<Bucketing, &'static str> {
    match v {
        None => Ok(Bucketing::Exact),
        Some(T::String(s)) if s == "exact" => Ok(Bucketing::Exact),
        Some(T::String(s)) if s == "pow2" => Ok(Bucketing::NextPow2),
        Some(T::Array(a)) => a
            .iter()
            .map(|v| v.as_integer())
            .collect::<Option<Vec<i64>>>()
            .map(Bucketing::Edges)
            .ok_or("edges must be integers"),
        Some(_) => Err("must be \"exact\", \"pow2\" or a list of edges"),
    }
}
