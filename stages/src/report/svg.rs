//! Hand-written SVG charts for the report: a line chart (loss against steps) and a bar chart
//! (speed or size per model). Plain SVG 1.1 text: no fonts, no C dependencies, and the
//! same numbers always give the same bytes.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
/// Colour-blind-safe palette (Okabe–Ito).
const COLOURS: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette (it wraps around).
    pub colour: usize,
    /// Drawn dashed (e.g. validation beside a solid training curve of the same colour).
    pub dashed: bool,
}

/// One bar of a bar chart.
pub struct Bar {
    pub label: String,
    pub value: f64,
}

/// A line chart of `series` with axis labels; points that are not finite are skipped.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (x_min, x_max) = bounds(pts().map(|p| p.0));
    let (y_min, y_max) = bounds(pts().map(|p| p.1));
    let x_ticks = nice_ticks(x_min, x_max);
    let y_ticks = nice_ticks(y_min, y_max);
    let (x0, x1) = (x_ticks[0], *x_ticks.last().expect("ticks are never empty"));
    let (y0, y1) = (y_ticks[0], *y_ticks.last().expect("ticks are never empty"));
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let sy = |y: f64| HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);

    let mut svg = header(title);
    axes(&mut svg, x_label, y_label);
    for &t in &x_ticks {
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{b:.1}" x2="{x:.1}" y2="{t2:.1}" stroke="#ddd"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{label}</text>"##,
            x = sx(t),
            b = HEIGHT - BOTTOM,
            t2 = TOP,
            ty = HEIGHT - BOTTOM + 18.0,
            label = tick_label(t)
        );
    }
    for &t in &y_ticks {
        let _ = write!(
            svg,
            r##"<line x1="{l:.1}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            l = LEFT,
            r = WIDTH - RIGHT,
            y = sy(t),
            tx = LEFT - 6.0,
            ty = sy(t) + 4.0,
            label = tick_label(t)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[s.colour % COLOURS.len()];
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if path.len() == 1 {
            let _ = write!(
                svg,
                r#"<circle cx="{}" r="3" fill="{colour}"/>"#,
                path[0].replace(',', "\" cy=\"")
            );
        } else if !path.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = TOP + 4.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"{dash}/><text x="{tx:.1}" y="{ty:.1}">{name}</text>"#,
            x = WIDTH - RIGHT - 170.0,
            x2 = WIDTH - RIGHT - 154.0,
            y = ly + 2.0,
            tx = WIDTH - RIGHT - 150.0,
            ty = ly + 6.0,
            name = escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A vertical bar chart; each bar is labelled with its value (formatted by `fmt_value`).
pub fn bar_chart(
    title: &str,
    y_label: &str,
    bars: &[Bar],
    fmt_value: impl Fn(f64) -> String,
) -> String {
    let max = bars
        .iter()
        .map(|b| b.value)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ticks = nice_ticks(0.0, if max > 0.0 { max } else { 1.0 });
    let top = *ticks.last().expect("ticks are never empty");
    let sy = |y: f64| HEIGHT - BOTTOM - y / top * (HEIGHT - TOP - BOTTOM);
    let mut svg = header(title);
    axes(&mut svg, "", y_label);
    for &t in &ticks {
        let _ = write!(
            svg,
            r##"<line x1="{l:.1}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            l = LEFT,
            r = WIDTH - RIGHT,
            y = sy(t),
            tx = LEFT - 6.0,
            ty = sy(t) + 4.0,
            label = tick_label(t)
        );
    }
    let slot = (WIDTH - LEFT - RIGHT) / bars.len().max(1) as f64;
    for (i, b) in bars.iter().enumerate() {
        let v = if b.value.is_finite() {
            b.value.max(0.0)
        } else {
            0.0
        };
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{colour}"/><text x="{cx:.1}" y="{vy:.1}" text-anchor="middle">{value}</text><text x="{cx:.1}" y="{ly:.1}" text-anchor="middle">{label}</text>"#,
            y = sy(v),
            w = slot * 0.6,
            h = HEIGHT - BOTTOM - sy(v),
            cx = x + slot * 0.3,
            vy = sy(v) - 5.0,
            ly = HEIGHT - BOTTOM + 18.0,
            value = escape(&fmt_value(b.value)),
            label = escape(&b.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn header(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    )
}

fn axes(svg: &mut String, x_label: &str, y_label: &str) {
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="black"/><text x="{cx}" y="{xl}" text-anchor="middle">{x}</text><text transform="translate(18 {cy}) rotate(-90)" text-anchor="middle">{y}</text>"#,
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        cx = (LEFT + WIDTH - RIGHT) / 2.0,
        xl = HEIGHT - 14.0,
        cy = (TOP + HEIGHT - BOTTOM) / 2.0,
        x = escape(x_label),
        y = escape(y_label)
    );
}

/// (min, max) of the values, widened when they are all equal; (0, 1) when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Round tick values covering [lo, hi] with a step of 1, 2 or 5 times a power of ten.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let mut ticks = Vec::new();
    let mut t = start;
    while t < hi + step * 0.999 && ticks.len() < 50 {
        ticks.push(t);
        t += step;
    }
    if ticks.len() < 2 {
        ticks.push(start + step);
    }
    ticks
}

fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.3}")
    }
}

/// Escapes text for SVG/XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 1000.0),
            [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        let t = nice_ticks(2.31, 7.9);
        assert!(t[0] <= 2.31 && *t.last().unwrap() >= 7.9, "{t:?}");
        assert_eq!(t[1] - t[0], 2.0);
    }

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let svg = line_chart(
            "loss",
            "step",
            "nats",
            &[
                Series {
                    name: "train <loss>".into(),
                    points: vec![(1.0, 9.0), (2.0, f64::NAN), (3.0, 5.0)],
                    colour: 0,
                    dashed: false,
                },
                Series {
                    name: "val".into(),
                    points: vec![(3.0, 6.0)],
                    colour: 0,
                    dashed: true,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("train &lt;loss&gt;") && !svg.contains("NaN"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            1,
            "the dashed legend line"
        );
        let bars = bar_chart(
            "size",
            "MB",
            &[
                Bar {
                    label: "f32".into(),
                    value: 2.0,
                },
                Bar {
                    label: "f16".into(),
                    value: 1.0,
                },
            ],
            |v| format!("{v:.1} MB"),
        );
        assert_eq!(bars.matches("<rect").count(), 3, "background + 2 bars");
        assert!(bars.contains("2.0 MB"));
    }
}
