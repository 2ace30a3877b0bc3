//! The correctness gate on the GPU: a candidate's output is compared with the reference output
//! where both already are, on the device, by a comparison kernel of jitune's own; only 32 bytes
//! come back to the host.
//!
//! Why: copying every output to the host and comparing it there cost about 0.7 s per candidate at
//! 256 MB of output (issue 18), more than compiling and timing together. On the device the same
//! check reads both buffers once at memory bandwidth.
//!
//! The criterion is the host's, unchanged: the relative L2 error `||out - ref|| / ||ref||`
//! (in f64) must be within the spec's tolerance, and any NaN or infinity in the output fails
//! (a poisoned element the kernel did not write is a NaN). [`Comparison::of_host`] computes the
//! same sums on the host for a reference the user supplies there, so both paths share one
//! verdict ([`Comparison::passes`]).
//!
//! The kernel runs in two passes with a fixed slicing (a grid-stride loop over at most
//! [`PARTIALS`] blocks, then one block adding their partials in order), so the result is the same
//! bits every time: a tolerance of 0 means "identical" run after run. It is compiled once per
//! element type per CUDA context (NVRTC, a few milliseconds) and kept for the process.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{result as cu, CudaContext, CudaFunction, CudaStream, DriverError};
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;

use super::compile::{compile_in_process, CompileRequest, Image};
use crate::spec::ElemType;
use crate::{Error, Result};

/// Most blocks of the first pass (each leaves one partial; the second pass adds them).
pub const PARTIALS: usize = 1024;
/// Bytes of one partial: sum of squared differences, sum of squared references (f64), largest
/// absolute difference (f64), count of non-finite outputs (u64).
const PARTIAL_BYTES: usize = 32;
/// Bytes of the scratch buffer a comparison needs: the partials and the result after them.
pub const SCRATCH_BYTES: usize = (PARTIALS + 1) * PARTIAL_BYTES;
const THREADS: u32 = 256;

/// The comparison kernel. `JT_KIND` picks the element type; half types arrive as raw 16-bit
/// words and are widened exactly (as the host's conversions do). No headers: NVRTC's built-ins
/// suffice; every name is prefixed so none can clash with one of them.
const SOURCE: &str = r#"
typedef unsigned long long jt_u64;
#if JT_KIND == 0
typedef float jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)x; }
#elif JT_KIND == 1
typedef double jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return x; }
#elif JT_KIND == 2
typedef unsigned short jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return (double)f;
}
#elif JT_KIND == 3
typedef unsigned short jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)__uint_as_float(((unsigned int)x) << 16); }
#elif JT_KIND == 4
typedef int jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)x; }
#elif JT_KIND == 5
typedef unsigned int jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)x; }
#elif JT_KIND == 6
typedef long long jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)x; }
#else
typedef unsigned char jt_elem;
__device__ __forceinline__ double jt_to_d(jt_elem x) { return (double)x; }
#endif

struct JtAcc { double d2; double r2; double mx; jt_u64 bad; };

__device__ __forceinline__ bool jt_finite(double v)
{
    return ((jt_u64)__double_as_longlong(v) & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

__device__ __forceinline__ void jt_merge(JtAcc& a, const JtAcc& b)
{
    a.d2 += b.d2;
    a.r2 += b.r2;
    if (b.mx > a.mx) a.mx = b.mx;
    a.bad += b.bad;
}

__device__ __forceinline__ JtAcc jt_warp_reduce(JtAcc a)
{
    for (int o = 16; o > 0; o >>= 1) {
        JtAcc b;
        b.d2 = __shfl_down_sync(0xffffffffu, a.d2, o);
        b.r2 = __shfl_down_sync(0xffffffffu, a.r2, o);
        b.mx = __shfl_down_sync(0xffffffffu, a.mx, o);
        b.bad = __shfl_down_sync(0xffffffffu, a.bad, o);
        jt_merge(a, b);
    }
    return a;
}

// The block's sum, in thread 0.
__device__ __forceinline__ JtAcc jt_block_reduce(JtAcc a)
{
    __shared__ JtAcc warps[32];
    a = jt_warp_reduce(a);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) warps[w] = a;
    __syncthreads();
    if (w == 0) {
        JtAcc z = {0.0, 0.0, 0.0, 0ull};
        a = lane < (int)(blockDim.x >> 5) ? warps[lane] : z;
        a = jt_warp_reduce(a);
    }
    return a;
}

extern "C" __global__ void __launch_bounds__(256)
jitune_compare(const jt_elem* __restrict__ out, const jt_elem* __restrict__ ref, jt_u64 n, JtAcc* __restrict__ partials)
{
    JtAcc a = {0.0, 0.0, 0.0, 0ull};
    const jt_u64 stride = (jt_u64)gridDim.x * blockDim.x;
    for (jt_u64 i = (jt_u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double o = jt_to_d(out[i]);
        const double r = jt_to_d(ref[i]);
        if (!jt_finite(o)) {
            a.bad += 1;
            continue;
        }
        const double d = o - r;
        a.d2 += d * d;
        a.r2 += r * r;
        const double ad = d < 0.0 ? -d : d;
        if (ad > a.mx) a.mx = ad;
    }
    a = jt_block_reduce(a);
    if (threadIdx.x == 0) partials[blockIdx.x] = a;
}

extern "C" __global__ void __launch_bounds__(256)
jitune_compare_sum(JtAcc* __restrict__ partials, unsigned int count)
{
    JtAcc a = {0.0, 0.0, 0.0, 0ull};
    for (unsigned int i = threadIdx.x; i < count; i += blockDim.x) jt_merge(a, partials[i]);
    a = jt_block_reduce(a);
    if (threadIdx.x == 0) partials[count] = a;
}
"#;

/// One output compared with its reference: the sums behind the relative L2 error, the largest
/// absolute difference and the number of non-finite output elements.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Sum over finite outputs of `(out - ref)^2`.
    pub sum_sq_diff: f64,
    /// Sum over finite outputs of `ref^2`.
    pub sum_sq_ref: f64,
    /// Largest `|out - ref|` over finite outputs.
    pub max_abs: f64,
    /// Output elements that are NaN or infinite.
    pub nonfinite: u64,
}

impl Comparison {
    /// The same sums on the host (for a reference given on the host), in element order.
    /// Lengths that differ count the missing elements as non-finite: never a pass.
    pub fn of_host(out: &[f64], reference: &[f64]) -> Comparison {
        let mut c = Comparison {
            nonfinite: out.len().abs_diff(reference.len()) as u64,
            ..Comparison::default()
        };
        for (o, r) in out.iter().zip(reference) {
            if !o.is_finite() {
                c.nonfinite += 1;
                continue;
            }
            let d = o - r;
            c.sum_sq_diff += d * d;
            c.sum_sq_ref += r * r;
            if d.abs() > c.max_abs {
                c.max_abs = d.abs();
            }
        }
        c
    }

    /// `||out - ref|| / ||ref||` (NaN when the sums are; infinite when an output is).
    pub fn relative_error(&self) -> f64 {
        if self.nonfinite > 0 {
            return f64::INFINITY;
        }
        (self.sum_sq_diff / self.sum_sq_ref.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// The verdict: no non-finite output, and a relative error within `tolerance` (a NaN error,
    /// from a reference holding NaN or infinity, fails).
    pub fn passes(&self, tolerance: f64) -> bool {
        self.nonfinite == 0 && self.relative_error() <= tolerance
    }

    /// Decodes the 32 bytes the kernel leaves (four little-endian words).
    pub fn from_words(w: [u64; 4]) -> Comparison {
        Comparison {
            sum_sq_diff: f64::from_bits(w[0]),
            sum_sq_ref: f64::from_bits(w[1]),
            max_abs: f64::from_bits(w[2]),
            nonfinite: w[3],
        }
    }
}

/// `JT_KIND` of an element type (see [`SOURCE`]).
fn kind(ty: ElemType) -> u32 {
    match ty {
        ElemType::F32 => 0,
        ElemType::F64 => 1,
        ElemType::F16 => 2,
        ElemType::Bf16 => 3,
        ElemType::I32 => 4,
        ElemType::U32 => 5,
        ElemType::I64 => 6,
        ElemType::U8 => 7,
    }
}

/// The two passes of one element type, loaded in one context.
struct Comparer {
    first: CudaFunction,
    sum: CudaFunction,
}

/// Compiled comparers by (context, element type). A loaded function keeps its context alive, so
/// a context's address is not reused while its entries are here.
type ComparerMap = HashMap<(usize, ElemType), Arc<Comparer>>;
static COMPARERS: Lazy<Mutex<ComparerMap>> = Lazy::new(|| Mutex::new(HashMap::new()));
static COMPILES: AtomicUsize = AtomicUsize::new(0);

/// How many comparison kernels this process has compiled (one per element type per context).
pub fn compiles() -> usize {
    COMPILES.load(Ordering::Relaxed)
}

/// The comparison kernel's compile request for `ty` on `arch`.
fn request(arch: &str, ty: ElemType) -> CompileRequest {
    CompileRequest {
        source: SOURCE.to_string(),
        name: "jitune_compare.cu".into(),
        arch: arch.to_string(),
        options: vec![format!("-DJT_KIND={}", kind(ty))],
    }
}

/// A comparison kernel image compiled ahead of its first use, by (architecture, type): set once
/// the compilation ends (`None` if it failed; the first use then compiles it itself).
type Ahead = Arc<OnceCell<Option<Image>>>;
static AHEAD: Lazy<Mutex<HashMap<(String, ElemType), Ahead>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// Compiles the comparison kernels of `types` on `arch` in the background, on `pool`'s workers,
/// once per process: a tuner's first candidate check then only loads the kernel. Compiled in
/// this process at first use instead, it took 0.2-0.6 s of the first search of each element
/// type (NVRTC in a tuning process, `benches/compile`, device calls G and H). Only compiles:
/// loading stays with the first use (a module load must not race a graph capture).
pub fn compile_ahead(pool: Arc<super::pool::CompilePool>, arch: &str, types: &[ElemType]) {
    let mut todo = Vec::new();
    {
        let mut ahead = AHEAD.lock();
        for &ty in types {
            let key = (arch.to_string(), ty);
            if !ahead.contains_key(&key) && !todo.iter().any(|(t, _)| *t == ty) {
                let cell: Ahead = Arc::default();
                ahead.insert(key, cell.clone());
                todo.push((ty, cell));
            }
        }
    }
    if todo.is_empty() {
        return;
    }
    let arch = arch.to_string();
    let (cells, reqs): (Vec<Ahead>, Vec<CompileRequest>) = todo
        .iter()
        .map(|(ty, cell)| (cell.clone(), request(&arch, *ty)))
        .unzip();
    let spawned = std::thread::Builder::new()
        .name("jitune-compare-ahead".into())
        .spawn({
            let cells = cells.clone();
            move || {
                // Every cell is set whatever happens, so a first use never waits forever.
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pool.compile_all(reqs)
                }))
                .unwrap_or_default();
                for (i, cell) in cells.iter().enumerate() {
                    let img = match out.get(i) {
                        Some(Ok(Ok(img))) => Some(img.clone()),
                        _ => None,
                    };
                    let _ = cell.set(img);
                }
            }
        });
    if spawned.is_err() {
        for cell in &cells {
            let _ = cell.set(None);
        }
    }
}

fn comparer(ctx: &Arc<CudaContext>, arch: &str, ty: ElemType) -> Result<Arc<Comparer>> {
    let key = (ctx.cu_ctx() as usize, ty);
    let mut map = COMPARERS.lock();
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let ahead = AHEAD.lock().get(&(arch.to_string(), ty)).cloned();
    let image = match ahead.and_then(|cell| cell.wait().clone()) {
        Some(img) => img,
        None => compile_in_process(&request(arch, ty))?.map_err(|log| {
            Error::cuda(format!(
                "the comparison kernel for {} does not compile: {log}",
                ty.name()
            ))
        })?,
    };
    COMPILES.fetch_add(1, Ordering::Relaxed);
    let c = super::guarded("loading the comparison kernel", || {
        let module = ctx
            .load_module(image.to_ptx())
            .map_err(|e| Error::driver("loading the comparison kernel", e))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| Error::driver("looking up the comparison kernel", e))
        };
        Ok(Arc::new(Comparer {
            first: f("jitune_compare")?,
            sum: f("jitune_compare_sum")?,
        }))
    })?;
    map.insert(key, c.clone());
    Ok(c)
}

/// Where a comparison runs and what it compares: `n` elements of `ty` at device addresses
/// `out` and `reference`, with `scratch` ([`SCRATCH_BYTES`] of the caller's device memory).
#[derive(Clone, Copy, Debug)]
pub struct Operands {
    pub ty: ElemType,
    pub out: u64,
    pub reference: u64,
    pub n: usize,
    pub scratch: u64,
}

/// Compares on `stream` (ordered after the kernel that wrote `out`) and reads the 32-byte
/// result back. The outer error is the machinery's (the comparison kernel does not compile or
/// load); the inner one is the driver's, for the caller to classify (a broken context shows
/// here first).
pub fn compare(
    ctx: &Arc<CudaContext>,
    arch: &str,
    stream: &CudaStream,
    op: Operands,
) -> Result<std::result::Result<Comparison, DriverError>> {
    let c = comparer(ctx, arch, op.ty)?;
    super::guarded("comparing outputs", || {
        Ok((|| {
            ctx.bind_to_thread()?;
            let blocks = op.n.div_ceil(THREADS as usize).clamp(1, PARTIALS) as u32;
            let (mut out, mut reference, mut n, mut scratch) =
                (op.out, op.reference, op.n as u64, op.scratch);
            let mut params = [
                (&mut out) as *mut u64 as *mut c_void,
                (&mut reference) as *mut u64 as *mut c_void,
                (&mut n) as *mut u64 as *mut c_void,
                (&mut scratch) as *mut u64 as *mut c_void,
            ];
            unsafe {
                cu::launch_kernel(
                    c.first.cu_function(),
                    (blocks, 1, 1),
                    (THREADS, 1, 1),
                    0,
                    stream.cu_stream(),
                    &mut params,
                )?;
            }
            let mut count = blocks;
            let mut params = [
                (&mut scratch) as *mut u64 as *mut c_void,
                (&mut count) as *mut u32 as *mut c_void,
            ];
            unsafe {
                cu::launch_kernel(
                    c.sum.cu_function(),
                    (1, 1, 1),
                    (THREADS, 1, 1),
                    0,
                    stream.cu_stream(),
                    &mut params,
                )?;
            }
            let mut words = [0u64; 4];
            let at = op.scratch + (blocks as usize * PARTIAL_BYTES) as u64;
            unsafe { cu::memcpy_dtoh_async(&mut words[..], at, stream.cu_stream()) }?;
            stream.synchronize()?;
            Ok(Comparison::from_words(words))
        })())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sums_and_verdict() {
        let c = Comparison::of_host(&[1.0, 2.0, 3.5], &[1.0, 2.0, 3.0]);
        assert_eq!(c.sum_sq_diff, 0.25);
        assert_eq!(c.sum_sq_ref, 14.0);
        assert_eq!(c.max_abs, 0.5);
        assert_eq!(c.nonfinite, 0);
        assert!((c.relative_error() - (0.25f64 / 14.0).sqrt()).abs() < 1e-15);
        assert!(c.passes(0.2) && !c.passes(0.1));
        // Identical outputs pass a tolerance of 0; one NaN or infinity fails any tolerance.
        assert!(Comparison::of_host(&[1.0, -2.0], &[1.0, -2.0]).passes(0.0));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let c = Comparison::of_host(&[1.0, bad], &[1.0, 2.0]);
            assert_eq!(c.nonfinite, 1);
            assert!(!c.passes(f64::MAX));
        }
        // A reference with a NaN gives a NaN error: a failure, not a pass.
        assert!(!Comparison::of_host(&[1.0, 2.0], &[1.0, f64::NAN]).passes(1.0));
        // Lengths that differ never pass.
        assert!(!Comparison::of_host(&[1.0], &[1.0, 2.0]).passes(1.0));
        // An all-zero reference: the error is relative to the smallest positive norm.
        assert!(Comparison::of_host(&[0.0, 0.0], &[0.0, 0.0]).passes(0.0));
        assert!(!Comparison::of_host(&[1e-3, 0.0], &[0.0, 0.0]).passes(1.0));
    }

    #[test]
    fn result_words_decode() {
        let c = Comparison {
            sum_sq_diff: 1.5,
            sum_sq_ref: 2.25,
            max_abs: 0.125,
            nonfinite: 7,
        };
        let w = [
            c.sum_sq_diff.to_bits(),
            c.sum_sq_ref.to_bits(),
            c.max_abs.to_bits(),
            7,
        ];
        assert_eq!(Comparison::from_words(w), c);
    }

    #[test]
    fn one_kind_per_element_type_and_the_source_defines_both_passes() {
        let all = ElemType::ALL;
        let mut kinds: Vec<u32> = all.iter().map(|t| kind(*t)).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), all.len());
        assert!(SOURCE.contains("#if JT_KIND == 0"));
        for k in 1..7 {
            assert!(
                SOURCE.contains(&format!("#elif JT_KIND == {k}")),
                "kind {k}"
            );
        }
        assert!(SOURCE.contains("jitune_compare(") && SOURCE.contains("jitune_compare_sum("));
        // The partials and the result fit the scratch the caller allocates.
        assert_eq!(SCRATCH_BYTES, (PARTIALS + 1) * 32);
        assert_eq!(std::mem::size_of::<[u64; 4]>(), PARTIAL_BYTES);
    }
}
