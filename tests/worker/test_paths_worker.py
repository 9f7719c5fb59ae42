"""The worker and `lathe run` refuse names and paths that leave their claim or folder (storage.paths):
the malformed ones when the spec is parsed, the ones that only escape once resolved (a symlink inside a
claim pointing out of it) before any work, each with exit code 2, InvalidInput and the field named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lathe.cli import main
from lathe.worker.main import worker_main
from lathe.worker.samples import spec_for

LATHE = Path(sys.executable).with_name("lathe")


@pytest.fixture()
def claims(tmp_path, monkeypatch, digits):
    """$LATHE_PVC_ROOT with a claim `models` holding the digits model and data, a symlink `escape` in it
    pointing at a folder outside every claim, and a claim `out` for reports and the repository."""
    root, outside = tmp_path / "pvc", tmp_path / "outside"
    models, out = root / "models", root / "out"
    for d in (models, out, outside):
        d.mkdir(parents=True)
    for key in ("model", "validation", "calibration"):
        shutil.copy(digits[key], models / Path(digits[key]).name)
        shutil.copy(digits[key], outside / Path(digits[key]).name)
    (models / "escape").symlink_to(outside)
    (out / "escape").symlink_to(outside)
    monkeypatch.setenv("LATHE_PVC_ROOT", str(root))
    monkeypatch.delenv("LATHE_PVC_MOUNTS", raising=False)
    monkeypatch.setenv("LATHE_CACHE", str(tmp_path / "cache"))
    return root, outside


def _spec(digits, **over) -> dict:
    obj = spec_for(digits, candidates=[{"name": "opt", "passes": [{"type": "graph-optimize"}]}])
    obj["model"]["uri"] = f"pvc://models/{Path(digits['model']).name}"
    obj["data"] = {"validation": {"uri": f"pvc://models/{Path(digits['validation']).name}"},
                   "calibration": {"uri": f"pvc://models/{Path(digits['calibration']).name}"}}
    obj.update(over)
    return obj


def _worker(tmp_path, obj) -> tuple[int, dict]:
    (tmp_path / "spec.json").write_text(json.dumps(obj))
    term = tmp_path / "term.json"
    code = worker_main(["--spec", str(tmp_path / "spec.json"), "--workdir", str(tmp_path / "work"),
                        "--termination-log", str(term), "--bench-seconds", "1"])
    return code, json.loads(term.read_text())


def test_worker_refuses_a_model_whose_symlink_leaves_the_claim(digits, claims, tmp_path):
    obj = _spec(digits)
    obj["model"]["uri"] = f"pvc://models/escape/{Path(digits['model']).name}"  # the API server accepts it
    code, doc = _worker(tmp_path, obj)
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "fetch", doc
    assert doc["error"].startswith("model: pvc://models/escape/") and "outside" in doc["error"], doc
    assert str(claims[0] / "models") in doc["error"]


@pytest.mark.parametrize("field, value, named", [
    ("artifacts", "pvc://out/escape/reports", "spec.artifacts"),
    ("publish", {"repository": "pvc://out/escape", "modelName": "digits"}, "spec.publish.repository"),
])
def test_worker_refuses_written_locations_that_leave_the_claim_before_any_work(digits, claims, tmp_path,
                                                                                field, value, named):
    code, doc = _worker(tmp_path, _spec(digits, **{field: value}))
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "spec", doc
    assert doc["error"].startswith(f"{named}: ") and "outside" in doc["error"], doc
    assert not (tmp_path / "work" / "candidates").exists()  # refused before intake, not after the search
    assert sorted(p.name for p in claims[1].iterdir()) == sorted(Path(digits[k]).name for k in
                                                                 ("model", "validation", "calibration"))


def test_worker_refuses_a_model_folder_that_is_a_symlink_out_of_the_repository(digits, claims, tmp_path):
    repo = claims[0] / "out" / "repo"
    repo.mkdir()
    (repo / "digits").symlink_to(claims[1])
    code, doc = _worker(tmp_path, _spec(digits, publish={"repository": "pvc://out/repo", "modelName": "digits"}))
    assert code == 2 and doc["stage"] == "spec" and doc["error"].startswith("spec.publish.modelName: "), doc
    assert "outside" in doc["error"] and not (claims[1] / "config.pbtxt").exists()


@pytest.mark.parametrize("model_name", [".", ".."])
def test_worker_refuses_dot_model_names(digits, claims, tmp_path, model_name):
    code, doc = _worker(tmp_path, _spec(digits, publish={"repository": "pvc://out", "modelName": model_name}))
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "spec", doc
    assert "spec.publish.modelName" in doc["error"] and "not a name" in doc["error"], doc
    assert list((claims[0] / "out").iterdir()) == [claims[0] / "out" / "escape"]  # nothing written


def test_lathe_run_refuses_a_bad_file_with_exit_2(tmp_path, digits):
    """The console script on a resource file a user got wrong: every bad field named, nothing run."""
    obj = spec_for(digits)
    obj["model"]["uri"] = "../" + Path(digits["model"]).name
    obj["data"]["validation"]["uri"] = f"pvc://models/./{Path(digits['validation']).name}"
    obj["publish"] = {"repository": str(tmp_path / "repo"), "modelName": ".."}
    doc = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "bad"}, "spec": obj}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    p = subprocess.run([str(LATHE), "run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2, p.stdout + p.stderr
    assert "invalid spec" in p.stderr
    for field, why in (("model.uri", "'..' segment"), ("data.validation.uri", "'.' segment"),
                       ("publish.modelName", "not a name")):
        line = next((ln for ln in p.stderr.splitlines() if ln.strip() == field), None)
        assert line is not None and why in p.stderr.split(field, 1)[1].splitlines()[1], (field, p.stderr)
    assert not (tmp_path / "repo").exists() and not (tmp_path / "out" / "candidates").exists()


def test_lathe_run_refuses_a_claim_path_that_escapes_once_resolved(digits, claims, tmp_path, capsys):
    obj = _spec(digits)
    obj["data"]["validation"]["uri"] = f"pvc://models/escape/{Path(digits['validation']).name}"
    (tmp_path / "esc.yaml").write_text(yaml.safe_dump(obj))
    assert main(["run", str(tmp_path / "esc.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad input at fetch: validation data: pvc://models/escape/" in err and "outside" in err, err


def test_a_causal_lm_worker_refuses_a_repository_that_leaves_its_claim_before_loading_anything(claims, tmp_path):
    """The causal-LM stages (worker/llm/pipeline.py) check where they write first, like every task: nothing is
    dequantized or exported for a spec that could not publish."""
    from lathe.worker.llm.example import make_text

    text = make_text(claims[0] / "models" / "text")
    obj = {"model": {"uri": "pvc://models/smollm2.gguf", "format": "gguf"}, "task": {"type": "causal-lm"},
           "data": {"validation": {"uri": f"pvc://models/text/{text['validation'].name}"}},
           "publish": {"repository": "pvc://out/escape/repo", "modelName": "smollm2"}}
    code, doc = _worker(tmp_path, obj)
    assert code == 2 and doc["kind"] == "InvalidInput" and doc["stage"] == "spec", doc
    assert doc["error"].startswith("spec.publish.repository: ") and "outside" in doc["error"], doc
    assert not (tmp_path / "work" / "candidates").exists() and not any(claims[1].glob("repo*"))
