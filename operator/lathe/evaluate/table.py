"""The plain-text candidate table `lathe run` and `lathe report` print."""

from __future__ import annotations

from ..api.status import CandidateResult, WorkerResult


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def speedup_text(c: CandidateResult) -> str:
    return c.speedup_text() or "-"


def tokens_text(c: CandidateResult) -> str:
    """'72.1 [65.2, 79.0]' decode tokens/s with its 95% interval, '-' when not measured."""
    if c.decode_tokens_per_s is None:
        return "-"
    if c.decode_tokens_per_s_low is None or c.decode_tokens_per_s_high is None:
        return f"{c.decode_tokens_per_s:.1f}"
    return f"{c.decode_tokens_per_s:.1f} [{c.decode_tokens_per_s_low:.1f}, {c.decode_tokens_per_s_high:.1f}]"


def lm_table(result: WorkerResult, reason_width: int = 70) -> str:
    """Task causal-lm: perplexity and its change, next-token agreement, first token, tokens/s, size."""
    lengths = list(result.baseline.first_token_ms)
    streams = result.baseline.streams
    rows = [("candidate", "verdict", "perplexity", "change", "agreement", *[f"TTFT@{n} ms" for n in lengths],
             "decode tok/s [95%]", "speedup [95%]", f"{streams} streams tok/s" if streams else "streams tok/s",
             "size MB", "peak MiB", "reason")]

    def row(c: CandidateResult):
        return (c.name + (" *" if c.name == result.winner else ""), c.verdict, _fmt(c.perplexity, ".3f"),
                "-" if c.perplexity_increase is None else f"{c.perplexity_increase:+.2%}", _fmt(c.token_agreement, ".3f"),
                *[_fmt(c.first_token_ms.get(n), ".1f") for n in lengths], tokens_text(c), speedup_text(c),
                _fmt(c.stream_tokens_per_s, ".1f"), "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.1f}",
                _fmt(c.peak_memory_mb, ".0f"), c.reason[:reason_width])

    rows += [row(result.baseline)] + [row(c) for c in result.candidates]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if result.speedup_basis:
        lines.append(f"speedup: {result.speedup_basis}")
    return "\n".join(lines)


def table(result: WorkerResult, reason_width: int = 70) -> str:
    if result.metric == "perplexity":
        return lm_table(result, reason_width)
    rows = [("candidate", "runtime", "verdict", result.metric, "drop", "p50 ms", "p99 ms", "speedup [95%]",
             "rounds", "size MB", "peak MiB", "reason")]

    def row(c: CandidateResult):
        emulated = "~" if c.accuracy_source == "emulated" and c.accuracy is not None else ""
        return (c.name + (" *" if c.name == result.winner else ""), c.runtime, c.verdict, _fmt(c.accuracy) + emulated,
                _fmt(c.accuracy_drop), _fmt(c.p50_ms, ".3f"), _fmt(c.p99_ms, ".3f"), speedup_text(c),
                _fmt(c.rounds, "d"), "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.2f}", _fmt(c.peak_memory_mb, ".1f"),
                c.reason[:reason_width])

    rows += [row(result.baseline)] + [row(c) for c in result.candidates]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if any(c.accuracy_source == "emulated" for c in result.candidates):
        lines.append("~ emulated: the TensorRT graph run on the CPU with ONNX Runtime (FP16/BF16 rounded), no engine")
    if result.speedup_basis:
        lines.append(f"speedup: {result.speedup_basis}; p99 '-' = too few timed calls for a 99th percentile")
    if result.tie_break is not None:
        tb = result.tie_break
        lines.append(f"tie on speed between {', '.join(tb.candidates)}: {tb.summary()}; "
                     + "; ".join(f"{st.rounds} rounds: " + ", ".join(f"{n} {v}" for n, v in st.speedups.items())
                                 for st in tb.steps))
    return "\n".join(lines)


def verdict_line(result: WorkerResult) -> str:
    w = result.winner_result()
    if w is None:
        return result.selection or "no candidate met the budget: nothing would be published"
    size = f", {w.size_bytes / 1e6:.2f} MB" if w.size_bytes is not None else ""
    drop = f", {result.metric} drop {w.accuracy_drop:.4f}" if w.accuracy_drop is not None else ""
    if result.metric == "perplexity" and w.perplexity_increase is not None:
        drop = f", perplexity {w.perplexity_increase:+.2%}, next-token agreement {w.token_agreement:.3f}"
    return f"winner: {w.name} — {speedup_text(w)} faster than the baseline{drop}{size}. {result.selection}"
