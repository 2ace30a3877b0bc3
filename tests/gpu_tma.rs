//! GPU tests of tensor-map arguments (`role = "tensor_map"` in a spec): what jitune encodes and
//! how it reaches a kernel. The TMA GEMM that uses them (`kernels/hgemm_sm90_tma_*.toml`) is
//! checked against the CPU with the other wgmma specs in `gpu_hgemm.rs`.
//!
//! - Encoding: a map of a 4096 x 4096 f16 buffer encodes (non-zero), one whose rows are 4100
//!   elements long (8200 bytes, no multiple of 16) or whose base is not 16-byte aligned gives the
//!   all-zero fallback map, and a box the driver rejects is an error.
//! - The launch path: a tiny kernel echoes the 128 bytes of the `__grid_constant__` map it
//!   received; they equal the host's encoding of the caller's buffer (zeros at K = 4100), and
//!   100 launches on the hit path allocate nothing.
//!
//! Without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints why it skips and passes.

#[path = "gpu_common/mod.rs"]
mod gpu_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cudarc::driver::{CudaSlice, DevicePtr};
use gpu_common::{gpu_or_skip, tuner};
use jitune::internals::{encode_tiled, MapDims, TensorMapSlot};
use jitune::space::Param;
use jitune::spec::{ElemType, SpecBuilder, Swizzle};
use jitune::tuner::{Arg, Kernel, Mode};

/// Counts this thread's allocations (tests run in parallel threads).
struct Counting;
thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

#[test]
fn gpu_tensor_map_encoding_and_fallback() {
    if !gpu_or_skip("gpu_tensor_map_encoding_and_fallback") {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let buf: CudaSlice<u16> = stream.alloc_zeros(4100 * 4096 + 8).unwrap();
    let (ptr, _sync) = buf.device_ptr(&stream);
    assert_eq!(ptr % 256, 0, "cudaMalloc alignment");
    let mut slot = TensorMapSlot([1; 16]);
    let ok = encode_tiled(
        ElemType::F16,
        ptr,
        &MapDims::two_d(4096, 4096, 64, 128),
        Swizzle::B128,
        &mut slot,
    )
    .unwrap();
    assert!(ok, "a 4096 x 4096 f16 map encodes");
    assert!(!slot.is_zero());
    // B's box: 64 x 64.
    assert!(encode_tiled(
        ElemType::F16,
        ptr,
        &MapDims::two_d(4096, 4096, 64, 64),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    // K = 4100: rows of 8200 bytes, no multiple of 16: the zero map, no error.
    let ok = encode_tiled(
        ElemType::F16,
        ptr,
        &MapDims::two_d(4100, 4096, 64, 128),
        Swizzle::B128,
        &mut slot,
    )
    .unwrap();
    assert!(!ok);
    assert!(slot.is_zero());
    // A base that is only 2-byte aligned: the zero map.
    assert!(!encode_tiled(
        ElemType::F16,
        ptr + 2,
        &MapDims::two_d(4096, 4096, 64, 128),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    assert!(slot.is_zero());
    // An outer dim smaller than the box is fine (zero-filled reads).
    assert!(encode_tiled(
        ElemType::F16,
        ptr,
        &MapDims::two_d(4096, 1, 64, 128),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    // A box wider than the swizzle is an error, never a panic.
    assert!(encode_tiled(
        ElemType::F16,
        ptr,
        &MapDims::two_d(4096, 4096, 128, 64),
        Swizzle::B128,
        &mut slot
    )
    .is_err());
}

const ECHO: &str = r#"
struct __align__(64) Desc { unsigned long long w[16]; };
extern "C" __global__ void echo(const unsigned short* a, const __grid_constant__ Desc m,
                                long long* out)
{
    if (threadIdx.x < 16)
        out[threadIdx.x] = (long long)m.w[threadIdx.x];
}
"#;

#[test]
fn gpu_tensor_map_reaches_the_kernel_by_value_without_allocating() {
    if !gpu_or_skip("gpu_tensor_map_reaches_the_kernel_by_value_without_allocating") {
        return;
    }
    let tuner = tuner(Mode::CacheOnly, 1, 1.0);
    if tuner.gpu().expect("a GPU tuner has a GPU").limits.cc_major < 9 {
        println!("skipping: tensor maps need compute capability 9.0");
        return;
    }
    let spec = SpecBuilder::new("echo")
        .source(ECHO)
        .entry("echo")
        .param(Param::ints("R", &[8, 16]))
        .dim("M", jitune::key::Bucketing::Exact)
        .dim("K", jitune::key::Bucketing::Exact)
        .grid(["1", "1", "1"])
        .block(["32", "1", "1"])
        .arg_buffer("a", "f16", "in", "M * K", "")
        .arg_tensor_map("a_map", "a", &["K", "M"], &["64", "R"], "128B")
        .arg_buffer("out", "i64", "out", "16", "")
        .default_config(&[("R", "16")])
        .build()
        .unwrap();
    let kernel = Kernel::new(spec);
    let stream = tuner
        .gpu()
        .expect("a GPU tuner has a GPU")
        .ctx
        .default_stream();
    for (m, k, encodable) in [(64usize, 4096usize, true), (64, 4100, false)] {
        let a: CudaSlice<u16> = stream.alloc_zeros(m * k).unwrap();
        let mut out: CudaSlice<i64> = stream.clone_htod(&[-1i64; 16]).unwrap();
        let shape = [m as i64, k as i64];
        let launch = |out: &mut CudaSlice<i64>| {
            tuner
                .launch(
                    &kernel,
                    &stream,
                    &shape,
                    &mut [Arg::from(&a), Arg::from(out)],
                )
                .unwrap()
        };
        launch(&mut out);
        let echoed = stream.clone_dtoh(&out).unwrap();
        let (ptr, sync) = a.device_ptr(&stream);
        let mut host = TensorMapSlot::ZERO;
        let ok = encode_tiled(
            ElemType::F16,
            ptr,
            &MapDims::two_d(k as i64, m as i64, 64, 16),
            Swizzle::B128,
            &mut host,
        )
        .unwrap();
        drop(sync);
        assert_eq!(ok, encodable);
        let host: Vec<i64> = host.0.iter().map(|w| *w as i64).collect();
        assert_eq!(echoed, host, "K = {k}");
        assert_eq!(echoed.iter().all(|w| *w == 0), !encodable);
        // The hit path: no allocation per launch.
        let before = allocs();
        for _ in 0..100 {
            launch(&mut out);
        }
        let made = allocs() - before;
        stream.synchronize().unwrap();
        assert_eq!(made, 0, "{made} allocations in 100 launches");
        // Callers pass every argument but the map.
        let e = tuner
            .launch(&kernel, &stream, &shape, &mut [Arg::from(&a)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor maps are made by jitune"), "{e}");
    }
}
