"""A Google Cloud Storage emulator for the tests: fake-gcs-server (github.com/fsouza/fake-gcs-server
v1.56.1, pinned in e2e/gcs/go.mod, built by e2e/gcs/build.sh into
``$LATHE_CONTROLPLANE_CACHE/fake-gcs-server-<version>-<key>/``), memory backend, plain HTTP on a
loopback port. It takes any request without authentication.

What it serves and what it does not (checked by tests/stores): the JSON API (buckets, uploads, listing)
and the XML API's GET/HEAD/DELETE and list; NOT the XML API's object PUT, multipart upload or copy,
which Rust's object_store (so obstore, so Lathe) uses to write: such a PUT is answered
``400 invalid uploadType`` (fsouza/fake-gcs-server#331). So objects are seeded here through the JSON
API (:meth:`GCSServer.upload`), and writes through Lathe cannot be tested against this server.

Clients: :meth:`GCSServer.key_json` (a service-account key that tells object_store to send no token,
``disable_oauth``, and where the server is, ``gcs_base_url``), :meth:`GCSServer.client` (Lathe's
ObjectClient), :meth:`GCSServer.triton_env` (Triton's google-cloud-cpp: CLOUD_STORAGE_EMULATOR_ENDPOINT).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from e2e.gotool import GoTool
from e2e.stores.server import LocalServer, ServerError

HERE = Path(__file__).resolve().parent
MODULE = "github.com/fsouza/fake-gcs-server"


class GCSServerError(ServerError):
    pass


TOOL = GoTool(HERE, MODULE, "fake-gcs-server", GCSServerError, cold_minutes=6)
pinned_version, build_key, default_binary, find_binary = (TOOL.pinned_version, TOOL.build_key, TOOL.default_binary,
                                                          TOOL.find_binary)


class GCSServer(LocalServer):
    name = "fake-gcs-server"
    error = GCSServerError

    def __init__(self, workdir=None, *, binary: Path | str | None = None, **kw):
        super().__init__(workdir, **kw)
        self.binary = binary

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self):
        self._bin = find_binary(self.binary)
        return super().start()

    def _command(self) -> list[str]:
        hostport = f"{self.host}:{self.port}"
        return [str(self._bin), "-scheme", "http", "-host", self.host, "-port", str(self.port), "-backend", "memory",
                "-public-host", hostport, "-external-url", self.endpoint, "-log-level", "warn"]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/_internal/healthcheck", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    # -- data, through the JSON API ---------------------------------------------------------
    def _json(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> dict:
        req = urllib.request.Request(f"{self.endpoint}{path}", data=body, method=method,
                                     headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise GCSServerError(f"{method} {path}: HTTP {e.code} {e.read()[:300]!r}") from None
        return json.loads(raw) if raw else {}

    def make_bucket(self, name: str) -> str:
        self._json("POST", "/storage/v1/b", json.dumps({"name": name}).encode())
        return name

    def upload(self, bucket: str, key: str, data: bytes) -> dict:
        """Write an object the way this server takes writes (JSON API, uploadType=media)."""
        q = urllib.parse.urlencode({"uploadType": "media", "name": key})
        return self._json("POST", f"/upload/storage/v1/b/{bucket}/o?{q}", data, "application/octet-stream")

    # -- clients ----------------------------------------------------------------------------------
    def key_json(self) -> str:
        return json.dumps({"type": "service_account", "client_email": "lathe-test@lathe.iam.gserviceaccount.com",
                           "private_key_id": "", "private_key": "", "gcs_base_url": self.endpoint,
                           "disable_oauth": True})

    def client(self):
        from lathe.storage.gcs import GCSSettings
        from lathe.storage.objects import ObjectClient

        return ObjectClient(GCSSettings(self.key_json(), self.endpoint), retries=0)

    def worker_env(self) -> dict[str, str]:
        return {"GOOGLE_SERVICE_ACCOUNT_KEY": self.key_json(), "LATHE_GCS_ENDPOINT": self.endpoint}

    def triton_env(self, workdir: Path) -> dict[str, str]:
        """Triton's Cloud Storage client (google-cloud-cpp) talks to this server when
        CLOUD_STORAGE_EMULATOR_ENDPOINT is set; it still wants a credentials file to exist."""
        key = Path(workdir) / "gcs-key.json"
        key.write_text(json.dumps({"type": "service_account", "client_email": "lathe-test@lathe.iam.gserviceaccount.com",
                                   "private_key": "", "project_id": "lathe-test"}))
        return {"CLOUD_STORAGE_EMULATOR_ENDPOINT": self.endpoint, "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
