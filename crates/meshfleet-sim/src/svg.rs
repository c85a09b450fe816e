//! Small hand-written SVG charts (line chart, bar chart) with axes, ticks and labels. No
//! plotting crate: the charts are simple and the output must be deterministic.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick positions (1, 2, 5 × 10^k steps) covering `[lo, hi]`.
pub(crate) fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0).max(f64::EPSILON) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0).max(f64::EPSILON) * (H - TOP - BOTTOM)
    }
}

fn axes(out: &mut String, f: &Frame, title: &str, xlabel: &str, ylabel: &str, xticks: bool) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    for t in ticks(f.y0, f.y1, 6) {
        let y = f.py(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    if xticks {
        for t in ticks(f.x0, f.x1, 8) {
            let x = f.px(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 5.0,
                H - BOTTOM + 18.0,
                fmt_tick(t)
            );
        }
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>
<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0,
        esc(xlabel),
        (TOP + H - BOTTOM) / 2.0,
        esc(ylabel)
    );
}

/// A line chart of one or more series of `(x, y)` points.
pub(crate) fn line_chart(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> String {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let top = ticks(0.0, y1, 6)
        .last()
        .copied()
        .filter(|t| *t >= y1)
        .unwrap_or(y1);
    let f = Frame {
        x0,
        x1,
        y0: 0.0,
        y1: top,
    };
    let mut out = String::new();
    axes(&mut out, &f, title, xlabel, ylabel, true);
    for (i, (name, p)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut d = String::new();
        for (k, (x, y)) in p.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { " L" },
                f.px(*x),
                f.py(*y)
            );
        }
        let _ = writeln!(
            out,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
        );
        if series.len() > 1 {
            let ly = TOP + 6.0 + 16.0 * i as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                W - RIGHT - 170.0,
                ly,
                W - RIGHT - 152.0,
                ly + 5.0,
                esc(name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// A bar chart with one labelled bar per entry.
pub(crate) fn bar_chart(title: &str, xlabel: &str, ylabel: &str, bars: &[(String, f64)]) -> String {
    let y1 = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let top = ticks(0.0, y1, 6)
        .last()
        .copied()
        .filter(|t| *t >= y1)
        .unwrap_or(y1);
    let f = Frame {
        x0: 0.0,
        x1: bars.len().max(1) as f64,
        y0: 0.0,
        y1: top,
    };
    let mut out = String::new();
    axes(&mut out, &f, title, xlabel, ylabel, false);
    let slot = (W - LEFT - RIGHT) / bars.len().max(1) as f64;
    let every = (bars.len() / 25).max(1);
    for (i, (label, v)) in bars.iter().enumerate() {
        let x = f.px(i as f64) + slot * 0.1;
        let y = f.py(*v);
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
            slot * 0.8,
            (H - BOTTOM - y).max(0.0),
            COLOURS[0],
            esc(label),
            fmt_tick(*v)
        );
        if i % every == 0 {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + slot * 0.4,
                H - BOTTOM + 14.0,
                esc(label)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(ticks(0.0, 1.0, 4), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn charts_are_svg() {
        let l = line_chart(
            "t",
            "x",
            "y",
            &[("a", vec![(0.0, 1.0), (1.0, 2.0)]), ("b", vec![])],
        );
        assert!(l.starts_with("<svg") && l.ends_with("</svg>\n") && l.contains("<path"));
        let b = bar_chart("t", "x", "y", &[("1".into(), 3.0), ("2 & 3".into(), 4.0)]);
        assert!(b.contains("2 &amp; 3") && b.matches("<rect").count() == 3);
    }
}
