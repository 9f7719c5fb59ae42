"""Quality of a causal LM on token windows, with ONNX Runtime over the model builder's graph.

- perplexity: exp of the mean negative log-likelihood of every scored token (token-weighted: each window's
  first token has no context and is not scored);
- next-token agreement: the share of scored positions where the candidate's top-1 next token, fed the same
  text (teacher-forced), equals the reference's (the FP32 model's);
- multiple choice: a choice's score is the log-likelihood of its tokens after the context; the question is
  right when the highest-scoring choice is the answer.

One forward pass per window gives all three: the window is the prompt, the KV cache starts empty
([batch, kv_heads, 0, head_size]: the `kv_cache_dim` axis is the head size, not 0)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class WindowScores:
    """Per window: the summed negative log-likelihood of its scored tokens, and the top-1 next token at
    every position but the last ([n, window - 1])."""
    nll: np.ndarray
    top1: np.ndarray
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.sum()) / self.tokens) if self.tokens else float("nan")

    def agreement(self, reference: WindowScores) -> float:
        return float((self.top1 == reference.top1).mean())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class Scorer:
    """A plain ONNX Runtime session over <model folder>/model.onnx (the folder's genai_config.json says
    the input names and the KV cache shape)."""

    def __init__(self, folder: Path, threads: int = 0):
        import onnxruntime as ort  # noqa: PLC0415

        folder = Path(folder)
        dec = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / dec.get("filename", "model.onnx")), so,
                                            providers=["CPUExecutionProvider"])
        self.kv_heads, self.head_size = int(dec["num_key_value_heads"]), int(dec["head_size"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.logits = dec.get("outputs", {}).get("logits", "logits")

    def feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        b, n = ids.shape
        out: dict[str, np.ndarray] = {}
        for name, meta in self.inputs.items():
            if name == "input_ids":
                out[name] = ids.astype(np.int64)
            elif name == "attention_mask":
                out[name] = np.ones((b, n), dtype=np.int64)
            elif name == "position_ids":
                out[name] = np.tile(np.arange(n, dtype=np.int64), (b, 1))
            elif name.startswith("past_key_values"):
                out[name] = np.zeros((b, self.kv_heads, 0, self.head_size), dtype=_ORT_FLOAT.get(meta.type, np.float32))
            else:
                raise ValueError(f"model input {name!r} is not one a causal LM from the model builder has")
        return out

    def run(self, ids: np.ndarray) -> np.ndarray:
        """Logits [batch, tokens, vocab] for a batch of token rows."""
        return np.asarray(self.session.run([self.logits], self.feeds(ids))[0])

    def windows(self, windows: np.ndarray) -> WindowScores:
        nll = np.zeros(len(windows))
        top1 = np.zeros((len(windows), windows.shape[1] - 1), dtype=np.int32)
        for i, w in enumerate(windows):
            lp = log_softmax(self.run(w[None, :])[0, :-1])
            nll[i] = -lp[np.arange(len(w) - 1), w[1:]].sum()
            top1[i] = lp.argmax(-1)
        return WindowScores(nll, top1, int(windows.shape[0] * (windows.shape[1] - 1)))

    def choice_logprob(self, context: list[int], choice: list[int]) -> float:
        ids = np.asarray([context + choice], dtype=np.int64)
        lp = log_softmax(self.run(ids)[0])
        start = len(context)
        return float(sum(lp[start - 1 + k, t] for k, t in enumerate(choice)))


def multiple_choice_accuracy(scorer: Scorer, tok, items) -> float:
    right = 0
    for it in items:
        ctx = tok.encode(it.context)
        scores = [scorer.choice_logprob(ctx, tok.encode(c)) for c in it.choices]
        right += int(int(np.argmax(scores)) == it.answer)
    return right / len(items)


def finite_logits(scorer: Scorer, ids: np.ndarray) -> bool:
    return bool(np.isfinite(scorer.run(ids)).all())
