//! Launch hit overhead: jitune's `launch` on a cached key against two baselines launching the
//! same CUBIN with the same arguments, measured in the same run (host-side time per launch,
//! median of batches, the sides interleaved): a raw `cuLaunchKernel` with its parameter
//! array packed once (the floor: nothing but the driver call), and cudarc's launch builder
//! (which allocates on every launch, so it is the softer baseline). jitune is timed twice:
//! with raw device pointers (`Arg::from_raw`, the like-for-like comparison with the raw
//! launch: neither side touches cudarc's stream-ordering events) and with cudarc slices (what
//! most Rust callers pass; each slice records cudarc's events, as the builder's do).
//!
//! Two modes. Free-running: each batch starts on an idle stream, so a side whose launches are
//! cheaper than the GPU's own per-kernel time ends up timing the GPU draining the queue. Queued:
//! each batch is enqueued behind a spin kernel that keeps the GPU busy for longer than the batch
//! takes, so only the host's work per launch is timed (the figure of issue 18).
//!
//!     cargo bench --bench launch        (needs a GPU; prints a reason and exits 0 without one)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts allocations, to show that the hit path makes none.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

use cudarc::driver::{
    result as cu, CudaContext, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use jitune::cache::Cache;
use jitune::tuner::{Arg, Mode, TuneOptions, Tuner};
use tiny::median;

mod tiny;

/// Keeps the GPU busy for `cycles` SM clocks (the queued mode's blocker).
const SPIN: &str = r#"extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}"#;

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("launch bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("launch bench: {e}");
        std::process::exit(1);
    }
}

/// Enqueues the spin kernel `f` (one thread waiting `cycles` SM clocks) on `stream`: what the
/// queued batches launch behind.
fn queue_spin(
    stream: &cudarc::driver::CudaStream,
    f: &cudarc::driver::CudaFunction,
    cycles: i64,
) -> jitune::Result<()> {
    let mut l = stream.launch_builder(f);
    l.arg(&cycles);
    unsafe {
        l.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map(|_| ())
    .map_err(|e| jitune::Error::driver("CUDA", e))
}

/// The bench's buffers as raw-pointer arguments.
fn raw_args(x: u64, y: u64, n: usize) -> [Arg<'static>; 3] {
    // SAFETY: x and y are live allocations of n f32 each on the launch's context; the bench
    // orders everything on one stream.
    unsafe { tiny::raw_args(x, y, n) }
}

fn run() -> jitune::Result<()> {
    let kernel = tiny::kernel()?;
    let ctx = CudaContext::new(0).map_err(|e| jitune::Error::driver("CUDA", e))?;
    let tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    tuner.set_tune_options(TuneOptions {
        max_evals: 3,
        ..Default::default()
    });
    let stream = ctx
        .new_stream()
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let n = 256usize;
    let x = stream
        .clone_htod(&vec![1.0f32; n])
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let mut y = stream
        .alloc_zeros::<f32>(n)
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let shape = [n as i64];
    // First launch tunes; then every launch is a hit.
    tuner.launch(
        &kernel,
        &stream,
        &shape,
        &mut [Arg::from(&x), Arg::from(&mut y), Arg::from(n as i32)],
    )?;
    stream
        .synchronize()
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let plan = tuner
        .plan(&kernel, &shape)
        .ok_or_else(|| jitune::Error::Search("no plan".into()))?;
    // The raw baseline launches the same compiled config through cudarc's launch builder.
    let space = kernel
        .spec
        .space_for(&shape, &tuner.gpu().expect("a GPU tuner has a GPU").limits)?;
    let cfg = space.parse_config_text(&plan.config)?;
    let img = jitune::internals::compile_in_process(&jitune::internals::CompileRequest::new(
        &kernel.spec,
        &cfg,
        &tuner.gpu().expect("a GPU tuner has a GPU").arch,
    ))?
    .map_err(jitune::Error::compile)?;
    let module = ctx
        .load_module(img.to_ptx())
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let func = module
        .load_function("tiny")
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    let b = space.int_value(&cfg, 0) as u32;
    let lc = LaunchConfig {
        grid_dim: ((n as u32).div_ceil(b), 1, 1),
        block_dim: (b, 1, 1),
        shared_mem_bytes: 0,
    };

    // The raw baseline: device pointers and the scalar packed once, the parameter array
    // pointing at them, reused by every launch.
    let xp = x.device_ptr(&stream).0;
    let yp = y.device_ptr_mut(&stream).0;
    let mut values: [u64; 3] = [xp, yp, n as u64];
    let mut params: [*mut std::ffi::c_void; 3] = [
        (&mut values[0]) as *mut u64 as *mut std::ffi::c_void,
        (&mut values[1]) as *mut u64 as *mut std::ffi::c_void,
        (&mut values[2]) as *mut u64 as *mut std::ffi::c_void,
    ];
    let grid = ((n as u32).div_ceil(b), 1, 1);
    let cu_func = func.cu_function();
    let cu_stream = stream.cu_stream();
    // The spin kernel of the queued mode: one thread that waits `cycles` SM clocks.
    let spin = cudarc::nvrtc::compile_ptx(SPIN)
        .ok()
        .and_then(|ptx| ctx.load_module(ptx).ok())
        .and_then(|m| m.load_function("spin").ok());
    if spin.is_none() {
        println!("queued mode skipped: the spin kernel did not compile or load");
    }
    // 20 ms at 2 GHz: longer than any side's batch of launches.
    let spin_cycles: i64 = 40_000_000;

    const BATCH: usize = 500;
    // 150 rounds: run-to-run spread on the H200 was ±60 ns with 60 (calls N, O).
    const ROUNDS: usize = 150;
    // Sides: 0 raw cuLaunchKernel, 1 cudarc builder, 2 jitune with cudarc slices, 3 jitune
    // with raw pointers; where jitune's extra time goes (queued mode only): 4 raw
    // cuLaunchKernel of the plan's own loaded function, 5 raw cuLaunchKernel plus the capture
    // query a hit makes while tuning is active, 6 the key and plan lookup then a raw launch of
    // the plan's function, 7 the plan's own launch (arguments checked and marshalled, the
    // geometry memo) without the lookup.
    const SIDES: usize = 8;
    let plan_func = plan
        .function()
        .map(|f| f.cu_function())
        .ok_or_else(|| jitune::Error::Search("the plan has no function".into()))?;
    let watching_before = jitune::internals::capture_watching();
    let ni = n as i32;
    // Per mode (0 free-running, 1 queued behind the spin kernel), per side.
    let mut by_mode: Vec<[Vec<f64>; SIDES]> = Vec::new();
    for queued in [false, true] {
        if queued && spin.is_none() {
            continue;
        }
        let mut ns: [Vec<f64>; SIDES] = std::array::from_fn(|_| Vec::new());
        for round in 0..ROUNDS {
            // Rotate the order so no side always runs on a fuller queue.
            for k in 0..SIDES {
                let side = (k + round) % SIDES;
                if side >= 4 && !queued {
                    continue;
                }
                stream
                    .synchronize()
                    .map_err(|e| jitune::Error::driver("CUDA", e))?;
                if let (true, Some(f)) = (queued, &spin) {
                    queue_spin(&stream, f, spin_cycles)?;
                }
                let t = Instant::now();
                for _ in 0..BATCH {
                    match side {
                        0 => unsafe {
                            cu::launch_kernel(cu_func, grid, (b, 1, 1), 0, cu_stream, &mut params)
                        }
                        .map_err(|e| jitune::Error::driver("CUDA", e))?,
                        1 => {
                            let mut l = stream.launch_builder(&func);
                            l.arg(&x).arg(&mut y).arg(&ni);
                            unsafe { l.launch(lc) }
                                .map_err(|e| jitune::Error::driver("CUDA", e))?;
                        }
                        2 => tuner.launch(
                            &kernel,
                            &stream,
                            &shape,
                            &mut [Arg::from(&x), Arg::from(&mut y), Arg::from(ni)],
                        )?,
                        3 => tuner.launch(&kernel, &stream, &shape, &mut raw_args(xp, yp, n))?,
                        6 => {
                            let p = tuner
                                .plan(&kernel, &shape)
                                .ok_or_else(|| jitune::Error::Search("no plan".into()))?;
                            let f = p.function().map(|f| f.cu_function()).unwrap_or(plan_func);
                            unsafe {
                                cu::launch_kernel(f, grid, (b, 1, 1), 0, cu_stream, &mut params)
                            }
                            .map_err(|e| jitune::Error::driver("CUDA", e))?
                        }
                        7 => {
                            plan.launch(&kernel.spec, &stream, &shape, &mut raw_args(xp, yp, n))?
                        }
                        4 => unsafe {
                            cu::launch_kernel(plan_func, grid, (b, 1, 1), 0, cu_stream, &mut params)
                        }
                        .map_err(|e| jitune::Error::driver("CUDA", e))?,
                        _ => {
                            std::hint::black_box(unsafe { cu::stream::is_capturing(cu_stream) })
                                .map_err(|e| jitune::Error::driver("CUDA", e))?;
                            unsafe {
                                cu::launch_kernel(
                                    cu_func,
                                    grid,
                                    (b, 1, 1),
                                    0,
                                    cu_stream,
                                    &mut params,
                                )
                            }
                            .map_err(|e| jitune::Error::driver("CUDA", e))?
                        }
                    }
                }
                let per = t.elapsed().as_nanos() as f64 / BATCH as f64;
                stream
                    .synchronize()
                    .map_err(|e| jitune::Error::driver("CUDA", e))?;
                if round > 2 {
                    ns[side].push(per);
                }
            }
        }
        by_mode.push(ns);
    }
    // Alternating: each launch timed on its own, a raw launch of the plan's function and a
    // jitune launch in turn (which goes first alternates), queued behind the spin kernel. Each
    // side's launch follows the other side's driver call, so both find the caches as the
    // driver left them, as in a serving loop; the clock's cost is the same on both sides.
    let mut alternating: Option<(f64, f64, f64, usize)> = None;
    if let Some(f) = &spin {
        let (mut raw_ns, mut jit_ns) = (Vec::new(), Vec::new());
        let mut args = raw_args(xp, yp, n);
        for round in 0..40 {
            stream
                .synchronize()
                .map_err(|e| jitune::Error::driver("CUDA", e))?;
            queue_spin(&stream, f, spin_cycles)?;
            for i in 0..BATCH {
                for side in [(i + round) % 2, (i + round + 1) % 2] {
                    let t = Instant::now();
                    if side == 0 {
                        unsafe {
                            cu::launch_kernel(plan_func, grid, (b, 1, 1), 0, cu_stream, &mut params)
                        }
                        .map_err(|e| jitune::Error::driver("CUDA", e))?;
                    } else {
                        tuner.launch(&kernel, &stream, &shape, &mut args)?;
                    }
                    let ns = t.elapsed().as_nanos() as f64;
                    if round > 1 {
                        if side == 0 {
                            raw_ns.push(ns);
                        } else {
                            jit_ns.push(ns);
                        }
                    }
                }
            }
        }
        stream
            .synchronize()
            .map_err(|e| jitune::Error::driver("CUDA", e))?;
        let samples = raw_ns.len();
        let (r, j) = (median(&mut raw_ns), median(&mut jit_ns));
        alternating = Some((r, j, j - r, samples));
    }
    // Allocations on the hit path (cudarc's builder allocates; jitune's launch must not).
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        tuner.launch(
            &kernel,
            &stream,
            &shape,
            &mut [Arg::from(&x), Arg::from(&mut y), Arg::from(ni)],
        )?;
    }
    let jit_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        tuner.launch(&kernel, &stream, &shape, &mut raw_args(xp, yp, n))?;
    }
    let jit_raw_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        let mut l = stream.launch_builder(&func);
        l.arg(&x).arg(&mut y).arg(&ni);
        unsafe { l.launch(lc) }.map_err(|e| jitune::Error::driver("CUDA", e))?;
    }
    let builder_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        unsafe { cu::launch_kernel(cu_func, grid, (b, 1, 1), 0, cu_stream, &mut params) }
            .map_err(|e| jitune::Error::driver("CUDA", e))?;
    }
    let raw_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    stream
        .synchronize()
        .map_err(|e| jitune::Error::driver("CUDA", e))?;
    // jitune's own work on a hit without the launch: the key and the plan lookup.
    let t = Instant::now();
    const LOOKUPS: usize = 200_000;
    for _ in 0..LOOKUPS {
        std::hint::black_box(tuner.plan(&kernel, std::hint::black_box(&shape)));
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    let batches = by_mode[0][0].len();
    // Paired differences (queued mode): side a minus side b within the same round, whose
    // batches ran back to back, then the median over rounds. Slow drifts of the driver's own
    // time cancel out, which the difference of two medians does not do.
    let paired: Option<[f64; 4]> = by_mode.get(1).map(|m| {
        let diff = |a: usize, b: usize| {
            let mut d: Vec<f64> = m[a].iter().zip(&m[b]).map(|(x, y)| x - y).collect();
            median(&mut d)
        };
        [diff(3, 0), diff(3, 4), diff(6, 4), diff(7, 4)]
    });
    let medians: Vec<[f64; SIDES]> = by_mode
        .into_iter()
        .map(|mut m| {
            std::array::from_fn(|i| {
                if m[i].is_empty() {
                    f64::NAN
                } else {
                    median(&mut m[i])
                }
            })
        })
        .collect();
    let [raw, builder, jit, jit_raw, _, _, _, _] = medians[0];
    println!("device                 {}", tuner.fingerprint().to_text());
    println!("free-running (each batch starts on an idle stream):");
    println!("raw cuLaunchKernel      {raw:8.1} ns/launch (parameters packed once; median of {batches} batches of {BATCH})");
    println!("cudarc launch builder   {builder:8.1} ns/launch");
    println!("jitune launch, pointers {jit_raw:8.1} ns/launch (Arg::from_raw)");
    println!("jitune launch, slices   {jit:8.1} ns/launch (&CudaSlice: cudarc's events)");
    println!(
        "jitune key + plan lookup {lookup_ns:7.1} ns (Tuner::plan, no launch; {LOOKUPS} calls)"
    );
    println!(
        "hit overhead vs raw     {:8.1} ns/launch  (pointers against raw; target <= 100)",
        jit_raw - raw
    );
    println!(
        "hit overhead vs builder {:8.1} ns/launch  (slices against the builder)",
        jit - builder
    );
    if let Some(&[q_raw, q_builder, q_jit, q_jit_raw, q_plan_func, q_query, q_lookup, q_plan]) =
        medians.get(1)
    {
        println!("queued behind a spin kernel (host time only):");
        println!("  raw cuLaunchKernel      {q_raw:8.1} ns/launch");
        println!("  cudarc launch builder   {q_builder:8.1} ns/launch");
        println!("  jitune launch, pointers {q_jit_raw:8.1} ns/launch");
        println!("  jitune launch, slices   {q_jit:8.1} ns/launch");
        println!(
            "  hit overhead vs raw     {:8.1} ns/launch  (pointers against raw; target <= 100)",
            q_jit_raw - q_raw
        );
        println!(
            "  hit overhead vs builder {:8.1} ns/launch  (slices against the builder)",
            q_jit - q_builder
        );
        println!("  where it goes:");
        println!(
            "    raw, the plan's function  {q_plan_func:8.1} ns/launch ({:+.1} ns: the loaded function itself)",
            q_plan_func - q_raw
        );
        println!(
            "    raw + capture query       {q_query:8.1} ns/launch ({:+.1} ns: a hit while tuning is active)",
            q_query - q_raw
        );
        println!(
            "    lookup + raw launch       {q_lookup:8.1} ns/launch ({:+.1} ns: key, plan lookup, reference count)",
            q_lookup - q_raw
        );
        println!(
            "    the plan's launch         {q_plan:8.1} ns/launch ({:+.1} ns: argument checks, marshalling, geometry memo)",
            q_plan - q_raw
        );
        if let Some([vs_raw, vs_same, lookup, plan_launch]) = paired {
            println!("  paired (median over {batches} rounds of the difference within a round):");
            println!(
                "    hit overhead vs raw                    {vs_raw:8.1} ns/launch (pointers)"
            );
            println!(
                "    hit overhead vs raw, the same function {vs_same:8.1} ns/launch (pointers; target <= 100)"
            );
            println!("    of which key + plan lookup             {lookup:8.1} ns/launch");
            println!("    of which the plan's launch             {plan_launch:8.1} ns/launch");
        }
        println!(
            "    launches watched for captures: {} before the batches, {} after",
            watching_before,
            jitune::internals::capture_watching()
        );
    }
    if let Some((r, j, d, samples)) = alternating {
        println!("alternating, each launch timed alone ({samples} launches a side, queued):");
        println!("  raw cuLaunchKernel, the plan's function {r:8.1} ns/launch (median)");
        println!("  jitune launch, pointers                 {j:8.1} ns/launch (median)");
        println!("  hit overhead vs raw, the same function  {d:8.1} ns/launch (target <= 100)");
    }
    println!(
        "allocations per launch  jitune {:.3} (pointers {:.3}), builder {:.3}, raw {:.3}",
        jit_allocs as f64 / 1000.0,
        jit_raw_allocs as f64 / 1000.0,
        builder_allocs as f64 / 1000.0,
        raw_allocs as f64 / 1000.0
    );
    Ok(())
}
