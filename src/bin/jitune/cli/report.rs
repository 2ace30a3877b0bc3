//! `jitune report`: a convergence plot (best-so-far against time or evaluations, one line per
//! strategy or tuning run) as SVG and PNG, and a one-page HTML summary of a cache.
//!
//! Traces are JSON lines of two kinds: `jitune tune --trace` lines (`{"kernel", "shape",
//! "strategy", "default_ms", "curve": [[seconds, best_ms], ...]}`: one line per tuning run, x is
//! seconds) and the replay example's lines (`{"space", "strategy", "run", "evals": [[key,
//! ms|null], ...]}`: one line per strategy, the mean over spaces and runs, x is the evaluation
//! index). y is the best time so far divided by the best any run found for that space or
//! kernel and shape (1 = the best known), drawn as a step line (best so far holds until the next
//! improvement), clipped at 3 (the axis title says so when it is); ticks fall on round values.
//! Legend labels wrap beside the plot. The SVG and PNG are drawn by hand; the PNG's text uses a
//! built-in 3x5 pixel font (digits, letters shown as capitals, a little punctuation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::{exit, input_err, load_cache, CliError, CliResult};
use jitune::Error;

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

/// Where values are drawn: axis ranges and tick marks, computed once per plot.
struct Layout {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// (value, label) of each tick.
    xticks: Vec<(f64, String)>,
    yticks: Vec<(f64, String)>,
    /// Whether some y values lie above the top of the axis (drawn at the top edge).
    clipped: bool,
}

/// Highest y shown: ratios to the best beyond this are clipped (the start of a search is often
/// tens of times slower than its end and would flatten everything interesting).
const Y_CAP: f64 = 3.0;

/// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) giving about five intervals.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Ticks at multiples of a nice step from `lo` up to `hi` (inclusive, with rounding slack),
/// labelled with as many decimals as the step needs and no more.
fn nice_ticks(lo: f64, hi: f64, step: f64) -> Vec<(f64, String)> {
    let decimals = (0..=6)
        .find(|&d| {
            let k = step * 10f64.powi(d);
            (k - k.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|i| {
            let v = i as f64 * step;
            (v, format!("{v:.decimals$}"))
        })
        .collect()
}

impl Layout {
    /// x from 0 to a nice bound over the data; y from just under 1 (so lines reaching the best
    /// stay visible above the axis) to a nice bound over the data, at most [`Y_CAP`].
    fn of(p: &Plot) -> Layout {
        let pts = p.series.iter().flat_map(|s| s.points.iter());
        let xmax = pts.clone().map(|q| q.0).fold(0.0, f64::max).max(1e-9);
        let ymax_data = pts.map(|q| q.1).fold(1.0, f64::max);
        let clipped = ymax_data > Y_CAP;
        let xstep = nice_step(xmax);
        let x1 = (xmax / xstep - 1e-9).ceil().max(1.0) * xstep;
        let ymax = ymax_data.clamp(1.05, Y_CAP);
        let ystep = nice_step(ymax - 1.0);
        let y1 = (1.0 + ((ymax - 1.0) / ystep - 1e-9).ceil() * ystep).min(Y_CAP.max(ymax));
        let y0 = 1.0 - 0.03 * (y1 - 1.0);
        Layout {
            x0: 0.0,
            x1,
            y0,
            y1,
            xticks: nice_ticks(0.0, x1, xstep),
            yticks: nice_ticks(1.0, y1, ystep),
            clipped,
        }
    }

    fn to_px(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let pw = W as f64 - LEFT - RIGHT;
        let ph = H as f64 - TOP - BOTTOM;
        let y = y.clamp(self.y0, self.y1);
        (
            LEFT + (x - self.x0) / (self.x1 - self.x0) * pw,
            TOP + ph - (y - self.y0) / (self.y1 - self.y0) * ph,
        )
    }

    /// A best-so-far series as pixel points of a step line: the value holds until the next
    /// point, then drops (a straight segment would suggest improvement between evaluations).
    fn steps(&self, points: &[(f64, f64)]) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(points.len() * 2);
        for (i, q) in points.iter().enumerate() {
            if i > 0 {
                out.push(self.to_px((q.0, points[i - 1].1)));
            }
            out.push(self.to_px(*q));
        }
        out
    }

    /// The y-axis title, saying so when values are clipped.
    fn y_title(&self, p: &Plot) -> String {
        if self.clipped {
            format!("{} (clipped at {Y_CAP})", p.y_label)
        } else {
            p.y_label.clone()
        }
    }
}

/// Splits a legend label into lines of at most `width` characters, at spaces where it can.
fn wrap(label: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in label.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        // Words longer than a line are cut.
        while word.len() > width {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        if word.is_empty() {
            continue;
        }
        if cur.is_empty() {
            cur = word;
        } else if cur.chars().count() + 1 + word.chars().count() <= width {
            cur.push(' ');
            cur.push_str(&word);
        } else {
            lines.push(std::mem::replace(&mut cur, word));
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Legend placement shared by the SVG and the PNG: for each series that fits beside the plot,
/// its swatch's y and its label's lines; and how many series were left out for lack of room.
fn legend(p: &Plot, chars_per_line: usize, line_h: f64) -> (Vec<(f64, Vec<String>)>, usize) {
    let mut y = TOP + 10.0;
    let mut out = Vec::new();
    for ser in &p.series {
        let lines = wrap(&ser.label, chars_per_line);
        let h = line_h * lines.len() as f64 + 8.0;
        // Keep one line free for the "N more" note.
        if y + h > H as f64 - BOTTOM - line_h {
            break;
        }
        out.push((y, lines));
        y += h;
    }
    let left = p.series.len() - out.len();
    (out, left)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Characters per legend line in the SVG (12 px sans-serif averages under 7 px a character).
const SVG_LEGEND_CHARS: usize = 26;

/// The plot as an SVG document.
pub fn svg(p: &Plot) -> String {
    let l = Layout::of(p);
    let (pl, pr, pt, pb) = (LEFT, W as f64 - RIGHT, TOP, H as f64 - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    for (t, label) in &l.xticks {
        let (x, _) = l.to_px((*t, l.y0));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{pt}" x2="{x:.1}" y2="{pb}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            pb + 16.0,
        );
    }
    for (t, label) in &l.yticks {
        let (_, y) = l.to_px((l.x0, *t));
        let _ = writeln!(
            s,
            r##"<line x1="{pl}" y1="{y:.1}" x2="{pr}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            pl - 6.0,
            y + 4.0,
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
        esc(&l.y_title(p))
    );
    for (i, ser) in p.series.iter().enumerate() {
        let (r, g, b) = COLORS[i % COLORS.len()];
        let pts: Vec<String> = l
            .steps(&ser.points)
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="rgb({r},{g},{b})" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
    }
    let (entries, left) = legend(p, SVG_LEGEND_CHARS, 14.0);
    let mut last_y = pt;
    for (i, (ly, lines)) in entries.iter().enumerate() {
        let (r, g, b) = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="rgb({r},{g},{b})" stroke-width="3"/><text x="{:.1}" y="{:.1}">"#,
            pr + 12.0,
            pr + 36.0,
            pr + 42.0,
            ly + 4.0,
        );
        for (k, line) in lines.iter().enumerate() {
            let _ = write!(
                s,
                r#"<tspan x="{:.1}" dy="{}">{}</tspan>"#,
                pr + 42.0,
                if k == 0 { 0 } else { 14 },
                esc(line)
            );
        }
        s.push_str("</text>\n");
        last_y = ly + 14.0 * lines.len() as f64 + 8.0;
    }
    if left > 0 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">and {left} more</text>"#,
            pr + 12.0,
            last_y + 4.0
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
    let l = Layout::of(p);
    let (pl, pr, pt, pb) = (LEFT, W as f64 - RIGHT, TOP, H as f64 - BOTTOM);
    let mut c = Canvas::new();
    let grid = (221, 221, 221);
    let black = (0, 0, 0);
    for (t, label) in &l.xticks {
        let (x, _) = l.to_px((*t, l.y0));
        c.line((x, pt), (x, pb), grid, 1);
        c.line((x, pb), (x, pb + 5.0), black, 1);
        c.text(x - text_width(label) / 2.0, pb + 9.0, label, black);
    }
    for (t, label) in &l.yticks {
        let (_, y) = l.to_px((l.x0, *t));
        c.line((pl, y), (pr, y), grid, 1);
        c.line((pl - 5.0, y), (pl, y), black, 1);
        c.text(pl - 9.0 - text_width(label), y - 5.0, label, black);
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
    c.text(pl - 40.0, 8.0, &l.y_title(p), black);
    for (i, ser) in p.series.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        for w in l.steps(&ser.points).windows(2) {
            c.line(w[0], w[1], col, 2);
        }
    }
    // Legend: labels wrapped to the room right of the plot (5 px font rows, 14 px lines).
    let chars = ((W as f64 - pr - 46.0) / ADVANCE as f64) as usize;
    let (entries, left) = legend(p, chars, 14.0);
    let mut last_y = pt;
    for (i, (ly, lines)) in entries.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        c.line((pr + 12.0, *ly), (pr + 36.0, *ly), col, 3);
        for (k, line) in lines.iter().enumerate() {
            c.text(pr + 42.0, ly - 5.0 + 14.0 * k as f64, line, black);
        }
        last_y = ly + 14.0 * lines.len() as f64 + 8.0;
    }
    if left > 0 {
        c.text(pr + 12.0, last_y - 5.0, &format!("and {left} more"), black);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(series: Vec<Series>) -> Plot {
        Plot {
            series,
            x_label: "seconds".into(),
            y_label: "best so far / best found".into(),
        }
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_data() {
        let p = plot(vec![Series {
            label: "a".into(),
            points: vec![(0.5, 2.63), (1.0, 1.3), (18.7, 1.0)],
        }]);
        let l = Layout::of(&p);
        let ys: Vec<&str> = l.yticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(ys, ["1.0", "1.5", "2.0", "2.5", "3.0"]);
        let xs: Vec<&str> = l.xticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(xs, ["0", "5", "10", "15", "20"]);
        assert!(l.x1 >= 18.7 && l.y1 >= 2.63 && !l.clipped);
        // The best (1.0) sits above the x axis, not on it.
        assert!(l.y0 < 1.0);
        assert_eq!(nice_step(0.3), 0.1);
        assert_eq!(nice_step(1.1), 0.25);
        let small: Vec<String> = nice_ticks(1.0, 1.1, 0.025)
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(small, ["1.000", "1.025", "1.050", "1.075", "1.100"]);
    }

    #[test]
    fn values_above_the_cap_are_clipped_and_the_title_says_so() {
        let p = plot(vec![Series {
            label: "a".into(),
            points: vec![(1.0, 40.0), (2.0, 1.0)],
        }]);
        let l = Layout::of(&p);
        assert!(l.clipped && l.y1 == Y_CAP);
        assert!(l.y_title(&p).contains("clipped at 3"));
    }

    #[test]
    fn best_so_far_is_drawn_as_steps() {
        let data = [(0.0, 2.0), (1.0, 1.5), (2.0, 1.0)];
        let l = Layout::of(&plot(vec![Series {
            label: "a".into(),
            points: data.to_vec(),
        }]));
        let pts = l.steps(&data);
        assert_eq!(pts.len(), 5);
        // Horizontal first (same y as the previous point), then down at the new x.
        assert_eq!(pts[1].1, pts[0].1);
        assert_eq!(pts[1].0, pts[2].0);
        assert!(pts[2].1 > pts[1].1, "pixel y grows downwards");
    }

    #[test]
    fn legend_labels_wrap_and_overflow_is_counted() {
        assert_eq!(
            wrap("sgemm 4096x4096x4096 random (partial: cancelled)", 23),
            ["sgemm 4096x4096x4096", "random (partial:", "cancelled)"]
        );
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 5), [""]);
        let many = plot(
            (0..40)
                .map(|i| Series {
                    label: format!("kernel {i} lfbo"),
                    points: vec![(1.0, 1.0)],
                })
                .collect(),
        );
        let (shown, left) = legend(&many, 23, 14.0);
        assert!(!shown.is_empty() && left > 0 && shown.len() + left == 40);
        let last = shown.last().unwrap().0;
        assert!(last < H as f64 - BOTTOM, "legend stays beside the plot");
        // Every label line fits the image in the PNG's font.
        for (_, lines) in legend(&many, 23, 14.0).0 {
            for l in lines {
                assert!(W as f64 - RIGHT + 42.0 + text_width(&l) <= W as f64);
            }
        }
        assert!(svg(&many).contains("and "));
    }
}
