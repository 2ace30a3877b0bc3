//! `jitune explain KERNEL/SHAPE`: what a launch on this GPU (or on the one `--device` describes,
//! no GPU needed) would do for that kernel and shape with this cache, and why: the decision the
//! library takes on a miss ([`jitune::cache::decide`]), with the entries it considered.
//!
//! KERNEL is a spec file (`kernels/sgemm.toml`: its id, and its bucketing applied to SHAPE) or a
//! kernel name or id prefix known to the cache (SHAPE is then taken as a bucket, as `show`
//! prints it).

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use super::{exit, load_cache, print_json, CliError, CliResult};
use jitune::cache::{Cache, Decision, Entry};
use jitune::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey};
use jitune::spec::KernelSpec;

/// `jitune explain` arguments.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// `KERNEL/SHAPE`: a spec file, kernel name or id prefix, then the shape (`1024x1024x1024`).
    pub key: String,
    /// Explain for this fingerprint (`NAME|sm_XY|N SMs|nvrtc A.B[|driver A.B]`) instead of this
    /// machine's GPU.
    #[arg(long, value_name = "FINGERPRINT")]
    pub device: Option<String>,
    /// JSON output: one object with `decision` (hit, inherited, provisional, nearest, default)
    /// and `from` (the key of the entry used, null for default).
    #[arg(long)]
    pub json: bool,
}

/// Runs `jitune explain`.
pub fn run(cache: Option<PathBuf>, args: ExplainArgs) -> CliResult {
    let (kernel_part, shape_part) = args.key.rsplit_once('/').ok_or_else(|| {
        CliError::new(
            exit::USAGE,
            format!(
                "`{}` is not KERNEL/SHAPE, e.g. sgemm/1024x1024x1024",
                args.key
            ),
        )
    })?;
    let dims: Option<Vec<i64>> = shape_part.split('x').map(|d| d.parse().ok()).collect();
    let dims = dims.filter(|d| !d.is_empty()).ok_or_else(|| {
        CliError::new(
            exit::USAGE,
            format!("shape `{shape_part}` is not like 1024x1024x1024"),
        )
    })?;
    let device = match &args.device {
        Some(text) => DeviceFingerprint::from_text(text).ok_or_else(|| {
            CliError::new(
                exit::USAGE,
                format!("--device `{text}` is not `NAME|sm_XY|N SMs|nvrtc A.B[|driver A.B]`"),
            )
        })?,
        None => {
            jitune::require_cuda()?;
            jitune::Gpu::new(0)?.fingerprint
        }
    };
    let (_, snap) = load_cache(cache)?;
    let (name, kernel, bucket) = resolve_kernel(kernel_part, &dims, &snap.entries)?;
    let key = TuningKey {
        kernel,
        shape: bucket,
        device: device.hash64(),
    };
    let mem = Cache::memory_only();
    for e in snap.entries {
        mem.put(e)?;
    }
    let ex = mem.explain(&key, &device)?;
    let key_text = format!("{name}/{}/{:016x}", bucket.to_text(), key.device);
    if args.json {
        let considered: Vec<Value> = ex
            .chain
            .iter()
            .map(|(d, e)| {
                json!({
                    "decision": d.name(),
                    "key": e.key.display(),
                    "device": e.device.to_text(),
                    "shape": e.key.shape.to_text(),
                    "config": e.config,
                    "median_ms": e.median_ms,
                })
            })
            .collect();
        return print_json(&json!({
            "key": key_text,
            "kernel": name,
            "shape": bucket.to_text(),
            "device": device.to_text(),
            "decision": ex.decision.name(),
            "from": ex.from.as_ref().map(|e| e.key.display()),
            "config": ex.from.as_ref().map(|e| e.config.clone()),
            "explanation": ex.text(),
            "considered": considered,
        }));
    }
    println!("key:       {key_text}");
    println!("device:    {}", device.to_text());
    println!("decision:  {}", ex.decision.name());
    if let Some(e) = &ex.from {
        println!("from:      {} ({})", e.key.display(), e.device.to_text());
        println!("config:    {}", e.config);
    }
    println!("why:       {}", ex.text());
    let rest: Vec<&(Decision, std::sync::Arc<Entry>)> = ex.chain.iter().skip(1).collect();
    if !rest.is_empty() {
        println!("also considered:");
        for (d, e) in rest {
            println!(
                "  {:<12} {}  {}  {:.4} ms  {}",
                d.name(),
                e.key.display(),
                e.device.to_text(),
                e.median_ms,
                e.config
            );
        }
    }
    Ok(())
}

/// The kernel's name, id and the shape's bucket, from a spec file or from the cache's entries.
fn resolve_kernel(
    pat: &str,
    dims: &[i64],
    entries: &[Entry],
) -> CliResult<(String, KernelId, ShapeBucket)> {
    let bad_shape = || CliError::new(exit::USAGE, format!("shape {dims:?} has too many dims"));
    if pat.ends_with(".toml") {
        let spec = KernelSpec::from_toml_file(pat).map_err(super::input_err)?;
        let bucket = spec.bucket(dims).ok_or_else(|| {
            CliError::new(
                exit::USAGE,
                format!(
                    "kernel `{}` takes {} dims, got {}",
                    spec.name,
                    spec.dims.len(),
                    dims.len()
                ),
            )
        })?;
        return Ok((spec.name.clone(), spec.id(), bucket));
    }
    let bucket = ShapeBucket::new(dims).ok_or_else(bad_shape)?;
    let mut ids: Vec<(KernelId, &str)> = entries
        .iter()
        .filter(|e| super::kernel_matches(e, pat))
        .map(|e| (e.key.kernel, e.kernel_name.as_str()))
        .collect();
    ids.sort();
    ids.dedup_by_key(|(id, _)| *id);
    match ids.as_slice() {
        [(id, name)] => Ok((name.to_string(), *id, bucket)),
        [] => {
            // Unknown to the cache: its decision is `default`; the id stays unknown.
            Ok((pat.to_string(), KernelId([0; 32]), bucket))
        }
        many => Err(CliError::new(
            exit::USAGE,
            format!(
                "`{pat}` names {} kernel ids in the cache ({}); give an id prefix or the spec file",
                many.len(),
                many.iter()
                    .map(|(id, _)| id.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
