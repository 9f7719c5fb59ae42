"""Perplexity and next-token agreement on the real SmolLM2 export (worker/llm/metrics.py) against the same
figures computed directly from transformers' forward pass on the same windows; and the export's verification
(worker/llm/export.py), which must fail on a model that is not the checkpoint's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lathe.worker.errors import WorkerError
from lathe.worker.llm import export
from lathe.worker.llm.metrics import Scorer


@pytest.fixture(scope="module")
def torch_reference(smollm2, windows):
    """Per window, transformers' FP32 logits' NLL of each next token and their argmax."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm2.checkpoint.folder), dtype=torch.float32).eval()
    nll, top1 = [], []
    with torch.no_grad():
        for w in windows.windows:
            logits = model(torch.from_numpy(w[None, :])).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1)
            nll.append(-lp[torch.arange(len(w) - 1), torch.from_numpy(w[1:])].numpy())
            top1.append(lp.argmax(-1).numpy())
    return np.stack(nll), np.stack(top1)


def test_perplexity_and_agreement_match_a_direct_transformers_computation(smollm2, windows, torch_reference):
    nll, top1 = torch_reference
    ours = Scorer(smollm2.fp32).windows(windows.windows)
    assert ours.tokens == windows.windows.size - len(windows.windows) == nll.size
    ppl_ref = math.exp(nll.sum() / nll.size)
    assert abs(ours.perplexity / ppl_ref - 1) < 1e-4, (ours.perplexity, ppl_ref)
    assert np.allclose(ours.nll, nll.sum(1), rtol=1e-4)
    assert float((ours.top1 == top1).mean()) == 1.0  # the FP32 export picks transformers' next token everywhere
    assert ours.agreement(ours) == 1.0
    # agreement is a per-position comparison: one window shifted by a token agrees far less
    shifted = Scorer(smollm2.fp32).windows(np.roll(windows.windows, 1, axis=1))
    assert shifted.agreement(ours) < 0.5


def test_export_verification_passes_for_the_fp32_export(smollm2):
    doc = export.verify(smollm2.checkpoint.folder, smollm2.fp32, smollm2.tok)
    assert doc["prompts"] == len(export.VERIFY_PROMPTS) and doc["positions"] > 10
    assert doc["max_relative_logit_difference"] < export.VERIFY_RTOL


def test_export_verification_fails_for_a_model_that_is_not_the_checkpoint(smollm2, tmp_path):
    """The same graph with one MatMul's weight scaled: verification must say the export disagrees."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(smollm2.fp32 / "model.onnx"))
    name = next(n.input[1] for n in m.graph.node if n.name == "/model/layers.0/mlp/down_proj/MatMul")
    init = next(i for i in m.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 40.0, name))
    bad = tmp_path / "bad"
    bad.mkdir()
    onnx.save(m, str(bad / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    (bad / "genai_config.json").write_text((smollm2.fp32 / "genai_config.json").read_text())
    with pytest.raises(WorkerError, match="the ONNX export (disagrees with|'s logits differ from) transformers"):
        export.verify(smollm2.checkpoint.folder, bad, smollm2.tok)


def test_multiple_choice_scores_each_choice_by_log_likelihood(smollm2, tmp_path):
    import json

    from lathe.worker.llm.metrics import multiple_choice_accuracy
    from lathe.worker.llm.text_data import read_choices

    items = [("The capital of France is", [" Paris.", " a bicycle."]),
             ("def add(a, b):\n    return a", [" + b", " banana"]),
             ("One, two, three, four,", [" five", " purple"])]
    right, wrong = tmp_path / "right.jsonl", tmp_path / "wrong.jsonl"
    right.write_text("".join(json.dumps({"context": c, "choices": ch, "answer": 0}) + "\n" for c, ch in items))
    wrong.write_text("".join(json.dumps({"context": c, "choices": ch, "answer": 1}) + "\n" for c, ch in items))
    scorer = Scorer(smollm2.fp32)
    assert multiple_choice_accuracy(scorer, smollm2.tok, read_choices(right)) == 1.0
    assert multiple_choice_accuracy(scorer, smollm2.tok, read_choices(wrong)) == 0.0
