//! Tuned GEMMs against cuBLAS on the real GPU, measured in the same run with the same method
//! (cold L2 before every run, CUDA events, warm-up, median, the two interleaved round by round):
//! SGEMM (FP32) and HGEMM with FP16 and BF16 inputs (FP32 accumulation and output, against
//! `cublasGemmEx` with FP32 compute) at 1024³, 2048³, 4096³, 8192³ and the LLM shapes
//! M=16,N=4096,K=4096 (decode) and M=4096,N=11008,K=4096 (prefill). Per shape: TFLOP/s of
//! both, the ratio, the difference between the two outputs, and what tuning cost.
//!
//! For HGEMM FP16 at 4096³ it also records the time-to-quality curve: the best time found so far
//! against tuning wall time (evaluator set-up, compilation and measurement included), sampled
//! after every batch of the search, shown as % of cuBLAS.
//!
//!     cargo bench --bench gemm_cublas [-- --parts sgemm,f16,bf16,curve --shapes 4096x4096x4096
//!                                        --tune-s 15 --curve-s 60 --json FILE]
//!
//! Options can also be given as environment variables (GEMM_PARTS, GEMM_SHAPES, GEMM_TUNE_S,
//! GEMM_CURVE_S, GEMM_JSON); `--f16-spec NAME` / `--bf16-spec NAME` (GEMM_F16_SPEC,
//! GEMM_BF16_SPEC) pick other specs under `kernels/` than the default (`hgemm_sm90_tma_*` on
//! sm_90, else `hgemm_*`). A "diff" of 0 means jitune's and cuBLAS's outputs are bitwise equal
//! (same summation order).
//!
//! The cache is memory-only, so nothing from earlier runs is reused (shapes tuned earlier in the
//! run warm-start later ones, as in the tuner's normal use); each shape gets at most
//! `--tune-s` seconds of tuning; the defaults keep a whole run near 7 minutes on an H100.
//! Without a GPU it prints why and exits 0; without libcublas the ratio columns are left out.

#[path = "../examples/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use common::{cuda, Blas, GemmOperands, Prec, Timer};
use cudarc::driver::CudaStream;
use jitune::cache::{Cache, Entry};
use jitune::engine::GpuEvaluator;
use jitune::internals::median;
use jitune::internals::CompilePool;
use jitune::search::{strategy_by_name, Evaluator, Outcome, SearchOptions};
use jitune::space::{Config, SearchSpace};
use jitune::tuner::{Kernel, Mode, TuneOptions, Tuner};
use jitune::Gpu;
use jitune::{Error, Result};

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("gemm_cublas bench skipped: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("gemm_cublas: {e}");
        std::process::exit(1);
    }
}

const SHAPES: [[i64; 3]; 6] = [
    [1024, 1024, 1024],
    [2048, 2048, 2048],
    [4096, 4096, 4096],
    [8192, 8192, 8192],
    [16, 4096, 4096],
    [4096, 11008, 4096],
];

/// Wraps the GPU evaluator and notes, after every batch, the wall time since tuning began and
/// the best first-measurement time so far: the time-to-quality curve.
struct Recorder {
    inner: GpuEvaluator,
    start: Instant,
    best: f64,
    evals: usize,
    curve: Vec<(f64, f64, usize)>,
}

impl Evaluator for Recorder {
    fn space(&self) -> &SearchSpace {
        self.inner.space()
    }
    fn evaluate(&mut self, batch: &[Config]) -> Result<Vec<Outcome>> {
        let out = self.inner.evaluate(batch)?;
        for t in out.iter().filter_map(Outcome::time_ms) {
            self.best = self.best.min(t);
        }
        self.evals += batch.len();
        self.curve
            .push((self.start.elapsed().as_secs_f64(), self.best, self.evals));
        Ok(out)
    }
    fn remeasure(&mut self, batch: &[Config], samples: usize) -> Result<Vec<Outcome>> {
        self.inner.remeasure(batch, samples)
    }
    fn elapsed_s(&self) -> f64 {
        self.inner.elapsed_s()
    }
    fn prefetch(&self, configs: &[Config]) {
        self.inner.prefetch(configs)
    }
    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }
}

struct Row {
    kernel: String,
    shape: [i64; 3],
    config: String,
    ms: f64,
    blas_ms: Option<f64>,
    diff: Option<f64>,
    tune_s: f64,
    evaluated: u32,
}

struct Bench {
    ctx: Arc<cudarc::driver::CudaContext>,
    tuner: Tuner,
    stream: Arc<CudaStream>,
    timer: Timer,
    blas: Option<Blas>,
    tune_s: f64,
    json: Option<std::fs::File>,
}

impl Bench {
    /// Times jitune's launch of the (already tuned) kernel against cuBLAS and prints the row.
    fn measure(
        &mut self,
        kernel: &Kernel,
        g: &mut GemmOperands,
        tune_s: f64,
        evaluated: u32,
    ) -> Result<Row> {
        let (tuner, blas) = (&self.tuner, self.blas.as_ref());
        let (ms, blas_ms) = match blas {
            Some(b) => {
                let s = self.timer.compare(2, &mut |i, st| {
                    if i == 0 {
                        g.launch(tuner, kernel, st)
                    } else {
                        b.gemm(g, st)
                    }
                })?;
                (median(&s[0]), Some(median(&s[1])))
            }
            None => (
                self.timer.time(&mut |st| g.launch(tuner, kernel, st))?,
                None,
            ),
        };
        let diff = match blas {
            Some(_) => Some(g.diff_to_reference(&self.stream)?),
            None => None,
        };
        let config = tuner
            .plan(kernel, &g.shape())
            .map(|p| p.config.clone())
            .unwrap_or_default();
        let row = Row {
            kernel: kernel.spec.name.clone(),
            shape: g.shape(),
            config,
            ms,
            blas_ms,
            diff,
            tune_s,
            evaluated,
        };
        self.print(&row, g.flops())?;
        Ok(row)
    }

    fn print(&mut self, r: &Row, flops: f64) -> Result<()> {
        let tf = flops / r.ms / 1e9;
        let btf = r.blas_ms.map(|b| flops / b / 1e9);
        println!(
            "{:<11} {:>16} {:>8.1} {:>8} {:>7} {:>9} {:>7.1} s {:>5}  {}",
            r.kernel,
            common::shape_text(&r.shape),
            tf,
            btf.map(|b| format!("{b:.1}")).unwrap_or_else(|| "-".into()),
            btf.map(|b| format!("{:.0}%", 100.0 * tf / b))
                .unwrap_or_else(|| "-".into()),
            r.diff
                .map(|d| format!("{d:.1e}"))
                .unwrap_or_else(|| "-".into()),
            r.tune_s,
            r.evaluated,
            r.config
        );
        if let Some(f) = &mut self.json {
            let line = serde_json::json!({
                "kernel": r.kernel, "shape": r.shape, "config": r.config,
                "ms": r.ms, "tflops": tf, "cublas_ms": r.blas_ms, "cublas_tflops": btf,
                "ratio": btf.map(|b| tf / b), "rel_l2_vs_cublas": r.diff,
                "tune_s": r.tune_s, "evaluated": r.evaluated,
            });
            writeln!(f, "{line}").map_err(|e| Error::io("--json file", e))?;
        }
        Ok(())
    }

    /// Tunes `kernel` at `shape` (nothing cached from earlier runs), then measures it against cuBLAS.
    fn row(&mut self, kernel: &Kernel, prec: Prec, shape: &[i64; 3]) -> Result<Row> {
        let mut g = GemmOperands::new(&self.stream, prec, shape, 1)?;
        let report = self.tuner.tune_with(
            kernel,
            shape,
            &TuneOptions {
                max_evals: 1000,
                max_time_s: Some(self.tune_s),
                ..Default::default()
            },
        )?;
        self.measure(kernel, &mut g, report.wall_s, report.entry.evaluated)
    }

    /// HGEMM FP16 at `shape` with the time-to-quality curve; the winner is then measured
    /// against cuBLAS like every other row.
    fn curve(&mut self, kernel: &Kernel, shape: &[i64; 3], curve_s: f64) -> Result<Row> {
        let mut g = GemmOperands::new(&self.stream, Prec::F16, shape, 1)?;
        let blas_ms = match &self.blas {
            Some(b) => Some(self.timer.time(&mut |st| b.gemm(&g, st))?),
            None => None,
        };
        let spec = kernel.spec.clone();
        let start = Instant::now();
        let gpu = Arc::new(Gpu::from_context(self.ctx.clone())?);
        let eval = GpuEvaluator::new(
            gpu.clone(),
            spec.clone(),
            shape,
            Arc::new(Cache::memory_only()),
            Arc::new(CompilePool::default_sized()),
        )?;
        let mut rec = Recorder {
            inner: eval,
            start,
            best: f64::INFINITY,
            evals: 0,
            curve: Vec::new(),
        };
        // The tuner's own settings (Tuner::tune_with): LFBO, the spec's default first.
        let mut opts = SearchOptions::new(1, 1000);
        opts.max_time_s = Some(curve_s);
        opts.start.push(spec.default.clone());
        let strategy =
            strategy_by_name("lfbo").ok_or_else(|| Error::Search("no lfbo strategy".into()))?;
        let result = strategy.search(&mut rec, &opts)?;
        let wall = start.elapsed().as_secs_f64();
        let (best, best_ms) = result
            .best
            .clone()
            .ok_or_else(|| Error::Search("no config of hgemm ran correctly".into()))?;
        let flops = g.flops();
        println!(
            "\ntime-to-quality, {} {} (LFBO, {curve_s} s budget; best first-measurement so far{}):",
            spec.name,
            common::shape_text(shape),
            if blas_ms.is_some() {
                ", % of cuBLAS"
            } else {
                ""
            }
        );
        println!(
            "{:>8} {:>6} {:>10} {:>9} {:>8}",
            "wall s", "evals", "best ms", "TFLOP/s", "cuBLAS"
        );
        let pct = |ms: f64| blas_ms.map(|b| 100.0 * b / ms);
        let mut shown = 0.0f64;
        for (i, &(t, b, n)) in rec.curve.iter().enumerate() {
            // Every point for the first 10 s, then one every 5 s, and the last.
            if t < 10.0 || t >= shown + 5.0 || i + 1 == rec.curve.len() {
                shown = t;
                println!(
                    "{t:>8.1} {n:>6} {b:>10.4} {:>9.1} {:>8}",
                    flops / b / 1e9,
                    pct(b)
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        if let Some(bms) = blas_ms {
            for target in [0.6, 0.8, 0.9] {
                let hit = rec.curve.iter().find(|(_, b, _)| bms / b >= target);
                match hit {
                    Some((t, _, n)) => println!(
                        "reached {:.0}% of cuBLAS after {t:.1} s ({n} configs)",
                        target * 100.0
                    ),
                    None => println!("never reached {:.0}% of cuBLAS", target * 100.0),
                }
            }
        }
        if let Some(f) = &mut self.json {
            let line = serde_json::json!({
                "curve": spec.name, "shape": shape, "cublas_ms": blas_ms,
                "points": rec.curve.iter().map(|(t, b, n)| serde_json::json!([t, b, n])).collect::<Vec<_>>(),
            });
            writeln!(f, "{line}").map_err(|e| Error::io("--json file", e))?;
        }
        // Hand the winner to the tuner (as Tuner::tune_with stores it), then measure it.
        let space = spec.space_for(shape, &gpu.limits)?;
        let bucket = spec
            .bucket(shape)
            .ok_or_else(|| Error::Shape(format!("{shape:?}")))?;
        let mut entry = Entry::new(
            spec.id(),
            bucket,
            gpu.fingerprint.clone(),
            &spec.name,
            &space.config_text(&best),
            best_ms,
        );
        entry.evaluated = result.observations.len() as u32;
        entry.strategy = "lfbo".into();
        self.tuner.cache().put(entry)?;
        println!();
        header();
        self.measure(kernel, &mut g, wall, result.observations.len() as u32)
    }
}

fn header() {
    println!(
        "{:<11} {:>16} {:>8} {:>8} {:>7} {:>9} {:>9} {:>5}  config",
        "kernel", "shape", "TFLOP/s", "cuBLAS", "ratio", "diff", "tuning", "evals"
    );
}

fn run() -> Result<()> {
    let parts =
        common::option("--parts", "GEMM_PARTS").unwrap_or_else(|| "sgemm,f16,bf16,curve".into());
    let want = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let shapes: Vec<[i64; 3]> = match common::option("--shapes", "GEMM_SHAPES") {
        Some(s) => s
            .split([';', ' '])
            .filter(|x| !x.is_empty())
            .map(|x| {
                common::parse_shape(x).and_then(|v| {
                    <[i64; 3]>::try_from(v)
                        .map_err(|_| Error::Shape(format!("`{x}` is not M x N x K")))
                })
            })
            .collect::<Result<_>>()?,
        None => SHAPES.to_vec(),
    };
    let tune_s: f64 = common::num_option("--tune-s", "GEMM_TUNE_S", 15.0)?;
    let curve_s: f64 = common::num_option("--curve-s", "GEMM_CURVE_S", 60.0)?;
    let json = match common::option("--json", "GEMM_JSON") {
        Some(p) => Some(std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?),
        None => None,
    };
    let ctx = cudarc::driver::CudaContext::new(0).map_err(cuda("opening device 0"))?;
    // Memory-only: nothing from earlier runs is reused.
    let tuner = Tuner::with_context(ctx.clone(), Cache::memory_only(), Mode::Blocking)?;
    let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
    let timer = Timer::new(
        &ctx,
        stream.clone(),
        tuner.gpu().expect("a GPU tuner has a GPU").limits.l2_bytes,
    )?;
    let blas = match Blas::load(stream.clone()) {
        Ok(b) => Some(b),
        Err(why) => {
            println!("cuBLAS: {why}; showing jitune's figures only");
            None
        }
    };
    println!(
        "device {}; tuning budget {tune_s} s per shape (memory-only cache); parts {parts}",
        tuner.fingerprint().to_text()
    );
    let f16_default = common::hgemm_spec_for(tuner.gpu().expect("a GPU tuner has a GPU"), "f16");
    let bf16_default = common::hgemm_spec_for(tuner.gpu().expect("a GPU tuner has a GPU"), "bf16");
    let mut b = Bench {
        ctx,
        tuner,
        stream,
        timer,
        blas,
        tune_s,
        json,
    };
    let mut kernels: Vec<(Kernel, Prec)> = Vec::new();
    if want("sgemm") {
        kernels.push((common::kernel("sgemm")?, Prec::F32));
    }
    let f16 = if want("f16") || want("curve") {
        common::optional_kernel(
            &common::option("--f16-spec", "GEMM_F16_SPEC").unwrap_or(f16_default),
        )?
    } else {
        None
    };
    if let (true, Some(k)) = (want("f16"), &f16) {
        kernels.push((k.clone(), Prec::F16));
    }
    if want("bf16") {
        let name = common::option("--bf16-spec", "GEMM_BF16_SPEC").unwrap_or(bf16_default);
        if let Some(k) = common::optional_kernel(&name)? {
            kernels.push((k, Prec::Bf16));
        }
    }
    let curve_shape = [4096i64, 4096, 4096];
    let mut curve_done = false;
    if let (true, Some(k)) = (want("curve"), &f16) {
        b.curve(k, &curve_shape, curve_s)?;
        curve_done = true;
    }
    if kernels.is_empty() {
        return Ok(());
    }
    println!();
    header();
    let start = Instant::now();
    for (kernel, prec) in &kernels {
        for shape in &shapes {
            if curve_done && *prec == Prec::F16 && *shape == curve_shape {
                continue; // measured with its curve above
            }
            b.row(kernel, *prec, shape)?;
        }
    }
    println!("\n(table done in {:.0} s)", start.elapsed().as_secs_f64());
    Ok(())
}
