//! Charts drawn on the server as inline SVG (no script, no asset).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::html::{E, time};

const W: f64 = 640.0;
const H: f64 = 200.0;
const PAD_L: f64 = 44.0;
const PAD_B: f64 = 24.0;
const PAD_T: f64 = 10.0;
const PAD_R: f64 = 10.0;

/// A chart of values over time: `step` draws a staircase (traffic weight), otherwise a
/// line. `y_min..y_max` is the value range; `unit` labels the axis (`%`).
pub fn over_time(
    id: &str,
    title: &str,
    points: &[(DateTime<Utc>, f64)],
    y_min: f64,
    y_max: f64,
    unit: &str,
    step: bool,
) -> String {
    let mut out = String::with_capacity(1024 + points.len() * 24);
    let _ = write!(
        out,
        "<svg id=\"{}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        E(id),
        E(title),
        E(title)
    );
    let plot_w = W - PAD_L - PAD_R;
    let plot_h = H - PAD_T - PAD_B;
    let span_y = if y_max > y_min { y_max - y_min } else { 1.0 };
    let y = |v: f64| PAD_T + plot_h - ((v.clamp(y_min, y_max) - y_min) / span_y) * plot_h;
    for i in 0..=4 {
        let v = y_min + span_y * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{PAD_L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#6b7280\">{}{}</text>",
            W - PAD_R,
            PAD_L - 4.0,
            yy + 3.0,
            trim_num(v),
            E(unit)
        );
    }
    if points.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#6b7280\">no data yet</text></svg>",
            PAD_L + plot_w / 2.0,
            PAD_T + plot_h / 2.0
        );
        return out;
    }
    let t0 = points[0].0;
    let t1 = points[points.len() - 1]
        .0
        .max(t0 + chrono::Duration::seconds(1));
    let span_t = (t1 - t0).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| PAD_L + ((t - t0).num_milliseconds() as f64 / span_t) * plot_w;
    let mut path = String::new();
    let mut prev_y: Option<f64> = None;
    for (t, v) in points {
        let (xx, yy) = (x(*t), y(*v));
        match prev_y {
            None => {
                let _ = write!(path, "M{xx:.1},{yy:.1}");
            }
            Some(py) if step => {
                let _ = write!(path, " L{xx:.1},{py:.1} L{xx:.1},{yy:.1}");
            }
            Some(_) => {
                let _ = write!(path, " L{xx:.1},{yy:.1}");
            }
        }
        prev_y = Some(yy);
    }
    let _ = write!(
        out,
        "<path d=\"{path}\" fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\"/>"
    );
    for (t, v) in points {
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2563eb\"><title>{} {}{}</title></circle>",
            x(*t),
            y(*v),
            time(t),
            trim_num(*v),
            E(unit)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{PAD_L}\" y=\"{}\" font-size=\"10\" fill=\"#6b7280\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#6b7280\">{}</text></svg>",
        H - 6.0,
        time(&t0),
        W - PAD_R,
        H - 6.0,
        time(&t1)
    );
    out
}

/// A horizontal bar of `fraction` (0..1, clamped) with its label.
pub fn bar(fraction: f64, label: &str) -> String {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let colour = if f < 0.1 {
        "#dc2626"
    } else if f < 0.5 {
        "#d97706"
    } else {
        "#16a34a"
    };
    format!(
        "<svg viewBox=\"0 0 120 14\" width=\"120\" height=\"14\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{}\">\
         <rect width=\"120\" height=\"14\" fill=\"#e5e7eb\"/><rect width=\"{:.1}\" height=\"14\" fill=\"{colour}\"/></svg>",
        E(label),
        f * 120.0
    )
}

/// A number without trailing zeros (`25`, `0.5`).
pub fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_chart_has_one_point_per_change_and_escapes_its_title() {
        let t = Utc::now();
        let svg = over_time(
            "w",
            "weight <of> x",
            &[(t, 0.0), (t + chrono::Duration::seconds(5), 25.0)],
            0.0,
            100.0,
            "%",
            true,
        );
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("weight &lt;of&gt; x"));
        assert!(over_time("e", "t", &[], 0.0, 1.0, "", false).contains("no data yet"));
        assert_eq!(trim_num(25.0), "25");
        assert_eq!(trim_num(0.5), "0.5");
    }
}
