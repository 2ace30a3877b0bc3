//! `jitune prune`: removes cache entries that can no longer be used. An entry is pruned when its
//! kernel id is not the id of any given spec (the kernel is gone, or its spec changed so its id
//! did), or, with `--this-gpu`, when it was measured on this GPU model under another fingerprint
//! (driver, NVRTC or SM count changed). Its failure records go too, and binaries of kernel ids
//! no spec has.
//!
//! The store has no delete API, so this module deletes with its own SQLite connection, in one
//! `BEGIN IMMEDIATE` transaction, after `Store::open_rw_strict` has checked the schema.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{cache_path, exit, input_err, open_writable, print_json, CliError, CliResult};
use jitune::cache::Entry;
use jitune::key::KernelId;
use jitune::spec::KernelSpec;
use jitune::Error;

/// Arguments of `jitune prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The current kernel specs (e.g. kernels/*.toml): entries of other kernel ids are pruned.
    #[arg(value_name = "SPEC.toml", required_unless_present = "this_gpu")]
    pub specs: Vec<PathBuf>,
    /// Also prune entries of this GPU's model whose fingerprint differs from this GPU's (needs
    /// CUDA); the value is the device ordinal.
    #[arg(long, value_name = "ORDINAL")]
    pub this_gpu: Option<usize>,
    /// Only say what would be pruned.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Why an entry goes.
fn reason(
    e: &Entry,
    specs: &Option<BTreeMap<KernelId, String>>,
    names: &BTreeSet<String>,
    gpu: &Option<jitune::key::DeviceFingerprint>,
) -> Option<String> {
    if let Some(ids) = specs {
        if !ids.contains_key(&e.key.kernel) {
            return Some(if names.contains(&e.kernel_name) {
                "kernel changed (spec id differs)".into()
            } else {
                "kernel gone (no spec)".into()
            });
        }
    }
    if let Some(fp) = gpu {
        if e.device.name == fp.name && e.key.device != fp.hash64() {
            return Some(format!("stale fingerprint (this GPU is {})", fp.to_text()));
        }
    }
    None
}

/// Runs `jitune prune`.
pub fn run(cache: Option<PathBuf>, args: PruneArgs) -> CliResult {
    let path = cache_path(cache)?;
    if !path.exists() {
        return Err(CliError::new(
            exit::CACHE,
            format!("cache file {} does not exist", path.display()),
        ));
    }
    let specs = if args.specs.is_empty() {
        None
    } else {
        let mut ids = BTreeMap::new();
        for p in &args.specs {
            let s = KernelSpec::from_toml_file(p).map_err(input_err)?;
            ids.insert(s.id(), s.name.clone());
        }
        Some(ids)
    };
    let names: BTreeSet<String> = specs.iter().flat_map(|m| m.values().cloned()).collect();
    let gpu = match args.this_gpu {
        Some(ordinal) => {
            jitune::require_cuda()?;
            Some(jitune::Gpu::new(ordinal)?.fingerprint)
        }
        None => None,
    };
    let store = open_writable(&path)?;
    let entries = store.entries()?;
    let doomed: Vec<(&Entry, String)> = entries
        .iter()
        .filter_map(|e| reason(e, &specs, &names, &gpu).map(|r| (e, r)))
        .collect();
    let kept_ids: BTreeSet<KernelId> = entries
        .iter()
        .filter(|e| !doomed.iter().any(|(d, _)| d.key == e.key))
        .map(|e| e.key.kernel)
        .chain(specs.iter().flat_map(|m| m.keys().copied()))
        .collect();
    drop(store);
    if !args.dry_run && !doomed.is_empty() {
        delete(&path, &doomed, &kept_ids, specs.is_some())?;
    }
    if args.json {
        let list: Vec<serde_json::Value> = doomed
            .iter()
            .map(|(e, r)| {
                serde_json::json!({"key": e.key.display(), "kernel_name": e.kernel_name, "reason": r})
            })
            .collect();
        return print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "pruned": list,
            "kept": entries.len() - doomed.len(),
        }));
    }
    let verb = if args.dry_run {
        "would prune"
    } else {
        "pruned"
    };
    for (e, r) in &doomed {
        println!("{verb} {} ({}): {r}", e.key.display(), e.kernel_name);
    }
    println!(
        "{verb} {} of {} entries in {}",
        doomed.len(),
        entries.len(),
        path.display()
    );
    Ok(())
}

fn delete(
    path: &std::path::Path,
    doomed: &[(&Entry, String)],
    kept_ids: &BTreeSet<KernelId>,
    prune_binaries: bool,
) -> CliResult {
    let serr = |e: rusqlite::Error| CliError::from(Error::sqlite(path.display().to_string(), e));
    let mut conn = rusqlite::Connection::open(path).map_err(serr)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(serr)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(serr)?;
    for (e, _) in doomed {
        let params = rusqlite::params![
            e.key.kernel.to_hex(),
            e.key.shape.to_text(),
            e.key.device as i64
        ];
        tx.execute(
            "DELETE FROM entries WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3",
            params,
        )
        .map_err(serr)?;
        tx.execute(
            "DELETE FROM failures WHERE kernel_id = ?1 AND shape = ?2 AND device_hash = ?3",
            params,
        )
        .map_err(serr)?;
    }
    if prune_binaries {
        let ids: Vec<String> = {
            let mut st = tx
                .prepare("SELECT DISTINCT kernel_id FROM binaries")
                .map_err(serr)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(serr)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(serr)?
        };
        for id in ids {
            let keep = KernelId::from_hex(&id).is_some_and(|k| kept_ids.contains(&k));
            if !keep {
                tx.execute("DELETE FROM binaries WHERE kernel_id = ?1", [&id])
                    .map_err(serr)?;
            }
        }
    }
    tx.commit().map_err(serr)?;
    Ok(())
}
