"""An Azure Blob Storage emulator for the tests: Azurite (npm ``azurite`` 3.37.0, installed with the exact
tree of e2e/azurite/package-lock.json by e2e/azurite/install.sh into
``$LATHE_CONTROLPLANE_CACHE/azurite-<version>-<key>/``), its blob service alone under Node, on a loopback
port, with its own account and a random key (AZURITE_ACCOUNTS; not the well-known development key), data
in the test's folder, telemetry off.

Blob containers cannot be created through object_store, so :meth:`AzuriteServer.make_container` sends the
one request itself, signed with the account's Shared Key (:func:`shared_key`); :meth:`sas_token` makes an
account SAS the same way, for the tests of SAS credentials.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import urllib.parse
from pathlib import Path

from e2e.stores.server import LocalServer, ServerError

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
INSTALL_CMD = f"bash {REPO_ROOT / 'e2e/azurite/install.sh'}"
API_VERSION = "2021-08-06"


class AzuriteError(ServerError):
    pass


def pinned_version() -> str:
    return json.loads((HERE / "package.json").read_text())["dependencies"]["azurite"]


def install_key() -> str:
    return hashlib.sha256((HERE / "package.json").read_bytes() + (HERE / "package-lock.json").read_bytes()
                          ).hexdigest()[:16]


def default_entry() -> Path:
    rel = Path(f"azurite-{pinned_version()}-{install_key()}") / "node_modules/azurite/dist/src/blob/main.js"
    if os.environ.get("LATHE_CONTROLPLANE_CACHE"):
        return Path(os.environ["LATHE_CONTROLPLANE_CACHE"]) / rel
    candidates = [REPO_ROOT / ".cache" / "controlplane" / rel, Path.home() / ".cache" / "lathe" / "controlplane" / rel]
    return next((c for c in candidates if (c.parents[5] / ".complete").exists()), candidates[0])


def find_entry(entry: Path | str | None = None) -> Path:
    path = Path(entry or default_entry())
    if not path.is_file():
        raise AzuriteError(f"Azurite {pinned_version()} is not installed at {path} (key {install_key()}).\n"
                           f"Install it first (about 2.5 min cold, then reused):\n    {INSTALL_CMD}")
    return path


def shared_key(method: str, account: str, key: str, path: str, query: dict[str, str], headers: dict[str, str]) -> str:
    """The Authorization header of a Blob service request (Shared Key, the 2009-09-19+ string to sign);
    `path` is the URL's path, which on Azurite (addressed by IP) starts with the account."""
    h = {k.lower(): v for k, v in headers.items()}
    length = h.get("content-length", "")
    canon_headers = "".join(f"{k}:{h[k]}\n" for k in sorted(h) if k.startswith("x-ms-"))
    canon_res = f"/{account}{path}" + "".join(f"\n{k.lower()}:{query[k]}" for k in sorted(query))
    to_sign = "\n".join([method, h.get("content-encoding", ""), h.get("content-language", ""),
                         "" if length == "0" else length, h.get("content-md5", ""), h.get("content-type", ""), "",
                         "", "", "", "", ""]) + "\n" + canon_headers + canon_res
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    return f"SharedKey {account}:{sig}"


class AzuriteServer(LocalServer):
    name = "azurite"
    error = AzuriteError

    def __init__(self, workdir=None, *, entry: Path | str | None = None, node: str | None = None, **kw):
        super().__init__(workdir, **kw)
        self.entry = entry
        self.node = node or shutil.which("node") or "node"
        self.account = f"lathe{secrets.token_hex(4)}"
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()

    @property
    def endpoint(self) -> str:
        """The blob endpoint with the account in the path (how Azurite is addressed by IP)."""
        return f"http://{self.host}:{self.port}/{self.account}"

    def start(self):
        self._entry = find_entry(self.entry)
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        return super().start()

    def _command(self) -> list[str]:
        return [self.node, str(self._entry), "--blobHost", self.host, "--blobPort", str(self.port),
                "--location", str(self.workdir / "data"), "--disableTelemetry", "--skipApiVersionCheck"]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURITE_")}
        env["AZURITE_ACCOUNTS"] = f"{self.account}:{self.key}"  # in the environment, not on the command line
        return env

    def _ready(self) -> bool:
        # Azurite reports a failed listen (a port taken) and then may keep running: fail at once.
        fatal = [ln for ln in self.log_tail(2000).splitlines() if "Exit due to unhandled error" in ln]
        if fatal:
            raise AzuriteError(f"azurite exited early: {fatal[-1]}")
        try:
            status, _ = self.request("GET", "", {"comp": "list"}, timeout=2)
            return status == 200
        except OSError:
            return False

    def request(self, method: str, path: str, query: dict[str, str] | None = None, body: bytes = b"",
                headers: dict[str, str] | None = None, key: str | None = None, timeout: float = 30.0
                ) -> tuple[int, bytes]:
        """One Shared-Key-signed request; path is /container[/blob] (or "" for the account)."""
        query, headers = dict(query or {}), dict(headers or {})
        headers.update({"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": API_VERSION})
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        headers["Authorization"] = shared_key(method, self.account, key or self.key, f"/{self.account}{path}", query,
                                             headers)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            target = f"/{self.account}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
            conn.request(method, target, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def make_container(self, name: str) -> str:
        status, body = self.request("PUT", f"/{name}", {"restype": "container"})
        if status not in (201, 409):
            raise AzuriteError(f"create container {name!r}: HTTP {status} {body[:300]!r}")
        return name

    make_bucket = make_container

    def sas_token(self, permissions: str = "racwdl", hours: float = 2, key: str | None = None) -> str:
        """An account SAS (blob service; service, container and object resources)."""
        start = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = [self.account, permissions, "b", "sco", start, expiry, "", "https,http", API_VERSION, ""]
        sig = base64.b64encode(hmac.new(base64.b64decode(key or self.key), ("\n".join(fields) + "\n").encode(),
                                        hashlib.sha256).digest()).decode()
        q = {"sv": API_VERSION, "ss": "b", "srt": "sco", "sp": permissions, "st": start, "se": expiry,
             "spr": "https,http", "sig": sig}
        return urllib.parse.urlencode(q)

    def settings(self, *, key: str | None = None, sas: str | None = None):
        from lathe.storage.azure import AzureSettings

        return AzureSettings(self.account, None if sas else (key or self.key), sas, self.endpoint)

    def client(self, **kw):
        from lathe.storage.objects import ObjectClient

        return ObjectClient(self.settings(**kw), retries=0)

    def worker_env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_NAME": self.account, "AZURE_STORAGE_ACCOUNT_KEY": self.key,
                "AZURE_STORAGE_ENDPOINT": self.endpoint}
