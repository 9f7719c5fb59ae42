"""A local node agent: plays the kubelet (and, without kube-controller-manager, the Job controller)
on this machine, so that the test control plane (e2e/controlplane) runs real pods as local processes.

Where it is still used, and why the real node (e2e/node: containerd + kubelet + kube-scheduler,
the built images) does not replace it there:

* ``tests/operator`` and ``tests/rbac``: the worker is a scripted process
  (``tests/operator/scripted_worker.py``) chosen per test through ``LATHE_WORKER_COMMAND``: it
  must fail, hang or answer on demand, which would need an image rebuilt for every scripted
  behaviour; ``tests/controlplane`` tests the agent itself;
* ``tests/e2e``: the chain on object stores (S3 now; GCS and Azure beside it), with the worker from
  this checkout's ``.venv``. It needs no scripted worker and could run on the real node (an S3
  server on the node's bridge): it stays here until the object-store chains move together (issue
  21; the chain without a store moved to ``tests/cluster``);
* machines without root, containerd or cgroups (a developer laptop): it needs none of them.

It ignores ``image``, ``securityContext``, ``resources``, selectors and taints: anything that
depends on those is tested in ``tests/cluster`` on the real node. GPU scheduling is tested with
the real kube-scheduler (``tests/architectures``, ``tests/cluster``: pods Pending for want of
``nvidia.com/gpu``); ``--gpus N`` (fake ``nvidia.com/gpu`` capacity) is for trying GPU resources by
hand on a machine without one, and no test uses it.

What it does
------------
* Registers a Node (default name ``lathe-node``, label ``node.lathe.dev/agent=true``) with a Ready
  condition, addresses 127.0.0.1 (InternalIP) and the host name (Hostname), capacity (cpu/memory of
  this machine, ``--gpus N`` adds ``nvidia.com/gpu``) and ``daemonEndpoints.kubeletEndpoint.Port``
  (the log server below), and renews its Lease in ``kube-node-lease`` every 10 s.
* Binds every pending pod without ``spec.nodeName`` (there is no scheduler) whose schedulerName is
  ``default-scheduler`` to that node (pods/binding), ignoring resources, selectors and taints.
  With ``--no-bind`` it binds nothing: a real kube-scheduler places the pods (by the Node's labels,
  capacity and taints), and the agent runs those placed on its node. (It removes the
  ``node.kubernetes.io/not-ready`` taint the API server gives a new Node, as the node lifecycle
  controller would: the test control plane does not run that controller.) Several agents, each with its own
  ``--node-name``, ``--root`` and ``--label k=v`` (repeatable: added to the Node's labels), make a
  cluster of differently labelled Nodes on one machine.
* Runs the pods bound to the node: init containers one after another, then the containers in
  parallel, each as a local process group ``command + args`` (``$(VAR)`` expanded as Kubernetes
  does).  The ``image`` is ignored: processes run on this machine with the agent's environment
  (PATH gets the directory of the agent's Python interpreter, i.e. the venv's ``bin``, and
  ``--extra-path`` folders first, so ``python`` and ``lathe`` resolve to the venv), then the pod's
  ``env`` (plain values, ``$(VAR)`` references, ``valueFrom`` fieldRef for metadata.name /
  namespace / uid / labels / annotations, spec.nodeName / serviceAccountName, status.podIP /
  hostIP, configMapKeyRef, secretKeyRef) and ``envFrom``.  A container without ``command`` cannot
  run (there is no image entrypoint): it terminates with exit code 128, reason StartError.
  ``restartPolicy`` Never / OnFailure / Always is honoured (restart with a capped back-off).
* Volumes become local folders:

  ========================  ===========================================================
  persistentVolumeClaim     ``<root>/pvc/<namespace>/<claimName>`` (kept between pods)
  emptyDir / unknown kinds  ``<root>/pods/<ns>_<pod>_<uid8>/volumes/<volume>``
  hostPath                  the path itself
  configMap / secret        a folder with the keys written as files
  downwardAPI / projected   files for the fieldRefs, configMaps, secrets and the
                            serviceAccountToken (a TokenRequest token for the pod's SA)
  ========================  ===========================================================

  Mount paths are mapped by REWRITING: every occurrence of a container's ``mountPath`` (plus
  ``subPath``) in its command, args, env values and workingDir, as a whole path component
  (``/data`` matches ``/data`` and ``/data/x`` but not ``/database`` or ``/x/data``), is replaced by
  the local folder.  The same is done for the ``terminationMessagePath`` (default
  ``/dev/termination-log``), which maps to ``<pod dir>/<container>.termination-log``.  The process
  also gets ``NODEAGENT_ROOT`` (the pod folder), ``NODEAGENT_MOUNTS`` (JSON ``{mountPath: local
  folder}``) and ``NODEAGENT_TERMINATION_LOG`` so that programs which build paths themselves can
  map them.
* The service account: the pod's process gets ``KUBERNETES_SERVICE_HOST/PORT`` of the API server
  and, when the pod mounts a service-account token (automountServiceAccountToken), ``KUBECONFIG``
  pointing to ``<pod dir>/kubeconfig`` that authenticates with that token, so code calling
  ``kubernetes.config.load_config()`` acts with the pod's RBAC rights (the agent's own
  KUBECONFIG is never passed on).
* Reports status through the pods/status subresource (merge patch, guarded by the pod's uid):
  phase Pending -> Running -> Succeeded / Failed, conditions (PodScheduled, Initialized,
  ContainersReady, Ready, PodReadyToStartContainers), podIP/hostIP 127.0.0.1, and per container
  ``state`` running / terminated (exitCode, reason Completed/Error/StartError, message,
  startedAt/finishedAt), ``lastState``, ``restartCount``.  The terminated ``message`` is the
  content of the termination-message file (at most 4096 bytes, as the kubelet), or with
  ``terminationMessagePolicy: FallbackToLogsOnError`` and a failure, the last 80 lines / 2048 bytes
  of the log.
* stdout and stderr of each container go to ``<pod dir>/<container>.log``; the pod folder is
  recorded in the pod annotation ``nodeagent.lathe.dev/dir``; :func:`pod_log` returns the tail.
* Serves those logs as the kubelet does (:class:`KubeletServer`): HTTPS on 127.0.0.1 (a free port,
  or ``--kubelet-port``), self-signed certificate made with ``openssl`` at start,
  ``GET /containerLogs/{namespace}/{pod}/{container}`` with ``tailLines``, ``limitBytes`` and
  ``follow`` (``previous``, ``timestamps``, ``sinceSeconds``/``sinceTime`` ignored), 404 for unknown
  pods/containers, so ``kubectl logs`` / ``read_namespaced_pod_log`` work through the API server
  (which must prefer InternalIP addresses, as e2e/controlplane's does).  Callers are not
  authenticated: loopback only.
* A pod being deleted (deletionTimestamp) gets its process groups SIGTERMed, SIGKILLed after the
  grace period (at most 30 s), and is then removed (delete with grace period 0), as the kubelet
  does.

Job mirroring (``--manage-jobs``)
---------------------------------
Without kube-controller-manager nothing turns Jobs into pods, so the agent can do it: it creates
the pods of each Job (labels ``job-name``, ``controller-uid``, ``batch.kubernetes.io/job-name``,
``batch.kubernetes.io/controller-uid``, an ownerReference (controller) to the Job), up to
``parallelism`` at a time until ``completions`` succeed, replaces failed pods until more than
``backoffLimit`` failed (no back-off delay), honours ``activeDeadlineSeconds`` and ``suspend``, and
writes the Job status: startTime, active / ready / succeeded / failed counts, the conditions
SuccessCriteriaMet + Complete (with completionTime) or FailureTarget + Failed (reason
BackoffLimitExceeded / DeadlineExceeded), as the real controller does.  Without the garbage
collector it also deletes the pods of Jobs that are gone.  Modes:

* ``all``: every Job (use only when kube-controller-manager does NOT run);
* ``managed-by``: only Jobs with ``spec.managedBy: lathe.dev/nodeagent`` (the real Job
  controller skips those), safe next to kube-controller-manager;
* ``off``;  ``auto`` (default): ``managed-by`` when a controller manager is detected (the
  ``default`` ServiceAccount gets created within a few seconds), else ``all``.

Use
---
As a subprocess (what the pytest fixture ``node_agent`` does)::

    python e2e/nodeagent/agent.py --kubeconfig KUBECONFIG --root DIR [--node-name lathe-node]
        [--manage-jobs auto|all|managed-by|off] [--namespace NS ...] [--extra-path DIR ...]
        [--gpus N] [--kubelet-port PORT] [--label K=V ...] [--no-bind]

(SIGTERM/SIGINT stop it: children are killed, process group by process group, and the log server
closes), or through
:class:`AgentProcess` (start/stop, waits for readiness), or in-process with
:class:`NodeAgent` (``start()`` runs it in threads, ``stop()``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("nodeagent")

MANAGED_BY = "lathe.dev/nodeagent"
DIR_ANNOTATION = "nodeagent.lathe.dev/dir"
MERGE = "application/merge-patch+json"
MAX_TERMINATION_MESSAGE = 4096
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


# --------------------------------------------------------------------------- small helpers


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(obj: Any, path: str, default=None):
    """Attribute-or-key access along a dotted path (works for models and dicts)."""
    cur = obj
    for part in path.split("."):
        if cur is None:
            return default
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
    return default if cur is None else cur


_libc = None


def _pdeathsig() -> None:  # in the child, between fork and exec
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the agent
    except Exception:
        pass


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read()
    except OSError:
        return b""


def pod_log(pod, container: str | None = None, max_bytes: int = 8192) -> str:
    """Tail of a pod's container log written by the agent.

    ``pod``: a V1Pod, a pod dict, or the pod folder path.  ``container``: default the first
    container that has a log.  The folder comes from the ``nodeagent.lathe.dev/dir`` annotation."""
    if isinstance(pod, (str, Path)):
        folder = Path(pod)
    else:
        anns = _get(pod, "metadata.annotations", {}) or {}
        if DIR_ANNOTATION not in anns:
            return f"<no {DIR_ANNOTATION} annotation: the pod was not run by the node agent>"
        folder = Path(anns[DIR_ANNOTATION])
    logs = sorted(folder.glob("*.log"))
    if container:
        logs = [folder / f"{container}.log"]
    if not logs:
        return f"<no logs in {folder}>"
    return _tail_bytes(logs[0], max_bytes).decode("utf-8", "replace")


_VAR_RE = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


def expand_vars(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: $(VAR) -> value if defined, $$ -> $."""
    def repl(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _VAR_RE.sub(repl, s)


class PathMapper:
    """Rewrites container paths (mountPath, terminationMessagePath) to local paths inside strings."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping = {k.rstrip("/") or "/": v for k, v in mapping.items() if k and k != "/"}
        if self.mapping:
            alts = "|".join(re.escape(k) for k in sorted(self.mapping, key=len, reverse=True))
            self._re = re.compile(r"(?<![\w./-])(" + alts + r")(?![\w.-])")
        else:
            self._re = None

    def __call__(self, s: str) -> str:
        if self._re is None or not s:
            return s
        return self._re.sub(lambda m: self.mapping[m.group(1)], s)


# --------------------------------------------------------------------------- pod runner


class ContainerState:
    def __init__(self, spec, init: bool):
        self.spec = spec
        self.name = spec.name
        self.init = init
        self.state: dict = {"waiting": {"reason": "PodInitializing" if not init else "ContainerCreating"}}
        self.last_state: dict = {}
        self.restarts = 0
        self.started = False
        self.proc: subprocess.Popen | None = None

    def status(self) -> dict:
        running = "running" in self.state
        st = {
            "name": self.name,
            "image": self.spec.image or "",
            "imageID": "",
            "ready": running,
            "started": running,
            "restartCount": self.restarts,
            "state": self.state,
        }
        if self.proc is not None:
            st["containerID"] = f"nodeagent://{self.proc.pid}"
        if self.last_state:
            st["lastState"] = self.last_state
        return st


class PodRunner(threading.Thread):
    """Runs one pod's containers as local processes and reports its status."""

    def __init__(self, agent: NodeAgent, pod):
        super().__init__(daemon=True, name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}")
        self.agent = agent
        self.pod = pod
        self.ns, self.name, self.uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        self.dir = agent.root / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.stopping = threading.Event()
        self.grace = 30.0
        self.lock = threading.RLock()
        self.inits = [ContainerState(c, True) for c in (pod.spec.init_containers or [])]
        self.containers = [ContainerState(c, False) for c in pod.spec.containers]
        self.phase = "Pending"
        self.initialized = not self.inits
        self.start_time = now()
        self.done = threading.Event()
        self.volumes: dict[str, Path] = {}
        self.sa_kubeconfig: Path | None = None

    # ---- lifecycle
    def run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.agent.patch_pod(self.ns, self.name, {"metadata": {"annotations": {DIR_ANNOTATION: str(self.dir)}}})
            self.setup_volumes()
            self.report()
            policy = self.pod.spec.restart_policy or "Always"
            for c in self.inits:
                code = self.run_container(c, "OnFailure" if policy == "Always" else policy)
                if code != 0:
                    self.phase = "Failed"
                    self.report()
                    return
            self.initialized = True
            threads = [threading.Thread(target=self.run_container, args=(c, policy), daemon=True)
                       for c in self.containers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.containers]
            self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            self.report()
        except Exception:
            log.exception("pod %s/%s: runner failed", self.ns, self.name)
            self.phase = "Failed"
            with contextlib.suppress(Exception):
                self.report()
        finally:
            self.done.set()
            self.agent.kick()

    def kill(self, grace: float | None = None) -> None:
        """Stop all containers: SIGTERM the process groups, SIGKILL after ``grace`` seconds."""
        if grace is not None:
            self.grace = max(0.0, min(float(grace), 30.0))
        if self.stopping.is_set():
            return
        self.stopping.set()
        threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self) -> None:
        procs = [c.proc for c in self.inits + self.containers if c.proc is not None and c.proc.poll() is None]
        for p in procs:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in procs:
            _killpg(p.pid, signal.SIGKILL)

    # ---- volumes and environment
    def setup_volumes(self) -> None:
        for v in self.pod.spec.volumes or []:
            try:
                self.volumes[v.name] = self._volume(v)
            except Exception as e:  # a broken volume source must not kill the pod
                log.warning("pod %s/%s: volume %s: %s", self.ns, self.name, v.name, e)
                d = self.dir / "volumes" / v.name
                d.mkdir(parents=True, exist_ok=True)
                self.volumes[v.name] = d

    def _volume(self, v) -> Path:
        local = self.dir / "volumes" / v.name
        if v.persistent_volume_claim is not None:
            local = self.agent.root / "pvc" / self.ns / v.persistent_volume_claim.claim_name
        elif v.host_path is not None:
            local = Path(v.host_path.path)
            if (v.host_path.type or "") in ("", "DirectoryOrCreate"):
                local.mkdir(parents=True, exist_ok=True)
            return local
        local.mkdir(parents=True, exist_ok=True)
        if v.config_map is not None:
            self._write_items(local, self._configmap(v.config_map.name, v.config_map.optional),
                              v.config_map.items)
        elif v.secret is not None:
            self._write_items(local, self._secret(v.secret.secret_name, v.secret.optional), v.secret.items)
        elif v.downward_api is not None:
            for it in v.downward_api.items or []:
                if it.field_ref is not None:
                    self._write_file(local / it.path, self.field_value(it.field_ref.field_path))
        elif v.projected is not None:
            for src in v.projected.sources or []:
                if src.service_account_token is not None:
                    self._write_file(local / src.service_account_token.path, self.sa_token(
                        src.service_account_token.audience, src.service_account_token.expiration_seconds))
                if src.config_map is not None:
                    self._write_items(local, self._configmap(src.config_map.name, src.config_map.optional),
                                      src.config_map.items)
                if src.secret is not None:
                    self._write_items(local, self._secret(src.secret.name, src.secret.optional), src.secret.items)
                if src.downward_api is not None:
                    for it in src.downward_api.items or []:
                        if it.field_ref is not None:
                            self._write_file(local / it.path, self.field_value(it.field_ref.field_path))
        return local

    @staticmethod
    def _write_file(path: Path, data: str | bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    def _write_items(self, folder: Path, data: dict[str, bytes], items) -> None:
        if items:
            for it in items:
                if it.key in data:
                    self._write_file(folder / it.path, data[it.key])
        else:
            for k, val in data.items():
                self._write_file(folder / k, val)

    def _configmap(self, name: str, optional) -> dict[str, bytes]:
        cm = self.agent.get_or_none(self.agent.core.read_namespaced_config_map, name, self.ns)
        if cm is None:
            if optional:
                return {}
            raise RuntimeError(f"configmap {name} not found")
        out = {k: v.encode() for k, v in (cm.data or {}).items()}
        import base64
        out.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return out

    def _secret(self, name: str, optional) -> dict[str, bytes]:
        import base64
        sec = self.agent.get_or_none(self.agent.core.read_namespaced_secret, name, self.ns)
        if sec is None:
            if optional:
                return {}
            raise RuntimeError(f"secret {name} not found")
        out = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
        out.update({k: v.encode() for k, v in (sec.string_data or {}).items()})
        return out

    def field_value(self, path: str) -> str:
        md, spec = self.pod.metadata, self.pod.spec
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return ((md.labels if m.group(1) == "labels" else md.annotations) or {}).get(m.group(2), "")
        return {
            "metadata.name": md.name,
            "metadata.namespace": md.namespace,
            "metadata.uid": md.uid,
            "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in sorted((md.labels or {}).items())),
            "metadata.annotations": "\n".join(f'{k}="{v}"' for k, v in sorted((md.annotations or {}).items())),
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": spec.service_account_name or "default",
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }.get(path, "")

    def sa_token(self, audience: str | None = None, expiration: int | None = None) -> str:
        sa = self.pod.spec.service_account_name or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(int(expiration or 86400), 600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        try:
            tr = self.agent.core.create_namespaced_service_account_token(sa, self.ns, body)
        except Exception as e:
            log.warning("pod %s/%s: no token for serviceaccount %s: %s", self.ns, self.name, sa, e)
            return ""
        token = tr.status.token
        if not audience and token and self.sa_kubeconfig is None:
            self.sa_kubeconfig = self.dir / "kubeconfig"
            self.sa_kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "pod",
                "clusters": [{"name": "c", "cluster": {"server": self.agent.api_url,
                                                       **self.agent.ca_field}}],
                "users": [{"name": f"system:serviceaccount:{self.ns}:{sa}", "user": {"token": token}}],
                "contexts": [{"name": "pod", "context": {"cluster": "c", "namespace": self.ns,
                                                         "user": f"system:serviceaccount:{self.ns}:{sa}"}}],
            }, indent=2))
        return token

    def container_env(self, c, mapper: PathMapper, mounts: dict[str, str], term_log: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        pod_env: dict[str, str] = {}
        for ef in c.env_from or []:
            data: dict[str, bytes] = {}
            if ef.config_map_ref is not None:
                data = self._configmap(ef.config_map_ref.name, ef.config_map_ref.optional)
            elif ef.secret_ref is not None:
                data = self._secret(ef.secret_ref.name, ef.secret_ref.optional)
            for k, val in data.items():
                pod_env[(ef.prefix or "") + k] = val.decode("utf-8", "replace")
        for e in c.env or []:
            if e.value_from is None:
                pod_env[e.name] = expand_vars(e.value or "", {**pod_env})
                continue
            vf = e.value_from
            val = ""
            if vf.field_ref is not None:
                val = self.field_value(vf.field_ref.field_path)
            elif vf.config_map_key_ref is not None:
                val = self._configmap(vf.config_map_key_ref.name, vf.config_map_key_ref.optional).get(
                    vf.config_map_key_ref.key, b"").decode()
            elif vf.secret_key_ref is not None:
                val = self._secret(vf.secret_key_ref.name, vf.secret_key_ref.optional).get(
                    vf.secret_key_ref.key, b"").decode()
            pod_env[e.name] = val
        env.update({
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": self.agent.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.agent.api_port),
            "NODEAGENT_ROOT": str(self.dir),
            "NODEAGENT_MOUNTS": json.dumps(mounts),
            "NODEAGENT_TERMINATION_LOG": str(term_log),
        })
        if self.sa_kubeconfig is not None:
            env["KUBECONFIG"] = str(self.sa_kubeconfig)
        env.update({k: mapper(v) for k, v in pod_env.items()})
        front = [*self.agent.extra_path, os.path.dirname(sys.executable)]
        env["PATH"] = os.pathsep.join([*front, env.get("PATH", os.defpath)])
        return env

    # ---- running
    def run_container(self, c: ContainerState, policy: str) -> int:
        spec = c.spec
        term_path = spec.termination_message_path or "/dev/termination-log"
        term_log = self.dir / f"{c.name}.termination-log"
        mounts: dict[str, str] = {}
        for vm in spec.volume_mounts or []:
            base = self.volumes.get(vm.name)
            if base is None:
                continue
            local = base / vm.sub_path if vm.sub_path else base
            if vm.sub_path and not local.suffix:
                local.mkdir(parents=True, exist_ok=True)
            mounts[vm.mount_path] = str(local)
        mapper = PathMapper({**mounts, term_path: str(term_log)})
        log_path = self.dir / f"{c.name}.log"
        backoff = 0.5
        while True:
            code = self._run_once(c, mapper, mounts, term_log, log_path)
            if self.stopping.is_set() or self.agent.stopped.is_set():
                return code
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return code
            # restart in place, as the kubelet does
            c.last_state = c.state
            c.restarts += 1
            c.state = {"waiting": {"reason": "CrashLoopBackOff" if code else "Completed"}}
            self.report()
            if self.stopping.wait(backoff):
                return code
            backoff = min(backoff * 2, 10.0)

    def _run_once(self, c: ContainerState, mapper: PathMapper, mounts, term_log: Path, log_path: Path) -> int:
        spec = c.spec
        with contextlib.suppress(FileNotFoundError):
            term_log.unlink()
        term_log.touch()
        started = now()
        env = self.container_env(spec, mapper, mounts, term_log)
        argv = [mapper(expand_vars(a, env)) for a in [*(spec.command or []), *(spec.args or [])]]
        cwd = mapper(spec.working_dir) if spec.working_dir else str(self.dir)
        if not os.path.isdir(cwd):
            cwd = str(self.dir)
        if not spec.command:
            return self._terminated(c, 128, "StartError",
                                    "nodeagent: container has no command; images are not run", started)
        if self.stopping.is_set():
            return self._terminated(c, 137, "Error", "pod deleted before start", started)
        with open(log_path, "ab") as out:
            try:
                c.proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_pdeathsig,
                )
            except OSError as e:
                out.write(f"nodeagent: cannot start {argv!r}: {e}\n".encode())
                return self._terminated(c, 128, "StartError", f"cannot start {argv[0]!r}: {e}", started)
        self.agent.register_process(c.proc)
        with self.lock:
            c.started = True
            c.state = {"running": {"startedAt": started}}
            if not c.init:
                self.phase = "Running"
        self.report()
        code = c.proc.wait()
        _killpg(c.proc.pid, signal.SIGKILL)  # leftovers of the container's process group
        self.agent.unregister_process(c.proc)
        if code < 0:
            code = 128 - code  # killed by signal N -> 128+N
        msg = _tail_bytes(term_log, MAX_TERMINATION_MESSAGE).decode("utf-8", "replace")
        if not msg and code != 0 and (spec.termination_message_policy or "File") == "FallbackToLogsOnError":
            lines = _tail_bytes(log_path, 2048).decode("utf-8", "replace").splitlines()[-80:]
            msg = "\n".join(lines)
        return self._terminated(c, code, "Completed" if code == 0 else "Error", msg, started)

    def _terminated(self, c: ContainerState, code: int, reason: str, message: str, started: str) -> int:
        term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}
        if message:
            term["message"] = message
        if c.proc is not None:
            term["containerID"] = f"nodeagent://{c.proc.pid}"
        with self.lock:
            c.state = {"terminated": term}
        self.report()
        return code

    # ---- status
    def report(self) -> None:
        with self.lock:
            ready = self.phase == "Running" and all("running" in c.state for c in self.containers)
            t = now()

            def cond(typ, ok, reason=None):
                d = {"type": typ, "status": "True" if ok else "False", "lastProbeTime": None,
                     "lastTransitionTime": t}
                if reason and not ok:
                    d["reason"] = reason
                return d

            conds = [
                cond("PodReadyToStartContainers", True),
                cond("Initialized", self.initialized, "ContainersNotInitialized"),
                cond("Ready", ready, "PodCompleted" if self.phase in ("Succeeded", "Failed") else "ContainersNotReady"),
                cond("ContainersReady", ready, "PodCompleted" if self.phase in ("Succeeded", "Failed") else "ContainersNotReady"),
                cond("PodScheduled", True),
            ]
            # keep lastTransitionTime stable for unchanged conditions
            prev = {x["type"]: x for x in getattr(self, "_conds", [])}
            for cnd in conds:
                p = prev.get(cnd["type"])
                if p and p["status"] == cnd["status"]:
                    cnd["lastTransitionTime"] = p["lastTransitionTime"]
            self._conds = conds
            status = {
                "phase": self.phase,
                "conditions": conds,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "containerStatuses": [c.status() for c in self.containers],
            }
            if self.inits:
                status["initContainerStatuses"] = [c.status() for c in self.inits]
            self.agent.patch_pod_status(self.ns, self.name, self.uid, status)


# --------------------------------------------------------------------------- kubelet API: container logs


def read_log(path: Path, tail_lines: int | None = None, limit_bytes: int | None = None) -> tuple[bytes, int]:
    """``(data, end offset)`` of a log file as the kubelet cuts it: the last ``tail_lines`` lines
    (a final newline does not start another line), then at most ``limit_bytes`` bytes of those."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = 0 if tail_lines is None else _tail_start(f, size, tail_lines)
        f.seek(start)
        n = size - start if limit_bytes is None else min(limit_bytes, size - start)
        data = f.read(max(0, n))
    return data, start + len(data)


def _tail_start(f, size: int, lines: int, block: int = 65536) -> int:
    if lines <= 0:
        return size
    end = size
    if size:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            end = size - 1
    pos, count = end, 0
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        i = len(chunk)
        while (i := chunk.rfind(b"\n", 0, i)) >= 0:
            count += 1
            if count == lines:
                return pos + i + 1
    return 0


def make_serving_cert(folder: Path, node_name: str) -> tuple[Path, Path]:
    """A self-signed EC P-256 serving certificate (SANs 127.0.0.1, localhost, the node name), made
    with the ``openssl`` CLI (the venv has no ``cryptography``); ``(cert, key)``."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the 'openssl' command is needed for the node agent's serving certificate")
    folder.mkdir(parents=True, exist_ok=True)
    crt, key = folder / "kubelet.crt", folder / "kubelet.key"
    with contextlib.suppress(FileNotFoundError):
        key.unlink()
    os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # openssl keeps the mode
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "365", "-subj", f"/CN={node_name}",
         "-addext", f"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{node_name}",
         "-addext", "extendedKeyUsage=serverAuth"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"openssl could not make the node agent's serving certificate:\n{r.stderr}")
    return crt, key


class _HTTPError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class KubeletServer(ThreadingHTTPServer):
    """The part of the kubelet API the API server proxies ``pods/log`` to, over HTTPS on loopback.

    ``GET /containerLogs/{namespace}/{pod}/{container}`` answers the container's log file
    (``<pod dir>/<container>.log``: stdout and stderr interleaved, every run of a restarted container
    appended).  Query parameters: ``tailLines`` and ``limitBytes`` are honoured as by the kubelet
    (tail first, then the byte limit); ``follow=true`` streams what is appended while the container
    runs and ends when it stops (or the agent does); ``previous``, ``timestamps``, ``sinceSeconds``,
    ``sinceTime`` and ``stream`` are accepted and IGNORED (one file per container, no timestamps
    recorded, stdout and stderr not kept apart).  Unknown pod or container: 404 with a text body;
    a container that has not started yet: 400 ("waiting to start"), as the kubelet.  ``GET /healthz``:
    ``ok``.  Anything else: 404.

    Pods are looked up among those this agent runs, then among the pod folders under its root
    (pods that finished before the agent restarted).

    Security: it does NOT authenticate or authorize callers (no client certificate is asked for or
    checked, whatever the API server presents); it listens on 127.0.0.1 only, so anyone on this
    machine can read the logs of its pods.  The serving certificate is self-signed: the API server
    accepts it because the test control plane runs without ``--kubelet-certificate-authority``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, agent: NodeAgent, port: int = 0, cert_dir: Path | None = None):
        self.agent = agent
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        crt, key = make_serving_cert(cert_dir or agent.root / "kubelet-pki", agent.node_name)
        self.ctx.load_cert_chain(str(crt), str(key))
        super().__init__(("127.0.0.1", port), _KubeletHandler)
        self.port = self.server_address[1]
        self._thread: threading.Thread | None = None

    def finish_request(self, request, client_address) -> None:
        # TLS handshake in the connection's own thread, not in the accept loop.
        request.settimeout(30)
        try:
            conn = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.debug("kubelet API: TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def start(self) -> KubeletServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="nodeagent-kubelet-api")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()

    # ---- log lookup
    def find(self, ns: str, name: str, container: str) -> tuple[Path, PodRunner | None]:
        """The log file of a container and the runner of its pod (None for a pod from the folders)."""
        runners = [r for r in list(self.agent.runners.values()) if (r.ns, r.name) == (ns, name)]
        if runners:
            runner = next((r for r in reversed(runners) if not r.done.is_set()), runners[-1])
            if container not in [c.name for c in runner.inits + runner.containers]:
                raise _HTTPError(404, f"container {container!r} not found in pod {ns}/{name}\n")
            path = runner.dir / f"{container}.log"
            if not path.exists():
                raise _HTTPError(400, f"container {container!r} in pod {ns}/{name} is waiting to start\n")
            return path, runner
        folders = sorted((self.agent.root / "pods").glob(f"{ns}_{name}_*"), key=lambda p: p.stat().st_mtime)
        if not folders:
            raise _HTTPError(404, f"pod {ns}/{name} not found on node {self.agent.node_name}\n")
        path = folders[-1] / f"{container}.log"
        if not path.exists():
            raise _HTTPError(404, f"container {container!r} not found in pod {ns}/{name}\n")
        return path, None


class _KubeletHandler(BaseHTTPRequestHandler):
    server: KubeletServer
    protocol_version = "HTTP/1.0"  # one request per connection; a followed log ends with the connection

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("kubelet API %s: " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            if parts == ["healthz"]:
                return self._send(200, b"ok")
            if len(parts) != 4 or parts[0] != "containerLogs":
                raise _HTTPError(404, f"{url.path}: not served by the node agent (only /containerLogs/"
                                      "{namespace}/{pod}/{container} and /healthz)\n")
            self._logs(*parts[1:], parse_qs(url.query))
        except _HTTPError as e:
            self._send(e.code, str(e).encode())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            pass  # the caller went away

    def _logs(self, ns: str, name: str, container: str, query: dict[str, list[str]]) -> None:
        def number(key: str) -> int | None:
            if key not in query:
                return None
            try:
                value = int(query[key][-1])
            except ValueError:
                raise _HTTPError(400, f"{key}={query[key][-1]!r}: not an integer\n") from None
            if value < 0:
                raise _HTTPError(400, f"{key}={value}: must not be negative\n")
            return value

        tail_lines, limit_bytes = number("tailLines"), number("limitBytes")
        follow = (query.get("follow") or ["false"])[-1].lower() in ("true", "1")
        path, runner = self.server.find(ns, name, container)
        data, offset = read_log(path, tail_lines, limit_bytes)
        if not follow:
            return self._send(200, data)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        left = None if limit_bytes is None else limit_bytes - len(data)
        state = next((c for c in runner.inits + runner.containers if c.name == container), None) if runner else None
        stopped = self.server.agent.stopped
        while (left is None or left > 0) and state is not None:
            last = "running" not in state.state or runner.done.is_set()  # one more read after it stopped
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(65536 if left is None else min(left, 65536))
            if chunk:
                offset += len(chunk)
                if left is not None:
                    left -= len(chunk)
                self.wfile.write(chunk)
                self.wfile.flush()
                continue
            if last or stopped.wait(0.2):
                break


# --------------------------------------------------------------------------- the agent


class NodeAgent:
    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        root: str | Path | None = None,
        *,
        node_name: str = "lathe-node",
        manage_jobs: str = "auto",
        namespaces: list[str] | None = None,
        extra_path: list[str] | None = None,
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        bind: bool = True,
        resync: float = 2.0,
        kubelet_port: int = 0,
    ):
        """``kubelet_port``: the port of the HTTPS log server on 127.0.0.1 (0: a free one)."""
        from kubernetes import client, config

        self.root = Path(root or os.environ.get("NODEAGENT_ROOT_DIR") or "/tmp/lathe-nodeagent").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.node_name = node_name
        self.manage_jobs = manage_jobs
        self.namespaces = set(namespaces or [])
        self.extra_path = [str(Path(p).resolve()) for p in (extra_path or [])]
        self.gpus = gpus
        self.labels = dict(labels or {})
        self.bind = bind
        self.resync = resync
        self.kubelet_port = kubelet_port
        self.kubelet_server: KubeletServer | None = None
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)
        cfg.connection_pool_maxsize = 64
        self._cfg = cfg
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.api_url = cfg.host
        m = re.match(r"https?://\[?([^\]/]+?)\]?:(\d+)", cfg.host)
        self.api_host, self.api_port = (m.group(1), int(m.group(2))) if m else ("127.0.0.1", 443)
        self.ca_field = {"certificate-authority": cfg.ssl_ca_cert} if cfg.ssl_ca_cert else {"insecure-skip-tls-verify": True}
        self.stopped = threading.Event()
        self._kick = threading.Event()
        self.runners: dict[str, PodRunner] = {}
        self._processes: set[subprocess.Popen] = set()
        self._plock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._job_expect: dict[str, dict[str, float]] = {}  # job uid -> {pod name: created at}
        self._finalized: set[str] = set()

    # ---- API helpers
    @staticmethod
    def get_or_none(fn, *args, **kw):
        from kubernetes.client.exceptions import ApiException
        try:
            return fn(*args, **kw)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch_pod(self, ns: str, name: str, body: dict) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.patch_namespaced_pod(name, ns, body, _content_type=MERGE)
        except ApiException as e:
            if e.status != 404:
                log.warning("patch pod %s/%s: %s %s", ns, name, e.status, e.reason)

    def patch_pod_status(self, ns: str, name: str, uid: str, status: dict) -> None:
        from kubernetes.client.exceptions import ApiException
        body = {"metadata": {"uid": uid}, "status": status}
        for attempt in range(5):
            try:
                self.core.patch_namespaced_pod_status(name, ns, body, _content_type=MERGE)
                return
            except ApiException as e:
                if e.status in (404, 409):  # gone, or replaced by another pod of that name
                    return
                log.warning("pod %s/%s status patch failed (%s): %s", ns, name, e.status, e.body)
                if e.status == 422:
                    return
            except Exception as e:  # connection trouble: retry a few times
                log.warning("pod %s/%s status patch: %s", ns, name, e)
            time.sleep(0.2 * (attempt + 1))

    def register_process(self, p: subprocess.Popen) -> None:
        with self._plock:
            self._processes.add(p)
        if self.stopped.is_set():
            _killpg(p.pid, signal.SIGKILL)

    def unregister_process(self, p: subprocess.Popen) -> None:
        with self._plock:
            self._processes.discard(p)

    def kick(self) -> None:
        self._kick.set()

    # ---- node
    def register_node(self) -> None:
        import platform
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{mem // 1024}Ki", "pods": "110",
                    "ephemeral-storage": "100Gi"}
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
                  "node.lathe.dev/agent": "true", **self.labels}
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.create_node({"apiVersion": "v1", "kind": "Node",
                                   "metadata": {"name": self.node_name, "labels": labels}})
        except ApiException as e:
            if e.status != 409:
                raise
        self.node_status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": socket.gethostname()}],
            # Where the API server proxies pods/log to (the kubelet's port; reached by InternalIP).
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
                "osImage": "lathe node agent", "containerRuntimeVersion": "nodeagent://1",
                "kubeletVersion": "v0.0.0-nodeagent", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": labels["kubernetes.io/arch"],
            },
        }
        self.heartbeat()
        self._untaint()

    def _untaint(self) -> None:
        """The API server's TaintNodesByCondition admission gives a new Node `node.kubernetes.io/not-ready`,
        which the node lifecycle controller removes once the Node is Ready; the test control plane runs no such
        controller, and a kube-scheduler (``--no-bind``) would never place a pod here. The agent posts Ready at
        once, so it removes the taint itself."""
        node = self.core.read_node(self.node_name)
        taints = [t for t in (node.spec.taints or []) if t.key != "node.kubernetes.io/not-ready"]
        if len(taints) != len(node.spec.taints or []):
            self.core.patch_node(self.node_name, {"spec": {"taints": [self.api.sanitize_for_serialization(t)
                                                                      for t in taints] or None}})

    def heartbeat(self) -> None:
        from kubernetes.client.exceptions import ApiException
        t = now()
        conds = [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node agent is posting ready status"},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": ""},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": ""},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": ""},
        ]
        for c in conds:
            c["lastHeartbeatTime"] = t
            c["lastTransitionTime"] = getattr(self, "_node_since", t)
        self._node_since = getattr(self, "_node_since", t)
        self.core.patch_node_status(self.node_name, {"status": {**self.node_status, "conditions": conds}},
                                    _content_type=MERGE)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40,
                          "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            self.coord.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": lease["spec"]},
                                              _content_type=MERGE)
        except ApiException as e:
            if e.status == 404:
                with contextlib.suppress(ApiException):
                    self.coord.create_namespaced_lease("kube-node-lease", lease)

    def _heartbeat_loop(self) -> None:
        while not self.stopped.wait(10):
            try:
                self.heartbeat()
            except Exception as e:
                log.warning("heartbeat: %s", e)

    # ---- main loop
    def _resolve_job_mode(self) -> str:
        if self.manage_jobs != "auto":
            return self.manage_jobs
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.get_or_none(self.core.read_namespaced_service_account, "default", "default") is not None:
                return "managed-by"
            time.sleep(0.5)
        return "all"

    def start(self) -> NodeAgent:
        """Start the log server, register the node and run in background threads (returns at once).

        On failure everything started so far is stopped again."""
        try:
            self.kubelet_server = KubeletServer(self, self.kubelet_port).start()
            self.kubelet_port = self.kubelet_server.port
            self.register_node()
            self.job_mode = self._resolve_job_mode()
            log.info("node %s registered; root %s; job mirroring: %s; logs served on https://127.0.0.1:%d",
                     self.node_name, self.root, self.job_mode, self.kubelet_port)
            self.sync()
        except BaseException:
            self.stop()
            raise
        for target in (self._loop, self._heartbeat_loop, self._watch_pods, self._watch_jobs):
            t = threading.Thread(target=target, daemon=True, name=f"nodeagent-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop the loops and the log server, and kill every container process group (SIGTERM,
        SIGKILL after ``grace``).  Safe to call more than once."""
        self.stopped.set()
        self._kick.set()
        server, self.kubelet_server = self.kubelet_server, None
        if server is not None:
            server.stop()
        for r in list(self.runners.values()):
            r.stopping.set()
        with self._plock:
            procs = list(self._processes)
        for p in procs:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            _killpg(p.pid, signal.SIGKILL)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self._kick.wait(self.resync)
            if self.stopped.is_set():
                return
            time.sleep(0.05)  # coalesce bursts of events
            self._kick.clear()
            try:
                self.sync()
            except Exception as e:
                log.warning("sync failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))

    def _watch(self, fn) -> None:
        from kubernetes import watch
        while not self.stopped.is_set():
            w = watch.Watch()
            try:
                for _ in w.stream(fn, timeout_seconds=30, _request_timeout=60):
                    self._kick.set()
                    if self.stopped.is_set():
                        w.stop()
                        return
            except Exception as e:
                if not self.stopped.is_set():
                    log.debug("watch %s: %s", fn.__name__, e)
                    self.stopped.wait(1)

    def _watch_pods(self) -> None:
        self._watch(self.core.list_pod_for_all_namespaces)

    def _watch_jobs(self) -> None:
        if self.job_mode != "off":
            self._watch(self.batch.list_job_for_all_namespaces)

    def _wanted(self, ns: str) -> bool:
        return not self.namespaces or ns in self.namespaces

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces().items
        seen = set()
        for pod in pods:
            md, spec = pod.metadata, pod.spec
            if not self._wanted(md.namespace):
                continue
            phase = pod.status.phase if pod.status else None
            if not spec.node_name:
                if self.bind and md.deletion_timestamp is None and \
                        (spec.scheduler_name or "default-scheduler") == "default-scheduler":
                    self._bind(pod)
                continue
            if spec.node_name != self.node_name:
                continue
            seen.add(md.uid)
            runner = self.runners.get(md.uid)
            if md.deletion_timestamp is not None:
                if runner is not None and not runner.done.is_set():
                    runner.kill(md.deletion_grace_period_seconds)
                elif md.uid not in self._finalized:
                    self._final_delete(pod)
                continue
            if runner is None and phase not in ("Succeeded", "Failed"):
                runner = PodRunner(self, pod)
                self.runners[md.uid] = runner
                runner.start()
        for uid, runner in list(self.runners.items()):
            if uid not in seen:  # force-deleted
                runner.kill(0)
                if runner.done.is_set():
                    del self.runners[uid]
        if self.job_mode != "off":
            self.sync_jobs(pods)

    def _bind(self, pod) -> None:
        from kubernetes.client.exceptions import ApiException
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.metadata.name, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            # _preload_content=False: some client versions fail to deserialize the returned Status.
            r = self.core.create_namespaced_pod_binding(pod.metadata.name, pod.metadata.namespace, body,
                                                        _preload_content=False)
            status = getattr(r, "status", 201)
            if isinstance(status, int) and status >= 300:  # newer clients do not raise without preload
                if status not in (404, 409):
                    log.warning("bind %s/%s: HTTP %s %s", pod.metadata.namespace, pod.metadata.name, status,
                                getattr(r, "data", b"")[:500])
                return
            log.info("bound pod %s/%s", pod.metadata.namespace, pod.metadata.name)
            self._kick.set()
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("bind %s/%s: %s %s", pod.metadata.namespace, pod.metadata.name, e.status, e.body)

    def _final_delete(self, pod) -> None:
        from kubernetes.client.exceptions import ApiException
        self._finalized.add(pod.metadata.uid)
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}},
                grace_period_seconds=0)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("delete %s/%s: %s", pod.metadata.namespace, pod.metadata.name, e.status)
        self.runners.pop(pod.metadata.uid, None)

    # ---- Job mirroring
    def _manages(self, job) -> bool:
        if self.job_mode == "all":
            return True
        return self.job_mode == "managed-by" and getattr(job.spec, "managed_by", None) == MANAGED_BY

    def sync_jobs(self, pods) -> None:
        jobs = self.batch.list_job_for_all_namespaces().items
        by_owner: dict[str, list] = {}
        for p in pods:
            for ref in p.metadata.owner_references or []:
                if ref.kind == "Job" and ref.controller:
                    by_owner.setdefault(ref.uid, []).append(p)
        job_uids = set()
        for job in jobs:
            job_uids.add(job.metadata.uid)
            if self._wanted(job.metadata.namespace) and self._manages(job):
                try:
                    self.sync_job(job, by_owner.get(job.metadata.uid, []))
                except Exception as e:
                    log.warning("job %s/%s: %s", job.metadata.namespace, job.metadata.name, e)
        if self.job_mode == "all":  # no garbage collector: remove pods of deleted Jobs
            for uid, owned in by_owner.items():
                if uid in job_uids:
                    continue
                for p in owned:
                    if p.metadata.deletion_timestamp is None and self._wanted(p.metadata.namespace):
                        with contextlib.suppress(Exception):
                            self.core.delete_namespaced_pod(p.metadata.name, p.metadata.namespace)
        for uid in list(self._job_expect):
            if uid not in job_uids:
                del self._job_expect[uid]

    def sync_job(self, job, pods) -> None:
        from kubernetes.client.exceptions import ApiException
        md, spec, st = job.metadata, job.spec, job.status
        conds = {c.type: c.status for c in ((st.conditions if st else None) or [])}
        if conds.get("Complete") == "True" or conds.get("Failed") == "True":
            return
        if md.deletion_timestamp is not None:
            return
        succeeded = sum(1 for p in pods if p.status and p.status.phase == "Succeeded")
        failed = sum(1 for p in pods if p.status and p.status.phase == "Failed")
        live = [p for p in pods if not (p.status and p.status.phase in ("Succeeded", "Failed"))
                and p.metadata.deletion_timestamp is None]
        names = {p.metadata.name for p in pods}
        expect = self._job_expect.setdefault(md.uid, {})
        for n in list(expect):  # created by us, not yet in the list: count them as active
            if n in names or time.monotonic() - expect[n] > 30:
                del expect[n]
        active = len(live) + len(expect)
        ready = sum(1 for p in live if any(c.type == "Ready" and c.status == "True"
                                           for c in ((p.status.conditions if p.status else None) or [])))
        completions = spec.completions
        parallelism = 1 if spec.parallelism is None else spec.parallelism
        backoff_limit = 6 if spec.backoff_limit is None else spec.backoff_limit
        start_time = st.start_time if st and st.start_time else None
        t = now()
        status: dict[str, Any] = {"active": active, "ready": ready, "succeeded": succeeded, "failed": failed}
        if start_time is None and not spec.suspend:
            status["startTime"] = t
        start_iso = status.get("startTime") or (start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if start_time else t)

        def condition(typ, reason, message):
            return {"type": typ, "status": "True", "reason": reason, "message": message,
                    "lastProbeTime": t, "lastTransitionTime": t}

        finish = None
        target = completions if completions is not None else 1
        if succeeded >= target and (completions is not None or not live):
            finish = [condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                      condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]
            status["completionTime"] = t
        elif failed > backoff_limit:
            finish = [condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                      condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]
        elif spec.active_deadline_seconds and start_time is not None and \
                (datetime.now(UTC) - start_time).total_seconds() > spec.active_deadline_seconds:
            finish = [condition("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"),
                      condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]
        if finish is not None:
            for p in live:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(p.metadata.name, p.metadata.namespace)
            status.update(active=0, ready=0, conditions=[*self._conditions(job), *finish])
            status.setdefault("startTime", start_iso)
            expect.clear()
        elif not spec.suspend:
            want = min(parallelism, (target - succeeded) if completions is not None else parallelism) - active
            if completions is None and succeeded > 0:
                want = 0
            for _ in range(max(0, want)):
                name = self._create_job_pod(job)
                if name:
                    expect[name] = time.monotonic()
                    active += 1
            status["active"] = active
        self.batch.patch_namespaced_job_status(md.name, md.namespace, {"status": status}, _content_type=MERGE)

    @staticmethod
    def _conditions(job) -> list[dict]:
        out = []
        for c in ((job.status.conditions if job.status else None) or []):
            d = {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for k, attr in (("lastProbeTime", "last_probe_time"), ("lastTransitionTime", "last_transition_time")):
                v = getattr(c, attr, None)
                d[k] = v.strftime("%Y-%m-%dT%H:%M:%SZ") if v else None
            out.append(d)
        return out

    def _create_job_pod(self, job) -> str | None:
        tmpl = self.api.sanitize_for_serialization(job.spec.template)
        md = tmpl.get("metadata") or {}
        labels = dict(md.get("labels") or {})
        labels.update({
            "job-name": job.metadata.name,
            "batch.kubernetes.io/job-name": job.metadata.name,
            "controller-uid": job.metadata.uid,
            "batch.kubernetes.io/controller-uid": job.metadata.uid,
        })
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": f"{job.metadata.name}-",
                "namespace": job.metadata.namespace,
                "labels": labels,
                "annotations": md.get("annotations") or {},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
                                     "uid": job.metadata.uid, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": tmpl.get("spec") or {},
        }
        created = self.core.create_namespaced_pod(job.metadata.namespace, pod)
        log.info("job %s/%s: created pod %s", job.metadata.namespace, job.metadata.name, created.metadata.name)
        return created.metadata.name


# --------------------------------------------------------------------------- subprocess wrapper


class AgentProcess:
    """Runs the agent as a subprocess (own process group); ``start()`` waits until the node is registered."""

    def __init__(self, kubeconfig, root, *, node_name: str = "lathe-node", manage_jobs: str = "auto",
                 extra_args: list[str] | None = None, python: str | None = None):
        self.kubeconfig = str(kubeconfig)
        self.root = Path(root)
        self.node_name = node_name
        self.manage_jobs = manage_jobs
        self.extra_args = list(extra_args or [])
        self.python = python or sys.executable
        self.log_path = self.root / "agent.log"
        self.ready_file = self.root / "agent.ready"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        args = [self.python, str(Path(__file__).resolve()), "--kubeconfig", self.kubeconfig,
                "--root", str(self.root), "--node-name", self.node_name, "--manage-jobs", self.manage_jobs,
                "--ready-file", str(self.ready_file), *self.extra_args]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node agent exited with {self.proc.returncode}; log {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node agent not ready after {timeout}s; log {self.log_path}")
            time.sleep(0.1)
        return self

    def stop(self, grace: float = 10.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # the agent kills its containers' process groups
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.proc = None

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        found = sorted((self.root / "pods").glob(f"{namespace}_{name}_*"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def pod_log(self, namespace: str, name: str, container: str | None = None, max_bytes: int = 8192) -> str:
        d = self.pod_dir(namespace, name)
        return pod_log(d, container, max_bytes) if d else f"<no folder for pod {namespace}/{name}>"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--root", default=None, help="folder for pod folders, PVCs and logs")
    ap.add_argument("--node-name", default="lathe-node")
    ap.add_argument("--manage-jobs", choices=["auto", "all", "managed-by", "off"], default="auto")
    ap.add_argument("--namespace", action="append", default=[], help="only handle these namespaces")
    ap.add_argument("--extra-path", action="append", default=[], help="folder put first on the containers' PATH")
    ap.add_argument("--gpus", type=int, default=0, help="advertise nvidia.com/gpu capacity")
    ap.add_argument("--label", action="append", default=[], metavar="K=V", help="a label of the Node (repeatable)")
    ap.add_argument("--no-bind", action="store_true",
                    help="bind no pod: a kube-scheduler places them; run those placed on this node")
    ap.add_argument("--kubelet-port", type=int, default=0,
                    help="port of the HTTPS container-log server on 127.0.0.1 (default 0: a free one)")
    ap.add_argument("--ready-file", default=None, help="touched once the node is registered")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    agent = NodeAgent(a.kubeconfig, a.root, node_name=a.node_name, manage_jobs=a.manage_jobs,
                      namespaces=a.namespace, extra_path=a.extra_path, gpus=a.gpus, kubelet_port=a.kubelet_port,
                      labels=dict(kv.split("=", 1) for kv in a.label), bind=not a.no_bind)
    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()  # stops what it started if it fails
    try:
        if a.ready_file:
            Path(a.ready_file).write_text(str(os.getpid()))
        while not done.wait(1):
            pass
        log.info("stopping")
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
