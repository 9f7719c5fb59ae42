"""Self-contained HTML report (inline SVG, no script, opens offline): accuracy against latency with
each candidate's 95% interval, the budget line and the Pareto front; the candidate table; latency
distributions per candidate; precision per layer; the sensitivity of the nodes kept in float."""

from __future__ import annotations

import html
import math
from typing import Any

from ..api.status import CandidateResult, WorkerResult
from .metrics import HIGHER_IS_BETTER, LABEL
from .table import speedup_text, tokens_text

COLORS = {"passed": "#1a7f37", "rejected": "#cf222e", "failed": "#6e7781", "baseline": "#0969da"}
PRECISION_COLORS = {"fp32": "#0969da", "fp16": "#8250df", "bf16": "#bf3989", "int8": "#1a7f37", "int4": "#9a6700",
                    "fp8": "#bc4c00"}
L, R, T, B = 60, 20, 20, 45  # plot margins


def _fmt(v, nd=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return html.escape(str(v))


class _Axis:
    """Linear, or log10 when the values span more than 8x."""

    def __init__(self, lo: float, hi: float, a: float, b: float, allow_log: bool = True):
        self.log = allow_log and lo > 0 and hi / lo > 8
        if self.log:
            self.lo, self.hi = math.log10(lo) - 0.08, math.log10(hi) + 0.08
        else:
            pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.01
            self.lo, self.hi = lo - pad, hi + pad
        self.a, self.b = a, b

    def __call__(self, v: float) -> float:
        x = math.log10(v) if self.log else v
        return self.a + (x - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        vals = [self.lo + (self.hi - self.lo) * k / (n - 1) for k in range(n)]
        return [10 ** v for v in vals] if self.log else vals


def _svg_open(w: int, h: int, label: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
            f'font-size="11" role="img" aria-label="{html.escape(label)}">',
            f'<rect x="{L}" y="{T}" width="{w - L - R}" height="{h - T - B}" fill="#fafafa" stroke="#ccc"/>']


def scatter(wr: WorkerResult, allowed: float | None, details: dict[str, Any], max_p99: float | None = None,
            w: int = 680, h: int = 400) -> str:
    """Accuracy (y) against p50 latency (x) with the p50's 95% interval as a horizontal bar."""
    pts = [c for c in [wr.baseline, *wr.candidates] if c.accuracy is not None and c.p50_ms is not None]
    if not pts:
        return "<p>No candidate was measured.</p>"
    cands = details.get("candidates", {})

    def interval(c: CandidateResult) -> tuple[float, float]:
        lo, hi = (cands.get(c.name, {}).get("p50_interval_ms") or [None, None])[:2]
        return (lo if lo else c.p50_ms, hi if hi else c.p50_ms)

    xs = [v for c in pts for v in (c.p50_ms, *interval(c))]
    ys = [c.accuracy for c in pts] + ([allowed] if allowed is not None else [])
    ax = _Axis(min(xs), max(xs), L, w - R)
    ay = _Axis(min(ys), max(ys), h - B, T, allow_log=False)
    parts = _svg_open(w, h, "accuracy against latency")
    for xv, yv in zip(ax.ticks(), ay.ticks(), strict=True):
        parts.append(f'<text x="{L - 5}" y="{ay(yv) + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
        parts.append(f'<text x="{ax(xv):.1f}" y="{h - B + 15}" text-anchor="middle">{xv:.3g}</text>')
    batch = wr.baseline.latency[0].batch if wr.baseline.latency else "?"
    parts.append(f'<text x="{(w + L) / 2}" y="{h - 8}" text-anchor="middle">p50 latency, ms{", log scale" if ax.log else ""}'
                 f' (batch {batch}; bars: 95% interval)</text>')
    parts.append(f'<text x="14" y="{(h - B) / 2}" transform="rotate(-90 14 {(h - B) / 2})" text-anchor="middle">'
                 f'{html.escape(LABEL.get(wr.metric, wr.metric))}</text>')
    if allowed is not None:
        parts.append(f'<line class="budget" x1="{L}" x2="{w - R}" y1="{ay(allowed):.1f}" y2="{ay(allowed):.1f}" '
                     f'stroke="#cf222e" stroke-width="2" stroke-dasharray="6 4"/>'
                     f'<text x="{w - R - 4}" y="{ay(allowed) - 4:.1f}" text-anchor="end" fill="#cf222e">accuracy budget</text>')
    if max_p99 is not None and max_p99 > 0 and min(xs) <= max_p99 <= max(xs):
        parts.append(f'<line y1="{T}" y2="{h - B}" x1="{ax(max_p99):.1f}" x2="{ax(max_p99):.1f}" stroke="#cf222e" '
                     f'stroke-dasharray="2 3"/>')
    front = [c for n in wr.pareto for c in pts if c.name == n]
    if len(front) > 1:
        d = " ".join(f"{ax(c.p50_ms):.1f},{ay(c.accuracy):.1f}" for c in front)
        parts.append(f'<polyline points="{d}" fill="none" stroke="#8250df" stroke-width="1.5"/>')
    # Layers: every interval bar, then every label, then every point, so that no bar or label of
    # one candidate hides another's point (candidates often share an accuracy).
    for c in pts:
        lo, hi = interval(c)
        y = ay(c.accuracy)
        parts.append(f'<line class="interval" x1="{ax(lo):.1f}" x2="{ax(hi):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{COLORS.get(str(c.verdict), "#000")}" stroke-width="3"/>')
    for c in pts:
        parts.append(f'<text x="{ax(c.p50_ms) + 7:.1f}" y="{ay(c.accuracy) - 6:.1f}">{html.escape(c.name)}</text>')
    for c in pts:
        r = 7 if c.name == wr.winner else 4.5
        ring = ' stroke="#000" stroke-width="2"' if c.name == wr.winner else ""
        parts.append(f'<circle class="point" cx="{ax(c.p50_ms):.1f}" cy="{ay(c.accuracy):.1f}" r="{r}" '
                     f'fill="{COLORS.get(str(c.verdict), "#000")}"{ring}>'
                     f'<title>{html.escape(c.name)}: {speedup_text(c)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def distributions(wr: WorkerResult, details: dict[str, Any], w: int = 680) -> str:
    """One box per candidate at the first batch size: whiskers p5-p95, box p25-p75, line p50."""
    bench = details.get("benchmark", {})
    rows = []
    for c in [wr.baseline, *wr.candidates]:
        batches = bench.get(c.name, {}).get("batches", {})
        if not batches:
            continue
        first = next(iter(batches))
        q = batches[first].get("quantiles_ms") or {}
        if q:
            rows.append((c, first, q, batches[first].get("samples", 0)))
    if not rows:
        return "<p>No latency was measured.</p>"
    row_h = 26
    h = T + B + row_h * len(rows)
    ax = _Axis(min(q["p5"] for *_, q, _ in rows), max(q["p95"] for *_, q, _ in rows), 170, w - R)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11" role="img" aria-label="latency distributions">']
    for xv in ax.ticks():
        parts.append(f'<line x1="{ax(xv):.1f}" x2="{ax(xv):.1f}" y1="{T}" y2="{h - B}" stroke="#eee"/>'
                     f'<text x="{ax(xv):.1f}" y="{h - B + 15}" text-anchor="middle">{xv:.3g}</text>')
    parts.append(f'<text x="{(w + 170) / 2}" y="{h - 8}" text-anchor="middle">latency per call, ms'
                 f'{", log scale" if ax.log else ""} (batch {rows[0][1]}; whiskers p5-p95, box p25-p75)</text>')
    for k, (c, _, q, n) in enumerate(rows):
        y = T + row_h * k + row_h / 2
        col = COLORS.get(str(c.verdict), "#000")
        parts.append(f'<text x="165" y="{y + 4:.1f}" text-anchor="end">{html.escape(c.name)}</text>'
                     f'<line x1="{ax(q["p5"]):.1f}" x2="{ax(q["p95"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{col}"/>'
                     f'<rect class="box" x="{ax(q["p25"]):.1f}" y="{y - 8:.1f}" width="{max(ax(q["p75"]) - ax(q["p25"]), 1.5):.1f}" '
                     f'height="16" fill="{col}" fill-opacity="0.35" stroke="{col}"><title>{html.escape(c.name)}: '
                     f'p50 {q["p50"]:.4g} ms, {n} calls</title></rect>'
                     f'<line x1="{ax(q["p50"]):.1f}" x2="{ax(q["p50"]):.1f}" y1="{y - 8:.1f}" y2="{y + 8:.1f}" '
                     f'stroke="#000" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def precision_bars(wr: WorkerResult, details: dict[str, Any], w: int = 680) -> str:
    """Per candidate, its nodes by the precision they run in (stacked bar), and the list per node."""
    cands = [c for c in [wr.baseline, *wr.candidates] if c.precision]
    if not cands:
        return "<p>No precision audit.</p>"
    row_h = 22
    h = 20 + row_h * len(cands) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11" role="img" aria-label="precision per layer">']
    span = w - 170 - R
    for k, c in enumerate(cands):
        y = 10 + row_h * k
        total = sum(c.precision.values()) or 1
        x = 170.0
        parts.append(f'<text x="165" y="{y + 13}" text-anchor="end">{html.escape(c.name)}</text>')
        for prec, n in sorted(c.precision.items()):
            width = span * n / total
            parts.append(f'<rect class="precision" x="{x:.1f}" y="{y}" width="{width:.1f}" height="16" '
                         f'fill="{PRECISION_COLORS.get(prec.lower(), "#8c959f")}"><title>{html.escape(prec)}: {n} nodes'
                         f'</title></rect>')
            x += width
    legend_y = h - 8
    x = 170
    for prec, col in PRECISION_COLORS.items():
        parts.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{x + 13}" y="{legend_y}">{prec}</text>')
        x += 60
    parts.append("</svg>")
    lists = []
    for name, d in details.get("candidates", {}).items():
        nodes = d.get("precision_nodes")
        if nodes:
            rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(p))}</td></tr>" for n, p in nodes.items())
            lists.append(f"<details><summary>{html.escape(name)}: {len(nodes)} nodes</summary><table>"
                         f"<tr><th>node</th><th>runs in</th></tr>{rows}</table></details>")
    return "".join(parts) + "".join(lists)


def sensitivity(wr: WorkerResult, details: dict[str, Any], lm: bool = False) -> str:
    sens = []
    for name, d in details.get("candidates", {}).items():
        s = d.get("sensitivity")
        if not s:
            continue
        kept = (list(d.get("bits", {}) and [n for n, b in d["bits"].items() if b == 8]) if lm
                else next((c.float_nodes for c in wr.candidates if c.name == name), []))
        top = max((v for _, v in s), default=1.0) or 1.0
        bars = "".join(
            f'<tr><td>{"● " if n in kept else ""}{html.escape(n)}</td><td>{v:.4g}</td>'
            f'<td><svg width="200" height="10"><rect width="{200 * max(v, 0) / top:.1f}" height="10" '
            f'fill="{"#cf222e" if n in kept else "#8c959f"}"/></svg></td></tr>'
            for n, v in s[:24])
        what = ("What each MatMul costs at INT4: the KL divergence from the FP32 model's next-token distribution "
                "removed when it alone goes back to FP32 (groups first when there are many); ● = kept at INT8."
                if lm else "What each quantized node costs: the relative output error removed when it alone goes "
                           "back to float (ONNX Runtime) or the error it adds (OpenVINO); ● = kept in float.")
        sens.append(f"<h3>{html.escape(name)}</h3><p>{what}</p>"
                    f"<table><tr><th>node</th><th>error cost</th><th></th></tr>{bars}</table>")
    return "".join(sens) or "<p>No candidate needed mixed precision.</p>"


def tie_break(wr: WorkerResult) -> str:
    """The rounds added to settle a tie on speed, and the tied candidates' intervals after each check."""
    tb = wr.tie_break
    if tb is None:
        return ""
    names = list(dict.fromkeys(n for st in tb.steps for n in st.speedups))
    rows = "".join(f"<tr><td>{st.rounds}</td>" + "".join(f"<td>{html.escape(st.speedups.get(n, '–'))}</td>"
                                                         for n in names) + "</tr>" for st in tb.steps)
    return (f'<h2>Tie on speed</h2><p id="tie-break">{html.escape(", ".join(tb.candidates))}: '
            f"{html.escape(tb.summary())}.</p><table><tr><th>rounds</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in names) + f"</tr>{rows}</table>")


BIT_COLORS = {4: "#9a6700", 8: "#1a7f37", 32: "#0969da"}


def lm_scatter(wr: WorkerResult, budget: dict, w: int = 680, h: int = 400) -> str:
    """Causal LM: perplexity (y) against decode tokens/s (x), each with its 95% interval bar, and the budget."""
    pts = [c for c in [wr.baseline, *wr.candidates] if c.perplexity is not None and c.decode_tokens_per_s]
    if not pts:
        return "<p>No candidate was measured.</p>"
    allowed = None
    if budget.get("max_relative_drop") is not None and wr.baseline.perplexity:
        allowed = wr.baseline.perplexity * (1 + budget["max_relative_drop"])
    xs = [v for c in pts for v in (c.decode_tokens_per_s, c.decode_tokens_per_s_low, c.decode_tokens_per_s_high)
          if v]
    ys = [c.perplexity for c in pts] + ([allowed] if allowed else [])
    ax = _Axis(min(xs), max(xs), L, w - R, allow_log=False)
    ay = _Axis(min(ys), max(ys), h - B, T)
    parts = _svg_open(w, h, "perplexity against decode tokens per second")
    for xv, yv in zip(ax.ticks(), ay.ticks(), strict=True):
        parts.append(f'<text x="{L - 5}" y="{ay(yv) + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
        parts.append(f'<text x="{ax(xv):.1f}" y="{h - B + 15}" text-anchor="middle">{xv:.3g}</text>')
    parts.append(f'<text x="{(w + L) / 2}" y="{h - 8}" text-anchor="middle">decode tokens/s, batch 1 '
                 f'(bars: 95% interval; right is faster)</text>')
    parts.append(f'<text x="14" y="{(h - B) / 2}" transform="rotate(-90 14 {(h - B) / 2})" text-anchor="middle">'
                 f'perplexity{", log scale" if ay.log else ""} (lower is better)</text>')
    if allowed is not None:
        parts.append(f'<line class="budget" x1="{L}" x2="{w - R}" y1="{ay(allowed):.1f}" y2="{ay(allowed):.1f}" '
                     f'stroke="#cf222e" stroke-width="2" stroke-dasharray="6 4"/>'
                     f'<text x="{w - R - 4}" y="{ay(allowed) - 4:.1f}" text-anchor="end" fill="#cf222e">'
                     f'perplexity budget (+{budget["max_relative_drop"]:.1%})</text>')
    for c in pts:
        lo, hi = c.decode_tokens_per_s_low or c.decode_tokens_per_s, c.decode_tokens_per_s_high or c.decode_tokens_per_s
        y = ay(c.perplexity)
        parts.append(f'<line class="interval" x1="{ax(lo):.1f}" x2="{ax(hi):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{COLORS.get(str(c.verdict), "#000")}" stroke-width="3"/>')
    for c in pts:
        parts.append(f'<text x="{ax(c.decode_tokens_per_s) + 7:.1f}" y="{ay(c.perplexity) - 6:.1f}">'
                     f'{html.escape(c.name)}</text>')
    for c in pts:
        r = 7 if c.name == wr.winner else 4.5
        ring = ' stroke="#000" stroke-width="2"' if c.name == wr.winner else ""
        parts.append(f'<circle class="point" cx="{ax(c.decode_tokens_per_s):.1f}" cy="{ay(c.perplexity):.1f}" r="{r}" '
                     f'fill="{COLORS.get(str(c.verdict), "#000")}"{ring}><title>{html.escape(c.name)}: '
                     f'{c.decode_tokens_per_s:.1f} tokens/s, perplexity {c.perplexity:.3f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def layer_bits(wr: WorkerResult, details: dict[str, Any], w: int = 680) -> str:
    """Causal LM: one row per candidate, one cell per weight MatMul in graph order, coloured by its bits."""
    rows = [(c.name, details.get("candidates", {}).get(c.name, {}).get("bits") or {}) for c in wr.candidates]
    rows = [(n, b) for n, b in rows if b]
    if not rows:
        return "<p>No per-layer precision recorded.</p>"
    row_h, left = 20, 170
    h = 14 + row_h * len(rows) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11" role="img" aria-label="weight bits per MatMul">']
    for k, (name, bits) in enumerate(rows):
        y = 8 + row_h * k
        cell = (w - left - R) / max(len(bits), 1)
        parts.append(f'<text x="{left - 5}" y="{y + 12}" text-anchor="end">{html.escape(name)}</text>')
        for i, (node, b) in enumerate(bits.items()):
            parts.append(f'<rect class="bits" x="{left + i * cell:.2f}" y="{y}" width="{max(cell, 0.5):.2f}" '
                         f'height="14" fill="{BIT_COLORS.get(int(b), "#8c959f")}"><title>{html.escape(node)}: '
                         f'{b} bits</title></rect>')
    x = left
    for b, col in BIT_COLORS.items():
        parts.append(f'<rect x="{x}" y="{h - 17}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{x + 13}" y="{h - 8}">{"fp32" if b == 32 else f"int{b}"}</text>')
        x += 60
    parts.append("</svg>")
    return "".join(parts)


def lm_section(wr: WorkerResult, budget: dict, details: dict[str, Any]) -> str:
    lengths = list(wr.baseline.first_token_ms)
    heads = ["candidate", "verdict", "perplexity", "change", "next-token agreement", "choice accuracy",
             *[f"first token @{n} (ms)" for n in lengths], "decode tokens/s [95%]",
             f"{wr.baseline.streams or ''} streams tokens/s", "MB", "peak MiB", "bits (MatMuls)", "generated"]
    cands = details.get("candidates", {})
    rows = []
    for c in [wr.baseline, *wr.candidates]:
        sample = (details.get("baseline") if c.name == "baseline" else cands.get(c.name, {})) or {}
        cells = [html.escape(c.name) + (" ★" if c.name == wr.winner else ""),
                 f'<span style="color:{COLORS.get(str(c.verdict), "#000")}">{html.escape(str(c.verdict))}</span>',
                 _fmt(c.perplexity), "–" if c.perplexity_increase is None else f"{c.perplexity_increase:+.2%}",
                 _fmt(c.token_agreement), _fmt(c.choice_accuracy), *[_fmt(c.first_token_ms.get(n)) for n in lengths],
                 html.escape(tokens_text(c)), _fmt(c.stream_tokens_per_s),
                 _fmt(c.size_bytes / 1e6 if c.size_bytes else None), _fmt(c.peak_memory_mb),
                 html.escape(", ".join(f"{'fp32' if k == '32' else 'int' + k}:{v}" for k, v in c.bits.items())),
                 "<code>" + html.escape(str(sample.get("generated", ""))[:120]) + "</code>"]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return (f"<h2>Perplexity vs decode speed</h2>{lm_scatter(wr, budget)}"
            f"<h2>Causal LM figures</h2><table><tr>{''.join(f'<th>{x}</th>' for x in heads)}</tr>{''.join(rows)}"
            "</table><p>Agreement: share of validation positions whose teacher-forced next-token top-1 equals the "
            "FP32 model's. Generated: the first tokens each candidate produced (greedy) when it was loaded.</p>"
            f"<h2>Weight bits per MatMul</h2>{layer_bits(wr, details)}")


def _row(c: CandidateResult, winner: str | None) -> str:
    cells = [("<b>" + html.escape(c.name) + "</b>" + (" ★" if c.name == winner else "")),
             f'<span style="color:{COLORS.get(str(c.verdict), "#000")}">{html.escape(str(c.verdict))}</span>',
             html.escape(c.passes), _fmt(c.accuracy), _fmt(c.accuracy_drop, 3), _fmt(c.min_cosine),
             _fmt(c.p50_ms), _fmt(c.p99_ms), html.escape(speedup_text(c)), _fmt(c.rounds),
             _fmt(c.size_bytes / 1e6 if c.size_bytes else None, 3), _fmt(c.size_ratio, 3), _fmt(c.peak_memory_mb, 4),
             html.escape(", ".join(f"{k}:{v}" for k, v in sorted(c.precision.items()))),
             str(len(c.float_nodes)),
             (f"{c.activation_out_of_range:.2%} <small>{html.escape(c.activation_out_of_range_tensor or '')}</small>"
              if c.activation_out_of_range is not None else "-"),
             html.escape(c.reason),
             html.escape(" | ".join(c.warnings))]
    return "<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"


def html_report(wr: WorkerResult, spec, budget: dict, details: dict[str, Any]) -> str:
    metric = wr.metric
    allowed = None
    if wr.baseline.accuracy is not None and budget.get("max_accuracy_drop") is not None:
        sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
        allowed = wr.baseline.accuracy - sign * budget["max_accuracy_drop"]
    heads = ["candidate", "verdict", "passes", LABEL.get(metric, metric), "drop", "min cos", "p50 ms", "p99 ms",
             "speedup [95%]", "rounds", "MB", "size ratio", "peak MiB", "precision", "float nodes",
             "activations outside range (worst tensor)", "reason", "warnings"]
    rows = "".join(_row(c, wr.winner) for c in [wr.baseline, *wr.candidates])
    lat_rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{lat.batch}</td><td>{_fmt(lat.p50_ms)}</td><td>{_fmt(lat.p95_ms)}</td>"
        f"<td>{_fmt(lat.p99_ms)}</td><td>{lat.throughput:.1f}</td><td>{lat.samples}</td></tr>"
        for c in [wr.baseline, *wr.candidates] for lat in c.latency)
    budget_txt = ", ".join(f"{k}={v}" for k, v in budget.items() if v is not None and not k.startswith("_"))
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in wr.warnings)
    lm = metric == "perplexity"  # causal LM: its own plot, figures and bits per MatMul instead of the generic ones
    generic = (f'<h2>Accuracy vs latency</h2>{scatter(wr, allowed, details, budget.get("max_p99_latency_ms"))}'
               f'<p>Dashed red: the accuracy budget. Purple: Pareto front ({html.escape(", ".join(wr.pareto))}).</p>')
    timing = (f"<h2>Latency distributions</h2>{distributions(wr, details)}"
              "<h2>Latency per batch size</h2><table><tr><th>candidate</th><th>batch</th><th>p50</th><th>p95</th>"
              f"<th>p99</th><th>samples/s</th><th>timed calls</th></tr>{lat_rows}</table>"
              '<p>p99 "–": fewer than 500 timed calls, too few for a 99th percentile.</p>'
              f"<h2>Precision per layer</h2>{precision_bars(wr, details)}")
    env = ", ".join(f"{k} {v}" for k, v in wr.environment.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Lathe report</title>
<style>body{{font-family:sans-serif;margin:24px;color:#1f2328}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #d0d7de;padding:3px 6px;vertical-align:top}}th{{background:#f6f8fa}}</style></head><body>
<h1>Lathe optimization report</h1>
<p>Model <code>{html.escape(spec.model.uri)}</code> · metric <b>{html.escape(LABEL.get(metric, metric))}</b> ·
winner <b>{html.escape(wr.winner or "none")}</b> · budget {html.escape(budget_txt)} ·
objective {html.escape(str(spec.objective))} · {wr.seconds}s</p>
<p id="selection">{html.escape(wr.selection)}</p>
<p>Speedup: {html.escape(wr.speedup_basis)}.</p>
{tie_break(wr)}
{"<ul>" + warn + "</ul>" if warn else ""}
{lm_section(wr, budget, details) if lm else ""}
{"" if lm else generic}
<h2>Candidates</h2><table><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>{rows}</table>
{"" if lm else timing}
<h2>Sensitivity of {"MatMuls kept at INT8" if lm else "nodes kept in float"}</h2>{sensitivity(wr, details, lm)}
<p style="color:#6e7781">Environment: {html.escape(env)}</p>
</body></html>"""
