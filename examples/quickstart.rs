//! The main job: load the shipped SGEMM spec, show its space and id, and (with a GPU) tune and
//! launch it. Without a GPU or without the CUDA libraries it says why in one line and exits 2.

use std::process::ExitCode;

use jitune::spec::{DeviceLimits, KernelSpec};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> jitune::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml");
    let spec = KernelSpec::from_toml_file(path)?;
    let shape = [4096, 4096, 4096];
    let space = spec.space_for(&shape, &DeviceLimits::h100())?;
    println!(
        "spec {} id {} ({} parameters, {} valid configs of {} at 4096^3)",
        spec.name,
        spec.id().short(),
        spec.params.len(),
        space.count(),
        space.raw_size()
    );
    jitune::gpu::require_cuda()?;
    Err(jitune::Error::NoCuda(
        "the GPU engine is not built yet".into(),
    ))
}
