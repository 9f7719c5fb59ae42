"""What the fan-out tests share: the operator in-process (as tests/operator runs it) under a given
environment, restored on every path, a fresh namespace per test (tests/operator's fixture), and a real
kube-scheduler against the test control plane."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from e2e.controlplane.fixture import (
    _spawn_kwargs,
    default_bin_dir,
    free_port,
    kill_process_group,
    register_log,
    write_kubeconfig,
)
from tests.operator.conftest import OperatorThread, namespace  # noqa: F401  (namespace: re-registered here)


@contextlib.contextmanager
def operator_with(env: dict[str, str]) -> Iterator[OperatorThread]:
    """The operator running with `env` (LATHE_METRICS_PORT among it) set; stopped and the environment put back
    on every path."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    op = OperatorThread(int(env["LATHE_METRICS_PORT"])).start()
    try:
        yield op
    finally:
        op.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def scheduler(control_plane, tmp_path_factory):
    """kube-scheduler against the test control plane; stopped on every path."""
    import subprocess

    work = tmp_path_factory.mktemp("scheduler")
    crt, key = control_plane.pki.issue("arch-scheduler", "system:kube-scheduler")
    kc = write_kubeconfig(work / "scheduler.kubeconfig", control_plane.url, control_plane.pki.ca_crt, crt, key,
                          "system:kube-scheduler")
    log = work / "kube-scheduler.log"
    register_log("kube-scheduler", log)
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(default_bin_dir() / "kube-scheduler"), f"--kubeconfig={kc}",
                                 f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                                 "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
                                 "--v=1"], stdout=out, stderr=subprocess.STDOUT, **_spawn_kwargs(work))
    try:
        yield proc
    finally:
        kill_process_group(proc)
        register_log("kube-scheduler", None)
