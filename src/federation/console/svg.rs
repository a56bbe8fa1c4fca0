//! Server-rendered SVG plots for the console: a bar chart with optional
//! error bars (a released result with its DP intervals) and step lines
//! (ε spent over time). Every label goes through maud, so text is escaped;
//! numbers are written by this code only.

use maud::{Markup, html};

const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 72.0;

/// A plot's title, its value axis from `lo` to `hi` with five ticks and
/// grid lines, and the axis's label.
fn axis(title: &str, value_label: &str, lo: f64, hi: f64) -> Markup {
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (hi - v) / (hi - lo);
    html! {
        title { (title) }
        @for i in 0..=4 {
            @let t = lo + (hi - lo) * f64::from(i) / 4.0;
            line x1=(LEFT) x2=(W - RIGHT) y1=(y(t)) y2=(y(t)) stroke="#ddd" {}
            text x=(LEFT - 6.0) y=(y(t) + 4.0) text-anchor="end" font-size="12" fill="#333" { (tick(t)) }
        }
        text x="14" y=(TOP + plot_h / 2.0) font-size="12" fill="#333"
            transform=(format!("rotate(-90 14 {})", TOP + plot_h / 2.0)) text-anchor="middle" { (value_label) }
    }
}

/// One bar: its label, its value and, for DP releases, its 95% interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub interval: Option<[f64; 2]>,
}

/// The axis range `[lo, hi]` covering `values` and zero, a little padded.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if (hi - lo).abs() < f64::EPSILON {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    (if lo < 0.0 { lo - pad } else { lo }, hi + pad)
}

/// A short number for an axis tick.
fn tick(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A bar chart titled `title` (its accessible name) of `bars`, with error
/// bars where a bar has an interval.
pub fn bars(title: &str, value_label: &str, bars: &[Bar]) -> Markup {
    let (lo, hi) = range(bars.iter().flat_map(|b| {
        let [a, z] = b.interval.unwrap_or([b.value, b.value]);
        [b.value, a, z]
    }));
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (hi - v) / (hi - lo);
    let slot = plot_w / bars.len().max(1) as f64;
    let bar_w = (slot * 0.6).min(80.0);
    // Labels wider than their slot (about 7 px a character) are slanted.
    let rotate = bars
        .iter()
        .any(|b| b.label.chars().count() as f64 * 7.0 > slot);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox=(format!("0 0 {W} {H}"))
            width=(W) height=(H) aria-label=(title) {
            (axis(title, value_label, lo, hi))
            line x1=(LEFT) x2=(W - RIGHT) y1=(y(0.0)) y2=(y(0.0)) stroke="#111" {}
            @for (i, b) in bars.iter().enumerate() {
                @let cx = LEFT + slot * (i as f64 + 0.5);
                @let (top, bottom) = if b.value >= 0.0 { (y(b.value), y(0.0)) } else { (y(0.0), y(b.value)) };
                rect x=(cx - bar_w / 2.0) y=(top) width=(bar_w) height=((bottom - top).max(0.5)) fill="#0b4f8a" {
                    title { (b.label) ": " (tick(b.value)) }
                }
                @if let Some([a, z]) = b.interval {
                    line x1=(cx) x2=(cx) y1=(y(a)) y2=(y(z)) stroke="#e8a400" stroke-width="2" {}
                    line x1=(cx - 8.0) x2=(cx + 8.0) y1=(y(a)) y2=(y(a)) stroke="#e8a400" stroke-width="2" {}
                    line x1=(cx - 8.0) x2=(cx + 8.0) y1=(y(z)) y2=(y(z)) stroke="#e8a400" stroke-width="2" {}
                }
                @if rotate {
                    text x=(cx) y=(H - BOTTOM + 14.0) text-anchor="end" font-size="12" fill="#111"
                        transform=(format!("rotate(-30 {cx} {})", H - BOTTOM + 14.0)) { (b.label) }
                } @else {
                    text x=(cx) y=(H - BOTTOM + 18.0) text-anchor="middle" font-size="12" fill="#111" { (b.label) }
                }
            }
        }
    }
}

/// One series of a step plot: its name and its (time label, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<f64>,
    /// A limit drawn as a dashed line (a scene's total ε).
    pub limit: Option<f64>,
}

/// A step plot of cumulative values against the order of events.
pub fn steps(title: &str, value_label: &str, series: &[Series]) -> Markup {
    const COLOURS: [&str; 4] = ["#0b4f8a", "#9b1c1c", "#1d5e2a", "#7a4b00"];
    let (lo, hi) = range(
        series
            .iter()
            .flat_map(|s| s.points.iter().copied().chain(s.limit)),
    );
    let n = series
        .iter()
        .map(|s| s.points.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * i as f64 / n as f64;
    let y = |v: f64| TOP + plot_h * (hi - v) / (hi - lo);
    let path = |pts: &[f64]| {
        let mut d = format!("M {} {}", x(0), y(0.0));
        for (i, v) in pts.iter().enumerate() {
            d.push_str(&format!(" H {} V {}", x(i), y(*v)));
        }
        d.push_str(&format!(" H {}", x(pts.len())));
        d
    };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox=(format!("0 0 {W} {H}"))
            width=(W) height=(H) aria-label=(title) {
            (axis(title, value_label, lo, hi))
            @for (i, s) in series.iter().enumerate() {
                @let colour = COLOURS[i % COLOURS.len()];
                path d=(path(&s.points)) fill="none" stroke=(colour) stroke-width="2" {}
                @if let Some(l) = s.limit {
                    line x1=(LEFT) x2=(W - RIGHT) y1=(y(l)) y2=(y(l)) stroke=(colour) stroke-dasharray="6 4" {}
                }
                text x=(LEFT + 8.0) y=(H - BOTTOM + 18.0 + 14.0 * i as f64) font-size="12" fill=(colour) { (s.name) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_error_bars_drawn() {
        let svg = bars(
            "t",
            "n",
            &[
                Bar {
                    label: "<script>alert(1)</script>".into(),
                    value: 10.0,
                    interval: Some([8.0, 12.0]),
                },
                Bar {
                    label: "F".into(),
                    value: -3.0,
                    interval: None,
                },
            ],
        )
        .into_string();
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        // The bar with an interval has three error-bar lines.
        assert_eq!(svg.matches("#e8a400").count(), 3);
        let line = steps(
            "ε",
            "ε",
            &[Series {
                name: "s".into(),
                points: vec![0.5, 1.0],
                limit: Some(3.0),
            }],
        )
        .into_string();
        assert!(line.contains("stroke-dasharray"));
    }
}
