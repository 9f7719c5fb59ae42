"""The report outlives the pod (worker/keep_report.py): copies under spec.artifacts, the list of
copies in the result, a location that cannot be written costs a warning and nothing else, and the
whole result goes to the log in a block the operator can read back."""

from __future__ import annotations

import io
import json

from lathe.api import result_log
from lathe.api.spec import parse_spec
from lathe.api.status import CandidateResult, WorkerResult
from lathe.worker.keep_report import emit, keep


def _workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    wr = WorkerResult(metric="top1", baseline=CandidateResult(name="baseline", accuracy=0.98),
                      candidates=[CandidateResult(name="int8", accuracy=0.975, verdict="passed")], winner="int8",
                      report=str(work / "result.json"))
    (work / "result.json").write_text(wr.model_dump_json(by_alias=True))
    (work / "details.json").write_text(json.dumps({"benchmark": {"int8": {"ratios": [1.5, 1.6]}}}))
    (work / "report.html").write_text("<html>report</html>")
    return wr, work


def _spec(artifacts):
    return parse_spec({"model": {"uri": "m.onnx"}, "data": {"validation": {"uri": "v.npz"}}, "artifacts": artifacts})


def test_copies_land_under_the_resource_and_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("LATHE_RESOURCE", "team-a/digits")
    monkeypatch.setenv("LATHE_GENERATION", "3")
    wr, work = _workdir(tmp_path)
    copies = keep(_spec(str(tmp_path / "store")), wr, work)
    dest = tmp_path / "store" / "team-a" / "digits" / "generation-3"
    assert copies == [f"{tmp_path / 'store'}/team-a/digits/generation-3/{n}"
                      for n in ("result.json", "details.json", "report.html")]
    assert (dest / "report.html").read_text() == "<html>report</html>"
    kept = json.loads((dest / "result.json").read_text())
    assert kept["copies"] == copies and kept["winner"] == "int8"  # the copy says where its siblings are
    assert not list(dest.glob(".*.part"))


def test_an_unwritable_location_is_a_warning_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("LATHE_RESOURCE", raising=False)
    wr, work = _workdir(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the artifacts folder should be")
    copies = keep(_spec(str(blocker / "sub")), wr, work)
    assert copies == []
    assert any(w.startswith(f"report not kept in spec.artifacts {blocker / 'sub'}") for w in wr.warnings)
    assert json.loads((work / "result.json").read_text())["warnings"] == wr.warnings


def test_the_published_version_folder_is_listed(tmp_path, monkeypatch):
    monkeypatch.delenv("LATHE_RESOURCE", raising=False)
    wr, work = _workdir(tmp_path)
    version = tmp_path / "repo" / "digits" / "4"
    version.mkdir(parents=True)
    (version / "report.json").write_text("{}")
    (version / "report.html").write_text("<html/>")
    wr.published = {"repository": str(tmp_path / "repo"), "model_name": "digits", "version": 4, "flavour": "onnx",
                    "sha256": "0" * 64, "candidate": "int8", "path": str(version)}
    wr = WorkerResult.model_validate(wr.model_dump())
    wr.published.repository = "pvc://triton-models/"  # as the spec names it; the pod mounts it elsewhere
    assert keep(_spec(None), wr, work) == ["pvc://triton-models/digits/4/report.json",
                                           "pvc://triton-models/digits/4/report.html"]


def test_emit_prints_a_block_holding_result_details_and_budget(tmp_path):
    wr, work = _workdir(tmp_path)
    out = io.StringIO()
    emit(wr, work, {"max_accuracy_drop": 0.01}, out=out)
    doc = result_log.decode("worker log line\n" + out.getvalue())
    assert doc["result"]["winner"] == "int8" and doc["budget"] == {"max_accuracy_drop": 0.01}
    assert doc["details"]["benchmark"]["int8"]["ratios"] == [1.5, 1.6]
