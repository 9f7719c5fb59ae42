"""The HTML report of a real run, opened in headless Chromium: each plot is rendered on its own
page and its marks are found by colour in the screenshot (an SVG with a NaN coordinate or a broken
attribute draws nothing), and the whole report renders."""

from __future__ import annotations

import re

import pytest

from lathe.api.status import Verdict
from lathe.evaluate import report
from lathe.worker import pipeline
from tests.report.chromium import blend, count_color, screenshot

CANDIDATES = [
    {"name": "int8-static", "passes": [{"type": "quantize", "precision": "int8", "mode": "static", "perChannel": True}]},
    {"name": "pruned", "passes": [{"type": "prune", "method": "structured", "sparsity": 0.25,
                                   "fineTune": {"epochs": 2, "learningRate": 0.0003}}]},
]


@pytest.fixture(scope="module")
def run(digits, make_spec, tmp_path_factory):
    spec = make_spec(digits, candidates=CANDIDATES, target={"batchSizes": [1, 16], "threads": 2},
                     budget={"maxAccuracyDrop": 0.01})
    workdir = tmp_path_factory.mktemp("report-run")
    result = pipeline.run(spec, workdir, bench_seconds=3, bench_rounds=5)
    import json

    details = json.loads((workdir / "details.json").read_text())
    return result, details, workdir


def _page(tmp_path, name, body):
    page = tmp_path / f"{name}.html"
    page.write_text(f'<!doctype html><html><body style="margin:0;background:#fff">{body}</body></html>')
    return screenshot(page, tmp_path / f"{name}.png")


def test_scatter_draws_every_candidate_its_interval_and_the_budget(run, tmp_path):
    result, details, _ = run
    allowed = result.baseline.accuracy - 0.01
    svg = report.scatter(result, allowed, details)
    assert "nan" not in svg.lower()
    img = _page(tmp_path, "scatter", svg)
    # Each point is drawn where its attributes say, in its verdict's colour, unless a later point
    # covers it (two candidates with the same accuracy and latency; bars and labels lie beneath
    # the points): the page is 1:1 with the SVG.
    points = [(float(x), float(y), float(r), fill) for x, y, r, fill in re.findall(
        r'<circle class="point" cx="([^"]+)" cy="([^"]+)" r="([^"]+)" fill="([^"]+)"', svg)]
    assert len(points) == 1 + sum(c.verdict != Verdict.failed for c in result.candidates)
    visible = [(x, y, fill) for i, (x, y, r, fill) in enumerate(points)
               if not any(abs(x - x2) < r + r2 and abs(y - y2) < r + r2 for x2, y2, r2, _ in points[i + 1:])]
    assert visible and visible[-1][:2] == points[-1][:2]
    for x, y, fill in visible:
        px = img.getpixel((round(x), round(y)))
        want = tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))
        assert all(abs(a - b) <= 30 for a, b in zip(px, want, strict=True)), (x, y, px, fill)
    # The budget line: dashed red across the plot at the allowed accuracy.
    (y_budget,) = {round(float(y)) for y in re.findall(r'<line class="budget"[^>]* y1="([^"]+)"', svg)}
    row = [img.getpixel((x, y_budget)) for x in range(report.L, 680 - report.R)]
    red = sum(all(abs(a - b) <= 40 for a, b in zip(px, (0xcf, 0x22, 0x2e), strict=True)) for px in row)
    assert red > 0.4 * len(row), red  # 6-on 4-off dashes: 60% of the row
    for name in [result.baseline.name, *(c.name for c in result.candidates)]:
        iv = details["candidates"][name]["p50_interval_ms"]
        assert iv[0] <= iv[1], (name, iv)


# Fixed latency distributions (ms), one per row, so that every box's size is known: the measured ones depend on
# the CPU and the load (86 px of a box's colour one day, over 100 the next).
KNOWN = [{"min": 0.9, "p5": 1.0, "p25": 1.2, "p50": 1.5, "p75": 1.8, "p95": 2.0, "max": 2.4},
         {"min": 0.4, "p5": 0.5, "p25": 0.6, "p50": 0.7, "p75": 0.9, "p95": 1.1, "max": 1.3},
         {"min": 1.4, "p5": 1.5, "p25": 1.6, "p50": 1.9, "p75": 2.3, "p95": 2.6, "max": 3.0}]


def _boxes(svg: str) -> list[tuple[float, float, float, float, str]]:
    return [tuple(map(float, m[:4])) + (m[4],) for m in re.findall(
        r'<rect class="box" x="([^"]+)" y="([^"]+)" width="([^"]+)" height="([^"]+)" fill="([^"]+)"', svg)]


def test_distributions_draw_a_box_per_candidate(run, tmp_path):
    result, details, _ = run
    rows = [result.baseline, *[c for c in result.candidates if c.verdict != Verdict.failed]]
    # the real run: a box per measured row, each spanning its own p25-p75 with its p50 line inside
    svg = report.distributions(result, details)
    boxes = _boxes(svg)
    assert len(boxes) == len(rows), svg[:300]
    medians = [float(x) for x in re.findall(r'<line x1="([^"]+)" x2="[^"]+" y1="[^"]+" y2="[^"]+" stroke="#000"', svg)]
    for (x, _, w, _, fill), c, p50 in zip(boxes, rows, medians, strict=True):
        assert fill == report.COLORS[str(c.verdict)] and w >= 1.5 and x - 0.1 <= p50 <= x + w + 0.1, (c.name, x, w, p50)
    # known distributions: each box is where and as large as its quantiles say, filled in its verdict's colour
    known = {"benchmark": {c.name: {"batches": {"1": {"quantiles_ms": q, "samples": 100}}}
                           for c, q in zip(rows, KNOWN, strict=False)}}
    shown = rows[:len(KNOWN)]
    svg = report.distributions(result.model_copy(update={"candidates": shown[1:]}), known)
    boxes = _boxes(svg)
    assert len(boxes) == len(shown)
    span = (680 - report.R) - 170  # the axis: p5 of all rows to p95 of all rows, padded 8% on each side
    lo, hi = min(q["p5"] for q in KNOWN[:len(shown)]), max(q["p95"] for q in KNOWN[:len(shown)])
    pad = (hi - lo) * 0.08
    medians = [float(x) for x in re.findall(r'<line x1="([^"]+)" x2="[^"]+" y1="[^"]+" y2="[^"]+" stroke="#000"', svg)]
    img = _page(tmp_path, "dist", svg)
    for (x, y, w, h, fill), q, c, p50 in zip(boxes, KNOWN, shown, medians, strict=False):
        scale = span / (hi - lo + 2 * pad)
        want_x, want_w, want_p50 = 170 + (q["p25"] - lo + pad) * scale, (q["p75"] - q["p25"]) * scale, \
            170 + (q["p50"] - lo + pad) * scale
        assert abs(x - want_x) < 0.2 and abs(w - want_w) < 0.2 and abs(p50 - want_p50) < 0.2 and h == 16, (
            c.name, x, want_x, w, want_w, p50, want_p50)
        # Inside the box, away from its outline, the whisker across its middle and the p50 line: every pixel is
        # the box's colour 35% over white (at least 40 x 4 of them above the whisker and as many below).
        colour = blend(fill, 0.35)
        for top, bottom in ((y + 2, y + h / 2 - 2), (y + h / 2 + 2, y + h - 2)):
            for left, right in ((x + 2, p50 - 3), (p50 + 3, x + w - 2)):
                part = img.crop((round(left), round(top), round(right), round(bottom)))
                if part.width > 0:
                    n = part.width * part.height
                    assert count_color(part, colour, tol=12) == n, (c.name, (left, top, right, bottom), n)
            assert sum(max(0, round(r) - round(le)) for le, r in ((x + 2, p50 - 3), (p50 + 3, x + w - 2))) >= 40
    assert {f for *_, f in boxes} == {report.COLORS[str(c.verdict)] for c in shown}


def test_precision_bars_show_int8_in_proportion(run, tmp_path):
    result, details, _ = run
    q = next(c for c in result.candidates if c.name == "int8-static")
    int8, total = q.precision.get("INT8", 0), sum(q.precision.values())
    assert int8 > 0
    only = result.model_copy(update={"candidates": [q]})
    only.baseline = only.baseline.model_copy(update={"precision": {}})
    img = _page(tmp_path, "precision", report.precision_bars(only, {}))
    green = count_color(img, report.PRECISION_COLORS["int8"], tol=8) - 100  # minus the 10x10 legend square
    bar_px = (680 - 170 - report.R) * 16  # the stacked bar spans the plot width, 16 px high
    assert green > 0 and abs(green / bar_px - int8 / total) < 0.03, (green, bar_px, q.precision)


def test_whole_report_renders(run, tmp_path):
    _, _, workdir = run
    html = (workdir / "report.html").read_text()
    assert html.count("<svg") >= 3 and "nan" not in html.replace("nanos", "").lower().split("environment")[0]
    img = screenshot(workdir / "report.html", tmp_path / "report.png", width=1200, height=2400)
    white = count_color(img, "#ffffff", tol=3)
    assert white < 0.97 * img.width * img.height  # not a blank page
    assert count_color(img, report.COLORS["baseline"]) > 100
