"""The chart rendered with the real Helm SDK (helm_python), as `helm install` would render it."""

from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lathe"


def render(values=None, name="lathe", namespace="lathe-system") -> list[dict]:
    out = helm.Chart.load(CHART).render(values or {}, name=name, namespace=namespace, is_install=True)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def one(docs, kind):
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc
