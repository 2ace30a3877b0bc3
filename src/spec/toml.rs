//! The TOML form of kernel specs (`kernels/NAME.toml` beside `kernels/NAME.cu`): the reader
//! and the writer, side by side, so that what one writes is what the other reads.
//!
//! The file is read into a TOML value tree and walked by hand, not deserialised by derive, so
//! that every error can name the spec and the exact field. The result goes through the same
//! [`SpecBuilder`] as a spec built in Rust, which is what makes the two forms hash alike.
//!
//! The writer ([`write`]) turns a built spec back into this form; the reader gives the same
//! spec (same id, same default) back. It serves the wire form of worker processes
//! ([`super::wire`]). Where a value has a text form of its own (bucketing, generators, types,
//! element types, swizzles) both directions use one function, or one pair of functions next
//! to each other, never a second spelling.
//!
//! ```toml
//! name = "sgemm"
//! source = "sgemm.cu"              # read beside this file
//! entry = "sgemm"
//! flags = ["-O3"]
//! tolerance = 1e-4
//! bytes = "4 * (m * k + k * n + m * n)"   # optional: least bytes a launch moves (roofline)
//! flops = "2 * m * n * k"                 # optional: FP32 operations of a launch (roofline)
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

use std::fmt::Write as _;
use std::path::Path;

// `::toml`: the crate, not this module.
use ::toml::{Table, Value as T};

use crate::expr::Expr;
use crate::key::Bucketing;
use crate::space::{Param, Value};
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
    const KNOWN: [&str; 13] = [
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
        "bytes",
        "flops",
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
    for key in ["bytes", "flops"] {
        match table.get(key).map(expr_text) {
            Some(Some(e)) if key == "bytes" => b = b.bytes(&e),
            Some(Some(e)) => b = b.flops(&e),
            Some(None) => return Err(spec_err(n, key, "must be a string or integer")),
            None => {}
        }
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
        // (Not a tensor map: that returned above.)
        let known_role = Role::parse(&role).is_some();
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
        if role == Role::Scalar.name() {
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

// ---------------------------------------------------------------------------------------------
// Bucketing: its one TOML form, written and read here (`Bucketing::canonical` in `key.rs` is
// another form, the one hashed into the spec id; the two are not interchangeable).

/// The TOML names of the bucketing rules without parameters.
const BUCKET_EXACT: &str = "exact";
const BUCKET_POW2: &str = "pow2";

/// A dimension's `bucket = ...` value: `"exact"`, `"pow2"` or a list of edges `[1, 8, 64]`.
fn bucketing_toml(b: &Bucketing) -> String {
    match b {
        Bucketing::Exact => q(BUCKET_EXACT),
        Bucketing::NextPow2 => q(BUCKET_POW2),
        Bucketing::Edges(e) => format!(
            "[{}]",
            e.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Reads [`bucketing_toml`]'s form; a missing `bucket` is exact. The error is the message.
fn read_bucketing(v: Option<&T>) -> std::result::Result<Bucketing, &'static str> {
    match v {
        None => Ok(Bucketing::Exact),
        Some(T::String(s)) if s == BUCKET_EXACT => Ok(Bucketing::Exact),
        Some(T::String(s)) if s == BUCKET_POW2 => Ok(Bucketing::NextPow2),
        Some(T::Array(a)) => a
            .iter()
            .map(|v| v.as_integer())
            .collect::<Option<Vec<i64>>>()
            .map(Bucketing::Edges)
            .ok_or("edges must be integers"),
        Some(_) => Err("must be \"exact\", \"pow2\" or a list of edges"),
    }
}

// ---------------------------------------------------------------------------------------------
// The writer. Hand-written: the `toml` dependency is built for parsing only (its writer would
// be another crate to build for a few lines of output), and every value written here is a
// string, an integer, a boolean, a float or a flat list of those.

/// A TOML basic string holding `s` exactly.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A parameter value as the reader's `[params]` and `[default]` tables take it.
fn toml_value(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => q(s),
    }
}

/// The spec as TOML text that [`KernelSpec::from_toml_str`] reads back into the same spec
/// (same id, same default), naming `source_file` as its `source` (resolved by the reader's
/// `read_source`). Expressions are written as their source text, so the reader parses and
/// binds them as the builder did.
pub(super) fn write(spec: &KernelSpec, source_file: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "name = {}", q(&spec.name));
    let _ = writeln!(s, "source = {}", q(source_file));
    let _ = writeln!(s, "entry = {}", q(&spec.entry));
    let flags: Vec<String> = spec.flags.iter().map(|f| q(f)).collect();
    let _ = writeln!(s, "flags = [{}]", flags.join(", "));
    let _ = writeln!(s, "tolerance = {:?}", spec.tolerance);
    if let Some(e) = &spec.bytes {
        let _ = writeln!(s, "bytes = {}", q(e.source()));
    }
    if let Some(e) = &spec.flops {
        let _ = writeln!(s, "flops = {}", q(e.source()));
    }
    let dims: Vec<String> = spec
        .dims
        .iter()
        .map(|d| {
            format!(
                "{{ name = {}, bucket = {} }}",
                q(&d.name),
                bucketing_toml(&d.bucketing)
            )
        })
        .collect();
    let _ = writeln!(s, "dims = [{}]", dims.join(", "));
    let _ = writeln!(s, "[params]");
    for p in &spec.params {
        let vals: Vec<String> = p.values.iter().map(toml_value).collect();
        let _ = writeln!(s, "{} = [{}]", q(&p.name), vals.join(", "));
    }
    let _ = writeln!(s, "[constraints]");
    for (name, e) in &spec.constraints {
        let _ = writeln!(s, "{} = {}", q(name), q(e.source()));
    }
    let list = |v: &[Expr]| {
        v.iter()
            .map(|e| q(e.source()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "[launch]");
    let _ = writeln!(s, "grid = [{}]", list(&spec.grid));
    let _ = writeln!(s, "block = [{}]", list(&spec.block));
    let _ = writeln!(s, "shared_mem = {}", q(spec.shared_mem.source()));
    for a in &spec.args {
        let _ = writeln!(s, "[[args]]");
        let _ = writeln!(s, "name = {}", q(&a.name));
        if let Some(m) = &a.map {
            let _ = writeln!(s, "role = {}", q(Role::TensorMap.name()));
            let _ = writeln!(s, "of = {}", q(&spec.args[m.of].name));
            let _ = writeln!(s, "dims = [{}]", list(&m.dims));
            let _ = writeln!(s, "box = [{}]", list(&m.box_dims));
            let _ = writeln!(s, "swizzle = {}", q(m.swizzle.name()));
            continue;
        }
        let _ = writeln!(s, "type = {}", q(a.ty.name()));
        let _ = writeln!(s, "role = {}", q(a.role.name()));
        let len_key = if a.role == Role::Scalar {
            "value"
        } else {
            "len"
        };
        let _ = writeln!(s, "{len_key} = {}", q(a.len.source()));
        if let Some(g) = &a.init {
            let _ = writeln!(s, "init = {}", q(&g.canonical()));
        }
        if let Some(z) = &a.zero {
            let _ = writeln!(s, "zero = {}", q(z.source()));
        }
    }
    let _ = writeln!(s, "[default]");
    for (p, &i) in spec.params.iter().zip(&spec.default.0) {
        if let Some(v) = p.values.get(i as usize) {
            let _ = writeln!(s, "{} = {}", q(&p.name), toml_value(v));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucketing_reads_back_what_is_written() {
        for b in [
            Bucketing::Exact,
            Bucketing::NextPow2,
            Bucketing::Edges(vec![1, 8, 64]),
            Bucketing::Edges(vec![-3]),
        ] {
            let text = format!("bucket = {}", bucketing_toml(&b));
            let t: Table = text.parse().unwrap();
            assert_eq!(read_bucketing(t.get("bucket")), Ok(b.clone()), "{text}");
        }
        assert_eq!(bucketing_toml(&Bucketing::NextPow2), "\"pow2\"");
        assert_eq!(
            bucketing_toml(&Bucketing::Edges(vec![1, 8, 64])),
            "[1, 8, 64]"
        );
        assert_eq!(read_bucketing(None), Ok(Bucketing::Exact));
        assert!(read_bucketing(Some(&T::String("Pow2".into()))).is_err());
        assert!(read_bucketing(Some(&T::Array(vec![T::String("8".into())]))).is_err());
    }

    #[test]
    fn strings_survive_quoting() {
        let odd = "a\"b\\c\nd\te\r\u{1}\u{7f}é";
        let t: Table = format!("x = {}", q(odd)).parse().unwrap();
        assert_eq!(t.get("x").and_then(T::as_str), Some(odd));
    }
}
