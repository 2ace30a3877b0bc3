//! A decode server that replays CUDA graphs, with jitune inside them.
//!
//! Part 1: a decode-like step (per layer: layernorm, a GEMM, softmax, an up GEMM, a down GEMM;
//! then a reduction: `5 * layers + 1` jitune launches, 21 by default) is captured into a CUDA
//! graph with some keys cold (never launched before the capture): inside the capture jitune
//! loads, compiles and tunes nothing, so the cold keys launch the loaded plan of the nearest
//! bucket of their kernel. The graph is replayed `--replays` times (step latency: CUDA events,
//! median). Background tuning (`SwapPolicy::OnRequest`) runs meanwhile; when it is done the
//! server applies the swaps at a step boundary, sees the generation change, captures again and
//! replays again. Outputs are checked against a CPU float64 reference after each phase.
//!
//! Part 2 (`--concurrent-s`, 0 to skip): for that long, another tuner tunes a stream of cold
//! keys in this process (the strictest case: its candidates run on this context) while this
//! thread captures the step (`GLOBAL` mode) and replays it, over and over. Every failed or
//! invalidated capture is counted; there must be none. `--capture-guard auto` captures with
//! cudarc's calls only (no `Tuner::begin_capture`), leaving jitune to notice the capture on
//! its launches (best-effort; reported, not required to be clean).
//!
//!     cargo run --release --example graph_server [-- --layers 4 --rows 16 --hidden 1024
//!         --replays 1000 --tune-s 4 --max-evals 40 --wait-s 300 --concurrent-s 60
//!         --isolation process|in-process --capture-guard explicit|auto]
//!
//! Exit status: 0 when every check passed, 1 when one failed (a capture error, a wrong output,
//! a swapped step slower than before by more than 5%), 2 without a GPU (one line says why).

#[path = "common/mod.rs"]
mod common;
#[path = "common/events.rs"]
mod events;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cuda;
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream};
use events::{print_stats, EventSummary};
use jitune::cache::{Cache, CacheOptions};
use jitune::engine::Isolation;
use jitune::internals::Rng;
use jitune::tuner::{Arg, Kernel, Mode, SwapPolicy, TuneOptions, Tuner};
use jitune::{Error, Result};

const GLOBAL: CUstreamCaptureMode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL;

fn main() -> ExitCode {
    jitune::run_if_worker();
    if let Err(e) = jitune::require_cuda() {
        println!("graph_server: {e}");
        return ExitCode::from(2);
    }
    let ctx = match CudaContext::new(0) {
        Ok(c) => c,
        Err(e) => {
            println!("graph_server: no GPU: opening device 0 failed: {e}");
            return ExitCode::from(2);
        }
    };
    match run(ctx) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("graph_server: FAILED (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("graph_server: {e}");
            ExitCode::from(1)
        }
    }
}

struct Kernels {
    layernorm: Kernel,
    sgemm: Kernel,
    softmax: Kernel,
    reduction: Kernel,
}

/// One layer's weights and scratch activations (device), with host copies of the weights for
/// the reference.
struct Layer {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    w1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
    w3: CudaSlice<f32>,
    hn: CudaSlice<f32>,
    q: CudaSlice<f32>,
    p: CudaSlice<f32>,
    u: CudaSlice<f32>,
    host: [Vec<f32>; 5],
}

impl Layer {
    /// The layer's first three launches: layernorm of `x`, the first GEMM, softmax.
    fn norm_project_softmax(
        &mut self,
        t: &Tuner,
        k: &Kernels,
        s: &CudaStream,
        (r, h): (usize, usize),
        x: &CudaSlice<f32>,
    ) -> Result<()> {
        let (g, b) = (&self.gamma, &self.beta);
        launch(
            t,
            &k.layernorm,
            s,
            &[r, h],
            vec![x.into(), g.into(), b.into(), (&mut self.hn).into()],
        )?;
        launch(
            t,
            &k.sgemm,
            s,
            &[r, h, h],
            vec![(&self.hn).into(), (&self.w1).into(), (&mut self.q).into()],
        )?;
        launch(
            t,
            &k.softmax,
            s,
            &[r, h],
            vec![(&self.q).into(), (&mut self.p).into()],
        )
    }
}

/// The decode step: `acts[0]` in, `acts[layers]` and the reduction's partials out.
struct Model {
    r: usize,
    h: usize,
    layers: Vec<Layer>,
    acts: Vec<CudaSlice<f32>>,
    partials: CudaSlice<f32>,
    x0: Vec<f32>,
}

fn uniform(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// Launches `kernel` at `dims` with `buffers` followed by the dims as `i32` scalars: the
/// argument order of every kernel the step uses.
fn launch(
    tuner: &Tuner,
    kernel: &Kernel,
    s: &CudaStream,
    dims: &[usize],
    mut args: Vec<Arg<'_>>,
) -> Result<()> {
    let shape: Vec<i64> = dims.iter().map(|d| *d as i64).collect();
    args.extend(dims.iter().map(|d| Arg::from(*d as i32)));
    tuner.launch(kernel, s, &shape, &mut args)
}

impl Model {
    fn new(stream: &Arc<CudaStream>, layers: usize, r: usize, h: usize) -> Result<Model> {
        let mut rng = Rng::new(17);
        let up = |v: &Vec<f32>| stream.clone_htod(v).map_err(cuda("uploading"));
        let zeros = |n: usize| stream.alloc_zeros::<f32>(n).map_err(cuda("allocating"));
        let mut ls = Vec::new();
        for _ in 0..layers {
            let host = [
                uniform(h, 0.5, &mut rng).iter().map(|v| v + 1.0).collect(),
                uniform(h, 0.5, &mut rng),
                // q ~ unit variance; the up and down projections keep activations near 1.
                uniform(h * h, (3.0 / h as f32).sqrt(), &mut rng),
                uniform(h * 4 * h, 1.0, &mut rng),
                uniform(4 * h * h, 1.0, &mut rng),
            ];
            ls.push(Layer {
                gamma: up(&host[0])?,
                beta: up(&host[1])?,
                w1: up(&host[2])?,
                w2: up(&host[3])?,
                w3: up(&host[4])?,
                hn: zeros(r * h)?,
                q: zeros(r * h)?,
                p: zeros(r * h)?,
                u: zeros(r * 4 * h)?,
                host,
            });
        }
        let x0 = uniform(r * h, 1.0, &mut rng);
        let mut acts = vec![up(&x0)?];
        for _ in 0..layers {
            acts.push(zeros(r * h)?);
        }
        Ok(Model {
            r,
            h,
            layers: ls,
            acts,
            partials: zeros(1024)?,
            x0,
        })
    }

    fn launches(&self) -> usize {
        5 * self.layers.len() + 1
    }

    /// One decode step: `5 * layers + 1` launches on `s`.
    fn step(&mut self, t: &Tuner, k: &Kernels, s: &CudaStream) -> Result<()> {
        let (r, h) = (self.r, self.h);
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let (prev, next) = self.acts.split_at_mut(l + 1);
            layer.norm_project_softmax(t, k, s, (r, h), &prev[l])?;
            launch(
                t,
                &k.sgemm,
                s,
                &[r, 4 * h, h],
                vec![(&layer.p).into(), (&layer.w2).into(), (&mut layer.u).into()],
            )?;
            launch(
                t,
                &k.sgemm,
                s,
                &[r, h, 4 * h],
                vec![(&layer.u).into(), (&layer.w3).into(), (&mut next[0]).into()],
            )?;
        }
        let last = self.acts.last().expect("layers >= 1");
        launch(
            t,
            &k.reduction,
            s,
            &[r * h],
            vec![last.into(), (&mut self.partials).into()],
        )
    }

    /// Launches only some of the step's keys before any capture (layernorm, the first GEMM,
    /// softmax at the step's shapes; the reduction at a small size): the up and down GEMMs and
    /// the reduction at the step's size stay cold.
    fn warm_some(&mut self, t: &Tuner, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let (r, h) = (self.r, self.h);
        self.layers[0].norm_project_softmax(t, k, s, (r, h), &self.acts[0])?;
        let small = s.alloc_zeros::<f32>(1024).map_err(cuda("allocating"))?;
        launch(
            t,
            &k.reduction,
            s,
            &[1024],
            vec![(&small).into(), (&mut self.partials).into()],
        )?;
        s.synchronize().map_err(cuda("warming up"))
    }

    /// The step in float64 on the CPU: the last activation and the sum the partials add to.
    fn reference(&self) -> (Vec<f64>, f64) {
        let (r, h) = (self.r, self.h);
        let mut x: Vec<f64> = self.x0.iter().map(|v| *v as f64).collect();
        let matmul = |a: &[f64], b: &[f32], m: usize, n: usize, k: usize| -> Vec<f64> {
            let mut c = vec![0.0f64; m * n];
            for i in 0..m {
                for p in 0..k {
                    let av = a[i * k + p];
                    for (cv, bv) in c[i * n..(i + 1) * n].iter_mut().zip(&b[p * n..(p + 1) * n]) {
                        *cv += av * *bv as f64;
                    }
                }
            }
            c
        };
        for layer in &self.layers {
            let [gamma, beta, w1, w2, w3] = &layer.host;
            let mut hn = vec![0.0; r * h];
            for i in 0..r {
                let row = &x[i * h..(i + 1) * h];
                let mean = row.iter().sum::<f64>() / h as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                for j in 0..h {
                    hn[i * h + j] =
                        (row[j] - mean) / (var + 1e-5).sqrt() * gamma[j] as f64 + beta[j] as f64;
                }
            }
            let q = matmul(&hn, w1, r, h, h);
            let mut p = vec![0.0; r * h];
            for i in 0..r {
                let row = &q[i * h..(i + 1) * h];
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for j in 0..h {
                    p[i * h + j] = (row[j] - m).exp() / s;
                }
            }
            let u = matmul(&p, w2, r, 4 * h, h);
            x = matmul(&u, w3, r, h, 4 * h);
        }
        let sum = x.iter().sum();
        (x, sum)
    }

    /// Relative L2 error of the last activation, and of the reduction's sum (relative to the
    /// sum of magnitudes).
    fn check(&self, s: &Arc<CudaStream>, reference: &(Vec<f64>, f64)) -> Result<(f64, f64)> {
        let out = s
            .clone_dtoh(self.acts.last().expect("layers >= 1"))
            .map_err(cuda("reading the output"))?;
        let partials = s
            .clone_dtoh(&self.partials)
            .map_err(cuda("reading the partials"))?;
        let (mut num, mut den) = (0.0, 0.0);
        for (o, r) in out.iter().zip(&reference.0) {
            let o = *o as f64;
            num += if o.is_finite() {
                (o - r).powi(2)
            } else {
                f64::INFINITY
            };
            den += r * r;
        }
        let sum: f64 = partials.iter().map(|v| *v as f64).sum();
        let mag: f64 = reference.0.iter().map(|v| v.abs()).sum();
        Ok(((num / den).sqrt(), (sum - reference.1).abs() / mag))
    }

    fn zero_outputs(&mut self, s: &Arc<CudaStream>) -> Result<()> {
        let n = self.r * self.h;
        let last = self.acts.last_mut().expect("layers >= 1");
        s.memcpy_htod(&vec![f32::NAN; n], last)
            .map_err(cuda("poisoning"))?;
        s.memcpy_htod(&[f32::NAN; 1024], &mut self.partials)
            .map_err(cuda("poisoning"))?;
        s.synchronize().map_err(cuda("poisoning"))
    }
}

/// How a capture is made: through jitune's guard, or with cudarc's calls only.
#[derive(Clone, Copy, PartialEq)]
enum Guard {
    Explicit,
    Auto,
}

/// Captures one step into a graph.
fn capture(
    tuner: &Tuner,
    model: &mut Model,
    k: &Kernels,
    s: &Arc<CudaStream>,
    guard: Guard,
) -> Result<CudaGraph> {
    let graph = match guard {
        Guard::Explicit => {
            let cap = tuner.begin_capture(s, GLOBAL)?;
            model.step(tuner, k, s)?;
            cap.end()?
        }
        Guard::Auto => {
            s.begin_capture(GLOBAL)
                .map_err(cuda("beginning a capture"))?;
            let stepped = model.step(tuner, k, s);
            let ended = s.end_capture(CUgraphInstantiate_flags(0));
            stepped?;
            ended.map_err(cuda("ending a capture"))?
        }
    };
    graph.ok_or_else(|| Error::cuda("the capture produced no graph"))
}

/// Replays `graph` `n` times; each replay's GPU time (ms) from CUDA events around it.
fn time_replays(
    ctx: &Arc<CudaContext>,
    graph: &CudaGraph,
    s: &Arc<CudaStream>,
    n: usize,
) -> Result<Vec<f64>> {
    let batch = 100.min(n.max(1));
    let ev = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda("creating events"))
    };
    let pairs: Vec<_> = (0..batch)
        .map(|_| Ok((ev()?, ev()?)))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = batch.min(n - out.len());
        for (a, b) in &pairs[..m] {
            a.record(s).map_err(cuda("recording"))?;
            graph.launch().map_err(cuda("replaying the graph"))?;
            b.record(s).map_err(cuda("recording"))?;
        }
        s.synchronize().map_err(cuda("replaying"))?;
        for (a, b) in &pairs[..m] {
            out.push(a.elapsed_ms(b).map_err(cuda("reading events"))? as f64);
        }
    }
    Ok(out)
}

fn run(ctx: Arc<CudaContext>) -> Result<bool> {
    let layers: usize = common::num_option("--layers", "GRAPH_LAYERS", 4)?;
    let rows: usize = common::num_option("--rows", "GRAPH_ROWS", 16)?;
    let hidden: usize = common::num_option("--hidden", "GRAPH_HIDDEN", 1024)?;
    let replays: usize = common::num_option("--replays", "GRAPH_REPLAYS", 1000)?;
    let tune_s: f64 = common::num_option("--tune-s", "GRAPH_TUNE_S", 4.0)?;
    let max_evals: usize = common::num_option("--max-evals", "GRAPH_MAX_EVALS", 40)?;
    let wait_s: f64 = common::num_option("--wait-s", "GRAPH_WAIT_S", 300.0)?;
    let concurrent_s: f64 = common::num_option("--concurrent-s", "GRAPH_CONCURRENT_S", 60.0)?;
    let isolation = match common::option("--isolation", "GRAPH_ISOLATION") {
        Some(v) => Isolation::parse(&v)
            .ok_or_else(|| Error::InvalidArgument(format!("--isolation: `{v}`")))?,
        None => Isolation::Process,
    };
    let guard = match common::option("--capture-guard", "GRAPH_CAPTURE_GUARD").as_deref() {
        None | Some("explicit") => Guard::Explicit,
        Some("auto") => Guard::Auto,
        Some(v) => {
            return Err(Error::InvalidArgument(format!(
                "--capture-guard: `{v}` (explicit or auto)"
            )))
        }
    };
    if layers == 0 || rows == 0 || hidden == 0 {
        return Err(Error::InvalidArgument(
            "--layers, --rows, --hidden must be positive".into(),
        ));
    }
    // The buffers a graph uses carry no cudarc stream-ordering events: inside a capture those
    // events would be waited on and recorded in the graph (see the README).
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let cache = match common::option("--cache", "GRAPH_CACHE") {
        Some(p) => CacheOptions::at(p),
        None => CacheOptions::memory_only(),
    };
    let tuner = Tuner::with_context(ctx.clone(), Cache::open(cache)?, Mode::Background)?;
    tuner.set_isolation(Some(isolation));
    tuner.set_swap_policy(SwapPolicy::OnRequest);
    tuner.set_tune_options(TuneOptions {
        max_evals,
        max_time_s: Some(tune_s),
        ..Default::default()
    });
    let summary = EventSummary::attach(&tuner);
    let k = Kernels {
        layernorm: common::kernel("layernorm")?,
        sgemm: common::kernel("sgemm")?,
        softmax: common::kernel("softmax")?,
        reduction: common::kernel("reduction")?,
    };
    let mut model = Model::new(&stream, layers, rows, hidden)?;
    let reference = model.reference();
    let tol = 1e-3;
    let mut ok = true;
    println!(
        "device {}; decode step: {layers} layers, {rows} x {hidden}, {} launches; tuning {tune_s} s / {max_evals} configs per key, {isolation:?}",
        tuner.fingerprint().to_text(),
        model.launches()
    );

    // Part 1: capture with cold keys, replay, tune, apply, re-capture, replay.
    model.warm_some(&tuner, &k, &stream)?;
    let warm_keys = tuner.stats().misses;
    model.zero_outputs(&stream)?;
    let t = Instant::now();
    let graph = capture(&tuner, &mut model, &k, &stream, Guard::Explicit)?;
    let captured_ms = t.elapsed().as_secs_f64() * 1e3;
    let s1 = tuner.stats();
    println!(
        "captured {} launches in {captured_ms:.1} ms: {} cold keys served by loaded plans (nothing compiled or loaded in the capture), generation {}",
        model.launches(),
        s1.capture_misses,
        tuner.generation()
    );
    let before = time_replays(&ctx, &graph, &stream, replays)?;
    let (e1, r1) = model.check(&stream, &reference)?;
    println!("replayed {replays} times: output rel. error {e1:.2e}, reduction {r1:.2e}");
    if !(e1 < tol && r1 < tol) {
        println!("  WRONG OUTPUT before the swap");
        ok = false;
    }
    let keys = warm_keys + s1.capture_misses;
    let t = Instant::now();
    let deadline = t + Duration::from_secs_f64(wait_s);
    // Serving goes on (a replay now and then) while the keys tune.
    while tuner.tuning_in_progress() > 0 && Instant::now() < deadline {
        graph.launch().map_err(cuda("replaying the graph"))?;
        stream.synchronize().map_err(cuda("replaying"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let tuned_s = t.elapsed().as_secs_f64();
    if tuner.tuning_in_progress() > 0 {
        println!("  tuning still running after --wait-s {wait_s} s; applying what is ready");
    }
    let pending = tuner.pending_swaps();
    let gen0 = tuner.generation();
    let applied = tuner.apply_swaps();
    let gen1 = tuner.generation();
    println!(
        "tuning of {keys} keys done in {tuned_s:.1} s; {pending} winners pending; apply_swaps applied {applied}: generation {gen0} -> {gen1}, re-capturing"
    );
    drop(graph);
    model.zero_outputs(&stream)?;
    let graph = capture(&tuner, &mut model, &k, &stream, Guard::Explicit)?;
    let after = time_replays(&ctx, &graph, &stream, replays)?;
    let (e2, r2) = model.check(&stream, &reference)?;
    println!("replayed {replays} times: output rel. error {e2:.2e}, reduction {r2:.2e}");
    if !(e2 < tol && r2 < tol) {
        println!("  WRONG OUTPUT after the swap");
        ok = false;
    }
    let (b50, b10, b90) = common::summary(&before);
    let (a50, a10, a90) = common::summary(&after);
    println!("\nstep latency (CUDA events per replay, {replays} replays each):");
    println!(
        "  {:<30} {:>10} {:>10} {:>10}",
        "", "median us", "p10 us", "p90 us"
    );
    println!(
        "  {:<30} {:>10.1} {:>10.1} {:>10.1}",
        "before (cold keys borrowed)",
        b50 * 1e3,
        b10 * 1e3,
        b90 * 1e3
    );
    println!(
        "  {:<30} {:>10.1} {:>10.1} {:>10.1}",
        "after apply_swaps + re-capture",
        a50 * 1e3,
        a10 * 1e3,
        a90 * 1e3
    );
    println!("  speed-up {:.2}x", b50 / a50);
    if a50 > b50 * 1.05 {
        println!("  SLOWER after the swaps");
        ok = false;
    }
    summary.print(12);
    print_stats(&tuner.stats());

    // Part 2: in-process tuning of other keys beside captures and replays of the step.
    if concurrent_s > 0.0 {
        ok &= concurrent(
            &ctx,
            &tuner,
            &mut model,
            &k,
            &stream,
            &reference,
            concurrent_s,
            guard,
        )?;
    }
    Ok(ok)
}

/// Keys for the concurrent phase's tuner: many buckets, so in-process tuning never runs dry.
fn tuning_load(k: &Kernels) -> Vec<(Kernel, Vec<i64>)> {
    let mut v = Vec::new();
    for m in [32, 64, 128, 256, 512] {
        for (n, kk) in [(512, 512), (2048, 512), (512, 2048), (2048, 2048)] {
            v.push((k.sgemm.clone(), vec![m, n, kk]));
        }
    }
    for rows in [128, 1024, 8192] {
        for cols in [256, 2048] {
            v.push((k.softmax.clone(), vec![rows, cols]));
            v.push((k.layernorm.clone(), vec![rows, cols]));
        }
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn concurrent(
    ctx: &Arc<CudaContext>,
    tuner: &Tuner,
    model: &mut Model,
    k: &Kernels,
    stream: &Arc<CudaStream>,
    reference: &(Vec<f64>, f64),
    seconds: f64,
    guard: Guard,
) -> Result<bool> {
    println!(
        "\nconcurrent: {seconds} s of in-process background tuning (another tuner) while this thread captures the step ({}) and replays it",
        match guard {
            Guard::Explicit => "Tuner::begin_capture",
            Guard::Auto => "cudarc's begin_capture only: jitune notices the capture on launches",
        }
    );
    let load_tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Background)?;
    load_tuner.set_isolation(Some(Isolation::InProcess));
    load_tuner.set_tune_options(TuneOptions {
        max_evals: 30,
        max_time_s: Some(3.0),
        ..Default::default()
    });
    let load_summary = EventSummary::attach(&load_tuner);
    let load = tuning_load(k);
    let stop = Arc::new(AtomicBool::new(false));
    // The load's stream and buffers (large enough for every shape of the load; longer than
    // needed is fine) are made before any capture: an allocation while another thread
    // captures in GLOBAL mode would break that capture (the application's rule, not jitune's).
    let s = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let a = s
        .alloc_zeros::<f32>(8192 * 2048)
        .map_err(cuda("allocating"))?;
    let g = s
        .alloc_zeros::<f32>(2048 * 2048)
        .map_err(cuda("allocating"))?;
    let mut c = s
        .alloc_zeros::<f32>(8192 * 2048)
        .map_err(cuda("allocating"))?;
    s.synchronize().map_err(cuda("allocating"))?;
    let loader = {
        let (t, stop) = (load_tuner.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            // Each key misses once (its background run is queued, in process); later passes
            // are hits. Launches only: no synchronisation (nothing the captures forbid).
            while !stop.load(Ordering::Relaxed) {
                for (kernel, shape) in &load {
                    let dims: Vec<usize> = shape.iter().map(|v| *v as usize).collect();
                    let args: Vec<Arg> = match kernel.spec.name.as_str() {
                        "sgemm" => vec![(&a).into(), (&g).into(), (&mut c).into()],
                        "softmax" => vec![(&a).into(), (&mut c).into()],
                        _ => vec![(&a).into(), (&g).into(), (&g).into(), (&mut c).into()],
                    };
                    launch(&t, kernel, &s, &dims, args)?;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        })
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let (mut captures, mut failed, mut wrong, mut replayed) = (0usize, 0usize, 0usize, 0usize);
    let mut times = Vec::new();
    while Instant::now() < deadline {
        captures += 1;
        let r = (|| -> Result<Option<(f64, f64)>> {
            let graph = capture(tuner, model, k, stream, guard)?;
            let t = time_replays(ctx, &graph, stream, 20)?;
            times.extend(t);
            replayed += 20;
            if captures % 10 == 1 {
                return model.check(stream, reference).map(Some);
            }
            Ok(None)
        })();
        match r {
            Ok(Some((e, r))) if !(e < 1e-3 && r < 1e-3) => {
                wrong += 1;
                println!("  capture {captures}: wrong output ({e:.2e}, {r:.2e})");
            }
            Ok(_) => {}
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    println!("  capture {captures} failed: {e}");
                }
                if failed >= 50 {
                    println!("  stopping: too many failed captures");
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let load_result = loader
        .join()
        .map_err(|_| Error::Search("the tuning load thread panicked".into()))?;
    let s = load_tuner.stats();
    let (m, _, _) = common::summary(&times);
    println!(
        "concurrent: {captures} captures, {replayed} replays in {:.1} s: {failed} failed or invalidated captures, {wrong} wrong outputs; step median {:.1} us",
        start.elapsed().as_secs_f64(),
        m * 1e3
    );
    println!(
        "  in-process tuning meanwhile: {} searches finished ({} started), {:.1} s of tuning; its GPU work waited for a capture {} times",
        load_summary.count("tune_finished"),
        load_summary.count("tune_started"),
        s.tuning_s,
        s.waits_for_captures
    );
    load_summary.print(5);
    if let Err(e) = load_result {
        println!("  the tuning load failed: {e}");
    }
    // Background searches end (and store what they measured) before the process does.
    for t in [tuner, &load_tuner] {
        if !t.shutdown(std::time::Duration::from_secs(30)) {
            println!("  background tuning still running after 30 s; exiting anyway");
        }
    }
    let ok = failed == 0 && wrong == 0;
    if !ok && guard == Guard::Explicit {
        println!("  FAILED: captures must survive in-process tuning");
    }
    Ok(ok || guard == Guard::Auto)
}
