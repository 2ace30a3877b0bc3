//! The one-line kernel both launch benches launch (`benches/launch.rs` on the GPU,
//! `benches/hit_path.rs` short of the driver), so both time the same spec and arguments.

use jitune::key::Bucketing;
use jitune::space::Param;
use jitune::spec::{ElemType, SpecBuilder};
use jitune::tuner::{Arg, Kernel};

const SRC: &str = r#"extern "C" __global__ void tiny(const float* x, float* y, int n) {
    int i = blockIdx.x * B + threadIdx.x;
    if (i < n) y[i] = x[i] + 1.0f;
}"#;

/// `y[i] = x[i] + 1` over `n` floats, one parameter (the block size `B`), `n` bucketed by
/// powers of two.
pub fn kernel() -> jitune::Result<Kernel> {
    let spec = SpecBuilder::new("tiny")
        .source(SRC)
        .entry("tiny")
        .param(Param::ints("B", &[32, 64, 128]))
        .dim("n", Bucketing::NextPow2)
        .grid(["ceil_div(n, B)", "1", "1"])
        .block(["B", "1", "1"])
        .arg_buffer("x", "f32", "in", "n", "uniform(-1, 1)")
        .arg_buffer("y", "f32", "out", "n", "")
        .arg_scalar("n", "i32", "n")
        .default_config(&[("B", "64")])
        .build()?;
    Ok(Kernel::new(spec))
}

/// The kernel's arguments as raw device pointers (what a caller holding `data_ptr`s passes).
///
/// # Safety
/// If the arguments are launched, `x` and `y` must be live allocations of `n` f32 each on the
/// launch's context, ordered on its stream (the hit-path bench only checks and lays them out).
pub unsafe fn raw_args(x: u64, y: u64, n: usize) -> [Arg<'static>; 3] {
    unsafe {
        [
            Arg::from_raw(x, n, ElemType::F32),
            Arg::from_raw_mut(y, n, ElemType::F32),
            Arg::from(n as i32),
        ]
    }
}

/// The median (the middle element after sorting).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
