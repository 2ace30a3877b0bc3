//! What an operator's dashboard would show, for the examples: every tuner event collected
//! through `Tuner::on_event` and summarised (counts per kind and miss decision, each search's
//! winner against the default, swaps, fallbacks, errors), and the tuner's counters
//! (`Tuner::stats`) in one block. Included by the server examples with
//! `#[path = "common/events.rs"] mod events;`.
#![allow(dead_code)] // each program uses a different part of this file

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jitune::tuner::{Event, MissDecision, Stats, Tuner};

#[derive(Default)]
struct Log {
    kinds: BTreeMap<&'static str, usize>,
    decisions: BTreeMap<&'static str, usize>,
    searches: Vec<String>,
    swaps: Vec<String>,
    fallbacks: BTreeMap<String, usize>,
    errors: Vec<String>,
}

/// The events of one tuner, as they arrive.
#[derive(Clone)]
pub struct EventSummary {
    log: Arc<Mutex<Log>>,
    start: Instant,
}

fn decision(d: &MissDecision) -> &'static str {
    match d {
        MissDecision::Cached { .. } => "cached",
        MissDecision::Default { .. } => "default",
        MissDecision::TunedNow { .. } => "tuned now",
        MissDecision::Provisional { .. } => "provisional",
        MissDecision::Inherited { .. } => "inherited",
        MissDecision::Joined => "joined",
        MissDecision::Captured { .. } => "captured (loaded plan of another bucket)",
        MissDecision::CaptureRefused => "capture refused",
    }
}

fn shape(s: &[i64]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

impl EventSummary {
    /// Registers a callback on `tuner` that records its events from now on.
    pub fn attach(tuner: &Tuner) -> EventSummary {
        let s = EventSummary {
            log: Arc::new(Mutex::new(Log::default())),
            start: Instant::now(),
        };
        let (log, start) = (s.log.clone(), s.start);
        tuner.on_event(move |e| {
            let at = start.elapsed().as_secs_f64();
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            *l.kinds.entry(e.kind()).or_default() += 1;
            match e {
                Event::Miss { decision: d, .. } => *l.decisions.entry(decision(d)).or_default() += 1,
                Event::TuneFinished {
                    kernel,
                    shape: sh,
                    winner,
                    time_ms,
                    default_ms,
                    evaluations,
                    wall_s,
                    partial,
                    ..
                } => l.searches.push(format!(
                    "{at:>7.1} s  {kernel} {}: {time_ms:.4} ms{}, {evaluations} configs{}, {wall_s:.1} s  {winner}",
                    shape(sh),
                    match default_ms {
                        Some(d) => format!(" vs default {d:.4} ms ({:.2}x)", d / time_ms),
                        None => String::new(),
                    },
                    if *partial { " (partial)" } else { "" },
                )),
                Event::Swapped {
                    kernel,
                    key,
                    from,
                    to,
                    generation,
                } => l.swaps.push(format!(
                    "{at:>7.1} s  {kernel} {}: generation {generation}: {from} -> {to}",
                    key.shape.to_text()
                )),
                Event::Fallback { reason, .. } => {
                    // Group by the reason's first words (the configs differ).
                    let head: String = reason.split(':').next().unwrap_or("").to_string();
                    *l.fallbacks.entry(head).or_default() += 1;
                }
                Event::Error {
                    kernel, message, ..
                } => l.errors.push(format!("{at:>7.1} s  {kernel}: {message}")),
                _ => {}
            }
        });
        s
    }

    /// How many events of `kind` (`Event::kind`) arrived.
    pub fn count(&self, kind: &str) -> usize {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.kinds.get(kind).copied().unwrap_or(0)
    }

    /// Prints the summary; at most `rows` lines per list.
    pub fn print(&self, rows: usize) {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let kinds: Vec<String> = l.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("events: {}", kinds.join(", "));
        if !l.decisions.is_empty() {
            let d: Vec<String> = l
                .decisions
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("  misses by decision: {}", d.join(", "));
        }
        let list = |title: &str, v: &[String]| {
            if v.is_empty() {
                return;
            }
            println!("  {title} ({}):", v.len());
            for line in v.iter().take(rows) {
                println!("  {line}");
            }
            if v.len() > rows {
                println!("  ... {} more", v.len() - rows);
            }
        };
        list("searches: winner vs the default config", &l.searches);
        list("swaps", &l.swaps);
        if !l.fallbacks.is_empty() {
            println!("  fallbacks:");
            for (r, n) in &l.fallbacks {
                println!("  {n:>7}x  {r}");
            }
        }
        list("errors", &l.errors);
    }
}

/// The tuner's counters in one block.
pub fn print_stats(s: &Stats) {
    println!(
        "stats: hits {} misses {} (in captures {}) fallbacks {} swaps {} (pending {}, generation {})\n       searches {} compiles {} compile {:.2} s tuning {:.1} s errors {} captures noticed on launches {} waits for captures {}",
        s.hits,
        s.misses,
        s.capture_misses,
        s.fallbacks,
        s.swaps,
        s.pending_swaps,
        s.generation,
        s.searches,
        s.compiles,
        s.compile_s,
        s.tuning_s,
        s.errors,
        s.captures_detected,
        s.waits_for_captures
    );
    let d = &s.misses_by_decision;
    println!(
        "       adopted {} lease takeovers {}; misses by decision: hit {} inherited {} provisional {} nearest {} default {}",
        s.adopted, s.lease_takeovers, d.hit, d.inherited, d.provisional, d.nearest, d.default
    );
}
