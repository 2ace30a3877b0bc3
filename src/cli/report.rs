//! `jitune report`: a convergence plot (best-so-far against time or evaluations, one line per
//! strategy or tuning run) as SVG and PNG, and a one-page HTML summary of a cache.
//!
//! Traces are JSON lines of two kinds: `jitune tune --trace` lines (`{"kernel", "shape",
//! "strategy", "default_ms", "curve": [[seconds, best_ms], ...]}`: one line per tuning run, x is
//! seconds) and the replay example's lines (`{"space", "strategy", "run", "evals": [[key,
//! ms|null], ...]}`: one line per strategy, the mean over spaces and runs, x is the evaluation
//! index). y is the best time so far divided by the best any run found for that space or
//! kernel and shape (1 = the best known). The SVG and PNG are drawn by hand; the PNG's text uses
//! a built-in 3x5 pixel font (digits, letters shown as capitals, a little punctuation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::{exit, input_err, load_cache, CliError, CliResult};
use crate::Error;

/// Arguments of `jitune report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Trace files (JSON lines from `jitune tune --trace` or the replay example's `--traces`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub trace: Vec<PathBuf>,
    /// The folder to write convergence.svg, convergence.png and report.html into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Leave the cache out of the HTML (only plot traces).
    #[arg(long)]
    pub no_cache: bool,
}

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
}

/// A plot: its lines and axis titles.
#[derive(Clone, Debug)]
pub struct Plot {
    /// The lines.
    pub series: Vec<Series>,
    /// x-axis title.
    pub x_label: String,
    /// y-axis title.
    pub y_label: String,
}

const COLORS: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];

/// Default-config times from tune traces, by (kernel name, shape text).
type Defaults = BTreeMap<(String, String), f64>;

/// One tune trace line: kernel, shape, strategy, (seconds, best ms) points.
type TuneRun = (String, String, String, Vec<(f64, f64)>);
/// Replay traces: space -> strategy -> runs of best-so-far per evaluation index.
type ReplayRuns = BTreeMap<String, BTreeMap<String, Vec<Vec<f64>>>>;

/// Reads trace files into a plot (and the default times tune traces carry).
pub fn read_traces(files: &[PathBuf]) -> CliResult<(Plot, Defaults)> {
    let mut tune_runs: Vec<TuneRun> = Vec::new();
    let mut replay = ReplayRuns::new();
    let mut defaults = Defaults::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| input_err(Error::io(f, e)))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad =
                |m: &str| CliError::new(exit::RUNTIME, format!("{}:{}: {m}", f.display(), n + 1));
            let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            if let Some(curve) = v.get("curve").and_then(Value::as_array) {
                let pts = curve
                    .iter()
                    .map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("`curve` is not [[seconds, ms], ...]"))?;
                let (k, sh) = (
                    s("kernel").unwrap_or_default(),
                    s("shape").unwrap_or_default(),
                );
                if let Some(d) = v.get("default_ms").and_then(Value::as_f64) {
                    defaults.insert((k.clone(), sh.clone()), d);
                }
                tune_runs.push((k, sh, s("strategy").unwrap_or_default(), pts));
            } else if let Some(evals) = v.get("evals").and_then(Value::as_array) {
                let mut best = f64::INFINITY;
                let mut run = Vec::with_capacity(evals.len());
                for e in evals {
                    if let Some(t) = e.get(1).and_then(Value::as_f64) {
                        best = best.min(t);
                    }
                    run.push(best);
                }
                replay
                    .entry(s("space").unwrap_or_default())
                    .or_default()
                    .entry(s("strategy").unwrap_or_default())
                    .or_default()
                    .push(run);
            } else {
                return Err(bad(
                    "neither a tune trace (`curve`) nor a replay trace (`evals`)",
                ));
            }
        }
    }
    if !tune_runs.is_empty() && !replay.is_empty() {
        return Err(CliError::new(
            exit::USAGE,
            "tune traces (time) and replay traces (evaluations) have different x axes; report them separately",
        ));
    }
    if !replay.is_empty() {
        return Ok((replay_plot(&replay), defaults));
    }
    // Tune runs: normalise by the best final time of the same kernel and shape.
    let mut best: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (k, sh, _, pts) in &tune_runs {
        let b = best.entry((k.clone(), sh.clone())).or_insert(f64::INFINITY);
        for p in pts {
            *b = b.min(p.1);
        }
    }
    let series = tune_runs
        .iter()
        .map(|(k, sh, st, pts)| {
            let b = best[&(k.clone(), sh.clone())];
            Series {
                label: format!("{k} {sh} {st}"),
                points: pts
                    .iter()
                    .filter(|p| p.1.is_finite() && b > 0.0)
                    .map(|p| (p.0, p.1 / b))
                    .collect(),
            }
        })
        .collect();
    Ok((
        Plot {
            series,
            x_label: "seconds".into(),
            y_label: "best so far / best found".into(),
        },
        defaults,
    ))
}

fn replay_plot(replay: &ReplayRuns) -> Plot {
    // Per strategy: at each evaluation index, the mean over (space, run) of best-so-far divided
    // by the best any strategy found in that space; indices before every run has a result are
    // left out.
    let mut per_strategy: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for strategies in replay.values() {
        let best = strategies
            .values()
            .flatten()
            .flat_map(|r| r.last().copied())
            .fold(f64::INFINITY, f64::min);
        if !best.is_finite() || best <= 0.0 {
            continue;
        }
        for (st, runs) in strategies {
            for r in runs {
                per_strategy
                    .entry(st.clone())
                    .or_default()
                    .push(r.iter().map(|t| t / best).collect());
            }
        }
    }
    let series = per_strategy
        .into_iter()
        .map(|(st, runs)| {
            let len = runs.iter().map(Vec::len).min().unwrap_or(0);
            let points = (0..len)
                .filter_map(|i| {
                    let vals: Vec<f64> = runs.iter().map(|r| r[i]).collect();
                    vals.iter()
                        .all(|v| v.is_finite())
                        .then(|| ((i + 1) as f64, vals.iter().sum::<f64>() / vals.len() as f64))
                })
                .collect();
            Series {
                label: format!("{st} (mean of {} runs)", runs.len()),
                points,
            }
        })
        .collect();
    Plot {
        series,
        x_label: "evaluations".into(),
        y_label: "best so far / best found (mean)".into(),
    }
}

const W: usize = 800;
const H: usize = 500;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// The data ranges of a plot: x from 0, y from 1 to at most 3 (values above are clipped).
fn ranges(p: &Plot) -> (f64, f64, f64, f64) {
    let pts = p.series.iter().flat_map(|s| s.points.iter());
    let xmax = pts.clone().map(|q| q.0).fold(0.0, f64::max).max(1e-9);
    let ymax = pts.map(|q| q.1).fold(1.0, f64::max).clamp(1.05, 3.0);
    (0.0, xmax, 1.0, ymax)
}

fn to_px(p: &Plot, (x, y): (f64, f64)) -> (f64, f64) {
    let (x0, x1, y0, y1) = ranges(p);
    let pw = W as f64 - LEFT - RIGHT;
    let ph = H as f64 - TOP - BOTTOM;
    let y = y.clamp(y0, y1);
    (
        LEFT + (x - x0) / (x1 - x0) * pw,
        TOP + ph - (y - y0) / (y1 - y0) * ph,
    )
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    (0..=5).map(|i| lo + (hi - lo) * i as f64 / 5.0).collect()
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v >= 10.0 && (v - v.round()).abs() < 1e-9) {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plot as an SVG document.
pub fn svg(p: &Plot) -> String {
    let (x0, x1, y0, y1) = ranges(p);
    let (pl, pr, pt, pb) = (LEFT, W as f64 - RIGHT, TOP, H as f64 - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    for t in ticks(x0, x1) {
        let (x, _) = to_px(p, (t, y0));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{pt}" x2="{x:.1}" y2="{pb}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            pb + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1) {
        let (_, y) = to_px(p, (x0, t));
        let _ = writeln!(
            s,
            r##"<line x1="{pl}" y1="{y:.1}" x2="{pr}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            pl - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{pl}" y="{pt}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        pr - pl,
        pb - pt
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        (pl + pr) / 2.0,
        H - 12,
        esc(&p.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (pt + pb) / 2.0,
        esc(&p.y_label)
    );
    for (i, ser) in p.series.iter().enumerate() {
        let (r, g, b) = COLORS[i % COLORS.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|q| {
                let (x, y) = to_px(p, *q);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="rgb({r},{g},{b})" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = pt + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="rgb({r},{g},{b})" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            pr + 12.0,
            pr + 36.0,
            pr + 42.0,
            ly + 4.0,
            esc(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An RGB pixel buffer.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: (u8, u8, u8)) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }
    /// A line `width` pixels thick (a square brush stepped along it).
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: (u8, u8, u8), width: i64) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as i64).max(1);
        let lo = -(width - 1) / 2;
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let x = (a.0 + (b.0 - a.0) * t).round() as i64;
            let y = (a.1 + (b.1 - a.1) * t).round() as i64;
            for dx in lo..lo + width {
                for dy in lo..lo + width {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }
}

/// A 3x5 pixel font: each glyph is five rows of three bits, the high bit leftmost.
fn glyph(ch: char) -> [u8; 5] {
    const DIGITS: [[u8; 5]; 10] = [
        [7, 5, 5, 5, 7],
        [2, 6, 2, 2, 7],
        [7, 1, 7, 4, 7],
        [7, 1, 7, 1, 7],
        [5, 5, 7, 1, 1],
        [7, 4, 7, 1, 7],
        [7, 4, 7, 5, 7],
        [7, 1, 2, 2, 2],
        [7, 5, 7, 5, 7],
        [7, 5, 7, 1, 7],
    ];
    const LETTERS: [[u8; 5]; 26] = [
        [2, 5, 7, 5, 5],
        [6, 5, 6, 5, 6],
        [3, 4, 4, 4, 3],
        [6, 5, 5, 5, 6],
        [7, 4, 6, 4, 7],
        [7, 4, 6, 4, 4],
        [3, 4, 5, 5, 3],
        [5, 5, 7, 5, 5],
        [7, 2, 2, 2, 7],
        [1, 1, 1, 5, 2],
        [5, 5, 6, 5, 5],
        [4, 4, 4, 4, 7],
        [5, 7, 7, 5, 5],
        [6, 5, 5, 5, 5],
        [2, 5, 5, 5, 2],
        [6, 5, 6, 4, 4],
        [2, 5, 5, 6, 3],
        [6, 5, 6, 5, 5],
        [3, 4, 2, 1, 6],
        [7, 2, 2, 2, 2],
        [5, 5, 5, 5, 7],
        [5, 5, 5, 5, 2],
        [5, 5, 7, 7, 5],
        [5, 5, 2, 5, 5],
        [5, 5, 2, 2, 2],
        [7, 1, 2, 4, 7],
    ];
    match ch {
        '0'..='9' => DIGITS[ch as usize - '0' as usize],
        'a'..='z' => LETTERS[ch as usize - 'a' as usize],
        'A'..='Z' => LETTERS[ch as usize - 'A' as usize],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '=' => [0, 7, 0, 7, 0],
        ',' => [0, 0, 0, 2, 4],
        '+' => [0, 2, 7, 2, 0],
        ' ' => [0; 5],
        _ => [7, 5, 5, 5, 7],
    }
}

/// Text scale: each font pixel is `SCALE` x `SCALE` image pixels.
const SCALE: i64 = 2;
/// Horizontal advance per character in image pixels.
const ADVANCE: i64 = 4 * SCALE;

impl Canvas {
    /// Draws `text` with its top-left corner at (x, y).
    fn text(&mut self, x: f64, y: f64, text: &str, c: (u8, u8, u8)) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dx in 0..SCALE {
                            for dy in 0..SCALE {
                                self.set(
                                    x0 + i as i64 * ADVANCE + col * SCALE + dx,
                                    y0 + row as i64 * SCALE + dy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(text: &str) -> f64 {
    (text.chars().count() as i64 * ADVANCE - SCALE).max(0) as f64
}

/// The plot rasterised (same layout as the SVG; the y title sits above the plot) and
/// PNG-encoded.
pub fn png_bytes(p: &Plot) -> CliResult<Vec<u8>> {
    let (x0, x1, y0, y1) = ranges(p);
    let (pl, pr, pt, pb) = (LEFT, W as f64 - RIGHT, TOP, H as f64 - BOTTOM);
    let mut c = Canvas::new();
    let grid = (221, 221, 221);
    let black = (0, 0, 0);
    for t in ticks(x0, x1) {
        let (x, _) = to_px(p, (t, y0));
        c.line((x, pt), (x, pb), grid, 1);
        c.line((x, pb), (x, pb + 5.0), black, 1);
        let t = fmt_tick(t);
        c.text(x - text_width(&t) / 2.0, pb + 9.0, &t, black);
    }
    for t in ticks(y0, y1) {
        let (_, y) = to_px(p, (x0, t));
        c.line((pl, y), (pr, y), grid, 1);
        c.line((pl - 5.0, y), (pl, y), black, 1);
        let t = fmt_tick(t);
        c.text(pl - 9.0 - text_width(&t), y - 5.0, &t, black);
    }
    c.line((pl, pt), (pr, pt), black, 1);
    c.line((pl, pb), (pr, pb), black, 1);
    c.line((pl, pt), (pl, pb), black, 1);
    c.line((pr, pt), (pr, pb), black, 1);
    c.text(
        (pl + pr) / 2.0 - text_width(&p.x_label) / 2.0,
        H as f64 - 20.0,
        &p.x_label,
        black,
    );
    c.text(pl - 40.0, 8.0, &p.y_label, black);
    for (i, ser) in p.series.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        for w in ser.points.windows(2) {
            c.line(to_px(p, w[0]), to_px(p, w[1]), col, 2);
        }
        let ly = pt + 10.0 + 20.0 * i as f64;
        c.line((pr + 12.0, ly), (pr + 36.0, ly), col, 3);
        let max_chars = ((W as f64 - pr - 46.0) / ADVANCE as f64) as usize;
        let label: String = ser.label.chars().take(max_chars).collect();
        c.text(pr + 42.0, ly - 5.0, &label, black);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let perr = |e: png::EncodingError| CliError::new(exit::RUNTIME, format!("PNG: {e}"));
        let mut w = enc.write_header().map_err(perr)?;
        w.write_image_data(&c.px).map_err(perr)?;
        w.finish().map_err(perr)?;
    }
    Ok(out)
}

fn write(path: &Path, bytes: &[u8]) -> CliResult {
    std::fs::write(path, bytes)
        .map_err(|e| CliError::new(exit::RUNTIME, Error::io(path, e).to_string()))
}

/// Runs `jitune report`.
pub fn run(cache: Option<PathBuf>, args: ReportArgs) -> CliResult {
    if args.trace.is_empty() && args.no_cache {
        return Err(CliError::new(
            exit::USAGE,
            "nothing to report: give --trace FILE or leave out --no-cache",
        ));
    }
    let (plot, defaults) = if args.trace.is_empty() {
        (None, Defaults::new())
    } else {
        let (p, d) = read_traces(&args.trace)?;
        (Some(p), d)
    };
    let snap = if args.no_cache {
        None
    } else {
        Some(load_cache(cache)?)
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::new(exit::RUNTIME, Error::io(&args.out, e).to_string()))?;
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>jitune report</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.n{text-align:right}</style></head><body>\n<h1>jitune report</h1>\n",
    );
    if let Some(p) = &plot {
        write(&args.out.join("convergence.svg"), svg(p).as_bytes())?;
        write(&args.out.join("convergence.png"), &png_bytes(p)?)?;
        let _ = writeln!(
            html,
            "<h2>Convergence</h2>\n<p>{} lines; y is the best time so far divided by the best found (1 = best), x is {}.</p>\n<img src=\"convergence.svg\" alt=\"convergence plot\">",
            p.series.len(),
            esc(&p.x_label)
        );
    }
    if let Some((path, snap)) = &snap {
        let kernels: std::collections::BTreeSet<&str> = snap
            .entries
            .iter()
            .map(|e| e.kernel_name.as_str())
            .collect();
        let _ = writeln!(
            html,
            "<h2>Cache</h2>\n<p>{} &mdash; {} entries, {} kernels, {} failure records.</p>",
            esc(&path.display().to_string()),
            snap.entries.len(),
            kernels.len(),
            snap.failures.len()
        );
        html.push_str("<table><tr><th>kernel</th><th>shape</th><th>device</th><th>winner</th><th>median ms</th><th>spread ms</th><th>evaluations</th><th>strategy</th><th>default ms</th><th>speed-up</th></tr>\n");
        for e in &snap.entries {
            let d = defaults.get(&(e.kernel_name.clone(), e.key.shape.to_text()));
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=n>{:.4}</td><td class=n>{:.4}</td><td class=n>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                esc(&e.kernel_name),
                e.key.shape.to_text(),
                esc(&e.device.name),
                esc(&e.config),
                e.median_ms,
                e.spread_ms,
                e.evaluated,
                esc(&e.strategy),
                d.map_or("unknown".into(), |d| format!("{d:.4}")),
                d.map_or("unknown".into(), |d| format!("{:.2}&times;", d / e.median_ms)),
            );
        }
        html.push_str("</table>\n<p>Speed-up over the default config is known only for shapes whose <code>jitune tune --trace</code> lines are given (the cache stores winners, not default times).</p>\n");
    }
    html.push_str("</body></html>\n");
    write(&args.out.join("report.html"), html.as_bytes())?;
    println!("wrote report to {}", args.out.display());
    Ok(())
}
