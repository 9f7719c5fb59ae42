"""The real kopf operator, in-process, against the real API server of tests/conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import kopf
import pytest
from kubernetes import client

from lathe.api.spec import GROUP, PLURAL, VERSION
from tests.waiting import wait_for  # noqa: F401 - also imported from here by the operator tests

HERE = Path(__file__).resolve().parent


class OperatorThread:
    """kopf.operator() on its own event loop in a thread, stoppable and restartable."""

    def __init__(self, metrics_port: int):
        self.metrics_port = metrics_port
        self.thread: threading.Thread | None = None

    def start(self) -> OperatorThread:
        import lathe.controller.handlers  # noqa: F401 - registers into kopf's default registry

        self.stop_flag, ready = threading.Event(), threading.Event()
        self.error: BaseException | None = None

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                # Only the t-* namespaces of these tests: the end-to-end test runs its own operator.
                loop.run_until_complete(kopf.operator(
                    namespaces=["t-*"], standalone=True, stop_flag=self.stop_flag, ready_flag=ready))
            except BaseException as e:  # noqa: BLE001 - surfaced to the test through self.error
                self.error = e
            finally:
                loop.close()

        self.thread = threading.Thread(target=main, name="lathe-operator", daemon=True)
        self.thread.start()
        try:
            if not ready.wait(30):
                raise RuntimeError(f"operator did not become ready: {self.error!r}")
        except BaseException:  # not ready, or interrupted: it must not keep running behind the tests
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.thread:
            self.stop_flag.set()
            self.thread.join(30)
            assert not self.thread.is_alive(), "operator thread did not stop"
            self.thread = None


@pytest.fixture(scope="session")
def operator_env(kubeconfig):
    """Operator configuration for the tests: the scripted worker, short backoffs, a metrics port."""
    from e2e.controlplane.fixture import free_port

    port = free_port()
    env = {
        "LATHE_WORKER_COMMAND": f"{sys.executable} {HERE / 'scripted_worker.py'}",
        "LATHE_MAX_ATTEMPTS": "2",
        "LATHE_BACKOFF_SECONDS": "1",
        "LATHE_METRICS_PORT": str(port),
        "LATHE_ROLLOUT_INTERVAL": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def operator(operator_env, node_agent):
    op = OperatorThread(int(operator_env["LATHE_METRICS_PORT"])).start()
    try:
        yield op
    finally:
        op.stop()  # also the operator a test restarted (stop() of a stopped one does nothing)


@pytest.fixture()
def namespace(k8s_client):
    core = client.CoreV1Api(k8s_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    _delete_resources(client.CustomObjectsApi(k8s_client), name)
    core.delete_namespace(name)


def _delete_resources(api: client.CustomObjectsApi, ns: str, timeout: float = 30.0) -> None:
    """Delete the test's ModelOptimizations while the operator (if any) still runs, so that its finalizer comes
    off: left for the namespace's deletion, one can outlive the operator and keep the namespace terminating for
    good, in front of the next operator that watches every namespace (tests/rbac). What is still there after
    `timeout` (no operator ran) loses its finalizers here."""
    def left() -> list[dict]:
        return api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    for mo in left():
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, mo["metadata"]["name"])
    deadline = time.monotonic() + timeout
    while (items := left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for mo in items:
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, mo["metadata"]["name"],
                                               {"metadata": {"finalizers": None}},
                                               _content_type="application/merge-patch+json")
        except client.ApiException as e:
            if e.status != 404:  # gone meanwhile: what was wanted
                raise


class Resources:
    """Small helpers over the real API for ModelOptimization objects."""

    def __init__(self, api_client, namespace: str, tmp_path: Path):
        self.api = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ns = namespace
        self.tmp = tmp_path

    def script(self, name: str, **behaviour) -> str:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(behaviour))
        return str(path)

    def body(self, name: str, model_uri: str, **spec) -> dict:
        base = {"model": {"uri": model_uri}, "data": {"validation": {"uri": str(self.tmp / "val.npz")}}}
        base.update(spec)
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelOptimization",
                "metadata": {"name": name}, "spec": base}

    def create(self, body: dict) -> dict:
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def jobs(self, name: str) -> list:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"{GROUP}/name={name}").items

    def events(self, name: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.involved_object.name == name]

    def wait_phase(self, name: str, *phases: str, timeout: float = 60.0) -> dict:
        try:
            return wait_for(lambda: (s := self.status(name)).get("phase") in phases and s, timeout=timeout,
                            what=f"{name} phase in {phases}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {json.dumps(self.status(name), indent=1)}") from None


@pytest.fixture()
def mopt(k8s_client, namespace, tmp_path):
    return Resources(k8s_client, namespace, tmp_path)
