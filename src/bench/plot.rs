//! Latency-by-percentile plots as SVG, the way HdrHistogram's plotter draws them:
//! the x axis is `1/(1-p)` on a log scale (0%, 90%, 99%, 99.9%, ... one decade
//! each), the y axis latency in µs. One polyline per series (a run or a `.hgrm`
//! file), so two brokers or two commits can be compared at a glance.
//!
//! The SVG is written by hand: axes, gridlines, labels, polylines and a legend are a
//! page of string formatting, and a plotting crate would add dozens of dependencies
//! (fonts, image codecs) to the broker's build for it.

use super::BenchError;
use std::fmt::Write;
use std::path::Path;

/// One curve: (percentile as a fraction in 0..=1, latency in µs), by percentile.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Reads the data lines of a `.hgrm` file (`Value Percentile TotalCount 1/(1-P)`);
/// headers, blank lines and `#[...]` footers are skipped.
pub fn parse_hgrm(label: &str, text: &str) -> Result<Series, BenchError> {
    let mut points = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(v), Some(q)) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(v), Ok(q)) = (v.parse::<f64>(), q.parse::<f64>()) else {
            continue;
        };
        if v.is_finite() && (0.0..=1.0).contains(&q) {
            points.push((q, v));
        }
    }
    if points.is_empty() {
        return Err(BenchError::Config(format!("{label}: no percentile lines")));
    }
    Ok(Series {
        label: label.to_string(),
        points,
    })
}

/// Reads a `.hgrm` file; the label is the file stem.
pub fn read_hgrm(path: &Path) -> Result<Series, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Config(format!("{}: {e}", path.display())))?;
    let label = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into(),
    );
    parse_hgrm(&label, &text)
}

/// Decades of `1/(1-p)` shown: 5 reaches 99.999%. The maximum (p = 1) and anything
/// beyond the last decade is drawn at the right edge.
pub const DECADES: u32 = 5;

/// Position of percentile `q` on the x axis, in decades: `log10(1/(1-q))`, clamped
/// to `0..=decades`. Monotonic non-decreasing in `q`.
pub fn x_decades(q: f64, decades: u32) -> f64 {
    let max = f64::from(decades);
    if q >= 1.0 {
        return max;
    }
    (-(1.0 - q.max(0.0)).log10()).clamp(0.0, max)
}

/// The label of decade `d`: 0%, 90%, 99%, 99.9%, ...
fn decade_label(d: u32) -> String {
    match d {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace(".%", "%"),
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` intervals.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let r = raw / mag;
    let m = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_us(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 1e6 {
        format!("{}s", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}ms", trim(v / 1e3))
    } else {
        format!("{}µs", trim(v))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Options of a plot.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub title: String,
    /// Logarithmic latency axis (for curves orders of magnitude apart).
    pub log_y: bool,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            title: "Latency by percentile".to_string(),
            log_y: false,
        }
    }
}

/// The y axis: a linear range from 0, or log decades.
struct YAxis {
    log: bool,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn new(max: f64, min: f64, log: bool) -> YAxis {
        if log {
            let lo = 10f64.powf(min.max(0.001).log10().floor());
            let hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
            let mut ticks = Vec::new();
            let mut t = lo;
            while t <= hi * 1.0001 {
                ticks.push(t);
                t *= 10.0;
            }
            YAxis { log, lo, hi, ticks }
        } else {
            let step = nice_step(max.max(1e-3), 5.0);
            let hi = (max / step).ceil().max(1.0) * step;
            let ticks = (0..=((hi / step).round() as usize))
                .map(|i| i as f64 * step)
                .collect();
            YAxis {
                log,
                lo: 0.0,
                hi,
                ticks,
            }
        }
    }

    /// 0 at the bottom, 1 at the top.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            v / self.hi
        }
    }
}

const W: f64 = 900.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Pixel x of percentile `q`.
pub fn x_px(q: f64) -> f64 {
    LEFT + x_decades(q, DECADES) / f64::from(DECADES) * (W - LEFT - RIGHT)
}

/// Renders the series as an SVG document.
pub fn svg(series: &[Series], opts: &PlotOptions) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let max = all().fold(0.0f64, f64::max);
    let min = all().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let y = YAxis::new(max, if min.is_finite() { min } else { 1.0 }, opts.log_y);
    let plot_h = H - TOP - BOTTOM;
    let y_px = |v: f64| TOP + (1.0 - y.frac(v)) * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        escape(&opts.title)
    );
    // Gridlines and tick labels.
    let _ = writeln!(s, r##"<g stroke="#dddddd" stroke-width="1">"##);
    for d in 0..=DECADES {
        let x = LEFT + f64::from(d) / f64::from(DECADES) * (W - LEFT - RIGHT);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#,
            H - BOTTOM
        );
    }
    for t in &y.ticks {
        let py = y_px(*t);
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}"/>"#,
            W - RIGHT
        );
    }
    s.push_str("</g>\n");
    let _ = writeln!(s, r#"<g fill="black">"#);
    for d in 0..=DECADES {
        let x = LEFT + f64::from(d) / f64::from(DECADES) * (W - LEFT - RIGHT);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 18.0,
            decade_label(d)
        );
    }
    for t in &y.ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y_px(*t) + 4.0,
            fmt_us(*t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p); max at the right edge)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency{}</text>"#,
        TOP + plot_h / 2.0,
        if opts.log_y { " (log scale)" } else { "" }
    );
    s.push_str("</g>\n");
    // Axes.
    let _ = writeln!(
        s,
        r#"<polyline points="{LEFT},{TOP} {LEFT},{b} {r},{b}" fill="none" stroke="black"/>"#,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    // One polyline per series.
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(q, v)| format!("{:.1},{:.1}", x_px(q), y_px(v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            COLORS[i % COLORS.len()]
        );
    }
    // Legend, top left (curves rise to the right).
    let lh = 18.0;
    let lw = 12.0
        + 30.0
        + series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0) as f64
            * 7.0;
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{lw:.1}" height="{:.1}" fill="white" stroke="#999999"/>"##,
        LEFT + 12.0,
        TOP + 10.0,
        series.len() as f64 * lh + 8.0
    );
    for (i, ser) in series.iter().enumerate() {
        let ly = TOP + 10.0 + 4.0 + lh * (i as f64 + 0.5);
        let lx = LEFT + 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/>"#,
            lx + 22.0,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 28.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Plots `.hgrm` files (labels = file stems) into `out`.
pub fn plot_files(
    out: &Path,
    inputs: &[std::path::PathBuf],
    opts: &PlotOptions,
) -> Result<(), BenchError> {
    if inputs.is_empty() {
        return Err(BenchError::Config("no .hgrm file to plot".into()));
    }
    let series = inputs
        .iter()
        .map(|p| read_hgrm(p))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::write(out, svg(&series, opts))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::hgrm;
    use crate::bench::stats::new_histogram;

    /// Checks that every opened tag is closed in order; returns the tag names seen.
    fn balanced(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let j = rest[i..].find('>').expect("unclosed <") + i;
            let tag = &rest[i + 1..j];
            rest = &rest[j + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
                continue;
            }
            let name = tag.split_whitespace().next().unwrap().trim_end_matches('/');
            seen.push(name.to_string());
            if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert!(!rest.contains('>'));
        seen
    }

    fn series(label: &str, scale: u64) -> Series {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.saturating_record(v * scale);
        }
        parse_hgrm(label, &hgrm(&h, 1000.0)).unwrap()
    }

    #[test]
    fn svg_is_balanced_with_one_polyline_per_series() {
        let s = vec![series("ternmq", 1000), series("a<b & \"c\"", 3000)];
        let out = svg(&s, &PlotOptions::default());
        let tags = balanced(&out);
        assert_eq!(tags[0], "svg");
        // The axes are one more polyline.
        assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 3);
        assert_eq!(out.matches(r#"class="series""#).count(), 2);
        assert!(out.contains("a&lt;b &amp; &quot;c&quot;"));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
            assert!(out.contains(&format!(">{label}<")), "{label}");
        }
        let log = svg(
            &s,
            &PlotOptions {
                log_y: true,
                ..PlotOptions::default()
            },
        );
        balanced(&log);
        assert!(!out.contains("NaN") && !log.contains("NaN") && !log.contains("inf"));
    }

    #[test]
    fn x_mapping_is_monotonic() {
        let qs = [
            0.0, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9999, 0.99999, 0.999999, 1.0,
        ];
        for w in qs.windows(2) {
            assert!(x_px(w[0]) <= x_px(w[1]), "{w:?}");
        }
        assert!((x_decades(0.99, DECADES) - 2.0).abs() < 1e-9);
        assert!((x_decades(0.9, DECADES) - 1.0).abs() < 1e-9);
        assert_eq!(x_decades(1.0, DECADES), 5.0);
        assert_eq!(x_px(0.0), LEFT);
        assert_eq!(x_px(1.0), W - RIGHT);
    }

    #[test]
    fn parses_hgrm_and_labels() {
        let s = series("x", 1000);
        assert!(s.points.len() > 20);
        assert_eq!(s.points[0].0, 0.0);
        assert_eq!(s.points.last().unwrap().0, 1.0);
        assert!(s
            .points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(parse_hgrm("empty", "Value Percentile\n#[Mean = 1]\n").is_err());
        assert_eq!(decade_label(0), "0%");
        assert_eq!(decade_label(2), "99%");
        assert_eq!(decade_label(4), "99.99%");
        assert_eq!(fmt_us(1500.0), "1.5ms");
        assert_eq!(nice_step(970.0, 5.0), 200.0);
    }
}
