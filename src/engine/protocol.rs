//! The benchmark worker protocol: what the host and its worker say to each other on the pipes.
//!
//! Frames: magic, a kind byte, a length-prefixed JSON header and a counted list of
//! length-prefixed binary blobs (images, reference outputs). Readers skip anything before the
//! magic, so stray output of the worker's program cannot derail the protocol; every length is
//! bounded before anything is allocated. The start-up message is a typed [`Init`], written and
//! read here, so host and worker cannot disagree on its fields.
//!
//! The host sends the spec in its wire form ([`crate::spec::wire`]: TOML text, with the source
//! beside it in the frame); the worker rebuilds the spec and checks that its id is the host's
//! before measuring anything.

use std::io::{Read, Write};

use serde_json::{json, Value as J};

use super::evaluator::MeasureOptions;
use crate::failure::FailureClass;
use crate::search::evaluator::{Failure, Measurement, Outcome};
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
                "first_budget_ms": m.budget_ms,
                "min_reps": m.min_reps,
                "max_reps": m.max_reps,
                // JSON has no infinity: "measure fully" travels as null.
                "too_slow_factor": m.too_slow_factor.is_finite().then_some(m.too_slow_factor),
                "stable_within": m.stable_within,
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
            budget_ms: m
                .get("first_budget_ms")
                .and_then(J::as_f64)
                .unwrap_or(d.budget_ms),
            min_reps: m
                .get("min_reps")
                .and_then(J::as_u64)
                .map_or(d.min_reps, |v| v as usize),
            max_reps: m
                .get("max_reps")
                .and_then(J::as_u64)
                .map_or(d.max_reps, |v| v as usize),
            too_slow_factor: match m.get("too_slow_factor") {
                Some(J::Null) => f64::INFINITY,
                v => v.and_then(J::as_f64).unwrap_or(d.too_slow_factor),
            },
            stable_within: m
                .get("stable_within")
                .and_then(J::as_f64)
                .unwrap_or(d.stable_within),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(back.measure.stable_within, init.measure.stable_within);
        assert_eq!(back.measure.too_slow_factor, init.measure.too_slow_factor);
        // "Measure fully" (an infinite factor) survives JSON, which has no infinity.
        let full = Init {
            measure: MeasureOptions {
                too_slow_factor: f64::INFINITY,
                stable_within: 0.05,
                ..MeasureOptions::default()
            },
            reference_outputs: None,
            ..init
        };
        let back = Init::from_frame(&full.to_frame()).unwrap();
        assert_eq!(back.measure.too_slow_factor, f64::INFINITY);
        assert_eq!(back.measure.stable_within, 0.05);
        assert!(back.reference_outputs.is_none());
    }
}
