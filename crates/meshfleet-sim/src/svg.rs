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

/// Decades and their 2 and 5 multiples within `[lo, hi]` (`lo > 0`), for a log axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    // Over many decades the 2 and 5 multiples would crowd the axis: decades only.
    let mults: &[f64] = if hi / lo > 1e4 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    while decade <= hi && out.len() < 40 {
        for &m in mults {
            let t = decade * m;
            if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                out.push(t);
            }
        }
        decade *= 10.0;
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
    } else if a < 0.01 {
        format!("{v:.1e}")
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
    /// A logarithmic x axis (`x0 > 0`).
    log_x: bool,
    /// A logarithmic y axis (`y0 > 0`).
    log_y: bool,
    /// Only whole-number y ticks (counts).
    integer_y: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let (x, x0, x1) = if self.log_x {
            (x.max(self.x0).log10(), self.x0.log10(), self.x1.log10())
        } else {
            (x, self.x0, self.x1)
        };
        LEFT + (x - x0) / (x1 - x0).max(f64::EPSILON) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        let (y, y0, y1) = if self.log_y {
            (y.max(self.y0).log10(), self.y0.log10(), self.y1.log10())
        } else {
            (y, self.y0, self.y1)
        };
        H - BOTTOM - (y - y0) / (y1 - y0).max(f64::EPSILON) * (H - TOP - BOTTOM)
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
    let yt = if f.log_y {
        log_ticks(f.y0, f.y1)
    } else {
        ticks(f.y0, f.y1, 6)
    };
    let yt: Vec<f64> = if f.integer_y {
        yt.into_iter().filter(|t| t.fract() == 0.0).collect()
    } else {
        yt
    };
    for t in yt {
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
        let xt = if f.log_x {
            log_ticks(f.x0, f.x1)
        } else {
            ticks(f.x0, f.x1, 8)
        };
        for t in xt {
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

/// One series of a [`Chart`].
pub(crate) struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

impl Series {
    /// A solid line.
    pub(crate) fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    /// A dashed line (bounds, references).
    pub(crate) fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A chart of line series (or stacked areas) over a linear or logarithmic x axis, with
/// labelled vertical markers for events.
pub(crate) struct Chart {
    title: String,
    xlabel: String,
    ylabel: String,
    series: Vec<Series>,
    markers: Vec<(f64, String)>,
    log_x: bool,
    log_y: bool,
    stacked: bool,
    x_range: Option<(f64, f64)>,
    y_max: Option<f64>,
    integer_y: bool,
}

impl Chart {
    pub(crate) fn new(title: impl Into<String>, xlabel: &str, ylabel: &str) -> Self {
        Self {
            title: title.into(),
            xlabel: xlabel.to_owned(),
            ylabel: ylabel.to_owned(),
            series: Vec::new(),
            markers: Vec::new(),
            log_x: false,
            log_y: false,
            stacked: false,
            x_range: None,
            y_max: None,
            integer_y: false,
        }
    }

    pub(crate) fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// A vertical line at `x` labelled `label` (formation, campaign start, a fault).
    pub(crate) fn marker(mut self, x: f64, label: impl Into<String>) -> Self {
        self.markers.push((x, label.into()));
        self
    }

    /// Logarithmic x axis (points with x ≤ 0 are clamped to the smallest positive x).
    pub(crate) fn log_x(mut self) -> Self {
        self.log_x = true;
        self
    }

    /// Logarithmic y axis (for quantities spanning decades; y ≤ 0 is clamped).
    pub(crate) fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// Series are stacked areas, the first at the bottom (every series must share its x).
    pub(crate) fn stacked(mut self) -> Self {
        self.stacked = true;
        self
    }

    /// Fixes the top of the y axis (a fraction tops at 1).
    pub(crate) fn y_max(mut self, v: f64) -> Self {
        self.y_max = Some(v);
        self
    }

    /// The y values are counts: ticks at whole numbers only.
    pub(crate) fn integer_y(mut self) -> Self {
        self.integer_y = true;
        self
    }

    /// Fixes the x range instead of fitting the points.
    pub(crate) fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    /// The SVG text.
    pub(crate) fn render(&self) -> String {
        // Stacked areas: each series' y on top of the ones before it.
        let mut drawn: Vec<Vec<(f64, f64)>> = Vec::new();
        for s in &self.series {
            let pts = if self.stacked {
                s.points
                    .iter()
                    .enumerate()
                    .map(|(i, (x, y))| {
                        let below = drawn.last().and_then(|d| d.get(i)).map_or(0.0, |p| p.1);
                        (*x, y + below)
                    })
                    .collect()
            } else {
                s.points.clone()
            };
            drawn.push(pts);
        }
        let xs = drawn
            .iter()
            .flatten()
            .map(|p| p.0)
            .chain(self.markers.iter().map(|m| m.0))
            .filter(|x| !self.log_x || *x > 0.0);
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        for x in xs {
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
        if let Some((lo, hi)) = self.x_range {
            (x0, x1) = (lo, hi);
        }
        if !x0.is_finite() {
            (x0, x1) = if self.log_x { (1.0, 10.0) } else { (0.0, 1.0) };
        }
        if x1 <= x0 {
            x1 = if self.log_x { x0 * 10.0 } else { x0 + 1.0 };
        }
        let y1 = drawn.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
        let y1 = if y1 > 0.0 { y1 } else { 1.0 };
        let (y0, top) = if self.log_y {
            // Whole decades around the positive values.
            let lo = drawn
                .iter()
                .flatten()
                .map(|p| p.1)
                .filter(|y| *y > 0.0)
                .fold(f64::INFINITY, f64::min);
            let lo = if lo.is_finite() { lo } else { y1 / 10.0 };
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(y1.log10().ceil());
            (lo, if hi > lo { hi } else { lo * 10.0 })
        } else {
            // Up to the next round tick above the largest value, so that a line at the
            // maximum does not run along the frame.
            let t = ticks(0.0, y1, 6);
            let step = match t.as_slice() {
                [a, b, ..] => b - a,
                _ => y1,
            };
            let step = if self.integer_y { step.max(1.0) } else { step };
            match self.y_max {
                Some(top) => (0.0, top),
                None => (0.0, (y1 / step).floor() * step + step),
            }
        };
        let f = Frame {
            x0,
            x1,
            y0,
            y1: top,
            log_x: self.log_x,
            log_y: self.log_y,
            integer_y: self.integer_y,
        };
        let mut out = String::new();
        axes(&mut out, &f, &self.title, &self.xlabel, &self.ylabel, true);
        for (i, (s, pts)) in self.series.iter().zip(&drawn).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut d = String::new();
            for (k, (x, y)) in pts.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if k == 0 { "M" } else { " L" },
                    f.px(*x),
                    f.py(*y)
                );
            }
            if self.stacked && !pts.is_empty() {
                // Close the area down to the series below (or the axis).
                let below: Vec<(f64, f64)> = match i {
                    0 => pts.iter().map(|(x, _)| (*x, 0.0)).collect(),
                    _ => drawn[i - 1].clone(),
                };
                for (x, y) in below.iter().rev() {
                    let _ = write!(d, " L{:.1},{:.1}", f.px(*x), f.py(*y));
                }
                let _ = writeln!(
                    out,
                    r#"<path d="{d} Z" fill="{colour}" fill-opacity="0.55" stroke="{colour}" stroke-width="0.8"/>"#
                );
            } else {
                let dash = if s.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>"#
                );
            }
        }
        for (x, label) in &self.markers {
            let px = f.px(*x);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#777" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#555" transform="rotate(-90 {:.1} {:.1})" text-anchor="end">{}</text>"##,
                H - BOTTOM,
                px + 11.0,
                TOP + 4.0,
                px + 11.0,
                TOP + 4.0,
                esc(label)
            );
        }
        let named = self.series.len() > 1;
        if named {
            let width = 8.0 * self.series.iter().map(|s| s.name.len()).max().unwrap_or(0) as f64;
            let lx = (W - RIGHT - 24.0 - width).max(LEFT + 10.0);
            let lh = 16.0 * self.series.len() as f64 + 6.0;
            // Top right unless the data runs there (a curve ending high): then bottom right.
            let crowded = |y0: f64| {
                drawn
                    .iter()
                    .flatten()
                    .filter(|(x, y)| {
                        let (px, py) = (f.px(*x), f.py(*y));
                        px >= lx - 6.0 && py >= y0 && py <= y0 + lh
                    })
                    .count()
            };
            let top_y = TOP;
            let bottom_y = H - BOTTOM - lh - 4.0;
            let ly0 = if crowded(top_y) > crowded(bottom_y) {
                bottom_y
            } else {
                top_y
            };
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" fill-opacity="0.85"/>"#,
                lx - 6.0,
                ly0,
                width + 30.0,
                lh
            );
            for (i, s) in self.series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let ly = ly0 + 8.0 + 16.0 * i as f64;
                let _ = writeln!(
                    out,
                    r#"<rect x="{lx:.1}" y="{ly:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                    lx + 18.0,
                    ly + 5.0,
                    esc(&s.name)
                );
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Charts stacked vertically in one SVG (sharing nothing but the page): for quantities of
/// different scales over the same time, each on its own axis.
pub(crate) fn panels(charts: &[String]) -> String {
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}">
"#,
        H * charts.len() as f64,
        H * charts.len() as f64
    );
    for (k, c) in charts.iter().enumerate() {
        out.push_str(&c.replacen("<svg ", &format!(r#"<svg y="{}" "#, H * k as f64), 1));
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
        log_x: false,
        log_y: false,
        integer_y: false,
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
        assert_eq!(log_ticks(0.5, 30.0), vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
    }

    #[test]
    fn charts_are_svg() {
        let l = Chart::new("t", "x", "y")
            .series(Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)]))
            .series(Series::new("b", vec![]).dashed())
            .marker(0.5, "m & n")
            .render();
        assert!(l.starts_with("<svg") && l.ends_with("</svg>\n") && l.contains("<path"));
        assert!(l.contains("m &amp; n") && l.contains("stroke-dasharray"));
        let p = panels(&[l.clone(), l]);
        assert_eq!(p.matches("<svg").count(), 3);
        assert!(p.contains(r#"<svg y="420" "#));
        let b = bar_chart("t", "x", "y", &[("1".into(), 3.0), ("2 & 3".into(), 4.0)]);
        assert!(b.contains("2 &amp; 3") && b.matches("<rect").count() == 3);
    }
}
