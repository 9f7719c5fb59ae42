"""Causal-LM canaries judged on their tokens, on the REAL Triton (genai flavour, llm_router_model.py):
clients stream from `<model>_router`; on mirrored requests both versions score stable's continuation
teacher-forced, and the analysis reads next-token agreement and the perplexity ratio from the counters.

- the router's figures equal the same scoring done offline with onnxruntime-genai, token for token, whether
  stable answered the client (its streamed tokens are the reference) or the canary did (stable generates the
  reference on the side);
- a canary with noise on its weights (loads, runs, answers) is rolled back at the shadow step by token
  agreement alone, and every client stream, before and after, is stable's greedy output;
- the INT4 build of the same model is promoted under a budget it meets, clients getting the greedy output of
  whichever version answered them.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from e2e.triton.generate import GenerateError, generate_stream, greedy
from lathe.api.spec import Analysis, Budget, Publish, Rollout, RolloutStep
from lathe.api.status import RolloutStatus
from lathe.rollout import RolloutExecutor, observe, start
from lathe.rollout.agreement import token_thresholds
from lathe.rollout.router import Compare, router_name
from lathe.serving import TritonControl, publish

PROMPTS = ["Return the number of", "Create a new dictionary with keys from", "The path of the", "def",
           "If the argument is", "Split the string"]
MAX_TOKENS = 16
STEPS = [RolloutStep(weight=0, mirror=100, pause_seconds=1, min_requests=0),
         RolloutStep(weight=50, mirror=50, pause_seconds=1, min_requests=3),
         RolloutStep(weight=100, pause_seconds=1, min_requests=3)]


def analysis(budget: Budget) -> Analysis:
    agree, ratio = token_thresholds(budget)
    # latency is not what these tests judge: a shadow step's canary answers only short scoring prefills
    return Analysis(max_error_rate=0.0, max_latency_ratio=20.0, min_agreement=agree, max_perplexity_ratio=ratio,
                    min_compared_requests=6, mirror_timeout_ms=30000)


def score_offline(folder, prompt: str, cont: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities of `cont`, top-1 at each of its positions), one prefill, in this process."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    ids = list(og.Tokenizer(model).encode(prompt))
    seq = np.asarray(ids + cont, dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(seq) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(seq)
    rows = np.asarray(gen.get_output("logits"), dtype=np.float64)[0][len(ids) - 1:-1]
    logz = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    return rows[np.arange(len(cont)), cont] - logz, rows.argmax(1)


def offline_figures(stable, canary, prompts, max_tokens=MAX_TOKENS):
    """What the router must count for `prompts`: tokens, agreeing positions, NLL under each version."""
    n = agree = nll_s = nll_c = 0.0
    for p in prompts:
        ref = greedy(stable, p, max_tokens)
        lp_s, top_s = score_offline(stable, p, ref)
        lp_c, top_c = score_offline(canary, p, ref)
        n += len(ref)
        agree += float((top_s == top_c).sum())
        nll_s -= float(lp_s.sum())
        nll_c -= float(lp_c.sum())
    return n, agree, nll_s, nll_c


def wait_mirror(tc, model, requests, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        m = observe(tc.metrics_text(), model).mirror.get((1, 2))
        if m is not None and m.requests + m.errors + m.timeouts >= requests:
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.1)


def two_versions(triton, repo, name, stable, canary):
    sp = Publish(repository=str(repo), model_name=name)
    publish(repo, name, stable, "onnxruntime-genai", sp, "fp32")
    publish(repo, name, canary, "onnxruntime-genai", sp, "canary")
    return TritonControl(triton.http_url, repo, metrics_url=triton.metrics_url)


def test_router_token_figures_equal_the_offline_scoring(triton, triton_repo, tiny_llm):
    name = "llm_fig"
    tc = two_versions(triton, triton_repo, name, tiny_llm["fp32"], tiny_llm["int4"])
    ex = RolloutExecutor(tc, name, compare=Compare(kind="tokens", timeout_ms=30000))
    try:
        tc.serve(name, [1, 2])
        # stable answers every client, every request judged
        ex.router.set_weights({1: 100, 2: 0}, mirror=100, pair=(1, 2))
        got = [generate_stream(triton.http_url, router_name(name),
                               {"text_input": p, "max_tokens": MAX_TOKENS, "stream": True}).ids for p in PROMPTS[:3]]
        assert got == [greedy(tiny_llm["fp32"], p, MAX_TOKENS) for p in PROMPTS[:3]]  # clients: stable's tokens
        # generation settings sent as parameters reach the model through the router; one the model refuses comes
        # back to the client with the model's own message
        one = generate_stream(triton.http_url, router_name(name), {"text_input": PROMPTS[0],
                                                                   "parameters": {"max_tokens": 3, "stream": True}})
        assert one.ids == got[0][:3] and one.events == 3
        with pytest.raises(GenerateError, match="max_tokens must be at least 1"):
            generate_stream(triton.http_url, router_name(name), {"text_input": PROMPTS[0],
                                                                 "parameters": {"max_tokens": 0}})
        m = wait_mirror(tc, name, 4)
        n, agree, nll_s, nll_c = offline_figures(tiny_llm["fp32"], tiny_llm["int4"], PROMPTS[:3])
        n3, agree3, nll_s3, nll_c3 = offline_figures(tiny_llm["fp32"], tiny_llm["int4"], PROMPTS[:1], 3)
        n, agree, nll_s, nll_c = n + n3, agree + agree3, nll_s + nll_s3, nll_c + nll_c3
        assert (m.requests, m.samples, m.agree, m.errors, m.timeouts) == (4, n, agree, 0, 0)
        assert math.isclose(m.nll_stable, nll_s, rel_tol=1e-4) and math.isclose(m.nll_canary, nll_c, rel_tol=1e-4)
        assert m.calls == 8  # two prefills per judged request (the refused request was never judged)
        assert agree < n  # INT4 is not FP32: the comparison is not trivially 1
        # the canary answers, stable generates the reference on the side: the same figures for that prompt
        ex.router.set_weights({1: 0, 2: 100}, mirror=100, pair=(1, 2))
        s = generate_stream(triton.http_url, router_name(name),
                            {"text_input": PROMPTS[3], "max_tokens": MAX_TOKENS, "stream": True})
        assert s.ids == greedy(tiny_llm["int4"], PROMPTS[3], MAX_TOKENS)  # the client got the canary's stream
        m2 = wait_mirror(tc, name, 5)
        n4, agree4, nll_s4, nll_c4 = offline_figures(tiny_llm["fp32"], tiny_llm["int4"], PROMPTS[3:4])
        assert (m2.samples - m.samples, m2.agree - m.agree, m2.calls - m.calls) == (n4, agree4, 3)
        assert math.isclose(m2.nll_canary - m.nll_canary, nll_c4, rel_tol=1e-4)
    finally:
        ex.router.remove()
        tc.unload(name)


class Streams(threading.Thread):
    """A client of the router that streams each prompt in turn and keeps every (prompt, tokens)."""

    def __init__(self, url, model):
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.got: list[tuple[str, list[int]]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set():
            p = PROMPTS[i % len(PROMPTS)]
            try:
                s = generate_stream(self.url, self.model, {"text_input": p, "max_tokens": MAX_TOKENS, "stream": True})
                self.got.append((p, s.ids))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(str(e)[:300])
            i += 1


def roll(triton, repo, name, stable, canary, spec: Rollout, timeout=300.0):
    tc = two_versions(triton, repo, name, stable, canary)
    ex = RolloutExecutor(tc, name, compare=Compare(kind="tokens", timeout_ms=spec.analysis.mirror_timeout_ms))
    tc.serve(name, [1])
    ex.router.set_weights({1: 100})
    client = Streams(triton.http_url, router_name(name))
    client.start()
    status = start(1, 2)
    deadline = time.monotonic() + timeout
    try:
        while status.state in ("Pending", "Progressing"):
            assert time.monotonic() < deadline, status
            status, _ = ex.step(spec, RolloutStatus.model_validate(status.model_dump(mode="json")))
            time.sleep(0.25)
    finally:
        client.halt.set()
        client.join(60)
    return tc, ex, status, client


@pytest.fixture(scope="module")
def want(tiny_llm):
    return {k: {p: greedy(tiny_llm[k], p, MAX_TOKENS) for p in PROMPTS} for k in ("fp32", "int4")}


def test_noisy_canary_is_rolled_back_by_token_agreement_while_clients_get_stable(triton, triton_repo, tiny_llm,
                                                                               want):
    name = "llm_noisy"
    spec = Rollout(steps=STEPS, analysis=analysis(Budget()))  # the budget's defaults: 0.95 and +2%
    tc, ex, status, client = roll(triton, triton_repo, name, tiny_llm["fp32"], tiny_llm["noisy"], spec)
    try:
        assert status.state == "RolledBack", status.model_dump()
        assert "step 1 (0%)" in status.reason and "next-token top-1 agrees with stable's" in status.reason
        judged = status.history[-1]
        assert judged.decision == "Failed" and judged.compared >= 6 and judged.agreement < 0.95
        assert judged.perplexity_ratio > 1.02  # recorded, though agreement alone decided
        assert judged.error_rate.get("2", 0.0) == 0.0 and "latency" not in status.reason
        assert judged.requests["2"] == 0 and judged.first_token_ms.get("1", 0) > 0  # no client got the canary
        assert not judged.bypassed
        # every client stream, during the shadow step and after the rollback, is stable's greedy output
        assert len(client.got) >= 6 and client.errors == [], client.errors[:3]
        assert all(ids == want["fp32"][p] for p, ids in client.got)
        assert tc.ready_versions(name) == [1] and ex.router.current() == {1: 100}
    finally:
        ex.router.remove()
        tc.unload(name)


def test_int4_canary_meeting_its_budget_is_promoted(triton, triton_repo, tiny_llm, want):
    name = "llm_int4_canary"
    # Round-to-nearest INT4 on a 2-layer model agrees with FP32 on about 0.9 of stable's next tokens (the
    # worker saw 0.70 on SmolLM2-135M): a budget that accepts that, from which the canary's floors derive.
    budget = Budget(min_token_agreement=0.85, max_perplexity_increase=0.05)
    spec = Rollout(steps=STEPS, analysis=analysis(budget))
    assert any(want["fp32"][p] != want["int4"][p] for p in PROMPTS)  # the two versions answer differently
    tc, ex, status, client = roll(triton, triton_repo, name, tiny_llm["fp32"], tiny_llm["int4"], spec)
    try:
        assert status.state == "Promoted", status.model_dump()
        scored = [h for h in status.history if h.compared]
        assert [h.step for h in scored] == [0, 1], status.history
        for h in scored:
            assert h.agreement >= 0.85 and h.perplexity_ratio <= 1.05 and "token agreement" in h.reason, h
        # speed and errors per version come from the client streams the router saw (ms per token, first token)
        split = status.history[1]
        assert split.requests["2"] >= 3 and set(split.first_token_ms) == {"1", "2"}, split
        assert split.latency_ms["ratio"] > 0 and "ms/token" in split.reason, split
        assert client.errors == [], client.errors[:3]
        # each client got the greedy stream of the version that answered it, some of them the canary's
        assert all(ids in (want["fp32"][p], want["int4"][p]) for p, ids in client.got)
        assert any(ids == want["int4"][p] != want["fp32"][p] for p, ids in client.got)
        assert tc.ready_versions(name) == [2] and ex.router.current() == {2: 100}
    finally:
        ex.router.remove()
        tc.unload(name)
