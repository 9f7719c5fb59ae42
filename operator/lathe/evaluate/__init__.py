"""Metrics, the budget gate, the benchmark harness, selection and the report. numpy only at import."""
