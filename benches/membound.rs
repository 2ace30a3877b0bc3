//! Memory-bound kernels against the hardware's limit: softmax, layernorm and reduction tuned at
//! large sizes, each timed against a device-to-device copy of the same traffic in the same run
//! with the same method (cold L2 before every run, CUDA events, warm-up, median, interleaved).
//!
//! Bandwidth counts compulsory traffic only: bytes every correct kernel must read plus bytes it
//! must write (softmax and layernorm: x read once, y written once, plus gamma/beta; reduction: x
//! read once). A copy of B bytes moves 2B (read + write), so the copy is sized to the kernel's
//! traffic and "% of copy" compares like with like. Multi-pass kernels that re-read x from L2 or
//! DRAM are not credited for the extra bytes.
//!
//!     cargo bench --bench membound [-- --kernels softmax,layernorm,reduction --tune-s 12]
//!
//! Environment variables MEMBOUND_KERNELS and MEMBOUND_TUNE_S work too. The cache is memory-only:
//! nothing from earlier runs is reused. Without a GPU it prints why and exits 0.

#[path = "../examples/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::{cuda, Timer};
use cudarc::driver::{CudaSlice, CudaStream};
use jitune::cache::Cache;
use jitune::internals::median;
use jitune::internals::Rng;
use jitune::spec::{ElemType, Role};
use jitune::tuner::{Arg, Kernel, Mode, TuneOptions, Tuner};
use jitune::{Error, Result};

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("membound bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("membound: {e}");
        std::process::exit(1);
    }
}

/// Buffers for any spec whose buffers are FP32 and scalars integers, laid out from the spec's
/// own argument descriptions (lengths and scalar values at this shape).
struct SpecBuffers {
    bufs: Vec<Option<CudaSlice<f32>>>,
    scalars: Vec<i64>,
    /// Compulsory traffic in bytes: inputs read once, outputs written once.
    bytes: f64,
}

impl SpecBuffers {
    fn new(
        tuner: &Tuner,
        kernel: &Kernel,
        shape: &[i64],
        stream: &Arc<CudaStream>,
    ) -> Result<Self> {
        let spec = &kernel.spec;
        let mut rng = Rng::new(1);
        let (mut bufs, mut scalars, mut bytes) = (Vec::new(), Vec::new(), 0.0);
        for a in &spec.args {
            let v = spec.arg_value(
                a,
                shape,
                &tuner.gpu().expect("a GPU tuner has a GPU").limits,
            )?;
            if a.role == Role::Scalar {
                bufs.push(None);
                scalars.push(v);
                continue;
            }
            if a.ty != ElemType::F32 {
                return Err(Error::InvalidArgument(format!(
                    "{}: argument `{}` is {}, this bench handles f32 buffers only",
                    spec.name,
                    a.name,
                    a.ty.name()
                )));
            }
            let n = v.max(1) as usize;
            bytes += (n * 4) as f64;
            let host: Vec<f32> = (0..n).map(|_| 2.0 * rng.next_f64() as f32 - 1.0).collect();
            bufs.push(Some(
                stream.clone_htod(&host).map_err(cuda("uploading inputs"))?,
            ));
            scalars.push(0);
        }
        Ok(SpecBuffers {
            bufs,
            scalars,
            bytes,
        })
    }

    fn launch(
        &mut self,
        tuner: &Tuner,
        kernel: &Kernel,
        stream: &CudaStream,
        shape: &[i64],
    ) -> Result<()> {
        let mut args: Vec<Arg<'_>> = Vec::with_capacity(self.bufs.len());
        for ((b, s), a) in self
            .bufs
            .iter_mut()
            .zip(&self.scalars)
            .zip(&kernel.spec.args)
        {
            match (b, a.role) {
                (Some(b), Role::In) => args.push(Arg::from(&*b)),
                (Some(b), _) => args.push(Arg::from(b)),
                (None, _) => args.push(Arg::Int(*s)),
            }
        }
        tuner.launch(kernel, stream, shape, &mut args)
    }
}

fn run() -> Result<()> {
    let which = common::option("--kernels", "MEMBOUND_KERNELS")
        .unwrap_or_else(|| "softmax,layernorm,reduction".into());
    let tune_s: f64 = common::num_option("--tune-s", "MEMBOUND_TUNE_S", 12.0)?;
    let all: [(&str, Vec<Vec<i64>>); 3] = [
        ("softmax", vec![vec![16384, 4096], vec![65536, 1024]]),
        ("layernorm", vec![vec![16384, 4096], vec![65536, 1024]]),
        ("reduction", vec![vec![1 << 28], vec![1 << 26]]),
    ];
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda("opening device 0"))?;
    let tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    tuner.set_tune_options(TuneOptions {
        max_evals: 500,
        max_time_s: Some(tune_s),
        ..Default::default()
    });
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let mut timer = Timer::new(
        &ctx,
        stream.clone(),
        tuner.gpu().expect("a GPU tuner has a GPU").limits.l2_bytes,
    )?;
    println!(
        "device {}; tuning budget {tune_s} s per shape (memory-only cache)",
        tuner.fingerprint().to_text()
    );
    println!(
        "\n{:<10} {:>12} {:>9} {:>9} {:>9} {:>7} {:>8} {:>5}  config",
        "kernel", "shape", "ms", "GB/s", "copy GB/s", "% copy", "tuning", "evals"
    );
    for (name, shapes) in all {
        if !which.split(',').any(|w| w.trim() == name) {
            continue;
        }
        let kernel = common::kernel(name)?;
        for shape in shapes {
            let mut bufs = SpecBuffers::new(&tuner, &kernel, &shape, &stream)?;
            let report = tuner.tune(&kernel, &shape)?;
            // The copy moves the kernel's traffic: half read, half written.
            let half = (bufs.bytes / 2.0) as usize;
            let src = stream
                .alloc_zeros::<u8>(half)
                .map_err(cuda("allocating the copy source"))?;
            let mut dst = stream
                .alloc_zeros::<u8>(half)
                .map_err(cuda("allocating the copy target"))?;
            let s = timer.compare(2, &mut |i, st| {
                if i == 0 {
                    bufs.launch(&tuner, &kernel, st, &shape)
                } else {
                    st.memcpy_dtod(&src, &mut dst).map_err(cuda("copying"))
                }
            })?;
            let (ms, copy_ms) = (median(&s[0]), median(&s[1]));
            let gbs = bufs.bytes / ms / 1e6;
            let copy_gbs = 2.0 * half as f64 / copy_ms / 1e6;
            let config = tuner
                .plan(&kernel, &shape)
                .map(|p| p.config.clone())
                .unwrap_or_default();
            println!(
                "{:<10} {:>12} {:>9.4} {:>9.0} {:>9.0} {:>6.0}% {:>6.1} s {:>5}  {}",
                name,
                common::shape_text(&shape),
                ms,
                gbs,
                copy_gbs,
                100.0 * gbs / copy_gbs,
                report.wall_s,
                report.entry.evaluated,
                config
            );
        }
    }
    Ok(())
}
