//! Diagnostic: why NVRTC compiled the same SGEMM config in ~25 ms in one process and ~600 ms in
//! another. Times each config in this process before and after a CUDA context exists (wall
//! time and this thread's CPU time), in one worker process, and in a pool of workers; prints the
//! CPU affinity of this process, of a thread and of a child started after the context.
//!
//! What it found on the H200 (device calls K-M, 2026-12-02): NVRTC's CUBINs go through the
//! driver's compute cache (`~/.nv/ComputeCache`, per user, every process): the first compile
//! of a config costs 0.25-2 s of CPU (all of it real work, no waiting, no affinity limit), any
//! later one, in any process, 16-25 ms; with `CUDA_CACHE_DISABLE=1` every arm is slow. Timing
//! compilation honestly means a cold cache (a fresh `CUDA_CACHE_PATH`, or sources it never saw).
//!
//!     cargo run --release --example nvrtc_probe      (needs libnvrtc and a GPU)

use std::time::Instant;

use jitune::internals::{compile_in_process, CompilePool, CompileRequest, PoolMode};
use jitune::spec::{DeviceLimits, KernelSpec};

fn status_field(path: &str, field: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

/// This thread's CPU time in ms (schedstat's run time).
fn thread_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|ns| ns / 1e6)
        .unwrap_or(f64::NAN)
}

/// (utime+stime, cutime+cstime) of this process in ms.
fn proc_cpu_ms() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // After the ')' field 0 is state (index 3 of the full line); utime is index 14 (1-based), so
    // 11 here.
    let tick = 10.0;
    if f.len() > 15 {
        ((f[11] + f[12]) * tick, (f[13] + f[14]) * tick)
    } else {
        (f64::NAN, f64::NAN)
    }
}

fn affinity(label: &str) {
    println!(
        "{label:40} Cpus_allowed_list {}  threads {}",
        status_field("/proc/thread-self/status", "Cpus_allowed_list:"),
        status_field("/proc/self/status", "Threads:")
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn in_process(label: &str, reqs: &[CompileRequest]) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let v0 = status_field("/proc/thread-self/status", "voluntary_ctxt_switches:");
    for r in reqs {
        let (t, c) = (Instant::now(), thread_cpu_ms());
        let ok = matches!(compile_in_process(r), Ok(Ok(_)));
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(thread_cpu_ms() - c);
        if !ok {
            println!("  (a compile failed)");
        }
    }
    let v1 = status_field("/proc/thread-self/status", "voluntary_ctxt_switches:");
    println!(
        "{label:40} wall median {:7.1} ms  sum {:7.0} ms | thread CPU median {:7.1} ms  sum {:7.0} ms | voluntary switches {v0} -> {v1}",
        median(&mut wall.clone()),
        wall.iter().sum::<f64>(),
        median(&mut cpu.clone()),
        cpu.iter().sum::<f64>()
    );
    println!(
        "  per config wall ms: {:?}",
        wall.iter().map(|w| w.round() as i64).collect::<Vec<_>>()
    );
}

fn main() {
    jitune::run_if_worker();
    if let Err(why) = jitune::require_cuda() {
        println!("nvrtc probe skipped: {why}");
        return;
    }
    let spec =
        KernelSpec::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/sgemm.toml"))
            .unwrap();
    let space = spec
        .space_for(&[2048, 2048, 2048], &DeviceLimits::h100())
        .unwrap();
    let mut configs = Vec::new();
    for text in [
        "ATRANS=True,BK=16,BM=128,BN=256,DBUF=True,SPLIT_K=1,TM=8,TN=4,VEC=True,WM=64,WN=64,WNITER=2",
        "ATRANS=True,BK=16,BM=128,BN=256,DBUF=True,SPLIT_K=1,TM=4,TN=4,VEC=True,WM=64,WN=64,WNITER=2",
    ] {
        if let Ok(c) = space.parse_config_text(text) {
            configs.push(c);
        }
    }
    let mut rng = jitune::internals::Rng::new(11);
    while configs.len() < 12 {
        if let Some(c) = space.sample(&mut rng) {
            if !configs.contains(&c) {
                configs.push(c);
            }
        }
    }
    let reqs: Vec<CompileRequest> = configs
        .iter()
        .map(|c| CompileRequest::new(&spec, c, "sm_90"))
        .collect();
    println!("cpus available: {:?}", std::thread::available_parallelism());
    affinity("main thread, start");
    // The first compile loads NVRTC: not timed.
    let _ = compile_in_process(&reqs[reqs.len() - 1]);
    in_process("in process, no context", &reqs);
    let _ctx = cudarc::driver::CudaContext::new(0).unwrap();
    affinity("main thread, context alive");
    std::thread::spawn(|| affinity("a new thread, context alive"))
        .join()
        .unwrap();
    if let Ok(out) = std::process::Command::new("sh")
        .arg("-c")
        .arg("grep Cpus_allowed_list /proc/self/status; nproc")
        .output()
    {
        println!(
            "a child process, context alive: {}",
            String::from_utf8_lossy(&out.stdout).replace('\n', "  ")
        );
    }
    in_process("in process, context alive", &reqs);
    let r2 = reqs.clone();
    std::thread::spawn(move || in_process("in process, new thread, context alive", &r2))
        .join()
        .unwrap();

    let cmd = jitune::internals::worker_command().expect("worker command");
    let (own0, kids0) = proc_cpu_ms();
    {
        let one = CompilePool::with_mode(PoolMode::Processes(cmd.clone()), 1);
        let _ = one.compile_all(vec![reqs[reqs.len() - 1].clone()]);
        let mut wall = Vec::new();
        for r in &reqs {
            let t = Instant::now();
            let _ = one.compile_all(vec![r.clone()]);
            wall.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{:40} wall median {:7.1} ms  sum {:7.0} ms",
            "1 worker process (after a warm-up)",
            median(&mut wall.clone()),
            wall.iter().sum::<f64>()
        );
        println!(
            "  per config wall ms: {:?}",
            wall.iter().map(|w| w.round() as i64).collect::<Vec<_>>()
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (own1, kids1) = proc_cpu_ms();
    println!(
        "  CPU: this process {:.0} ms, finished children {:.0} ms",
        own1 - own0,
        kids1 - kids0
    );
    {
        let pool = CompilePool::with_mode(PoolMode::Processes(cmd), 16);
        let t = Instant::now();
        let _ = pool.compile_all(reqs.clone());
        let cold = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _ = pool.compile_all(reqs.clone());
        let warm = t.elapsed().as_secs_f64() * 1e3;
        let st = pool.stats();
        println!(
            "16 workers, all {} at once: cold {cold:.0} ms, warm {warm:.0} ms; mean compile {:.1} ms, max {:.1} ms",
            reqs.len(),
            st.compile_s * 1e3 / st.compiles.max(1) as f64,
            st.max_s * 1e3
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, kids2) = proc_cpu_ms();
    println!(
        "  CPU of the 16 workers (finished children): {:.0} ms",
        kids2 - kids1
    );
}
