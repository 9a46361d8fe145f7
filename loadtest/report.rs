//! `loadtest send --report`: one self-contained HTML page (inline SVG, no script, nothing
//! fetched) with the throughput over time, the latency of the 250 over time (p50 and p99), the
//! HDR percentile distribution of that latency, and the run's parameters.

use std::fmt::Write as _;

/// One second of the run.
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Messages accepted in it.
    pub accepted: u64,
    /// Median latency of their 250, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// What the report shows.
pub struct Run {
    /// The page's title.
    pub title: String,
    /// Messages accepted in the whole run.
    pub accepted: u64,
    /// Parameters and totals, in order.
    pub parameters: Vec<(String, String)>,
    /// Per second of the run.
    pub timeline: Vec<Second>,
    /// (quantile, latency ms) pairs of the whole run, quantile ascending.
    pub distribution: Vec<(f64, f64)>,
}

/// The colours of the series (the plot's test looks for them in a screenshot).
pub const BLUE: &str = "#1f77b4";
/// The p99 series.
pub const ORANGE: &str = "#ff7f0e";

const W: f64 = 900.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;
const RIGHT: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

/// A plotted line: its label, its colour and its points (x, y).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One line plot of `series`; x labels come from `x_label`.
fn plot(
    title: &str,
    y_unit: &str,
    x_max: f64,
    x_label: &dyn Fn(f64) -> String,
    x_ticks: &[f64],
    series: &[Series<'_>],
) -> String {
    let y_max = nice(
        series
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let sx = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - y / y_max * (H - BOTTOM - TOP);
    let mut svg = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">\n",
        escape(title)
    );
    // Axes and grid.
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\" font-size=\"12\">{4}</text>",
            sy(y),
            W - RIGHT,
            LEFT - 6.0,
            sy(y) + 4.0,
            trim(y)
        );
    }
    for &x in x_ticks {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#999\"/>\
             <text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\" font-size=\"12\">{4}</text>",
            sx(x),
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0,
            escape(&x_label(x))
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{0}\" stroke=\"#333\"/>\
         <text x=\"14\" y=\"{2}\" font-size=\"12\" transform=\"rotate(-90 14 {2})\" \
         text-anchor=\"middle\">{3}</text>",
        H - BOTTOM,
        W - RIGHT,
        (H - BOTTOM + TOP) / 2.0,
        escape(y_unit)
    );
    for (i, (label, colour, pts)) in series.iter().enumerate() {
        let points: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\" \
             points=\"{}\"/>\
             <rect x=\"{1:.1}\" y=\"{2}\" width=\"14\" height=\"4\" fill=\"{colour}\"/>\
             <text x=\"{3:.1}\" y=\"{4}\" font-size=\"12\">{5}</text>",
            points.join(" "),
            W - RIGHT - 230.0,
            TOP + 4.0 + 16.0 * i as f64,
            W - RIGHT - 210.0,
            TOP + 10.0 + 16.0 * i as f64,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The HTML page.
pub fn html(run: &Run) -> String {
    let x_max = run.timeline.last().map_or(1.0, |s| s.second as f64 + 1.0);
    let step = nice(x_max / 8.0).max(1.0);
    let ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|x| *x <= x_max)
        .collect();
    let secs = |x: f64| format!("{x:.0} s");
    let throughput = plot(
        "Messages accepted per second",
        "msg/s",
        x_max,
        &secs,
        &ticks,
        &[(
            "accepted (250) per second",
            BLUE,
            run.timeline
                .iter()
                .map(|s| (s.second as f64 + 0.5, s.accepted as f64))
                .collect(),
        )],
    );
    let latency = plot(
        "Latency of the 250 after DATA over time",
        "ms",
        x_max,
        &secs,
        &ticks,
        &[
            (
                "p50",
                BLUE,
                run.timeline
                    .iter()
                    .map(|s| (s.second as f64 + 0.5, s.p50_ms))
                    .collect(),
            ),
            (
                "p99",
                ORANGE,
                run.timeline
                    .iter()
                    .map(|s| (s.second as f64 + 0.5, s.p99_ms))
                    .collect(),
            ),
        ],
    );
    // The percentile axis as HdrHistogram plots it: x = log10(1 / (1 - q)), so 90%, 99%,
    // 99.9% … are evenly spaced.
    let x_of = |q: f64| (1.0 / (1.0 - q.min(0.999_999))).log10();
    let dist_points: Vec<(f64, f64)> = run
        .distribution
        .iter()
        .map(|(q, ms)| (x_of(*q), *ms))
        .collect();
    let dist_max = dist_points.iter().map(|p| p.0).fold(3.0, f64::max).ceil();
    let dist_ticks: Vec<f64> = (0..=dist_max as u32).map(f64::from).collect();
    let percent = |x: f64| {
        let q = 100.0 * (1.0 - 10f64.powf(-x));
        if x == 0.0 {
            "0%".to_owned()
        } else {
            format!("{}%", trim_percent(q))
        }
    };
    let distribution = plot(
        "Latency of the 250 by percentile",
        "ms",
        dist_max,
        &percent,
        &dist_ticks,
        &[("latency at percentile", BLUE, dist_points)],
    );
    let mut params = String::new();
    for (k, v) in &run.parameters {
        let _ = writeln!(
            params,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    let total = run.accepted;
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title>\n<style>body{{font-family:sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px 2px 0}}\
         h2{{font-size:1.1em;margin-top:1.5em}}</style></head>\n<body>\n<h1>{title}</h1>\n\
         <p>{total} messages accepted.</p>\n\
         <h2>Throughput</h2>\n{throughput}<h2>Latency of the 250 over time</h2>\n{latency}\
         <h2>Latency distribution (HDR)</h2>\n{distribution}<h2>Parameters</h2>\n\
         <table>\n{params}</table>\n</body></html>\n",
        title = escape(&run.title),
    )
}

fn trim_percent(q: f64) -> String {
    let s = format!("{q:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            title: "t <1>".into(),
            accepted: 10045,
            parameters: vec![("connections".into(), "50".into())],
            timeline: (0..10)
                .map(|s| Second {
                    second: s,
                    accepted: 1000 + s,
                    p50_ms: 2.0,
                    p99_ms: 7.5,
                })
                .collect(),
            distribution: vec![
                (0.0, 1.0),
                (0.5, 2.0),
                (0.9, 3.0),
                (0.99, 7.0),
                (0.999, 9.0),
            ],
        }
    }

    #[test]
    fn the_page_has_three_plots_and_fetches_nothing() {
        let page = html(&run());
        assert_eq!(page.matches("<svg").count(), 3);
        assert_eq!(page.matches("class=\"series\"").count(), 4);
        assert!(page.contains("<title>t &lt;1&gt;</title>"));
        assert!(page.contains("<th>connections</th><td>50</td>"));
        assert!(page.contains("10045 messages accepted"));
        assert!(!page.contains("src=") && !page.contains("href=") && !page.contains("<script"));
        assert!(page.contains(">99.9%<"), "percentile ticks");
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(1009.0), 2000.0);
        assert_eq!(nice(0.42), 0.5);
    }
}
