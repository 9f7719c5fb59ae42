"""A real Kubernetes node for the tests: containerd's CRI, the kubelet and kube-scheduler.

Pods run as real containers (runc), from real images, with the kubelet enforcing what the API
says: ``securityContext`` (user, read-only root, capabilities, seccomp), ``resources`` (cgroups),
volumes (PersistentVolumes as hostPath, emptyDir, projected service-account tokens), probes and
termination messages. The scheduler places pods by requests, nodeSelector and taints. Facts and
errors behind each setting are in ``shared/recipes/containers/README.md``.

Layout on this machine (one real node at a time: the bridge and its addresses are fixed)

* bridge ``lathe0`` with ``198.18.0.1/24`` (node IP, pods' gateway; a benchmarking range, not a
  private one) and ``198.18.1.1/32``: the ClusterIP of the ``kubernetes`` Service (service range
  ``198.18.1.0/24``), relayed to the API server by :class:`~e2e.node.service_proxy.ServiceProxy`
  (no kube-proxy here: it would rewrite this machine's firewall);
* containerd with its own socket and state under the work folder; its image store (root) is
  cached in ``$LATHE_NODE_CACHE`` (default ``~/.cache/lathe/node``) so the multi-GB worker image
  is imported once per content key, not on every run;
* the kubelet: cgroup v1 (``failCgroupV1: false``), cgroupfs, client certificate
  ``system:node:<name>`` from the control plane's CA, webhook authn/authz, image GC off (the
  images cannot be pulled again).

:meth:`Node.stop` undoes everything on every path, failed starts included: pods deleted, kubelet
and containerd stopped, leftover tasks killed, mounts under the work folder unmounted, the
``kubepods`` cgroups removed, the three sysctls the kubelet changes restored, the bridge deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from e2e.controlplane.fixture import (
    ControlPlane,
    ControlPlaneError,
    _spawn_kwargs,
    default_bin_dir,
    free_port,
    kill_process_group,
    register_log,
    rss_mib,
    wait_ready,
    write_kubeconfig,
)

from .oci import write_image
from .service_proxy import ServiceProxy

HERE = Path(__file__).resolve().parent
BRIDGE = "lathe0"
NODE_IP = "198.18.0.1"
POD_SUBNET = "198.18.0.0/24"
SERVICE_CIDR = "198.18.1.0/24"
SERVICE_IP = "198.18.1.1"
PAUSE_REF = "lathe.dev/pause:e2e"
CNI_BIN = Path("/usr/lib/cni")
# Changed by the kubelet at start (it sets what it needs for its OOM and panic handling).
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
UNIX_SOCKET_MAX = 104  # containerd refuses a longer socket path (the portable sun_path size)
# Paths the kubelet creates whatever its --root-dir says (hard-coded in it).
KUBELET_FIXED_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"))
INSTALL = "apt-get install -y --no-install-recommends containerd runc containernetworking-plugins"


class NodeError(RuntimeError):
    pass


def node_cache() -> Path:
    return Path(os.environ.get("LATHE_NODE_CACHE", Path.home() / ".cache" / "lathe" / "node"))


def _run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NodeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def build_pause_image(cache: Path) -> Path:
    """The sandbox image: the static pause binary from e2e/node/pause in a one-layer OCI archive."""
    src = HERE / "pause"
    key = hashlib.sha256(b"".join((src / f).read_bytes() for f in ("main.go", "go.mod"))).hexdigest()[:16]
    out = cache / f"pause-{key}.tar"
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise NodeError("'go' is needed to build the pause image (e2e/node/pause)")
    binary = cache / f"pause-{key}.bin"
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOWORK="off", GOTOOLCHAIN="local", GOFLAGS="-trimpath")
    r = subprocess.run(["go", "build", "-ldflags", "-s -w", "-o", str(binary), "."], cwd=src, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise NodeError(f"go build of the pause binary failed: {r.stderr}")
    write_image(out, PAUSE_REF, {"pause": (binary.read_bytes(), 0o755)}, ["/pause"])
    binary.unlink()
    return out


class Node:
    def __init__(self, control_plane: ControlPlane, workdir: Path, *, name: str = "lathe-node-1",
                 images: dict[str, Path] | None = None, labels: dict[str, str] | None = None,
                 start_timeout: float = 120.0):
        """``images``: {ref: archive} to make present in containerd (docker-save or OCI tars)."""
        if control_plane.service_cidr != SERVICE_CIDR or not control_plane.kubelet_client:
            raise NodeError("the control plane needs node_control_plane_kwargs() for a real node")
        self.cp, self.name = control_plane, name
        self.workdir = Path(workdir)
        self.images = dict(images or {})
        self.labels = {"node.lathe.dev/real": "true", **(labels or {})}
        self.start_timeout = start_timeout
        self.cache = node_cache()
        self.sock = self.workdir / "containerd" / "containerd.sock"
        if len(f"{self.sock}.ttrpc") > UNIX_SOCKET_MAX:  # containerd's own words for it are a log line deep
            raise NodeError(f"work folder {self.workdir} is too long for containerd's socket {self.sock}.ttrpc "
                            f"(unix socket paths are limited to {UNIX_SOCKET_MAX} bytes): use a shorter one")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self._sysctls: dict[str, str] = {}
        self._fixed_paths_absent: list[Path] = []
        self._bridge = False
        self._proxy: ServiceProxy | None = None
        self._lock_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Node:
        try:
            self._start()
        except BaseException as e:
            try:
                self.stop()
            except NodeError as cleanup:  # keep the start's own error first
                e.add_note(str(cleanup))
            raise
        return self

    def _start(self) -> None:
        self._check_prerequisites()
        self._take_machine_lock()
        reap_stale()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._sysctls = {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS}
        self._fixed_paths_absent = [p for p in KUBELET_FIXED_PATHS if not p.exists()]
        self._make_bridge()
        self._proxy = ServiceProxy((SERVICE_IP, 443), ("127.0.0.1", self.cp.port)).start()
        self._start_containerd()
        t0 = time.monotonic()
        self._import_images()
        self.timings["image_import_s"] = time.monotonic() - t0
        self._start_scheduler()
        t0 = time.monotonic()
        self._start_kubelet()
        self._wait_ready()
        self.timings["kubelet_to_ready_s"] = time.monotonic() - t0

    def stop(self) -> None:
        """Leave the machine as it was; every step runs even when an earlier one failed."""
        steps = [self._delete_pods, lambda: self._kill("kubelet"), self._kill_tasks,
                 lambda: self._kill("containerd"), lambda: self._kill("kube-scheduler"),
                 self._unmount_all, self._remove_cgroups, self._restore_sysctls, self._remove_fixed_paths,
                 self._delete_bridge,
                 self._stop_proxy, self._release_machine_lock]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - keep undoing; report at the end
                errors.append(f"{getattr(step, '__name__', 'step')}: {e}")
        for name in list(self.logs):
            register_log(name, None)
        if errors:
            raise NodeError("node teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- set-up steps ------------------------------------------------------------------------
    def _check_prerequisites(self) -> None:
        bins = default_bin_dir()
        self.kubelet_bin, self.scheduler_bin = bins / "kubelet", bins / "kube-scheduler"
        missing = [str(p) for p in (self.kubelet_bin, self.scheduler_bin) if not os.access(p, os.X_OK)]
        if missing:
            raise NodeError(f"{missing} not built; run bash e2e/controlplane/build.sh")
        tools = [t for t in ("containerd", "ctr", "runc", "ip", "mount") if shutil.which(t) is None]
        tools += [str(CNI_BIN / p) for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).exists()]
        if tools:
            raise NodeError(f"missing {tools}; install with: {INSTALL}")
        if os.geteuid() != 0:
            raise NodeError("a real node needs root (network bridge, cgroups, mounts)")

    def _take_machine_lock(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cache / ".node.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeError(f"another real node runs on this machine (lock {self.cache / '.node.lock'})") from None
        self._lock_fd = fd

    def _release_machine_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _make_bridge(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "del", BRIDGE)  # left by a run that was killed before its teardown
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        self._bridge = True
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "addr", "add", f"{SERVICE_IP}/32", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _start_containerd(self) -> None:
        d = self.workdir / "containerd"
        cni_conf = self.workdir / "cni"
        for p in (d, cni_conf):
            p.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-lathe.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "lathe-pods",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(self.workdir / "cni-ipam"),
                                  "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "198.18.0.10",
                                               "rangeEnd": "198.18.0.250", "gateway": NODE_IP}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]}}],
        }))
        root = self.cache / "containerd-root"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "config.toml").write_text(f"""version = 2
root = "{root}"
state = "{d / 'state'}"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[{cri}]
  sandbox_image = "{PAUSE_REF}"
  # This machine's root lacks CAP_SYS_RESOURCE: lowering oom_score_adj would fail every sandbox.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
""")
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])
        self._wait("containerd", lambda: self._ctr("version", check=False).returncode == 0, 30)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return _run("ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args, check=check,
                    timeout=timeout)

    def _import_images(self) -> None:
        images = {PAUSE_REF: build_pause_image(self.cache), **self.images}
        have = set(self._ctr("images", "ls", "-q").stdout.split())
        marks = self.cache / "imported"
        marks.mkdir(exist_ok=True)
        for ref, tar in images.items():
            tar = Path(tar)
            # One marker per archive content key (name + size): the store is cached across runs.
            mark = marks / hashlib.sha256(f"{tar.name}:{tar.stat().st_size}:{ref}".encode()).hexdigest()[:16]
            if mark.exists() and _normalise(ref) in have:
                continue
            if _normalise(ref) in have:  # an earlier build under this name goes first: two 5 GB workers,
                self._ctr("images", "rm", "--sync", _normalise(ref), check=False)  # each unpacked, fill a disk
                self._prune_images()
            self._ctr("images", "import", "--no-unpack=false", str(tar), timeout=1200)
            have = set(self._ctr("images", "ls", "-q").stdout.split())
            if _normalise(ref) not in have:
                raise NodeError(f"importing {tar} did not yield {ref}; containerd has {sorted(have)}")
            mark.write_text(ref)
        self._prune_images()

    def _prune_images(self) -> None:
        """Drop images of earlier content keys (the store is cached; a 5 GB worker image per
        source change would fill the disk). A re-import moves a name to the new image, but the CRI
        also names each image by its config digest, and those names keep old versions alive:
        drop each digest name that no tagged name points at any more."""
        rows = [line.split() for line in self._ctr("images", "ls").stdout.splitlines()[1:] if line.strip()]
        named = {r[2] for r in rows if not r[0].startswith("sha256:")}
        for name, _type, digest, *_ in rows:
            if name.startswith("sha256:") and digest not in named:
                self._ctr("images", "rm", "--sync", name, check=False)

    def _start_scheduler(self) -> None:
        crt, key = self.cp.pki.issue("scheduler", "system:kube-scheduler")
        kc = write_kubeconfig(self.workdir / "scheduler.kubeconfig", self.cp.url, self.cp.pki.ca_crt, crt, key,
                              "system:kube-scheduler")
        port = free_port()
        self._spawn("kube-scheduler", [
            str(self.scheduler_bin), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            "--leader-elect=false", "--v=1"])
        self._wait("kube-scheduler", lambda: ControlPlane._http_ok(f"https://127.0.0.1:{port}/healthz",
                                                                    _insecure()), 60)

    def _start_kubelet(self) -> None:
        k = self.workdir / "kubelet"
        k.mkdir(parents=True, exist_ok=True)
        crt, key = self.cp.pki.issue("kubelet", f"system:node:{self.name}", ("system:nodes",))
        kc = write_kubeconfig(self.workdir / "kubelet.kubeconfig", self.cp.url, self.cp.pki.ca_crt, crt, key,
                              f"system:node:{self.name}")
        self.healthz_port = free_port()
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines have cgroup v1 only
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.sock}", "imageServiceEndpoint": f"unix://{self.sock}",
            "failSwapOn": False,
            "address": NODE_IP, "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cp.pki.ca_crt)}},
            "authorization": {"mode": "Webhook"},
            "podLogsDir": str(self.workdir / "pod-logs"), "volumePluginDir": str(self.workdir / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf", "clusterDomain": "cluster.local",
            # The images were imported, not pulled: garbage-collecting them would lose them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "maxPods": 30,
        }
        (k / "config.json").write_text(json.dumps(cfg, indent=1))
        self._spawn("kubelet", [
            str(self.kubelet_bin), f"--config={k / 'config.json'}", f"--kubeconfig={kc}",
            f"--root-dir={k / 'root'}", f"--cert-dir={k / 'pki'}", f"--hostname-override={self.name}",
            f"--node-ip={NODE_IP}", "--node-labels=" + ",".join(f"{a}={b}" for a, b in self.labels.items()),
            "--v=1"])

    def _wait_ready(self) -> None:
        from kubernetes import client

        def ready():
            with self.cp.api_client() as api:
                try:
                    node = client.CoreV1Api(api).read_node(self.name)
                except client.ApiException:
                    return False
            conds = {c.type: c.status for c in node.status.conditions or []}
            return conds.get("Ready") == "True" and not [t for t in node.spec.taints or []
                                                        if t.key.startswith("node.kubernetes.io/")]
        self._wait("kubelet", ready, self.start_timeout)

    # -- teardown steps ----------------------------------------------------------------------
    def _delete_pods(self) -> None:
        if "kubelet" not in self.procs or self.procs["kubelet"].poll() is not None:
            return
        from kubernetes import client

        with self.cp.api_client() as api:
            core = client.CoreV1Api(api)
            # Cordoned first, as a drain does: a pod whose owner still exists (a Deployment's
            # ReplicaSet, a Job) is recreated at once, and the scheduler would bind the new one here
            # again, so the containers never ran out and the wait below always took its full 60 s.
            with contextlib.suppress(client.ApiException):
                core.patch_node(self.name, {"spec": {"unschedulable": True}})
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.name}").items
            for p in pods:
                with contextlib.suppress(client.ApiException):
                    core.delete_namespaced_pod(p.metadata.name, p.metadata.namespace, grace_period_seconds=0)
        # The kubelet stops the containers and tears down sandboxes (CNI) itself; give it time.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.running_tasks():
            time.sleep(0.5)

    def running_tasks(self) -> list[str]:
        if "containerd" not in self.procs or self.procs["containerd"].poll() is not None:
            return []
        r = self._ctr("tasks", "ls", "-q", check=False, timeout=30)
        return r.stdout.split() if r.returncode == 0 else []

    def _kill_tasks(self) -> None:
        """Whatever the kubelet left (a failed start, a pod it never saw deleted)."""
        for task in self.running_tasks():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=30)
        time.sleep(0.5)
        if "containerd" in self.procs and self.procs["containerd"].poll() is None:
            for task in self._ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split():
                self._ctr("tasks", "rm", "-f", task, check=False, timeout=30)
            for c in self._ctr("containers", "ls", "-q", check=False, timeout=30).stdout.split():
                self._ctr("containers", "rm", c, check=False, timeout=30)

    def _kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            kill_process_group(proc, grace=15)

    def _unmount_all(self) -> None:
        """Unmount everything under the work folder, deepest first (netns, tokens, the root dir)."""
        root = str(self.workdir.resolve())
        for _ in range(3):
            points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            mine = sorted({p for p in points if p == root or p.startswith(root + "/")}, key=len, reverse=True)
            if not mine:
                return
            for p in mine:
                if _run("umount", p, check=False).returncode != 0:
                    _run("umount", "-l", p, check=False)
        left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(root)]
        if left:
            raise NodeError(f"mounts left under {root}: {left}")

    def _remove_cgroups(self) -> None:
        left = []
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / "kubepods"
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            try:
                top.rmdir()
            except OSError as e:
                left.append(f"{top}: {e}")
        if left:
            raise NodeError(f"cgroups left: {left}")

    def _restore_sysctls(self) -> None:
        for k, v in self._sysctls.items():
            Path("/proc/sys", k).write_text(v)

    def _remove_fixed_paths(self) -> None:
        for p in self._fixed_paths_absent:
            shutil.rmtree(p, ignore_errors=True)

    def _delete_bridge(self) -> None:
        if self._bridge:
            _run("ip", "link", "del", BRIDGE, check=False)
            self._bridge = False

    def _stop_proxy(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        self.logs[name] = log
        register_log(name, log)
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(args)}\n".encode())
            out.flush()
            self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **_spawn_kwargs(self.workdir))

    def _wait(self, name: str, ready, timeout: float) -> None:
        wait_ready(name, ready, timeout, self.procs, self.logs, NodeError)

    def rss_mib(self) -> dict[str, float]:
        return rss_mib(self.procs)


def reap_stale() -> list[str]:
    """Undo what a node killed before its teardown (SIGKILL, a CI timeout) left: its shims,
    mounts and kubepods cgroups. Runs under the machine lock, so no live node owns them."""
    done = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(args[0]).name == "containerd-shim-runc-v2" and "k8s.io" in args:
                address = args[args.index("-address") + 1]
                if "/containerd/containerd.sock" in address:  # a test node's, not the system's
                    os.kill(int(d.name), 9)
                    done.append(f"killed shim {d.name}")
    # Containers outlive a killed shim: kill what is left in the kubepods cgroups, unless some
    # kubelet runs on this machine (then they are its pods, not leftovers).
    if not _kubelet_running():
        deadline = time.monotonic() + 10
        while (pids := _kubepods_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            done.append(f"killed {sorted(pids)}")
            time.sleep(0.2)
    for _ in range(3):
        stale = sorted({line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                        if "/kubelet/root" in line.split()[4] or "/containerd/state/" in line.split()[4]},
                       key=len, reverse=True)
        for p in stale:
            if _run("umount", p, check=False).returncode != 0:
                _run("umount", "-l", p, check=False)
            done.append(f"unmounted {p}")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            for c in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    c.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
                done.append(f"removed {top}")
    return done


def _kubepods_pids() -> set[int]:
    pids: set[int] = set()
    for tasks in Path("/sys/fs/cgroup").glob("*/kubepods/**/tasks"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in tasks.read_text().split())
    return pids


def _kubelet_running() -> bool:
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and (d / "comm").read_text().strip() == "kubelet":
                return True
    return False


def machine_state(workdir: Path) -> dict:
    """What a node changes on this machine, to compare before start and after stop."""
    root = str(Path(workdir).resolve())
    procs = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if root in cmd:
                    procs.append(cmd[:200])
    return {
        "sysctls": {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS},
        "bridge": _run("ip", "link", "show", BRIDGE, check=False).returncode == 0,
        "kubepods_cgroups": sorted(str(h) for h in Path("/sys/fs/cgroup").iterdir() if (h / "kubepods").exists()),
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                         if line.split()[4].startswith(root)),
        "processes": sorted(procs),
        "kubelet_paths": sorted(str(p) for p in KUBELET_FIXED_PATHS if p.exists()),
        "addresses": sorted(a for a in (NODE_IP, SERVICE_IP)
                            if f"inet {a}/" in _run("ip", "-4", "addr", "show", check=False).stdout),
    }


def node_control_plane_kwargs() -> dict:
    """What a ControlPlane needs for a real node beside it (see ControlPlane.__init__)."""
    return {"service_cidr": SERVICE_CIDR, "extra_sans": (f"IP:{NODE_IP}",), "kubelet_client": True,
            # endpoints-controller: the API server's service proxy (metrics through the Service).
            "extra_controllers": ("node-lifecycle-controller", "persistentvolume-binder-controller",
                                  "endpoints-controller"),
            "controller_manager": True}


def _normalise(ref: str) -> str:
    """containerd's name for an image reference (docker.io/library/ for bare names)."""
    name = ref
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return name


def _insecure():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


__all__ = ["Node", "NodeError", "machine_state", "node_control_plane_kwargs", "build_pause_image", "ControlPlaneError"]
