"""The series the operator's metrics endpoint serves, from the metrics lathe.controller.metrics registers."""

from prometheus_client import Counter, Gauge, Histogram

from lathe.controller import metrics


def served_series() -> dict[str, set[str]]:
    """metric name -> the series names Prometheus scrapes for it (a Counter `x` is `x_total`, ...)."""
    out = {}
    for obj in vars(metrics).values():
        if isinstance(obj, Counter):
            out[obj._name] = {f"{obj._name}_total", f"{obj._name}_created"}
        elif isinstance(obj, Histogram):
            out[obj._name] = {obj._name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif isinstance(obj, Gauge):
            out[obj._name] = {obj._name}
    return out
