"""Causal LMs published with the `genai` flavour and served by the REAL Triton (pytriton wheel, Python backend):
a decoupled model running onnxruntime-genai that streams tokens through Triton's generate extension.

- publish: the builder's model folder becomes version N+1 whole (model files, model.py, lathe.json, report), the
  config is decoupled and parses into Triton's ModelConfig; a version is never overwritten; the digest covers
  the weights (a folder whose graph is the same but weights differ is another version); a folder that is not
  one is refused before anything is written;
- serving: `/generate_stream` streams one event per token, and the streamed tokens of the published INT4 model
  equal, token for token, the greedy output of onnxruntime-genai run directly on the same folder; `/generate`
  returns the same in one answer; concurrent streams too; sampling with a temperature and a seed gives what
  the runtime gives directly with them; a teacher-forced scoring request returns the same log-probabilities as
  the model run directly; bad requests get a clear error.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from e2e.triton.generate import GenerateError, decode, generate, generate_stream, greedy
from lathe.api.spec import Publish
from lathe.serving import TritonControl, publish, verify
from lathe.serving.config import ConfigError, parse_config
from lathe.serving.repository import read_meta

PROMPTS = ["Return the number of", "Create a new dictionary with keys from", "The path of the", "def"]
MAX_TOKENS = 24


def test_publish_genai_version_layout_and_atomicity(tmp_path, tiny_llm):
    repo = tmp_path / "repo"
    sp = Publish(repository=str(repo), model_name="lm", flavour="genai")
    p1 = publish(repo, "lm", tiny_llm["int4"], "onnxruntime-genai", sp, "int4")
    assert (p1.version, p1.flavour) == (1, "genai")
    v1 = repo / "lm" / "1"
    assert sorted(f.name for f in v1.iterdir()) == sorted(
        [f.name for f in tiny_llm["int4"].iterdir()] + ["model.py", "lathe.json"])
    cfg = parse_config((repo / "lm" / "config.pbtxt").read_text())  # Triton's real schema
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled and cfg.max_batch_size == 0
    assert [i.name for i in cfg.input][:2] == ["text_input", "input_ids"] and all(i.optional for i in cfg.input)
    assert {o.name for o in cfg.output} == {"text_output", "output_ids", "token_logprobs", "argmax_ids"}
    assert list(cfg.version_policy.specific.versions) == [1]
    before = {f.name: f.read_bytes() for f in v1.iterdir()}

    # auto resolves to genai for the onnxruntime-genai runtime; a report goes beside the model
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"winner": "fp32"}))
    p2 = publish(repo, "lm", tiny_llm["fp32"], "onnxruntime-genai",
                 Publish(repository=str(repo), model_name="lm"), "fp32", report)
    assert (p2.version, p2.flavour) == (2, "genai") and (repo / "lm" / "2" / "report.json").exists()
    # the noisy model has the FP32 graph byte for byte, other weights: another digest, another version
    assert (tiny_llm["noisy"] / "model.onnx").read_bytes() == (tiny_llm["fp32"] / "model.onnx").read_bytes()
    p3 = publish(repo, "lm", tiny_llm["noisy"], "onnxruntime-genai", sp, "fp32")
    assert p3.version == 3 and p3.sha256 != p2.sha256
    # the same candidate and folder again: the existing version, not a fourth
    assert publish(repo, "lm", tiny_llm["noisy"], "onnxruntime-genai", sp, "fp32").version == 3
    assert {f.name: f.read_bytes() for f in v1.iterdir()} == before  # never overwritten
    assert all(verify(repo / "lm", v) for v in (1, 2, 3))
    assert read_meta(repo / "lm", 3)["file"] == "model.onnx"
    # publishing does not change what is served
    assert list(parse_config((repo / "lm" / "config.pbtxt").read_text()).version_policy.specific.versions) == [1]


def test_the_folder_s_files_given_one_by_one_are_published_the_same(tmp_path, tiny_llm):
    """What the worker passes: {name: path} of the folder's model files, its build cache's own files left out."""
    build = tmp_path / "build"
    shutil.copytree(tiny_llm["int4"], build)
    (build / "builder.log").write_text("the builder's output\n")
    (build / ".complete").write_text("{}")
    files = {f.name: f for f in build.iterdir() if f.name not in ("builder.log", ".complete")}
    p = publish(tmp_path / "repo", "lm", files, "onnxruntime-genai", None, "int4")
    whole = publish(tmp_path / "repo2", "lm", tiny_llm["int4"], "onnxruntime-genai", None, "int4")
    assert p.flavour == "genai" and p.sha256 == whole.sha256  # the same model, the same digest
    assert sorted(f.name for f in (tmp_path / "repo" / "lm" / "1").iterdir()) == sorted([*files, "model.py",
                                                                                         "lathe.json"])
    del files["model.onnx.data"]
    with pytest.raises(ConfigError, match=r"model.onnx.data"):
        publish(tmp_path / "repo", "lm", files, "onnxruntime-genai", None, "int4")


def test_a_folder_that_is_not_a_model_is_refused_before_anything_is_written(tmp_path, tiny_llm):
    repo = tmp_path / "repo"
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llm["int4"], broken)
    (broken / "model.onnx.data").unlink()
    with pytest.raises(ConfigError, match=r"model.onnx.data"):
        publish(repo, "lm", broken, "onnxruntime-genai", None, "broken", flavour="genai")
    (broken / "genai_config.json").unlink()
    with pytest.raises(ConfigError, match="genai_config.json"):
        publish(repo, "lm", broken, "onnxruntime-genai", None, "broken", flavour="genai")
    clash = tmp_path / "clash"
    shutil.copytree(tiny_llm["int4"], clash)
    (clash / "model.py").write_text("print('not ours')\n")
    with pytest.raises(ConfigError, match="model.py"):
        publish(repo, "lm", clash, "onnxruntime-genai", None, "clash", flavour="genai")
    assert not (repo / "lm").exists()


@pytest.fixture(scope="module")
def served_int4(triton, triton_repo, tiny_llm):
    name = "llm_int4"
    publish(triton_repo, name, tiny_llm["int4"], "onnxruntime-genai",
            Publish(repository=str(triton_repo), model_name=name), "int4")
    tc = TritonControl(triton.http_url, triton_repo, metrics_url=triton.metrics_url)
    tc.serve(name, [1])
    try:
        yield name
    finally:
        tc.unload(name)


def test_streamed_tokens_equal_direct_greedy_output(triton, tiny_llm, served_int4):
    for prompt in PROMPTS:
        want = greedy(tiny_llm["int4"], prompt, MAX_TOKENS)
        assert len(set(want)) > 3, want  # the tiny model says something, not one token over and over
        s = generate_stream(triton.http_url, served_int4, {"text_input": prompt, "max_tokens": MAX_TOKENS,
                                                           "stream": True})
        assert s.ids == want, (prompt, s.ids, want)
        assert s.events == len(want)  # one event per token
        assert s.text == decode(tiny_llm["int4"], want)
        # /generate: one answer holding the same tokens; parameters may come in the "parameters" object
        one = generate(triton.http_url, served_int4, {"text_input": prompt,
                                                      "parameters": {"max_tokens": MAX_TOKENS}})
        assert one["output_ids"] == want and one["text_output"] == s.text


def test_concurrent_streams_each_equal_their_greedy_output(triton, tiny_llm, served_int4):
    want = {p: greedy(tiny_llm["int4"], p, MAX_TOKENS) for p in PROMPTS}
    got, errors = {}, []

    def client(p):
        try:
            got[p] = generate_stream(triton.http_url, served_int4,
                                     {"text_input": p, "max_tokens": MAX_TOKENS, "stream": True}).ids
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=client, args=(p,)) for p in PROMPTS]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert errors == [] and got == want


def test_sampling_follows_temperature_and_seed_like_the_runtime_itself(triton, tiny_llm, served_int4):
    import onnxruntime_genai as og

    prompt = PROMPTS[0]
    model = og.Model(str(tiny_llm["int4"]))
    ids = og.Tokenizer(model).encode(prompt)

    def direct(seed):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + MAX_TOKENS, batch_size=1, do_sample=True, temperature=1.5,
                                  top_k=0, top_p=1.0, random_seed=seed)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out

    def served(seed):
        return generate_stream(triton.http_url, served_int4, {"text_input": prompt, "max_tokens": MAX_TOKENS,
                                                              "parameters": {"stream": True, "temperature": 1.5,
                                                                             "seed": seed}}).ids

    assert served(7) == direct(7) and served(8) == direct(8)
    assert served(7) != served(8) and greedy(tiny_llm["int4"], prompt, MAX_TOKENS) not in (served(7), served(8))


def test_teacher_forced_scoring_matches_the_model_run_directly(triton, tiny_llm, served_int4):
    import onnxruntime_genai as og

    prompt = PROMPTS[1]
    cont = greedy(tiny_llm["int4"], prompt, 16)
    r = generate(triton.http_url, served_int4, {"text_input": prompt, "score_ids": cont})
    lp, top = np.asarray(r["token_logprobs"]), np.asarray(r["argmax_ids"])
    # direct: one prefill of prompt + continuation, log-softmax of the rows that predict the continuation
    model = og.Model(str(tiny_llm["int4"]))
    ids = list(og.Tokenizer(model).encode(prompt))
    seq = np.asarray(ids + cont, dtype=np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(seq) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(seq)
    rows = np.asarray(gen.get_output("logits"), dtype=np.float64)[0][len(ids) - 1:-1]
    logz = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    np.testing.assert_allclose(lp, rows[np.arange(len(cont)), cont] - logz, rtol=1e-4, atol=1e-4)
    assert top.tolist() == rows.argmax(1).tolist()
    # the greedy continuation is, position by position, the model's own top-1 (prefill and decode agree)
    assert (top == np.asarray(cont)).mean() >= 0.9


def test_bad_requests_get_a_clear_error(triton, served_int4):
    with pytest.raises(GenerateError, match="no prompt"):
        generate(triton.http_url, served_int4, {"max_tokens": 4})
    with pytest.raises(GenerateError, match="context"):
        generate(triton.http_url, served_int4, {"text_input": "word " * 400})
    with pytest.raises(GenerateError, match="max_tokens"):
        generate(triton.http_url, served_int4, {"text_input": "x", "max_tokens": 0})
    with pytest.raises(GenerateError, match="chat template"):  # the tiny tokenizer has none
        generate(triton.http_url, served_int4, {"text_input": "x", "chat": True})
    with pytest.raises(GenerateError, match="vocabulary"):
        generate(triton.http_url, served_int4, {"text_input": "x", "score_ids": [10 ** 6]})
    # the server is still fine afterwards
    assert generate(triton.http_url, served_int4, {"text_input": "x", "max_tokens": 2})["output_ids"]
