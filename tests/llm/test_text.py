"""Text data of task causal-lm (worker/llm/text_data.py): documents to windows, the coverage figures, and the
clear refusals of text that cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lathe.worker.errors import InvalidInput
from lathe.worker.llm.text_data import coverage, load_text, read_documents, read_prompts


def test_documents_become_fixed_windows_joined_by_eos(smollm2, tmp_path):
    docs = ["First document, about windows.", "Second one, a bit longer than the first document is."]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ids = smollm2.tok.encode(docs[0]) + [smollm2.tok.eos_id] + smollm2.tok.encode(docs[1])
    ts = load_text(path, smollm2.tok, 8, "validation")
    assert ts.windows.shape == (len(ids) // 8, 8)
    assert ts.windows.reshape(-1).tolist() == ids[: len(ids) // 8 * 8]  # the tail shorter than a window is dropped
    assert ts.scored_tokens == len(ts) * 7 and ts.doc_tokens == [len(smollm2.tok.encode(d)) for d in docs]
    assert len(load_text(path, smollm2.tok, 8, "validation", max_windows=1)) == 1


@pytest.mark.parametrize("content, match", [
    (b"", "no text"),
    (b"   \n\n", "no text"),
    (b"\xff\xfe not utf-8 \xff", "not UTF-8"),
])
def test_unusable_text_is_refused(tmp_path, content, match):
    path = tmp_path / "v.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=match):
        read_documents(path, "validation")


def test_jsonl_problems_name_the_line(tmp_path):
    bad = tmp_path / "v.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(InvalidInput, match="line 2: not JSON"):
        read_documents(bad, "validation")
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(InvalidInput, match="document 2: expected a string or an object with a \"text\" field"):
        read_documents(bad, "validation")
    npz = tmp_path / "v.npz"
    np.savez(npz, input_ids=np.zeros((2, 3)))
    with pytest.raises(InvalidInput, match="task causal-lm reads text"):
        read_documents(npz, "validation")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": ""}\n')
    with pytest.raises(InvalidInput, match="line 1: expected"):
        read_prompts(prompts)


def test_text_shorter_than_one_window_is_refused(smollm2, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Too short for a window.")
    with pytest.raises(InvalidInput, match=r"tokens, shorter than one window of 256 \(spec.task.windowTokens\)"):
        load_text(path, smollm2.tok, 256, "validation")


def test_coverage_reports_tokens_the_calibration_text_never_holds(smollm2, tmp_path):
    tok = smollm2.tok
    val = tmp_path / "v.txt"
    val.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    same = tmp_path / "c.txt"
    same.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    other = tmp_path / "o.txt"
    other.write_text("Zebras graze; quantum chromodynamics binds quarks. " * 30)
    v = load_text(val, tok, 16, "validation")
    covered = coverage(load_text(same, tok, 16, "calibration"), v, tok, same_set=False)
    assert covered.unseen_share == 0.0 and not any("never occur" in w for w in covered.warnings)
    apart = coverage(load_text(other, tok, 16, "calibration"), v, tok, same_set=False)
    assert apart.unseen_share > 0.5 and any("never occur in the calibration text" in w for w in apart.warnings)
    assert any("calibration text has" in w and "GPTQ/AWQ" in w for w in apart.warnings)  # < 2048 tokens
    assert any("is the validation text" in w for w in coverage(v, v, tok, same_set=True).warnings)
