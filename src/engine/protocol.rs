//! The benchmark worker protocol: what the host and its worker say to each other on the pipes.
//!
//! Frames: magic, a kind byte, a length-prefixed JSON header and a counted list of
//! length-prefixed binary blobs (images, reference outputs). Readers skip anything before the
//! magic, so stray output of the worker's program cannot derail the protocol; every length is
//! bounded before anything is allocated. The start-up message is a typed [`Init`], written and
//! read here, so host and worker cannot disagree on its fields.
//!
//! The host sends the spec as data (TOML text with the source beside it); the worker rebuilds
//! the spec and checks that its id is the host's before measuring anything.

use std::fmt::Write as _;
use std::io::{Read, Write};

use serde_json::{json, Value as J};

use super::evaluator::MeasureOptions;
use crate::failure::FailureClass;
use crate::key::Bucketing;
use crate::search::evaluator::{Failure, Measurement, Outcome};
use crate::space::{Config, Value};
use crate::spec::{Generator, KernelSpec, Role};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"JITUNEb1";
/// Host → worker: start (spec, shape, device, reference); the worker answers [`K_READY`].
pub const K_INIT: u8 = 1;
/// Host → worker: load, check and time one config (its image in the first blob).
pub const K_EVALUATE: u8 = 2;
/// Host → worker: draw more samples of configs (their images in the blobs, for a new worker).
pub const K_REMEASURE: u8 = 3;
/// Worker → host: started (`ok`) or not (`error`).
pub const K_READY: u8 = 10;
/// Worker → host: one outcome per config asked about.
pub const K_OUTCOMES: u8 = 11;
/// Worker → host: the candidate broke the worker's context; the worker exits after sending it.
pub const K_CRASHED: u8 = 12;
/// Worker → host: the measuring machinery failed for a reason that is not the candidate's.
pub const K_FATAL: u8 = 13;

/// What a worker needs to start.
#[derive(Clone, Debug)]
pub struct Init {
    pub spec_toml: String,
    pub source: String,
    pub id_hex: String,
    pub default: String,
    pub shape: Vec<i64>,
    pub ordinal: usize,
    pub reference_config: String,
    pub measure: MeasureOptions,
    /// The reference config's image.
    pub reference_image: Vec<u8>,
    /// Reference outputs given by the caller (one vector per output argument), if any.
    pub reference_outputs: Option<Vec<Vec<f64>>>,
}

impl Init {
    pub fn to_frame(&self) -> Frame {
        let m = &self.measure;
        let mut header = json!({
            "spec": self.spec_toml,
            "source": self.source,
            "id": self.id_hex,
            "default": self.default,
            "shape": self.shape,
            "ordinal": self.ordinal,
            "reference_config": self.reference_config,
            "measure": {
                "first_budget_ms": m.first_budget_ms,
                "min_reps": m.min_reps,
                "max_reps": m.max_reps,
                "too_slow_factor": m.too_slow_factor,
            },
        });
        let mut blobs = vec![self.reference_image.clone()];
        if let Some(outs) = &self.reference_outputs {
            header["reference_lens"] = json!(outs.iter().map(|o| o.len()).collect::<Vec<_>>());
            blobs.push(outs.iter().flat_map(|o| f64s_to_bytes(o)).collect());
        }
        Frame::new(K_INIT, header, blobs)
    }

    pub fn from_frame(f: &Frame) -> Result<Init> {
        let h = &f.header;
        let text = |k: &str| {
            h.get(k)
                .and_then(J::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidArgument(format!("init frame: `{k}` missing")))
        };
        let m = h.get("measure").cloned().unwrap_or(J::Null);
        let d = MeasureOptions::default();
        let measure = MeasureOptions {
            first_budget_ms: m
                .get("first_budget_ms")
                .and_then(J::as_f64)
                .unwrap_or(d.first_budget_ms),
            min_reps: m
                .get("min_reps")
                .and_then(J::as_u64)
                .map_or(d.min_reps, |v| v as usize),
            max_reps: m
                .get("max_reps")
                .and_then(J::as_u64)
                .map_or(d.max_reps, |v| v as usize),
            too_slow_factor: m
                .get("too_slow_factor")
                .and_then(J::as_f64)
                .unwrap_or(d.too_slow_factor),
        };
        let reference_outputs = f.blobs.get(1).map(|outputs| {
            let lens: Vec<usize> = h
                .get("reference_lens")
                .and_then(J::as_array)
                .map(|a| a.iter().filter_map(J::as_u64).map(|n| n as usize).collect())
                .unwrap_or_default();
            let all = bytes_to_f64s(outputs);
            let mut at = 0;
            let mut vecs = Vec::new();
            for n in lens {
                let end = (at + n).min(all.len());
                vecs.push(all[at..end].to_vec());
                at = end;
            }
            vecs
        });
        Ok(Init {
            spec_toml: text("spec")?,
            source: text("source")?,
            id_hex: text("id")?,
            default: text("default")?,
            shape: h
                .get("shape")
                .and_then(J::as_array)
                .map(|a| a.iter().filter_map(J::as_i64).collect())
                .unwrap_or_default(),
            ordinal: h.get("ordinal").and_then(J::as_u64).unwrap_or(0) as usize,
            reference_config: text("reference_config")?,
            measure,
            reference_image: f.blobs.first().cloned().unwrap_or_default(),
            reference_outputs,
        })
    }
}

/// An error reply of kind `kind` (crashed or fatal).
pub fn error_frame(kind: u8, e: &Error) -> Frame {
    Frame::new(kind, json!({ "error": e.to_string() }), vec![])
}

/// The `error` text of a reply, or `default`.
pub fn error_text<'a>(f: &'a Frame, default: &'a str) -> &'a str {
    f.header.get("error").and_then(J::as_str).unwrap_or(default)
}

/// The outcomes of a [`K_OUTCOMES`] reply.
pub fn outcomes_frame(outcomes: &[Outcome]) -> Frame {
    Frame::new(
        K_OUTCOMES,
        json!({ "outcomes": outcomes.iter().map(outcome_to_json).collect::<Vec<_>>() }),
        vec![],
    )
}

/// The outcomes a [`K_OUTCOMES`] reply carries.
pub fn outcomes_of(f: &Frame) -> Vec<Outcome> {
    f.header
        .get("outcomes")
        .and_then(J::as_array)
        .map(|a| a.iter().map(outcome_from_json).collect())
        .unwrap_or_default()
}

/// One message: a kind, a JSON header and binary blobs (images, reference outputs).
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub header: J,
    pub blobs: Vec<Vec<u8>>,
}

impl Frame {
    pub fn new(kind: u8, header: J, blobs: Vec<Vec<u8>>) -> Frame {
        Frame {
            kind,
            header,
            blobs,
        }
    }
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> std::io::Result<()> {
    let header = serde_json::to_vec(&f.header).map_err(std::io::Error::other)?;
    w.write_all(MAGIC)?;
    w.write_all(&[f.kind])?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(&(f.blobs.len() as u64).to_le_bytes())?;
    for b in &f.blobs {
        w.write_all(&(b.len() as u64).to_le_bytes())?;
        w.write_all(b)?;
    }
    w.flush()
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_len(r: &mut impl Read, max: u64, what: &str) -> std::io::Result<usize> {
    let n = read_u64(r)?;
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of {n} is too large"),
        ));
    }
    Ok(n as usize)
}

/// The next frame, `None` at a clean end of stream (before any magic byte).
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
    let mut matched = 0usize;
    let mut b = [0u8; 1];
    while matched < MAGIC.len() {
        if r.read(&mut b)? == 0 {
            return Ok(None);
        }
        if b[0] == MAGIC[matched] {
            matched += 1;
        } else {
            matched = usize::from(b[0] == MAGIC[0]);
        }
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    let n = read_len(r, 256 << 20, "a header")?;
    let mut header = vec![0u8; n];
    r.read_exact(&mut header)?;
    let header: J = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let count = read_len(r, 1 << 20, "a blob count")?;
    let mut blobs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let n = read_len(r, 1 << 32, "a blob")?;
        let mut v = vec![0u8; n];
        r.read_exact(&mut v)?;
        blobs.push(v);
    }
    Ok(Some(Frame {
        kind: kind[0],
        header,
        blobs,
    }))
}

pub fn outcome_to_json(o: &Outcome) -> J {
    match o {
        Outcome::Measured(m) => json!({ "time_ms": m.time_ms, "samples": m.samples }),
        Outcome::Failed(f) => json!({ "class": f.class.name(), "detail": f.detail }),
    }
}

pub fn outcome_from_json(v: &J) -> Outcome {
    if let Some(class) = v.get("class").and_then(J::as_str) {
        return Outcome::Failed(Failure {
            class: FailureClass::from_stored(class),
            detail: v
                .get("detail")
                .and_then(J::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    let samples: Vec<f64> = v
        .get("samples")
        .and_then(J::as_array)
        .map(|a| a.iter().filter_map(J::as_f64).collect())
        .unwrap_or_default();
    // JSON has no NaN: an untimed measurement comes back as null.
    let time_ms = v.get("time_ms").and_then(J::as_f64).unwrap_or(f64::NAN);
    Outcome::Measured(Measurement { time_ms, samples })
}

pub fn f64s_to_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_to_f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The spec's wire form.

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

fn toml_value(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => q(s),
    }
}

/// The spec as TOML text that [`KernelSpec::from_toml_str`] reads back into the same spec
/// (same id, same default), with the source to be supplied separately (`source = "inline"`).
pub fn spec_to_toml(spec: &KernelSpec) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "name = {}", q(&spec.name));
    let _ = writeln!(s, "source = \"inline\"");
    let _ = writeln!(s, "entry = {}", q(&spec.entry));
    let flags: Vec<String> = spec.flags.iter().map(|f| q(f)).collect();
    let _ = writeln!(s, "flags = [{}]", flags.join(", "));
    let _ = writeln!(s, "tolerance = {:?}", spec.tolerance);
    let dims: Vec<String> = spec
        .dims
        .iter()
        .map(|d| {
            let b = match &d.bucketing {
                Bucketing::Exact => q("exact"),
                Bucketing::NextPow2 => q("pow2"),
                Bucketing::Edges(e) => format!(
                    "[{}]",
                    e.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!("{{ name = {}, bucket = {b} }}", q(&d.name))
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
    let triple = |e: &[crate::expr::Expr; 3]| {
        format!(
            "[{}, {}, {}]",
            q(e[0].source()),
            q(e[1].source()),
            q(e[2].source())
        )
    };
    let _ = writeln!(s, "[launch]");
    let _ = writeln!(s, "grid = {}", triple(&spec.grid));
    let _ = writeln!(s, "block = {}", triple(&spec.block));
    let _ = writeln!(s, "shared_mem = {}", q(spec.shared_mem.source()));
    for a in &spec.args {
        let _ = writeln!(s, "[[args]]");
        let _ = writeln!(s, "name = {}", q(&a.name));
        if let Some(m) = &a.map {
            let list = |v: &[crate::expr::Expr]| {
                v.iter()
                    .map(|e| q(e.source()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(s, "role = \"tensor_map\"");
            let _ = writeln!(s, "of = {}", q(&spec.args[m.of].name));
            let _ = writeln!(s, "dims = [{}]", list(&m.dims));
            let _ = writeln!(s, "box = [{}]", list(&m.box_dims));
            let _ = writeln!(s, "swizzle = {}", q(m.swizzle.name()));
            continue;
        }
        let _ = writeln!(s, "type = {}", q(a.ty.name()));
        let role = a.role.name();
        let _ = writeln!(s, "role = {}", q(role));
        if a.role == Role::Scalar {
            let _ = writeln!(s, "value = {}", q(a.len.source()));
        } else {
            let _ = writeln!(s, "len = {}", q(a.len.source()));
        }
        match &a.init {
            Some(Generator::Uniform(lo, hi)) => {
                let _ = writeln!(s, "init = {}", q(&format!("uniform({lo:?}, {hi:?})")));
            }
            Some(Generator::IntRange(lo, hi)) => {
                let _ = writeln!(s, "init = {}", q(&format!("int({lo}, {hi})")));
            }
            None => {}
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

/// Rebuilds a spec from [`spec_to_toml`]'s text and its source; an error unless the result
/// has the id `expected` (the canonical form would not survive the trip: the worker would be
/// tuning another kernel) and the same default config.
pub fn spec_from_toml(toml: &str, source: &str, expected: &KernelSpec) -> Result<KernelSpec> {
    let spec = KernelSpec::from_toml_str(toml, &|_| Ok(source.to_string()))?;
    check_same(&spec, &expected.id().to_hex(), &expected.default)?;
    Ok(spec)
}

pub fn check_same(spec: &KernelSpec, id_hex: &str, default: &Config) -> Result<()> {
    if spec.id().to_hex() != id_hex || &spec.default != default {
        return Err(Error::InvalidArgument(format!(
            "kernel `{}` does not survive serialisation for a benchmark worker (id {} became {})",
            spec.name,
            id_hex,
            spec.id().to_hex()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernels() -> Vec<KernelSpec> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
        ["sgemm", "softmax", "layernorm", "reduction"]
            .iter()
            .map(|n| KernelSpec::from_toml_file(format!("{dir}/{n}.toml")).unwrap())
            .collect()
    }

    #[test]
    fn specs_survive_the_trip_to_a_worker() {
        for spec in kernels() {
            let text = spec_to_toml(&spec);
            let back = spec_from_toml(&text, &spec.source, &spec).unwrap();
            assert_eq!(back.id(), spec.id(), "{}", spec.name);
            assert_eq!(back.default, spec.default);
            assert_eq!(back.name, spec.name);
            assert_eq!(back.source, spec.source);
        }
    }

    #[test]
    fn a_changed_spec_is_refused() {
        let spec = &kernels()[0];
        let text = spec_to_toml(spec).replace("tolerance = ", "tolerance = 2.0 # ");
        assert!(spec_from_toml(&text, &spec.source, spec).is_err());
        let src = format!("{}\n// changed", spec.source);
        assert!(spec_from_toml(&spec_to_toml(spec), &src, spec).is_err());
    }

    #[test]
    fn frames_round_trip_through_noise() {
        let f = Frame::new(
            K_EVALUATE,
            json!({ "config": "A=1,B=\"x\"", "n": 3 }),
            vec![vec![1, 2, 3], vec![], vec![0xFF; 1000]],
        );
        let mut buf = b"test output JITUNE noise\n".to_vec();
        write_frame(&mut buf, &f).unwrap();
        write_frame(
            &mut buf,
            &Frame::new(K_READY, json!({ "ok": true }), vec![]),
        )
        .unwrap();
        let mut r = &buf[..];
        let back = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(back.kind, K_EVALUATE);
        assert_eq!(back.header, f.header);
        assert_eq!(back.blobs, f.blobs);
        assert_eq!(read_frame(&mut r).unwrap().unwrap().kind, K_READY);
        assert!(read_frame(&mut r).unwrap().is_none());
        // A frame cut short is an error, not a hang or a panic.
        let mut cut = Vec::new();
        write_frame(&mut cut, &f).unwrap();
        cut.truncate(cut.len() - 10);
        assert!(read_frame(&mut &cut[..]).is_err());
    }

    #[test]
    fn outcomes_and_init_round_trip() {
        let m = Outcome::Measured(Measurement {
            time_ms: 0.25,
            samples: vec![0.2, 0.25, 0.3],
        });
        assert_eq!(outcome_from_json(&outcome_to_json(&m)), m);
        for class in FailureClass::ALL {
            let f = Outcome::Failed(Failure {
                class,
                detail: "relative error 1e-2".into(),
            });
            assert_eq!(outcome_from_json(&outcome_to_json(&f)), f);
        }
        assert_eq!(
            bytes_to_f64s(&f64s_to_bytes(&[1.5, -2.0, f64::NAN]))[..2],
            [1.5, -2.0]
        );
        let init = Init {
            spec_toml: "name = \"k\"".into(),
            source: "src".into(),
            id_hex: "ab".into(),
            default: "A=1".into(),
            shape: vec![3, 4],
            ordinal: 1,
            reference_config: "A=2".into(),
            measure: MeasureOptions::default(),
            reference_image: vec![9, 9],
            reference_outputs: Some(vec![vec![1.0, 2.0], vec![3.0]]),
        };
        let back = Init::from_frame(&init.to_frame()).unwrap();
        assert_eq!(back.shape, init.shape);
        assert_eq!(back.reference_config, "A=2");
        assert_eq!(back.reference_image, vec![9, 9]);
        assert_eq!(back.reference_outputs, init.reference_outputs);
        assert_eq!(back.measure.max_reps, init.measure.max_reps);
    }
}
