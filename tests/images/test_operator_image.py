"""The operator image imports everything `lathe operator` can import (found from the sources by
e2e/images/imports.py, lazy imports included: tritonclient.grpc for rollouts) and none of the worker's
heavy packages, which are not even installed."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid

from kubernetes import client

from e2e.controlplane.fixture import free_port
from e2e.images.engine import LOCKED_DOWN
from e2e.images.imports import WORKER_PACKAGES, operator_imports
from lathe.api.spec import GROUP, PLURAL, VERSION
from tests.waiting import wait_for

SCRIPT = """
import importlib, importlib.util, json, sys
mods, stmts, heavy = json.loads(sys.argv[1])
failed = {}
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:
        failed[m] = repr(e)
for s in stmts:
    try:
        exec(s, {})
    except Exception as e:
        failed[s] = repr(e)
print(json.dumps({"failed": failed, "loaded": [h for h in heavy if h in sys.modules],
                  "installed": [h for h in heavy if importlib.util.find_spec(h)]}))
"""


def test_operator_image_imports_all_the_operator_needs(docker, images):
    mods, stmts = operator_imports()
    assert "lathe.controller.handlers" in mods and "lathe.rollout.router" in mods
    assert "from tritonclient.grpc import model_config_pb2" in stmts and "import tritonclient.http" in stmts
    p = docker.run(images["operator"], "-c", SCRIPT, json.dumps([mods, stmts, list(WORKER_PACKAGES)]),
                   entrypoint="/opt/lathe/bin/python")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert not out["failed"], f"imports failing in the operator image: {out['failed']}"
    assert not out["loaded"], f"the operator's imports pulled in {out['loaded']}"
    assert not out["installed"], f"worker packages in the operator image: {out['installed']}"


def test_operator_command_line_starts(docker, images):
    p = docker.run(images["operator"], "operator", "--help")
    assert p.returncode == 0 and "--namespace" in p.stdout, (p.stdout, p.stderr[-2000:])


def test_operator_image_reconciles_against_the_api_server(docker, images, kubeconfig, k8s_client, tmp_path):
    """`lathe operator` from the image (locked down, host network) against the real API server: a new
    ModelOptimization gets its worker Job (the image the operator names) and a status; liveness answers."""
    ns, name = f"img-{uuid.uuid4().hex[:8]}", "digits"
    core, batch, custom = client.CoreV1Api(k8s_client), client.BatchV1Api(k8s_client), client.CustomObjectsApi(k8s_client)
    core.create_namespace({"metadata": {"name": ns}})
    metrics, health = free_port(), free_port()
    own = tmp_path / "kubeconfig"  # the admin kubeconfig is root's 0600: a copy the operator's uid may read
    shutil.copy(kubeconfig, own)
    os.chown(own, 65532, 65532)
    run = docker("run", "-d", "--name", f"lathe-operator-{ns}", *LOCKED_DOWN, "--network", "host",
                 "-v", f"{own}:/etc/lathe/kubeconfig:ro", "-e", "KUBECONFIG=/etc/lathe/kubeconfig",
                 "-e", f"LATHE_METRICS_PORT={metrics}", images["operator"],
                 "operator", "--namespace", ns, f"--liveness=http://127.0.0.1:{health}/healthz")
    cid = run.stdout.strip()
    try:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization", "metadata": {"name": name},
                "spec": {"model": {"uri": "/models/digits.onnx"}, "data": {"validation": {"uri": "/data/val.npz"}}}}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        jobs = wait_for(lambda: batch.list_namespaced_job(ns, label_selector=f"{GROUP}/name={name}").items,
                        timeout=90, what="the worker Job")
        pod = jobs[0].spec.template.spec
        assert pod.containers[0].image == images["worker"]
        st = wait_for(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status"),
                      timeout=30, what="a status")
        assert st["phase"] in ("Pending", "Optimizing"), st
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert b"lathe_" in r.read()
    except BaseException:
        print(docker("logs", "--tail", "60", cid, check=False).stderr[-6000:])
        raise
    finally:
        docker("rm", "-f", cid, check=False)
        core.delete_namespace(ns)

