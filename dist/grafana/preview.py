#!/usr/bin/env python3
"""Draws the panels of ringmta-dashboard.json from a Prometheus, without Grafana.

Usage: preview.py PROMETHEUS_URL DASHBOARD_JSON OUT_HTML [MINUTES]

Each panel's queries run over the last MINUTES (default 10) through /api/v1/query_range, with
Grafana's $__rate_interval as 1m and $instance as every instance. The page is self-contained
(inline SVG, no script). It is a preview of the data the dashboard shows, not of Grafana's look.
"""
import html, json, sys, time, urllib.parse, urllib.request

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
W, H, LEFT, BOTTOM, TOP, RIGHT = 560, 220, 60, 30, 16, 12


def query_range(base, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=10) as r:
        return json.load(r)["data"]["result"]


def legend(fmt, metric, title):
    if not fmt:
        return title
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def nice(v):
    if v <= 0:
        return 1.0
    p = 10 ** len(str(int(v))) / 10 if v >= 1 else 10 ** -len(str(int(1 / v)))
    for m in (1, 2, 5, 10):
        if m * p >= v:
            return m * p
    return 10 * p


def panel_svg(title, lines, start, end):
    # At most eight series: the ones that reach highest.
    lines = sorted(lines, key=lambda l: -max([y for _, y in l[1]] + [0]))[:8]
    ymax = nice(max([y for _, pts in lines for _, y in pts] + [0]))
    sx = lambda t: LEFT + (t - start) / max(end - start, 1) * (W - LEFT - RIGHT)
    sy = lambda y: H - BOTTOM - y / ymax * (H - BOTTOM - TOP)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}">',
             f'<rect width="{W}" height="{H}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(5):
        y = ymax * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{sy(y):.1f}" x2="{W-RIGHT}" y2="{sy(y):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{LEFT-4}" y="{sy(y)+4:.1f}" font-size="10" text-anchor="end">{y:g}</text>')
    for i, (name, pts) in enumerate(lines[:8]):
        c = COLOURS[i % len(COLOURS)]
        d = " ".join(f"{sx(t):.1f},{sy(y):.1f}" for t, y in pts)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{d}"/>'
                     f'<rect x="{LEFT+8}" y="{TOP+4+13*i}" width="10" height="3" fill="{c}"/>'
                     f'<text x="{LEFT+22}" y="{TOP+9+13*i}" font-size="10">{html.escape(name)}</text>')
    parts.append("</svg>")
    return f'<div class="panel"><h3>{html.escape(title)}</h3>{"".join(parts)}</div>'


def main():
    base, dash_path, out = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    minutes = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    dash = json.load(open(dash_path))
    end = time.time()
    start = end - minutes * 60
    step = max(1, int(minutes * 60 / 200))
    panels = []
    for p in dash["panels"]:
        lines = []
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            for series in query_range(base, expr, start, end, step):
                pts = [(float(ts), float(v)) for ts, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                lines.append((legend(t.get("legendFormat"), series["metric"], p["title"]), pts))
        panels.append(panel_svg(p["title"], lines, start, end))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>ringmta dashboard preview</title>"
            "<style>body{font-family:sans-serif;margin:12px}h3{font-size:13px;margin:4px 0}"
            ".grid{display:grid;grid-template-columns:repeat(2,580px);gap:10px}</style></head><body>"
            f"<h2>{html.escape(dash['title'])} (preview of the last {minutes:g} min)</h2>"
            f"<div class='grid'>{''.join(panels)}</div></body></html>")
    open(out, "w").write(page)


if __name__ == "__main__":
    main()
