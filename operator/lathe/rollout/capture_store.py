"""Where the operator writes a production capture: a folder (a path, or pvc://claim/path on a claim the
operator mounts) or an object-store prefix (s3://, gs://, az://). Each file is written whole (temp +
rename; one PUT on an object store), so a reader
never sees half a data set."""

from __future__ import annotations

import os
from pathlib import Path

from lathe.serving.folder_repository import write_atomic
from lathe.storage.paths import check_name, safe_join
from lathe.storage.uri import parse_uri, pvc_path


class CaptureStore:
    def __init__(self, uri: str, s3_client=None):
        self.uri = uri.rstrip("/")
        scheme, authority, path = parse_uri(self.uri)
        if scheme == "https":
            raise ValueError(f"{uri}: a capture cannot be written to https://")
        self.s3 = None
        if scheme in ("s3", "gs", "az"):
            from lathe.storage.clients import client_for_uri  # noqa: PLC0415

            self.s3, self.bucket, prefix = client_for_uri(self.uri, s3_client)  # any object store's client
            self.prefix = prefix.strip("/")
        else:
            # resolved inside the claim (storage.paths.safe_join): a symlink out of it is refused
            self.root = pvc_path(authority, path.rstrip("/")) if scheme == "pvc" else Path(path).expanduser()

    def _file(self, name: str) -> Path:
        return safe_join(self.root, check_name(name, "capture file"), "capture file")

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        if self.s3:
            self.s3.put_bytes(self.bucket, self._key(name), data)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self._file(name), data)

    def get(self, name: str) -> bytes:
        if self.s3:
            return self.s3.get_bytes(self.bucket, self._key(name))
        return self._file(name).read_bytes()

    def names(self, prefix: str) -> list[str]:
        if self.s3:
            objs, _ = self.s3.list(self.bucket, self._key(prefix))
            return sorted(o.key.rsplit("/", 1)[-1] for o in objs)
        try:
            return sorted(n for n in os.listdir(self.root) if n.startswith(prefix) and not n.startswith("."))
        except FileNotFoundError:
            return []

    def delete(self, name: str) -> None:
        if self.s3:
            self.s3.delete(self.bucket, self._key(name))
        else:
            self._file(name).unlink(missing_ok=True)
