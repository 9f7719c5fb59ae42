"""`kubectl apply` of resources whose names and paths would leave their claim, bucket, prefix or folder:
the real API server refuses each field with the CRD's CEL rule (generated from lathe.storage.paths) and
its message; paths that only look odd are accepted. No operator needed: nothing reaches it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
LOCATION = "a location is a path or scheme://name/path"
NAME = "one folder name: letters, digits"

BAD = {  # field path as the API server names it -> the value
    "spec.model.uri": "pvc://models/../../etc/passwd",
    "spec.data.validation.uri": "pvc://models//etc/passwd",  # absolute inside the claim
    "spec.data.calibration.uri": "s3://bucket/a/./b.npz",
    "spec.data.training.uri": "../t.npz",
    "spec.artifacts": "pvc://reports/a\\..\\b",
    "spec.publish.repository": "pvc://triton-models/..",
    "spec.publish.modelName": "..",
    "spec.publish.rollout.capture.uri": "pvc://captures/x/\u0000",
    "spec.tensorrt.timingCache": "/var/cache/../../etc",
}


def _apply(kubeconfig, namespace: str, spec: dict, dry_run: bool = False) -> subprocess.CompletedProcess:
    doc = {"apiVersion": "lathe.dev/v1alpha1", "kind": "ModelOptimization", "metadata": {"name": "paths"},
           "spec": spec}
    args = [str(KUBECTL), "--kubeconfig", str(kubeconfig), "-n", namespace, "apply", "-f", "-"]
    return subprocess.run(args + (["--dry-run=server"] if dry_run else []), input=json.dumps(doc),
                          capture_output=True, text=True, timeout=60)


def _spec(values: dict[str, str]) -> dict:
    spec = {"model": {"uri": "pvc://models/m.onnx"},
            "data": {"validation": {"uri": "pvc://models/v.npz"}, "calibration": {"uri": "s3://bucket/c.npz"},
                     "training": {"uri": "pvc://models/t.npz"}},
            "artifacts": "pvc://reports", "tensorrt": {"timingCache": "/var/cache/trt"},
            "publish": {"repository": "pvc://triton-models", "modelName": "digits",
                        "rollout": {"capture": {"enabled": True, "uri": "pvc://captures/x"}}}}
    for field, value in values.items():
        node = spec
        keys = field.split(".")[1:]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return spec


def test_the_api_server_refuses_each_path_that_could_escape(kubeconfig, namespace):
    p = _apply(kubeconfig, namespace, _spec(BAD))
    assert p.returncode != 0, p.stdout
    err = p.stderr
    for field in BAD:
        line = next((ln for ln in err.splitlines() if ln.startswith(f"* {field}: Invalid value: ")), None)
        assert line is not None, f"{field} not refused:\n{err}"
        assert (NAME if field == "spec.publish.modelName" else
                "a folder on the worker" if field == "spec.tensorrt.timingCache" else LOCATION) in line, (field, err)
    assert "created" not in p.stdout


def test_the_api_server_accepts_paths_that_only_look_odd(kubeconfig, namespace):
    odd = {"spec.model.uri": "pvc://models/.hidden/m..v2.onnx", "spec.data.validation.uri": "./data//v.npz",
           "spec.data.calibration.uri": "https://host:8443/d/c.npz?x=1", "spec.artifacts": "s3://bucket/reports/",
           "spec.publish.repository": "/srv/triton", "spec.publish.modelName": "digits.v2_a-b"}
    spec = _spec(odd)
    spec["data"]["calibration"]["sha256"] = "0" * 64
    p = _apply(kubeconfig, namespace, spec, dry_run=True)
    assert p.returncode == 0, p.stderr
    assert "created (server dry run)" in p.stdout
