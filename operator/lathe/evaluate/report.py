"""Self-contained HTML report: accuracy-vs-latency scatter (inline SVG) with the budget line and the
Pareto front, the candidate table, and the sensitivity of the nodes kept in float."""

from __future__ import annotations

import html
import math
from typing import Any

from ..api.status import CandidateResult, WorkerResult
from .metrics import HIGHER_IS_BETTER, LABEL

COLORS = {"passed": "#1a7f37", "rejected": "#cf222e", "failed": "#6e7781", "baseline": "#0969da"}


def _fmt(v, nd=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return html.escape(str(v))


def scatter(wr: WorkerResult, allowed: float | None, max_p99: float | None, w: int = 640, h: int = 380) -> str:
    pts = [c for c in [wr.baseline, *wr.candidates] if c.accuracy is not None and c.p50_ms is not None]
    if not pts:
        return "<p>No candidate was measured.</p>"
    xs = [c.p50_ms for c in pts]
    ys = [c.accuracy for c in pts] + ([allowed] if allowed is not None else [])
    log_x = min(xs) > 0 and max(xs) / min(xs) > 8  # a log axis when latencies span orders of magnitude
    if log_x:
        x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.15
    else:
        x0, x1 = 0.0, max(xs) * 1.15
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.1 or abs(y1) * 0.01 or 0.01
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 60, 20, 20, 45

    def sx(x):
        x = math.log10(x) if log_x else x
        return L + (x - x0) / (x1 - x0) * (w - L - R)

    def sy(y):
        return T + (y1 - y) / (y1 - y0) * (h - T - B)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
             f'<rect x="{L}" y="{T}" width="{w - L - R}" height="{h - T - B}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        xv = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{L - 5}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
        xl = 10 ** xv if log_x else xv
        parts.append(f'<text x="{sx(xl):.1f}" y="{h - B + 15}" text-anchor="middle">{xl:.3g}</text>')
    parts.append(f'<text x="{(w + L) / 2}" y="{h - 8}" text-anchor="middle">p50 latency (ms{", log scale" if log_x else ""}), batch {wr.baseline.latency[0].batch if wr.baseline.latency else "?"}</text>')
    parts.append(f'<text x="14" y="{(h - B) / 2}" transform="rotate(-90 14 {(h - B) / 2})" text-anchor="middle">{html.escape(LABEL.get(wr.metric, wr.metric))}</text>')
    if allowed is not None:
        parts.append(f'<line x1="{L}" x2="{w - R}" y1="{sy(allowed):.1f}" y2="{sy(allowed):.1f}" stroke="#cf222e" stroke-dasharray="6 4"/>'
                     f'<text x="{w - R - 4}" y="{sy(allowed) - 4:.1f}" text-anchor="end" fill="#cf222e">accuracy budget</text>')
    if max_p99 is not None and max_p99 > 0 and x0 <= (math.log10(max_p99) if log_x else max_p99) <= x1:
        parts.append(f'<line y1="{T}" y2="{h - B}" x1="{sx(max_p99):.1f}" x2="{sx(max_p99):.1f}" stroke="#cf222e" stroke-dasharray="2 3"/>')
    front = [c for n in wr.pareto for c in pts if c.name == n]
    if len(front) > 1:
        d = " ".join(f"{sx(c.p50_ms):.1f},{sy(c.accuracy):.1f}" for c in front)
        parts.append(f'<polyline points="{d}" fill="none" stroke="#8250df" stroke-width="1.5"/>')
    for c in pts:
        col = COLORS.get(str(c.verdict), "#000")
        r = 7 if c.name == wr.winner else 4.5
        ring = ' stroke="#000" stroke-width="2"' if c.name == wr.winner else ""
        parts.append(f'<circle cx="{sx(c.p50_ms):.1f}" cy="{sy(c.accuracy):.1f}" r="{r}" fill="{col}"'
                     f'{ring}><title>{html.escape(c.name)}</title></circle>'
                     f'<text x="{sx(c.p50_ms) + 7:.1f}" y="{sy(c.accuracy) - 6:.1f}">{html.escape(c.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _row(c: CandidateResult, winner: str | None) -> str:
    cells = [("<b>" + html.escape(c.name) + "</b>" + (" ★" if c.name == winner else "")),
             f'<span style="color:{COLORS.get(str(c.verdict), "#000")}">{html.escape(str(c.verdict))}</span>',
             html.escape(c.passes), _fmt(c.accuracy), _fmt(c.accuracy_drop, 3), _fmt(c.min_cosine),
             _fmt(c.p50_ms), _fmt(c.p99_ms), _fmt(c.speedup, 3),
             _fmt(c.size_bytes / 1e6 if c.size_bytes else None, 3), _fmt(c.size_ratio, 3),
             html.escape(", ".join(f"{k}:{v}" for k, v in sorted(c.precision.items()))),
             str(len(c.float_nodes)), html.escape(c.reason),
             html.escape(" | ".join(c.warnings))]
    return "<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"


def html_report(wr: WorkerResult, spec, budget: dict, details: dict[str, Any]) -> str:
    metric = wr.metric
    allowed = None
    if wr.baseline.accuracy is not None and budget.get("max_accuracy_drop") is not None:
        sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
        allowed = wr.baseline.accuracy - sign * budget["max_accuracy_drop"]
    heads = ["candidate", "verdict", "passes", LABEL.get(metric, metric), "drop", "min cos", "p50 ms", "p99 ms",
             "speedup", "MB", "size ratio", "precision", "float nodes", "reason", "warnings"]
    rows = "".join(_row(c, wr.winner) for c in [wr.baseline, *wr.candidates])
    lat_rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{lat.batch}</td><td>{lat.p50_ms:.3f}</td><td>{lat.p95_ms:.3f}</td>"
        f"<td>{lat.p99_ms:.3f}</td><td>{lat.throughput:.1f}</td></tr>"
        for c in [wr.baseline, *wr.candidates] for lat in c.latency)
    sens = []
    for name, d in details.get("candidates", {}).items():
        s = d.get("sensitivity")
        if not s:
            continue
        kept = next((c.float_nodes for c in wr.candidates if c.name == name), [])
        top = max((v for _, v in s), default=1.0) or 1.0
        bars = "".join(
            f'<tr><td>{"● " if n in kept else ""}{html.escape(n)}</td><td>{v:.4g}</td>'
            f'<td><svg width="200" height="10"><rect width="{200 * v / top:.1f}" height="10" fill="{"#cf222e" if n in kept else "#8c959f"}"/></svg></td></tr>'
            for n, v in s[:24])
        sens.append(f"<h3>{html.escape(name)}</h3><p>Added relative output error per quantized node; ● = kept in float.</p>"
                    f"<table><tr><th>node</th><th>error added</th><th></th></tr>{bars}</table>")
    budget_txt = ", ".join(f"{k}={v}" for k, v in budget.items() if v is not None and not k.startswith("_"))
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in wr.warnings)
    env = ", ".join(f"{k} {v}" for k, v in wr.environment.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Lathe report</title>
<style>body{{font-family:sans-serif;margin:24px;color:#1f2328}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #d0d7de;padding:3px 6px;vertical-align:top}}th{{background:#f6f8fa}}</style></head><body>
<h1>Lathe optimization report</h1>
<p>Model <code>{html.escape(spec.model.uri)}</code> · metric <b>{html.escape(LABEL.get(metric, metric))}</b> ·
winner <b>{html.escape(wr.winner or "none (no candidate met the budget)")}</b> · budget {html.escape(budget_txt)} ·
objective {html.escape(str(spec.objective))} · {wr.seconds}s</p>
{"<ul>" + warn + "</ul>" if warn else ""}
<h2>Accuracy vs latency</h2>{scatter(wr, allowed, budget.get("max_p99_latency_ms"))}
<p>Dashed red: the accuracy budget. Purple: Pareto front ({html.escape(", ".join(wr.pareto))}).</p>
<h2>Candidates</h2><table><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>{rows}</table>
<h2>Latency per batch size</h2><table><tr><th>candidate</th><th>batch</th><th>p50</th><th>p95</th><th>p99</th><th>samples/s</th></tr>{lat_rows}</table>
<h2>Sensitivity of nodes kept in float</h2>{"".join(sens) or "<p>No candidate needed mixed precision.</p>"}
<p style="color:#6e7781">Environment: {html.escape(env)}</p>
</body></html>"""
