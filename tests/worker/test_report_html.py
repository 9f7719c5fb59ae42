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


def test_distributions_draw_a_box_per_candidate(run, tmp_path):
    result, details, _ = run
    svg = report.distributions(result, details)
    assert svg.count('class="box"') == 1 + len([c for c in result.candidates if c.verdict != Verdict.failed])
    img = _page(tmp_path, "dist", svg)
    assert count_color(img, blend(report.COLORS["baseline"], 0.35), tol=12) > 100
    passed_or_rejected = {str(c.verdict) for c in result.candidates}
    for v in passed_or_rejected:
        assert count_color(img, blend(report.COLORS[v], 0.35), tol=12) > 100, v


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
