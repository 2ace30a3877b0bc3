//! Replay benchmark: runs search strategies on recorded Kernel Tuner cachefiles and reports regret.
//!
//! For every cachefile in `--data` (a directory, or one file) and every strategy, runs `--repeats`
//! seeded searches with an evaluation budget of `--budget` unique configs on a
//! [`ReplayEvaluator`], prints the mean regret (best recorded mean time found / optimum) after 20,
//! 50, 100 and 200 evaluations and of the returned winner (`win`: what a tuner would store), and
//! writes one JSON line per run (`--traces`) for `score_traces.py`, which scores over simulated
//! time.
//!
//! ```text
//! cargo run --release --example replay -- --data DIR|FILE --budget 220 --repeats 10 --traces t.jsonl \
//!     [--strategies lfbo,random,pattern,exhaustive] [--seed 0] [--lfbo knob=value,...] \
//!     [--prior FILE [--prior-opt knob=value,...]]
//! ```
//! `--lfbo` overrides LFBO knobs for experiments: batch, n_init, quantile, trees, depth,
//! incumbents, neighbours, radius, global, diversity, explore, patience.
//!
//! `--prior FILE` seeds every search with a recording of the same kernel's space on another GPU
//! (only configs valid in both files count): the strategies are then named `lfbo+prior` (etc.)
//! in the output and the traces, the space keeps the target file's name, and the `trust` column
//! gives the prior's mean trust at the end of the runs (0: dropped as not transferring).
//! `--prior-opt` overrides the prior knobs (`PriorParams`): start, polish, belief, rho_floor,
//! rho_full, half, candidates, and the prior's weight; `--lfbo` also takes prior_share and
//! prior_init.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use jitune::replay::{Cachefile, ReplayEvaluator};
use jitune::search::{strategy_by_name, Lfbo, LfboParams, PriorParams, SearchOptions, Strategy};
use jitune::{Error, Result};

const BUDGETS: [usize; 4] = [20, 50, 100, 200];

struct Args {
    data: PathBuf,
    budget: usize,
    repeats: usize,
    traces: Option<PathBuf>,
    strategies: Vec<String>,
    seed: u64,
    lfbo: LfboParams,
    prior: Option<PathBuf>,
    prior_params: PriorParams,
    prior_weight: f64,
}

const USAGE: &str = "usage: replay --data DIR|FILE --budget N --repeats N [--traces FILE.jsonl] \
[--strategies lfbo,random,pattern,exhaustive] [--seed N] [--lfbo knob=value,...] \
[--prior FILE [--prior-opt knob=value,...]]";

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| Error::InvalidArgument(format!("{flag}: `{v}` is not a valid number")))
}

/// Applies `flag`'s `knob=value,...` list through `set`, which returns `false` for a knob it
/// does not know.
fn parse_knobs(
    flag: &str,
    text: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool>,
) -> Result<()> {
    for kv in text.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::InvalidArgument(format!("{flag}: `{kv}` is not knob=value")))?;
        if !set(k, v)? {
            return Err(Error::InvalidArgument(format!(
                "{flag}: unknown knob `{k}`"
            )));
        }
    }
    Ok(())
}

fn parse_lfbo(p: &mut LfboParams, text: &str) -> Result<()> {
    parse_knobs("--lfbo", text, |k, v| {
        match k {
            "batch" => p.batch = parse_num(k, v)?,
            "n_init" => p.n_init = parse_num(k, v)?,
            "quantile" => p.quantile = parse_num(k, v)?,
            "trees" => p.forest.n_trees = parse_num(k, v)?,
            "depth" => p.forest.max_depth = parse_num(k, v)?,
            "leaf" => p.forest.min_samples_leaf = parse_num(k, v)?,
            "features" => p.forest.max_features = Some(parse_num(k, v)?),
            "incumbents" => p.n_incumbents = parse_num(k, v)?,
            "neighbours" => p.neighbours_per_incumbent = parse_num(k, v)?,
            "radius" => p.radius = parse_num(k, v)?,
            "radius_share" => p.radius_share = parse_num(k, v)?,
            "global" => p.n_global = parse_num(k, v)?,
            "diversity" => p.diversity = parse_num(k, v)?,
            "explore" => p.explore_share = parse_num(k, v)?,
            "patience" => p.patience = parse_num(k, v)?,
            "centre_distance" => p.centre_distance = parse_num(k, v)?,
            "stall_explore" => p.stall_explore_share = parse_num(k, v)?,
            "basin_distance" => p.basin_distance = parse_num(k, v)?,
            "restarts" => p.max_restarts = parse_num(k, v)?,
            "restart_fresh" => p.restart_fresh = parse_num::<u8>(k, v)? != 0,
            "prior_share" => p.prior_share = parse_num(k, v)?,
            "prior_init" => p.prior_init = parse_num(k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn parse_prior(a: &mut Args, text: &str) -> Result<()> {
    let (p, weight) = (&mut a.prior_params, &mut a.prior_weight);
    parse_knobs("--prior-opt", text, |k, v| {
        match k {
            "start" => p.start = parse_num(k, v)?,
            "belief" => p.belief = parse_num(k, v)?,
            "rho_floor" => p.rho_floor = parse_num(k, v)?,
            "rho_full" => p.rho_full = parse_num(k, v)?,
            "half" => p.half = parse_num(k, v)?,
            "candidates" => p.candidates = parse_num(k, v)?,
            "polish" => p.polish = parse_num(k, v)?,
            "weight" => *weight = parse_num(k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        data: PathBuf::new(),
        budget: 220,
        repeats: 10,
        traces: None,
        strategies: vec!["lfbo".into(), "random".into(), "pattern".into()],
        seed: 0,
        lfbo: LfboParams::default(),
        prior: None,
        prior_params: PriorParams::default(),
        prior_weight: 1.0,
    };
    let mut have_data = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a value\n{USAGE}")))?;
        match flag.as_str() {
            "--data" => {
                a.data = PathBuf::from(v);
                have_data = true;
            }
            "--budget" => a.budget = parse_num(&flag, &v)?,
            "--repeats" => a.repeats = parse_num(&flag, &v)?,
            "--traces" => a.traces = Some(PathBuf::from(v)),
            "--seed" => a.seed = parse_num(&flag, &v)?,
            "--strategies" => {
                a.strategies = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "--lfbo" => parse_lfbo(&mut a.lfbo, &v)?,
            "--prior" => a.prior = Some(PathBuf::from(v)),
            "--prior-opt" => parse_prior(&mut a, &v)?,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown flag `{flag}`\n{USAGE}"
                )))
            }
        }
    }
    if !have_data {
        return Err(Error::InvalidArgument(format!(
            "--data is required\n{USAGE}"
        )));
    }
    for s in &a.strategies {
        if strategy_by_name(s).is_none() {
            return Err(Error::InvalidArgument(format!("unknown strategy `{s}`")));
        }
    }
    Ok(a)
}

/// The cachefiles of `--data`: the file itself, or the directory's `.json` / `.json.gz` files.
fn cachefiles(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_str()
                .is_some_and(|s| s.ends_with(".json.gz") || s.ends_with(".json"))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("replay: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let files = cachefiles(&args.data)?;
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no cachefiles in {}",
            args.data.display()
        )));
    }
    let prior_file = match &args.prior {
        Some(p) => Some(Cachefile::load(p)?),
        None => None,
    };
    let suffix = if prior_file.is_some() { "+prior" } else { "" };
    let mut traces = match &args.traces {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
        )),
        None => None,
    };
    let header = format!(
        "{:<26} {:<11} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8}",
        "space",
        "strategy",
        "evals",
        "reg@20",
        "reg@50",
        "reg@100",
        "reg@200",
        "win",
        "trust",
        "sim_s",
        "cpu_ms"
    );
    println!("{header}");
    // Per strategy, the per-space mean regrets (and winner's regret), for the aggregate rows.
    let mut agg: Vec<(String, Vec<[f64; 5]>)> = args
        .strategies
        .iter()
        .map(|s| (format!("{s}{suffix}"), Vec::new()))
        .collect();
    for path in &files {
        let data = Arc::new(Cachefile::load(path)?);
        let (_, opt) = data
            .optimum()
            .ok_or_else(|| Error::Search(format!("{}: no successful config", data.name)))?;
        let worst = data.worst_time().unwrap_or(opt);
        let prior = match &prior_file {
            Some(p) => Some(
                p.prior_for(&data)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "--prior {}: its parameters are not those of {}",
                            p.name, data.name
                        ))
                    })?
                    .with_weight(args.prior_weight),
            ),
            None => None,
        };
        for (si, sname) in args.strategies.iter().enumerate() {
            let strat: Box<dyn Strategy> = if sname == "lfbo" {
                Box::new(Lfbo::new(args.lfbo.clone()))
            } else {
                strategy_by_name(sname).ok_or_else(|| Error::Search(sname.clone()))?
            };
            let label = format!("{sname}{suffix}");
            let mut reg = [0.0f64; 5];
            let (mut evals, mut sim, mut cpu, mut trust) = (0usize, 0.0f64, 0.0f64, 0.0f64);
            for run in 0..args.repeats {
                let seed = args.seed.wrapping_add(run as u64);
                let mut ev = ReplayEvaluator::new(data.clone(), seed);
                let mut opts = SearchOptions::new(seed, args.budget);
                opts.priors.extend(prior.clone());
                opts.prior_params = args.prior_params.clone();
                let t0 = Instant::now();
                let res = strat.search(&mut ev, &opts)?;
                cpu += t0.elapsed().as_secs_f64() * 1000.0;
                evals += res.observations.len();
                sim += res.elapsed_s;
                trust += res.prior_trust.iter().map(|(_, t)| t).sum::<f64>();
                // Regret by recorded mean time of the configs evaluated so far.
                let mut best = f64::INFINITY;
                let mut at = [f64::INFINITY; 4];
                for (k, o) in res.observations.iter().enumerate() {
                    if let Some(t) = data.mean_time(&o.config) {
                        best = best.min(t);
                    }
                    for (b, slot) in BUDGETS.iter().zip(at.iter_mut()) {
                        if k < *b {
                            *slot = best;
                        }
                    }
                }
                // The winner the search returned, by its recorded mean time.
                let win = res
                    .best
                    .as_ref()
                    .and_then(|(c, _)| data.mean_time(c))
                    .unwrap_or(worst);
                for (r, a) in reg.iter_mut().zip(at.into_iter().chain([win])) {
                    let v = if a.is_finite() {
                        a
                    } else if best.is_finite() {
                        best
                    } else {
                        worst
                    };
                    *r += v / opt / args.repeats as f64;
                }
                if let Some(w) = traces.as_mut() {
                    let evals_json: Vec<serde_json::Value> = res
                        .trace()
                        .map(|(c, t)| serde_json::json!([data.key(c), t]))
                        .collect();
                    let line = serde_json::json!({"space": data.name, "strategy": label, "run": run, "evals": evals_json});
                    writeln!(w, "{line}").map_err(|e| {
                        Error::io(args.traces.as_deref().unwrap_or(Path::new("")), e)
                    })?;
                }
            }
            let n = args.repeats.max(1) as f64;
            let trust = if prior.is_some() {
                format!("{:.2}", trust / n)
            } else {
                "-".into()
            };
            println!(
                "{:<26} {:<11} {:>5.0} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>6} {:>9.1} {:>8.1}",
                data.name,
                label,
                evals as f64 / n,
                reg[0],
                reg[1],
                reg[2],
                reg[3],
                reg[4],
                trust,
                sim / n,
                cpu / n
            );
            agg[si].1.push(reg);
        }
    }
    println!("{}", "-".repeat(header.len()));
    for (name, rows) in &agg {
        let m = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len().max(1) as f64;
        println!(
            "{:<26} {:<11} {:>5} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
            "mean",
            name,
            "",
            m(0),
            m(1),
            m(2),
            m(3),
            m(4)
        );
    }
    if let Some(mut w) = traces {
        w.flush()
            .map_err(|e| Error::io(args.traces.as_deref().unwrap_or(Path::new("")), e))?;
    }
    Ok(())
}
