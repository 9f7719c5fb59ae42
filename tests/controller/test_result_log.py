"""The full result's trip through the worker's log (lathe.api.result_log): what the worker prints
is what the operator reads back, among other log lines, and a cut or altered block is refused."""

from __future__ import annotations

import random

from lathe.api import result_log


def _doc(n: int = 50) -> dict:
    rng = random.Random(0)  # incompressible figures, so the block spans several lines
    return {"result": {"metric": "top1", "winner": "int8"},
            "details": {"candidates": {f"c{i}": {"quantiles_ms": [rng.random() for _ in range(200)]}
                                       for i in range(n)}}}


def test_round_trip_among_other_log_lines():
    doc = _doc()
    lines = result_log.encode(doc)
    assert len(lines) > 4 and all(len(line) < 8100 for line in lines)
    log = "\n".join(["2026-12-01 INFO progress 10%", *lines, "2026-12-01 INFO winner int8"])
    assert result_log.decode(log) == doc


def test_the_last_complete_block_wins():
    old, new = {"result": {"winner": "old"}}, {"result": {"winner": "new"}}
    log = "\n".join(result_log.encode(old) + result_log.encode(new))
    assert result_log.decode(log) == new


def test_a_cut_or_altered_block_is_refused():
    lines = result_log.encode(_doc())
    assert result_log.decode("\n".join(lines[:-2] + lines[-1:])) is None  # a part missing
    assert result_log.decode("\n".join(lines[1:])) is None  # the start cut off by a tail read
    assert result_log.decode("\n".join(lines[:-1])) is None  # no end: the worker died mid-print
    body = lines[1].split(" ", 2)
    flipped = body[2][:-5] + ("A" if body[2][-5] != "A" else "B") + body[2][-4:]
    altered = [lines[0], f"{body[0]} {body[1]} {flipped}", *lines[2:]]
    assert result_log.decode("\n".join(altered)) is None  # sha256 mismatch
    assert result_log.decode("no block at all\n") is None


def test_oversized_details_are_shed_to_fit_a_config_map():
    doc = _doc(n=3000)  # ~5 MB of JSON, ~2.5 MB gzipped
    data = result_log.pack(doc)
    assert len(data) <= result_log.LIMIT
    back = result_log.unpack(data)
    assert back["result"] == doc["result"] and "candidates" not in back["details"] and back["trimmed"]
