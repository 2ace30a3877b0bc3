//! Tuning ahead of a release: tune a fixed list of kernels and shapes on this GPU, then export a
//! read-only cache to ship with the application (`tuned.sqlite`, with a reviewable
//! `tuned.json` beside it). `examples/ship_serve.rs` is the application side: it opens the
//! file as a shipped layer with tuning disabled and proves every launch used the shipped winner.
//!
//! The export keeps the winners, the failure records (so a later re-tune skips known-bad
//! configs) and only the winners' CUBINs: the application loads them instead of compiling, and
//! the hundreds of other binaries compiled while tuning stay behind.
//!
//!     cargo run --release --example ship [-- --dir DIR --tune-s 10]
//!     cargo run --release --example ship_serve [-- --dir DIR]
//!
//! DIR defaults to `jitune-ship` in the temporary directory. Without a GPU it says why in one
//! line and exits with status 2.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;

use common::cuda;
use jitune::cache::export::Snapshot;
use jitune::cache::{Cache, CacheOptions};
use jitune::tuner::{Mode, TuneOptions, Tuner};
use jitune::{Error, Result};

fn main() -> ExitCode {
    jitune::run_if_worker();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ship: {e}");
            ExitCode::from(2)
        }
    }
}

fn file_size(p: &std::path::Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{:.1} KiB", m.len() as f64 / 1024.0))
        .unwrap_or_else(|_| "?".into())
}

fn run() -> Result<()> {
    let tune_s: f64 = common::num_option("--tune-s", "JITUNE_SHIP_TUNE_S", 10.0)?;
    let mut list = Vec::new();
    for (name, shapes) in common::ship_list() {
        if let Some(k) = common::optional_kernel(name)? {
            list.push((k, shapes));
        }
    }
    jitune::require_cuda()?;
    let dir = common::ship_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // A fresh build cache: what ships is exactly what this run tuned.
    let build = dir.join("build-cache.sqlite");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = build.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda("opening device 0"))?;
    let tuner = Tuner::with_context(ctx, Cache::open(CacheOptions::at(&build))?, Mode::Blocking)?;
    let store = tuner.cache().user_store().ok_or_else(|| {
        Error::store(format!(
            "cannot write the build cache {}: {}",
            build.display(),
            tuner.cache().degraded().unwrap_or("unknown reason")
        ))
    })?;
    tuner.set_tune_options(TuneOptions {
        max_evals: 200,
        max_time_s: Some(tune_s),
        ..Default::default()
    });
    println!(
        "device {}; tuning {} shapes, {tune_s} s each",
        tuner.fingerprint().to_text(),
        list.iter().map(|(_, s)| s.len()).sum::<usize>()
    );
    for (kernel, shapes) in &list {
        tuner.warmup(kernel, shapes, |done, total, report| {
            if let Some(r) = report {
                println!(
                    "  {:<10} {}/{}: {} {:.4} ms ({} configs, {:.1} s)",
                    kernel.spec.name,
                    done,
                    total,
                    r.entry.config,
                    r.entry.median_ms,
                    r.entry.evaluated,
                    r.wall_s
                );
            }
        })?;
    }

    let mut snap = Snapshot::from_store(store)?;
    let all_binaries = snap.binaries.len();
    snap.retain_winner_binaries();
    let shipped = dir.join("tuned.sqlite");
    let json = dir.join("tuned.json");
    snap.write_sqlite(&shipped)?;
    snap.write_json(&json)?;
    println!(
        "\nshipped cache: {} ({}): {} winners, {} failure records, {} of {} CUBINs (the winners')",
        shipped.display(),
        file_size(&shipped),
        snap.entries.len(),
        snap.failures.len(),
        snap.binaries.len(),
        all_binaries
    );
    println!("for review:    {} ({})", json.display(), file_size(&json));
    for e in &snap.entries {
        println!(
            "  {:<10} {:<16} {:<52} {:.4} ms",
            e.kernel_name,
            e.key.shape.to_text(),
            e.config,
            e.median_ms
        );
    }
    println!(
        "\nnext: cargo run --release --example ship_serve -- --dir {}",
        dir.display()
    );
    Ok(())
}
