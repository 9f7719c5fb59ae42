"""A real Kubernetes control plane for the tests: etcd + kube-apiserver (+ kube-controller-manager).

The binaries come from ``e2e/controlplane/build.sh`` (pinned in ``e2e/controlplane/go.mod``) and
live in ``<repo>/.cache/controlplane/<key>/bin`` where ``<key>`` is the first 16 hex digits of
sha256(go.mod + go.sum).  ``LATHE_CONTROLPLANE_BIN`` overrides the folder,
``LATHE_CONTROLPLANE_CACHE`` the cache root (as for build.sh); ``LATHE_CONTROLPLANE_KCM=0`` runs
without kube-controller-manager (the node agent then mirrors Jobs itself).

What :class:`ControlPlane` does on :meth:`~ControlPlane.start`:

* picks free loopback ports, generates a CA, an API-server serving certificate, client
  certificates (``lathe-admin`` in ``system:masters``; ``system:kube-controller-manager``) and an
  EC service-account signing key with the ``openssl`` CLI;
* starts etcd (plain HTTP on 127.0.0.1, ``--unsafe-no-fsync``), kube-apiserver
  (``--authorization-mode=Node,RBAC``, TLS on 127.0.0.1; kubelets reached by InternalIP, their
  serving certificates not verified, so pods/log works against the node agent) and, when built,
  kube-controller-manager with the controllers a workload needs (job, garbage collector,
  namespace, service accounts, deployment/replicaset/statefulset, ttl-after-finished, pod GC, ...;
  no scheduler, no node lifecycle): each in its own process group with PR_SET_PDEATHSIG, logging
  to ``<workdir>/logs``;
* writes ``<workdir>/kubeconfig`` (admin, certificates inlined: works for kopf, kubectl and
  ``kubernetes.config.load_kube_config``);
* installs every ``*.yaml``/``*.yml`` in ``<repo>/crds`` (the folder may be missing or empty) and
  waits until the CRDs are Established, and (with the controller manager) until the ``default``
  ServiceAccount exists, so pods can be created.

:meth:`~ControlPlane.stop` terminates everything (SIGTERM to each process group, SIGKILL after a
grace period); it also runs at interpreter exit, and the processes get SIGKILL if the process
that started them dies.

pytest use (see ``tests/conftest.py``): session fixtures ``control_plane`` (a started
:class:`ControlPlane`: ``.kubeconfig``, ``.url``, ``.api_client()``), ``kubeconfig`` (its path, also
exported as ``KUBECONFIG`` for the session, so ``kopf`` logs in with it), ``k8s_client`` (a
configured ``kubernetes.client.ApiClient``) and ``node_agent`` (the local kubelet stand-in, see
``e2e/nodeagent/agent.py``).  The hook :func:`pytest_runtest_makereport` appends the tails of the
component logs to the report of a failing test.

Run it by hand: ``python -m e2e.controlplane.fixture`` starts a control plane, prints the
``KUBECONFIG`` line and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
BUILD_CMD = f"bash {REPO_ROOT / 'e2e/controlplane/build.sh'}"

# kube-controller-manager controllers enabled by default here (no node lifecycle / IPAM, no PV
# binder, no CSR signing: nothing that needs a real kubelet or cloud).
KCM_CONTROLLERS = [
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
    "endpointslice-controller",
    "persistentvolumeclaim-protection-controller",
    "resourcequota-controller",
]


class ControlPlaneError(RuntimeError):
    pass


# --------------------------------------------------------------------------- binaries


def build_key() -> str:
    h = hashlib.sha256()
    h.update((HERE / "go.mod").read_bytes())
    h.update((HERE / "go.sum").read_bytes())
    return h.hexdigest()[:16]


def default_bin_dir() -> Path:
    if os.environ.get("LATHE_CONTROLPLANE_BIN"):
        return Path(os.environ["LATHE_CONTROLPLANE_BIN"])
    cache = Path(os.environ.get("LATHE_CONTROLPLANE_CACHE", REPO_ROOT / ".cache" / "controlplane"))
    return cache / build_key() / "bin"


def find_binaries(bin_dir: Path | None = None) -> dict[str, Path | None]:
    """Paths of etcd/kube-apiserver/kube-controller-manager; raise with the build command if missing."""
    bin_dir = Path(bin_dir or default_bin_dir())
    found = {n: bin_dir / n for n in ("etcd", "kube-apiserver", "kube-controller-manager")}
    missing = [n for n in ("etcd", "kube-apiserver") if not os.access(found[n], os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"control-plane binaries {missing} not found in {bin_dir} (build key {build_key()}).\n"
            f"Build them first (about 17 min cold on 2 cores, then reused):\n    {BUILD_CMD}"
        )
    if not os.access(found["kube-controller-manager"], os.X_OK):
        found["kube-controller-manager"] = None
    return found


# --------------------------------------------------------------------------- helpers


def first_service_ip(cidr: str) -> str:
    """The ClusterIP the API server gives the ``kubernetes`` Service: the range's first host."""
    import ipaddress

    return str(next(ipaddress.ip_network(cidr).hosts()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path | str, max_bytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data.decode("utf-8", "replace")
    if size > max_bytes:
        text = "...\n" + text.split("\n", 1)[-1]
    return text


_libc = None


def die_with_parent() -> None:  # runs in the child between fork and exec
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def rss_mib(procs: dict[str, subprocess.Popen]) -> dict[str, float]:
    """Resident memory of each named process (MiB), read from /proc."""
    out = {}
    for name, proc in procs.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) / 1024
    return out


def wait_ready(name: str, ready, timeout: float, procs: dict[str, subprocess.Popen], logs: dict[str, Path],
               error: type[Exception] = ControlPlaneError) -> None:
    """Poll ``ready()`` until it holds; fail at once, with its log tail, if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        for pname, proc in procs.items():
            if proc.poll() is not None:
                raise error(f"{pname} exited with code {proc.returncode} while waiting for {name}; "
                            f"log {logs[pname]}:\n{tail(logs[pname])}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise error(f"{name} not ready after {timeout}s; log {logs.get(name)}:\n{tail(logs.get(name, ''))}")
        time.sleep(0.2)


def _spawn_kwargs(cwd: Path) -> dict:
    """Popen options for a test daemon: own process group (killed as one), SIGKILL if we die."""
    return {"stdin": subprocess.DEVNULL, "start_new_session": True, "preexec_fn": die_with_parent, "cwd": cwd}


def kill_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with start_new_session), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Kill whatever is left in the group (also children of an already exited leader).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise ControlPlaneError("the 'openssl' command is needed to generate certificates (apt-get install openssl)")
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


class PKI:
    """CA, serving and client certificates (EC P-256) made with the openssl CLI."""

    def __init__(self, folder: Path):
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = folder / "ca.crt", folder / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=lathe-e2e-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=folder,
        )
        # Service-account token signing key (ES256) and its public half.
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=folder)
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)
        self.sa_key, self.sa_pub = folder / "sa.key", folder / "sa.pub"

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), *, server: bool = False,
              sans: tuple[str, ...] = ()) -> tuple[Path, Path]:
        subj = f"/CN={cn}" + "".join(f"/O={o}" for o in orgs)
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=self.dir,
        )
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid,issuer",
        ]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        (self.dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", f"{name}.ext",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lathe-e2e", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "lathe-e2e", "context": {"cluster": "lathe-e2e", "user": user, "namespace": "default"}}],
        "current-context": "lathe-e2e",
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- control plane

_ACTIVE: list[ControlPlane] = []
_EXTRA_LOGS: dict[str, Path] = {}  # name -> log file, shown on test failure (e.g. the node agent)


def register_log(name: str, path: Path | None) -> None:
    """Add (or with path=None remove) a log file shown in the report of failing tests."""
    if path is None:
        _EXTRA_LOGS.pop(name, None)
    else:
        _EXTRA_LOGS[name] = Path(path)


class ControlPlane:
    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        bin_dir: Path | str | None = None,
        controller_manager: bool | None = None,
        crd_dirs: list[Path | str] | None = None,
        extra_apiserver_args: list[str] | None = None,
        start_timeout: float = 120.0,
        service_cidr: str = "10.0.0.0/24",
        extra_sans: tuple[str, ...] = (),
        kubelet_client: bool = False,
        extra_controllers: tuple[str, ...] = (),
    ):
        """``controller_manager``: True = required, False = don't run, None = run if built
        (default: from ``LATHE_CONTROLPLANE_KCM``: ``0`` = don't run, ``1`` = required).

        For a real kubelet (e2e/node): ``service_cidr`` whose first address pods reach the API
        server on (the ``kubernetes`` Service), ``extra_sans`` for the serving certificate,
        ``kubelet_client`` (a client certificate for logs/exec; a real kubelet asks for one, the node
        agent does not) and ``extra_controllers`` (``node-lifecycle-controller`` clears the not-ready
        taint).  Kubelets (and the node agent's log server) are always reached by InternalIP."""
        if controller_manager is None:
            controller_manager = {"0": False, "1": True}.get(os.environ.get("LATHE_CONTROLPLANE_KCM", ""))
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lathe-controlplane-"))
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self._want_kcm = controller_manager
        self.crd_dirs = [Path(p) for p in (crd_dirs if crd_dirs is not None else [REPO_ROOT / "crds"])]
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self.service_cidr, self.extra_sans = service_cidr, tuple(extra_sans)
        self.kubelet_client, self.extra_controllers = kubelet_client, tuple(extra_controllers)
        self.start_timeout = start_timeout
        self.log_dir = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.url = ""
        self.kubeconfig: Path | None = None
        self.ready_seconds: float | None = None
        self.has_controller_manager = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        bins = find_binaries(self.bin_dir)
        if self._want_kcm and bins["kube-controller-manager"] is None:
            raise ControlPlaneError(f"kube-controller-manager was not built; run {BUILD_CMD}")
        run_kcm = self._want_kcm is not False and bins["kube-controller-manager"] is not None
        self.has_controller_manager = run_kcm
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _ACTIVE.append(self)
        atexit.register(self.stop)
        try:
            self._start(bins, run_kcm)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - t0
        return self

    def _start(self, bins: dict[str, Path | None], run_kcm: bool) -> None:
        pki = self.pki = PKI(self.workdir / "pki")
        api_port, etcd_port, peer_port, kcm_port = free_port(), free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{api_port}"
        self.port = api_port
        srv_crt, srv_key = pki.issue(
            "apiserver", "kube-apiserver", server=True,
            sans=("IP:127.0.0.1", f"IP:{first_service_ip(self.service_cidr)}", *self.extra_sans, "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                  "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"),
        )
        self.admin_crt, self.admin_key = pki.issue("admin", "lathe-admin", ("system:masters",))
        self.kubeconfig = write_kubeconfig(
            self.workdir / "kubeconfig", self.url, pki.ca_crt, self.admin_crt, self.admin_key, "lathe-admin"
        )

        # etcd
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            str(bins["etcd"]),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ])
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health", None))

        # kube-apiserver
        api_args = [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # 127.0.0.1 is refused as the "kubernetes" Service endpoint; nothing needs that endpoint here.
            "--endpoint-reconciler-type=none",
            f"--secure-port={api_port}",
            f"--tls-cert-file={srv_crt}",
            f"--tls-private-key-file={srv_key}",
            f"--client-ca-file={pki.ca_crt}",
            # Front-proxy (request header) trust; also spares the controller manager's log from
            # "missing content for CA bundle" errors.
            f"--requestheader-client-ca-file={pki.ca_crt}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allow-privileged=true",
            # pods/log and exec go to the node's InternalIP (the default tries Hostname first, which
            # for the node agent is this machine's name and may not resolve to its loopback port).
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
        ]
        if self.kubelet_client:
            kc_crt, kc_key = pki.issue("kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
            api_args += [f"--kubelet-client-certificate={kc_crt}", f"--kubelet-client-key={kc_key}"]
        if not run_kcm:
            # Nothing would create the "default" ServiceAccount that this admission plugin requires.
            api_args.append("--disable-admission-plugins=ServiceAccount")
        api_args += self.extra_apiserver_args
        self._spawn("kube-apiserver", api_args)
        self._ssl = ssl.create_default_context(cafile=str(pki.ca_crt))
        self._ssl.load_cert_chain(str(self.admin_crt), str(self.admin_key))
        self._wait("kube-apiserver", lambda: self._http_ok(f"{self.url}/readyz", self._ssl))

        # kube-controller-manager
        if run_kcm:
            kcm_crt, kcm_key = pki.issue("kcm", "system:kube-controller-manager")
            kcm_kubeconfig = write_kubeconfig(
                self.workdir / "kcm.kubeconfig", self.url, pki.ca_crt, kcm_crt, kcm_key,
                "system:kube-controller-manager",
            )
            self._spawn("kube-controller-manager", [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                "--controllers=" + ",".join(KCM_CONTROLLERS + list(self.extra_controllers)),
                "--concurrent-gc-syncs=5",
                "--profiling=false",
                "--v=1",
            ])
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            self._wait("kube-controller-manager",
                       lambda: self._http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure))

        self.install_crds()
        if run_kcm:
            # Pods need the namespace's "default" ServiceAccount (ServiceAccount admission).
            self._wait("kube-controller-manager", lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"))

    def stop(self) -> None:
        with self._lock:
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                proc = self.procs.pop(name, None)
                if proc is not None:
                    kill_process_group(proc)
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(args)}\n".encode())
            out.flush()
            self.procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                **_spawn_kwargs(self.workdir))

    def _wait(self, name: str, ready, timeout: float | None = None) -> None:
        wait_ready(name, ready, timeout or self.start_timeout, self.procs, self.logs)

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None) -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _get_ok(self, path: str) -> bool:
        return self._http_ok(self.url + path, self._ssl)

    # -- API access --------------------------------------------------------------------------
    def api_client(self):
        """A new ``kubernetes.client.ApiClient`` logged in as the admin (system:masters)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def token_client(self, token: str):
        """A ``kubernetes.client.ApiClient`` authenticating with a bearer token (e.g. a ServiceAccount's)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.pki.ca_crt)
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    def apply_yaml(self, path_or_docs) -> list[dict]:
        """Create (or replace) the objects of a YAML file / list of dicts with the dynamic client."""
        import yaml
        from kubernetes import dynamic
        from kubernetes.client.exceptions import ApiException

        if isinstance(path_or_docs, (str, Path)):
            docs = [d for d in yaml.safe_load_all(Path(path_or_docs).read_text()) if d]
        else:
            docs = list(path_or_docs)
        created = []
        with self.api_client() as api:
            dyn = dynamic.DynamicClient(api)
            for doc in docs:
                res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                ns = doc.get("metadata", {}).get("namespace") if res.namespaced else None
                try:
                    obj = res.create(body=doc, namespace=ns)
                except ApiException as e:
                    if e.status != 409:
                        raise
                    cur = res.get(name=doc["metadata"]["name"], namespace=ns)
                    doc = dict(doc)
                    doc["metadata"] = dict(doc["metadata"], resourceVersion=cur.metadata.resourceVersion)
                    obj = res.replace(body=doc, namespace=ns)
                created.append(obj.to_dict())
        return created

    def install_crds(self, dirs: list[Path] | None = None, timeout: float = 60.0) -> list[str]:
        """Install every CRD YAML of ``dirs`` (default: the repo's crds/) and wait until Established."""
        import yaml

        files = []
        for d in dirs if dirs is not None else self.crd_dirs:
            if Path(d).is_dir():
                files += sorted(p for p in Path(d).iterdir() if p.suffix in (".yaml", ".yml"))
        docs = []
        for f in files:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
        if not docs:
            return []
        self.apply_yaml(docs)
        names = [d["metadata"]["name"] for d in docs if d.get("kind") == "CustomResourceDefinition"]
        self.wait_crds_established(names, timeout)
        return names

    def wait_crds_established(self, names: list[str], timeout: float = 60.0) -> None:
        from kubernetes import client

        with self.api_client() as api:
            ext = client.ApiextensionsV1Api(api)
            deadline = time.monotonic() + timeout
            pending = list(names)
            while pending:
                name = pending[0]
                crd = ext.read_custom_resource_definition(name)
                conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
                if conds.get("Established") == "True":
                    pending.pop(0)
                    continue
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"CRD {name} not Established after {timeout}s: {conds}")
                time.sleep(0.1)

    # -- diagnostics -----------------------------------------------------------------------
    def rss_mib(self) -> dict[str, float]:
        return rss_mib(self.procs)

    def log_tails(self, max_bytes: int = 4000) -> dict[str, str]:
        return {name: tail(path, max_bytes) for name, path in self.logs.items()}


# --------------------------------------------------------------------------- pytest glue

try:
    import pytest
except ImportError:  # usable without pytest, e.g. `python -m e2e.controlplane.fixture`
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def control_plane(tmp_path_factory):
        """A started :class:`ControlPlane` for the whole test session."""
        cp = ControlPlane(tmp_path_factory.mktemp("controlplane"))
        try:
            cp.start()
        except ControlPlaneError as e:
            pytest.fail(f"cannot start the Kubernetes control plane: {e}", pytrace=False)
        try:
            yield cp
        finally:
            cp.stop()

    @pytest.fixture(scope="session")
    def kubeconfig(control_plane):
        """Path of the admin kubeconfig; also exported as KUBECONFIG for the session (kopf, kubectl)."""
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
        try:
            yield control_plane.kubeconfig
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old

    @pytest.fixture(scope="session")
    def k8s_client(control_plane):
        """A configured ``kubernetes.client.ApiClient`` (admin)."""
        api = control_plane.api_client()
        try:
            yield api
        finally:
            api.close()

    @pytest.fixture(scope="session")
    def node_agent(control_plane, tmp_path_factory):
        """The local node agent (e2e/nodeagent/agent.py) running as a subprocess for the session."""
        from e2e.nodeagent.agent import AgentProcess

        root = tmp_path_factory.mktemp("nodeagent")
        agent = AgentProcess(control_plane.kubeconfig, root,
                             manage_jobs="managed-by" if control_plane.has_controller_manager else "all")
        register_log("nodeagent", agent.log_path)
        try:
            agent.start()
        except Exception as e:
            pytest.fail(f"cannot start the node agent: {e}\n{tail(agent.log_path)}", pytrace=False)
        try:
            yield agent
        finally:
            agent.stop()
            register_log("nodeagent", None)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        """Append the tails of the control-plane (and node agent) logs to a failing test's report."""
        outcome = yield
        report = outcome.get_result()
        if not report.failed or not (_ACTIVE or _EXTRA_LOGS):
            return
        for cp in _ACTIVE:
            for name, text in cp.log_tails().items():
                report.sections.append((f"{name} log tail ({cp.logs[name]})", text))
        for name, path in _EXTRA_LOGS.items():
            report.sections.append((f"{name} log tail ({path})", tail(path)))


def main() -> None:
    cp = ControlPlane(sys.argv[1] if len(sys.argv) > 1 else None)
    cp.start()
    print(f"ready in {cp.ready_seconds:.1f}s; RSS MiB {cp.rss_mib()}")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(f"logs: {cp.log_dir}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
