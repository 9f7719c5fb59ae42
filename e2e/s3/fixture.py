"""A real S3-compatible server for the tests: the Versity S3 Gateway (versitygw) with its posix backend.

The binary comes from ``e2e/s3/build.sh`` (pinned in ``e2e/s3/go.mod``: github.com/versity/versitygw
v1.7.0) and lives in ``$LATHE_CONTROLPLANE_CACHE/versitygw-<version>-<key>/versitygw`` (default cache
``<repo>/.cache/controlplane``; with the variable unset, ``~/.cache/lathe/controlplane`` is looked in
too), ``<key>`` being the first 16 hex digits of sha256(go.mod + go.sum), as for the control plane.
``LATHE_S3_BIN`` overrides the binary's path.

What :class:`S3Server` does on :meth:`~S3Server.start`:

* picks a free loopback port (or the one it is given), makes ``<workdir>/data`` (one folder per
  bucket, objects as files; metadata in extended attributes, or in a sidecar folder where the
  filesystem has none) and a random root access key and secret (passed in the environment, not on
  the command line);
* starts ``versitygw posix`` in its own process group with PR_SET_PDEATHSIG, logging to
  ``<workdir>/versitygw.log``, SigV4 auth, path-style addressing, region ``us-east-1``;
* waits until ``GET /health`` answers 200 from a ``VERSITYGW`` server, failing at once (with the log
  tail) if the process exits, e.g. because the port is taken.

Any failure in :meth:`~S3Server.start` stops what it started before raising :class:`S3ServerError`.
:meth:`~S3Server.stop` SIGTERMs the process group, SIGKILLs after a grace period; it also runs at
interpreter exit, and the server gets SIGKILL if the process that started it dies.

Clients: :attr:`~S3Server.endpoint`, :attr:`~S3Server.access_key`, :attr:`~S3Server.secret_key`,
:attr:`~S3Server.region`; :meth:`~S3Server.env` (``AWS_*`` variables for a subprocess such as
Triton); :meth:`~S3Server.client` (Lathe's own client, lathe.storage.s3: obstore);
:meth:`~S3Server.make_bucket` and :meth:`~S3Server.request` send raw requests over http.client,
signed by e2e/s3/sigv4.py (so a test can send what no client would, e.g. a wrong signature).

pytest use: session fixture ``s3_server`` (a started :class:`S3Server`; its log tail is added to the
report of a failing test through the control plane's report hook), function fixtures ``s3_bucket``
(a fresh, empty bucket's name) and ``s3_client`` (lathe.storage.s3.S3Client).  Import them in a conftest, as
``tests/s3/conftest.py`` does.

Run it by hand: ``python -m e2e.s3.fixture`` starts a server, prints the endpoint and keys, and
waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import http.client
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from e2e.controlplane.fixture import (
    _spawn_kwargs,
    free_port,
    kill_process_group,
    register_log,
    tail,
    wait_ready,
)
from e2e.gotool import GoTool

HERE = Path(__file__).resolve().parent
MODULE = "github.com/versity/versitygw"


class S3ServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------- binary


TOOL = GoTool(HERE, MODULE, "versitygw", S3ServerError, cold_minutes=5, env_override="LATHE_S3_BIN")
pinned_version, build_key, default_binary, find_binary = (TOOL.pinned_version, TOOL.build_key, TOOL.default_binary,
                                                          TOOL.find_binary)


# --------------------------------------------------------------------------- SigV4 (stdlib)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    code: str = field(default="")  # the S3 error code of an error body, if any
    message: str = field(default="")


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


def _quote(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


# --------------------------------------------------------------------------- server

_ACTIVE: list[S3Server] = []


def _xattrs_work(folder: Path) -> bool:
    try:
        os.setxattr(folder, "user.lathe-probe", b"1")
        os.removexattr(folder, "user.lathe-probe")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise


class S3Server:
    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        binary: Path | str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 30.0,
        extra_args: list[str] | None = None,
        tls: bool = False,
    ):
        """``port``: serve there (no retry when it is taken); by default a free one is picked, and a
        new one tried if it was taken meanwhile.  ``extra_args``: more global versitygw options.
        ``tls``: serve HTTPS with a certificate for 127.0.0.1 signed by a CA made at start
        (``ca_path``), as a store behind a company CA is."""
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lathe-s3-"))
        self.binary = Path(binary) if binary else None
        self.access_key = access_key or f"LATHE{secrets.token_hex(8).upper()}"
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region, self.host = region, host
        self._fixed_port = port
        self.port = port or 0
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.tls = tls
        self.ca_path = self.workdir / "ca.crt"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "versitygw.log"
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def _make_certificates(self) -> list[str]:
        """A CA and a server certificate for the host, signed by it (openssl); the versitygw flags."""
        d = self.workdir
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lathe test CA",
            "-keyout", str(d / "ca.key"), "-out", str(self.ca_path))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={self.host}", "-keyout", str(d / "tls.key"),
            "-out", str(d / "tls.csr"))
        (d / "san.ext").write_text(f"subjectAltName=IP:{self.host}\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", str(d / "tls.csr"), "-CA", str(self.ca_path), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"), "-out", str(d / "tls.crt"))
        return [f"--cert={d / 'tls.crt'}", f"--key={d / 'tls.key'}"]

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> S3Server:
        binary = find_binary(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _ACTIVE.append(self)
        atexit.register(self.stop)
        try:
            self._start(binary)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, binary: Path) -> None:
        backend = ["posix"]
        if not _xattrs_work(self.data_dir):
            (self.workdir / "meta").mkdir(exist_ok=True)
            backend.append(f"--sidecar={self.workdir / 'meta'}")
        # Only our settings: no VGW_*/ROOT_* from the caller's environment (versitygw reads them).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VGW_", "ROOT_"))}
        env.update(ROOT_ACCESS_KEY_ID=self.access_key, ROOT_SECRET_ACCESS_KEY=self.secret_key)
        tls_args = self._make_certificates() if self.tls else []
        for attempt in range(1 if self._fixed_port else 3):
            self.port = self._fixed_port or free_port()
            args = [str(binary), f"--port={self.host}:{self.port}", f"--region={self.region}",
                    "--health=/health", "--quiet", *tls_args, *self.extra_args, *backend, str(self.data_dir)]
            with open(self.log_path, "ab") as out:
                out.write(f"$ {' '.join(args)}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                             **_spawn_kwargs(self.workdir))
            try:
                wait_ready("versitygw", self._ready, self.start_timeout, {"versitygw": self.proc},
                           {"versitygw": self.log_path}, error=S3ServerError)
                return
            except S3ServerError as e:
                kill_process_group(self.proc)
                self.proc = None
                taken = "address already in use" in str(e).lower()
                if not taken or self._fixed_port or attempt == 2:
                    where = f" (port {self.host}:{self.port} is taken)" if taken else ""
                    raise S3ServerError(f"cannot start the S3 test server{where}: {e}") from None

    def _ready(self) -> bool:
        try:
            if self.tls:
                import ssl

                conn = http.client.HTTPSConnection(self.host, self.port, timeout=2,
                                                   context=ssl.create_default_context(cafile=str(self.ca_path)))
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/health")
                r = conn.getresponse()
                r.read()
                return r.status == 200 and r.getheader("Server", "") == "VERSITYGW"
            finally:
                conn.close()
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                kill_process_group(proc)
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    def log_tail(self, max_bytes: int = 4000) -> str:
        return tail(self.log_path, max_bytes)

    # -- clients -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point an S3 client (boto3, Triton, the AWS CLI) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, *, access_key: str | None = None, secret_key: str | None = None):
        """Lathe's own S3 client (lathe.storage.s3) pointed at this server."""
        from lathe.storage.s3 import S3Client, S3Settings

        return S3Client(S3Settings(access_key or self.access_key, secret_key or self.secret_key, self.region,
                                   self.endpoint), retries=0)

    def request(self, method: str, path: str, *, body: bytes = b"", query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, secret_key: str | None = None,
                timeout: float = 30.0) -> Response:
        """One SigV4-signed request (standard library only); ``path`` is ``/bucket[/key]``, decoded."""
        query = dict(query or {})
        host = f"{self.host}:{self.port}"
        from e2e.s3.sigv4 import Credentials, sign

        hdrs = sign(method, host, path, query, dict(headers or {}), hashlib.sha256(body).hexdigest(),
                    Credentials(self.access_key, secret_key or self.secret_key, self.region))
        target = _quote(path, safe="/-_.~")
        if query:
            target += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        if self.tls:
            import ssl

            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=ssl.create_default_context(cafile=str(self.ca_path)))
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, target, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()
        if resp.status >= 300:
            resp.code, resp.message = _error_fields(data)
        return resp

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (an existing one of ours is fine) and return its name."""
        r = self.request("PUT", f"/{name}")
        if r.status != 200 and r.code != "BucketAlreadyOwnedByYou":
            raise S3ServerError(f"CreateBucket {name!r}: HTTP {r.status} {r.code}: {r.message}")
        return name


# --------------------------------------------------------------------------- pytest glue

try:
    import pytest
except ImportError:  # usable without pytest, e.g. `python -m e2e.s3.fixture`
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def s3_server(tmp_path_factory):
        """A started :class:`S3Server` (versitygw, posix backend) for the whole test session."""
        server = S3Server(tmp_path_factory.mktemp("s3"))
        register_log("s3-versitygw", server.log_path)
        try:
            try:
                server.start()
            except S3ServerError as e:
                pytest.fail(str(e), pytrace=False)
            yield server
        finally:
            server.stop()
            register_log("s3-versitygw", None)

    @pytest.fixture
    def s3_bucket(s3_server):
        """The name of a fresh, empty bucket on the session's server."""
        return s3_server.make_bucket(f"lathe-{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def s3_client(s3_server):
        """Lathe's S3 client for the session's server."""
        return s3_server.client()


def main() -> None:
    server = S3Server(sys.argv[1] if len(sys.argv) > 1 else None)
    with server:
        print(f"endpoint {server.endpoint}  (data {server.data_dir}, log {server.log_path})")
        for k, v in server.env().items():
            print(f"export {k}={v}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
