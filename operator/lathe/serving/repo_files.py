"""The few file operations the rollout makes in a Triton model repository (read and replace a
config.pbtxt, check a version exists, create the router model), on a local folder or an object store.

Local: each replace is write-temp-then-rename, the router folder is renamed in whole. Object store: each replace
is one PUT (atomic per object); the router model is written model.py first, config.pbtxt last, so
Triton never finds a config without its code.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from .folder_repository import rename_noreplace, resolve_repository, write_atomic


class RepositoryFiles(Protocol):
    where: str

    def read_text(self, rel: str) -> str | None: ...  # None when absent
    def write_text(self, rel: str, text: str) -> None: ...
    def has_version(self, model: str, version: int) -> bool: ...
    def create_model(self, name: str, files: dict[str, bytes]) -> None: ...  # no-op when it exists


class LocalFiles:
    def __init__(self, root: Path):
        self.root = root
        self.where = str(root)

    def read_text(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, rel: str, text: str) -> None:
        write_atomic(self.root / rel, text.encode())

    def has_version(self, model: str, version: int) -> bool:
        return (self.root / model / str(version)).is_dir()

    def create_model(self, name: str, files: dict[str, bytes]) -> None:
        if (self.root / name).exists():
            return
        stage = Path(tempfile.mkdtemp(prefix=f".lathe-{name}-", dir=self.root))
        try:
            for rel, data in files.items():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                (stage / rel).write_bytes(data)
            try:
                rename_noreplace(stage, self.root / name)
            except FileExistsError:
                pass
        finally:
            shutil.rmtree(stage, ignore_errors=True)


class ObjectFiles:
    """A repository on s3://, gs:// or az:// (storage/objects.py)."""

    def __init__(self, repository: str, client=None):
        from lathe.storage.clients import client_for_uri  # noqa: PLC0415

        self.client, self.bucket, prefix = client_for_uri(repository.rstrip("/"), client)
        self.prefix = prefix.strip("/")
        self.where = repository

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def read_text(self, rel: str) -> str | None:
        from lathe.storage import StorageNotFound  # noqa: PLC0415

        try:
            return self.client.get_bytes(self.bucket, self._key(rel)).decode()
        except StorageNotFound:
            return None

    def write_text(self, rel: str, text: str) -> None:
        self.client.put_bytes(self.bucket, self._key(rel), text.encode(), content_type="text/plain")

    def has_version(self, model: str, version: int) -> bool:
        # Objects under <model>/<version>/ and no publisher still holding its claim (serving/object_repository.py)
        listed = self.client.list(self.bucket, self._key(f"{model}/{version}/"), limit=1)[0]
        claimed = self.client.list(self.bucket, self._key(f"{model}/.lathe-claims/{version}/"), limit=1)[0]
        return bool(listed) and not claimed

    def create_model(self, name: str, files: dict[str, bytes]) -> None:
        if self.read_text(f"{name}/config.pbtxt") is not None:
            return
        for rel in sorted(files, key=lambda r: r == "config.pbtxt"):  # config last
            self.client.put_bytes(self.bucket, self._key(f"{name}/{rel}"), files[rel])



def repository_files(repository: str | Path, client=None) -> RepositoryFiles:
    from lathe.storage.clients import is_object_uri  # noqa: PLC0415

    if is_object_uri(str(repository)):
        return ObjectFiles(str(repository), client)
    return LocalFiles(resolve_repository(repository))
