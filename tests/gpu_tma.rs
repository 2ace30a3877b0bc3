//! GPU tests of tensor-map arguments and the TMA wgmma GEMM (`kernels/hgemm_sm90_tma_f16.toml`,
//! `kernels/hgemm_sm90_tma_bf16.toml`).
//!
//! - Encoding: a map of a 4096 x 4096 f16 buffer encodes (non-zero), one whose rows are 4100
//!   elements long (8200 bytes, no multiple of 16) or whose base is not 16-byte aligned gives the
//!   all-zero fallback map, and a box the driver rejects is an error.
//! - The default config, launched untuned through `Tuner::launch` (CacheOnly) with the same six
//!   arguments as the cp.async spec (jitune makes the maps), matches a CPU float64 product at
//!   512^3, 257 x 129 x 200 (N % 8 != 0: B's map is zeros, the kernel falls back to cp.async),
//!   1 x 4096 x 4096 (boxes of BM rows over a 1-row A: zero-filled) and 4096^3 (sampled rows).
//! - About 20 random configs per shape agree with that default through the tuner's own
//!   correctness gate (`GpuEvaluator`, whose benchmark buffers get maps of their own).
//!
//! - The launch path: a tiny kernel echoes the 128 bytes of the `__grid_constant__` map it
//!   received; they equal the host's encoding of the caller's buffer (zeros at K = 4100), and
//!   100 launches on the hit path allocate nothing.
//!
//! Without `JITUNE_GPU_TESTS=1` and the CUDA libraries each test prints why it skips and passes;
//! the GEMM test also skips on devices other than compute capability 9.0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

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

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use jitune::cache::Cache;
use jitune::gpu::evaluator::GpuEvaluator;
use jitune::gpu::measure::{f32_to_bf16, f32_to_f16, to_f64};
use jitune::gpu::pool::CompilePool;
use jitune::gpu::tensor_map::{encode_tiled, MapDims, TensorMapSlot};
use jitune::rng::Rng;
use jitune::search::evaluator::{Evaluator, FailureClass, Outcome};
use jitune::space::Param;
use jitune::spec::{ElemType, SpecBuilder, Swizzle};
use jitune::tuner::{Arg, Kernel, Mode, Tuner};

fn gpu_or_skip(test: &str) -> bool {
    match jitune::gpu::gpu_tests_enabled() {
        Ok(()) => true,
        Err(why) => {
            println!("skipping {test}: {why}");
            false
        }
    }
}

fn kernel(name: &str) -> Kernel {
    let path = format!("{}/kernels/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Kernel::from_toml_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dims2(inner: i64, outer: i64, b0: i64, b1: i64) -> MapDims {
    MapDims {
        rank: 2,
        dims: [inner, outer, 0, 0, 0],
        box_dims: [b0, b1, 0, 0, 0],
    }
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
        &dims2(4096, 4096, 64, 128),
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
        &dims2(4096, 4096, 64, 64),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    // K = 4100: rows of 8200 bytes, no multiple of 16: the zero map, no error.
    let ok = encode_tiled(
        ElemType::F16,
        ptr,
        &dims2(4100, 4096, 64, 128),
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
        &dims2(4096, 4096, 64, 128),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    assert!(slot.is_zero());
    // An outer dim smaller than the box is fine (zero-filled reads).
    assert!(encode_tiled(
        ElemType::F16,
        ptr,
        &dims2(4096, 1, 64, 128),
        Swizzle::B128,
        &mut slot
    )
    .unwrap());
    // A box wider than the swizzle is an error, never a panic.
    assert!(encode_tiled(
        ElemType::F16,
        ptr,
        &dims2(4096, 4096, 128, 64),
        Swizzle::B128,
        &mut slot
    )
    .is_err());
}

fn random_half(ty: ElemType, n: usize, seed: u64) -> (Vec<u16>, Vec<f64>) {
    let mut r = Rng::new(seed);
    let bits: Vec<u16> = (0..n)
        .map(|_| {
            let x = (r.next_f64() * 2.0 - 1.0) as f32;
            match ty {
                ElemType::Bf16 => f32_to_bf16(x),
                _ => f32_to_f16(x),
            }
        })
        .collect();
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let values = to_f64(ty, &bytes);
    (bits, values)
}

/// Rows `rows` of A * B in float64.
fn cpu_rows(a: &[f64], b: &[f64], rows: &[usize], n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; rows.len() * n];
    for (ri, &i) in rows.iter().enumerate() {
        for p in 0..k {
            let av = a[i * k + p];
            let row = &b[p * n..(p + 1) * n];
            for (cv, bv) in c[ri * n..(ri + 1) * n].iter_mut().zip(row) {
                *cv += av * bv;
            }
        }
    }
    c
}

/// Launches the default config through `tuner.launch` on random inputs and compares (all rows,
/// or 64 sampled rows when M * N * K is large) with the CPU; returns the relative L2 error.
fn check(tuner: &Tuner, kernel: &Kernel, ty: ElemType, (m, n, k): (usize, usize, usize)) -> f64 {
    let stream: Arc<CudaStream> = tuner.gpu().ctx.default_stream();
    let seed = (m * 1_000_003 + n * 1009 + k) as u64;
    let (a_bits, a) = random_half(ty, m * k, seed);
    let (b_bits, b) = random_half(ty, k * n, seed + 1);
    let da: CudaSlice<u16> = stream.clone_htod(&a_bits).unwrap();
    let db: CudaSlice<u16> = stream.clone_htod(&b_bits).unwrap();
    let mut dc: CudaSlice<f32> = stream.clone_htod(&vec![f32::NAN; m * n]).unwrap();
    let shape = [m as i64, n as i64, k as i64];
    tuner
        .launch(
            kernel,
            &stream,
            &shape,
            &mut [
                Arg::from(&da),
                Arg::from(&db),
                Arg::from(&mut dc),
                Arg::from(m as i32),
                Arg::from(n as i32),
                Arg::from(k as i32),
            ],
        )
        .unwrap_or_else(|e| panic!("{} {shape:?}: {e}", kernel.spec.name));
    let out = stream.clone_dtoh(&dc).unwrap();
    let rows: Vec<usize> = if m * n * k > (1 << 28) {
        let mut r = Rng::new(seed + 2);
        let mut v: Vec<usize> = (0..64).map(|_| r.below(m as u64) as usize).collect();
        v.extend([0, m - 1]);
        v
    } else {
        (0..m).collect()
    };
    let reference = cpu_rows(&a, &b, &rows, n, k);
    let (mut num, mut den) = (0.0, 0.0);
    for (ri, &i) in rows.iter().enumerate() {
        for j in 0..n {
            let o = out[i * n + j];
            assert!(
                o.is_finite(),
                "{shape:?}: non-finite output {o} at ({i}, {j})"
            );
            let r = reference[ri * n + j];
            num += (o as f64 - r).powi(2);
            den += r * r;
        }
    }
    let err = (num / f64::max(den, f64::MIN_POSITIVE)).sqrt();
    let plan = tuner.plan(kernel, &shape).expect("a plan after the launch");
    println!(
        "{} {shape:?}: config {}, relative error {err:.2e} ({} rows checked)",
        kernel.spec.name,
        plan.config,
        rows.len()
    );
    assert!(
        err < 5e-4,
        "{} {shape:?}: relative error {err}",
        kernel.spec.name
    );
    err
}

/// About 20 random configs of `name` at `shape` through a `GpuEvaluator` (reference: the
/// spec's default config): wrong results and compile errors fail.
fn agree(gpu: &Arc<jitune::gpu::device::Gpu>, name: &str, shape: [i64; 3]) {
    let k = kernel(name);
    let mut eval = GpuEvaluator::new(
        gpu.clone(),
        k.spec.clone(),
        &shape,
        Arc::new(Cache::memory_only()),
        Arc::new(CompilePool::default_sized()),
    )
    .unwrap();
    eval.options.too_slow_factor = 1e9;
    let space = eval.space().clone();
    let mut rng = Rng::new(11 + shape[0] as u64);
    let mut batch = Vec::new();
    for _ in 0..2000 {
        if batch.len() == 20 {
            break;
        }
        if let Some(c) = space.sample(&mut rng) {
            if !batch.contains(&c) {
                batch.push(c);
            }
        }
    }
    let outcomes = eval.evaluate(&batch).unwrap();
    let (mut ok, mut launch) = (0, 0);
    for (c, o) in batch.iter().zip(&outcomes) {
        match o {
            Outcome::Measured(m) => {
                ok += 1;
                let flops = 2.0 * (shape[0] * shape[1] * shape[2]) as f64;
                println!(
                    "  {} {:.3} ms ({:.0} TFLOP/s)",
                    space.config_text(c),
                    m.time_ms,
                    flops / m.time_ms / 1e9
                );
            }
            Outcome::Failed(f) if f.class == FailureClass::Launch => {
                launch += 1;
                println!("  launch failure {}: {}", space.config_text(c), f.detail);
            }
            Outcome::Failed(f) => panic!(
                "{name} {shape:?}: {} failed: {} ({})",
                space.config_text(c),
                f.class,
                f.detail
            ),
        }
    }
    println!(
        "{name} {shape:?}: {} configs, {ok} correct, {launch} could not launch",
        batch.len()
    );
    assert!(ok >= batch.len() / 2, "{ok} of {} ran", batch.len());
}

#[test]
fn gpu_hgemm_sm90_tma_matches_cpu() {
    if !gpu_or_skip("gpu_hgemm_sm90_tma_matches_cpu") {
        return;
    }
    let tuner = Tuner::with_context(
        cudarc::driver::CudaContext::new(0).unwrap(),
        Cache::memory_only(),
        Mode::CacheOnly,
    )
    .unwrap();
    let limits = tuner.gpu().limits;
    if (limits.cc_major, limits.cc_minor) != (9, 0) {
        println!(
            "skipping gpu_hgemm_sm90_tma_matches_cpu: the device is not compute capability 9.0"
        );
        return;
    }
    let shapes = [
        (512, 512, 512),
        (257, 129, 200),
        (1, 4096, 4096),
        (4096, 4096, 4096),
    ];
    for (name, ty) in [
        ("hgemm_sm90_tma_f16", ElemType::F16),
        ("hgemm_sm90_tma_bf16", ElemType::Bf16),
    ] {
        let k = kernel(name);
        for shape in shapes {
            check(&tuner, &k, ty, shape);
        }
    }
    let gpu = Arc::new(tuner.gpu().clone());
    for (m, n, k) in shapes {
        agree(&gpu, "hgemm_sm90_tma_f16", [m as i64, n as i64, k as i64]);
    }
    agree(&gpu, "hgemm_sm90_tma_bf16", [257, 129, 200]);
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
    let tuner = Tuner::with_context(
        cudarc::driver::CudaContext::new(0).unwrap(),
        Cache::memory_only(),
        Mode::CacheOnly,
    )
    .unwrap();
    if tuner.gpu().limits.cc_major < 9 {
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
    let stream = tuner.gpu().ctx.default_stream();
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
            &dims2(k as i64, m as i64, 64, 16),
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
