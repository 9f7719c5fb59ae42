"""docs/grafana-dashboard.json: valid JSON a Grafana imports (unique panel ids, a Prometheus data
source variable, a query per target), every query valid PromQL by the Prometheus project's own
grammar, naming only series the operator serves (lathe.controller.metrics), and each of them used."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.chart.served import served_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
# Grafana's interval macros, replaced by a duration before parsing (as Grafana does before sending).
MACROS = re.compile(r"\$__(rate_interval|interval|range)\b")


def queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label) is Grafana's, not PromQL
            m = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"]["query"])
            assert m, var
            exprs.append(m.group(1))
    return exprs


@pytest.fixture(scope="module")
def parse():
    out = subprocess.run(["bash", str(ROOT / "e2e/gitops/promql.sh")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    env = dict(os.environ, NODE_PATH=out.stdout.strip().splitlines()[-1])

    def run(exprs: list[str]) -> list[dict]:
        res = subprocess.run(["node", str(Path(__file__).with_name("promql_names.cjs"))], env=env, text=True,
                             input=json.dumps([MACROS.sub("5m", e) for e in exprs]), capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)
    return run


def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]


def test_queries_parse_and_name_only_served_metrics(parse):
    dash = json.loads(DASHBOARD.read_text())
    exprs = queries(dash)
    results = parse(exprs)
    served = served_series()
    allowed = set().union(*served.values())
    used = set()
    for expr, res in zip(exprs, results, strict=True):
        assert res["error"] is None, f"PromQL syntax error at {res['error']}: {expr}"
        assert res["metrics"], f"selects no metric: {expr}"
        assert set(res["metrics"]) <= allowed, f"not served by lathe.controller.metrics: {expr}"
        used |= {name for name, series in served.items() if series & set(res["metrics"])}
    assert used == set(served), f"no panel for {set(served) - used}"


def test_parser_refuses_what_it_should(parse):
    bad, unknown = parse(["sum(rate(lathe_reconciles_total[5m])", "rate(lathe_reconcile_total[5m])"])
    assert bad["error"] is not None
    assert unknown["metrics"] == ["lathe_reconcile_total"]
    assert "lathe_reconcile_total" not in set().union(*served_series().values())
