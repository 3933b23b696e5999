//! SVG line charts for the reports: a row of panels, each with its own axes, so one file per
//! scenario shows latency, throughput and cost against the offered load, Tidings and the
//! baseline on the same axes. Written by hand (a few hundred bytes of SVG per line) rather
//! than pulling a plotting crate and its font stack into the build.

use std::fmt::Write as _;

/// One line on a panel.
pub struct Line {
    /// Legend text.
    pub label: String,
    /// CSS colour.
    pub color: &'static str,
    /// Dashed (the baseline) or solid (Tidings).
    pub dashed: bool,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// One panel: axes, lines, legend.
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The lines.
    pub lines: Vec<Line>,
}

const W: f64 = 420.0;
const H: f64 = 300.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;

/// A "nice" upper bound and tick step covering `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s * 5.0 >= max)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 10_000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Draws one panel at `x0`: title, grid, axes' labels, then each line with its legend.
fn panel(out: &mut String, p: &Panel, x0: f64, width: f64) {
    let f = Frame::of(p, x0, width);
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="18" font-weight="bold" text-anchor="middle">{}</text>"#,
        x0 + LEFT + f.pw / 2.0,
        escape(&p.title)
    );
    f.grid(out);
    let _ = write!(
        out,
        r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        f.sx(0.0),
        f.pw,
        f.ph,
        x0 + LEFT + f.pw / 2.0,
        H - 10.0,
        escape(&p.x_label),
        x0 + 14.0,
        TOP + f.ph / 2.0,
        escape(&p.y_label)
    );
    for (i, l) in p.lines.iter().enumerate() {
        f.line(out, i, l);
    }
}

/// A panel's plot area and axes: maps data to SVG coordinates.
struct Frame {
    x0: f64,
    /// Plot width and height.
    pw: f64,
    ph: f64,
    xmax: f64,
    xstep: f64,
    ymax: f64,
    ystep: f64,
}

impl Frame {
    /// Axes that cover every point of `p`, with round steps.
    fn of(p: &Panel, x0: f64, width: f64) -> Self {
        let all = p.lines.iter().flat_map(|l| l.points.iter());
        let (xmax, ymax) = all.fold((0f64, 0f64), |(x, y), &(px, py)| (x.max(px), y.max(py)));
        let (xmax, xstep) = nice_axis(xmax);
        let (ymax, ystep) = nice_axis(ymax);
        Frame {
            x0,
            pw: width - LEFT - RIGHT,
            ph: H - TOP - BOTTOM,
            xmax,
            xstep,
            ymax,
            ystep,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        self.x0 + LEFT + x / self.xmax * self.pw
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + self.ph - y / self.ymax * self.ph
    }

    /// Horizontal then vertical grid lines, with their tick labels.
    fn grid(&self, out: &mut String) {
        let mut t = 0.0;
        while t <= self.ymax + self.ystep / 2.0 {
            let y = self.sy(t);
            let _ = write!(
                out,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                self.sx(0.0),
                self.sx(self.xmax),
                self.sx(0.0) - 4.0,
                y + 4.0,
                fmt_tick(t)
            );
            t += self.ystep;
        }
        let mut t = 0.0;
        while t <= self.xmax + self.xstep / 2.0 {
            let x = self.sx(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                self.sy(0.0),
                self.sy(self.ymax),
                self.sy(0.0) + 14.0,
                fmt_tick(t)
            );
            t += self.xstep;
        }
    }

    /// Line `l`, its markers, and its legend entry (the `i`-th, top left).
    fn line(&self, out: &mut String, i: usize, l: &Line) {
        let dash = if l.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let pts: Vec<String> = l
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.sx(x), self.sy(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            l.color
        );
        // Markers only where points are few enough to read as steps.
        for &(x, y) in l.points.iter().filter(|_| l.points.len() <= 30) {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                self.sx(x),
                self.sy(y),
                l.color
            );
        }
        let ly = TOP + 12.0 + 14.0 * i as f64;
        let lx = self.sx(0.0) + 8.0;
        let _ = write!(
            out,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            lx + 20.0,
            ly - 4.0,
            l.color,
            lx + 24.0,
            ly,
            escape(&l.label)
        );
    }
}

/// An SVG document with `panels` side by side under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    // Panels share at least 640 px, so a one-panel chart has room for its title.
    let n = panels.len().max(1) as f64;
    let each = (640.0 / n).max(W);
    let width = each * n;
    let height = H + 26.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="8" y="16" font-size="13" font-weight="bold">{}</text><g transform="translate(0,22)">"#,
        escape(title)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, p, each * i as f64, each);
    }
    out.push_str("</g></svg>\n");
    out
}

/// Colours: Tidings in blues/greens, the baseline in oranges, by percentile.
pub const TIDINGS: [&str; 3] = ["#1f77b4", "#2ca02c", "#17becf"];
/// See [`TIDINGS`].
pub const BASELINE: [&str; 3] = ["#ff7f0e", "#d62728", "#bcbd22"];

/// A latency-by-percentile chart of `sorted_ms` (ascending), one line.
pub fn percentile_chart(title: &str, what: &str, sorted_ms: &[f64]) -> String {
    let points = if sorted_ms.is_empty() {
        Vec::new()
    } else {
        (0..=100)
            .map(|p| (p as f64, crate::percentile(sorted_ms, p as f64 / 100.0)))
            .collect()
    };
    render(
        title,
        &[Panel {
            title: what.to_owned(),
            x_label: "percentile".into(),
            y_label: "ms".into(),
            lines: vec![Line {
                label: "Tidings".into(),
                color: TIDINGS[0],
                dashed: false,
                points,
            }],
        }],
    )
}

/// Writes `svg` to `path`, creating its directory.
pub fn write(path: &std::path::Path, svg: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_the_data_with_round_steps() {
        assert_eq!(nice_axis(48_000.0), (50_000.0, 10_000.0));
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn renders_every_line_and_escapes_labels() {
        let svg = render(
            "a <b>",
            &[Panel {
                title: "p99".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                lines: vec![Line {
                    label: "tidings & co".into(),
                    color: TIDINGS[0],
                    dashed: false,
                    points: vec![(1.0, 2.0), (2.0, 4.0)],
                }],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("tidings &amp; co"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
