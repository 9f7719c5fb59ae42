"""A Triton model repository on an object store (`s3://bucket/prefix`, `gs://bucket/prefix`,
`az://container/prefix`), same layout as in a folder, written through storage/objects.py.

Object stores have no rename and no directories, and a conditional create (`If-None-Match: *`) is not
exclusive on every S3 server (versitygw checks it before it reads the body; see e2e/s3/README.md), so:

1. Claim a number. A publisher writes `<model>/.lathe-claims/<V>/<token>` for V = 1 + the highest version
   or claim it sees, then lists that folder: it owns V only if its claim is the only one there and no
   object exists under `<model>/<V>/`. Two publishers that claim V together both see two claims, both
   withdraw and retry after a random pause; one that lists first and sees itself alone was written before
   the other's claim, so the other sees it. (Needs read-after-write listing, which S3, GCS and Azure Blob
   all give.) A claim left by a crashed publisher only makes the next one take V+1: a gap, never a clobber.
2. Upload the version under `<model>/.lathe-staging/<token>/`, check every object's size (and its MD5
   where the store's ETag is one), then copy it into `<model>/<V>/` server-side, `lathe.json` last: a
   version is complete when its lathe.json exists (what the rollout looks for). Triton never loads it
   before the rollout does: config.pbtxt's version_policy names the served versions only, and a first
   version's config.pbtxt is written after the version itself.
3. Replace config.pbtxt (a PUT is atomic per object), keeping the served versions, then drop the
   staging objects and the claim. Existing versions are never written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from lathe.api.status import Published
from lathe.storage import StorageError, StorageNotFound
from lathe.storage.clients import client_for_uri
from lathe.storage.objects import ObjectClient

from .staging import Identity, PublishError, Staged, next_config

log = logging.getLogger("lathe.publish")
CLAIMS = ".lathe-claims"
STAGING = ".lathe-staging"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def model_prefix(repository: str, model_name: str, client: ObjectClient | None = None
                 ) -> tuple[ObjectClient, str, str]:
    """(client, bucket, "<prefix>/<model>") of a model in an object-store repository."""
    client, bucket, prefix = client_for_uri(repository.rstrip("/"), client)
    prefix = prefix.strip("/")
    return client, bucket, f"{prefix}/{model_name}" if prefix else model_name


def object_versions(client: ObjectClient, bucket: str, base: str) -> list[int]:
    """Numeric version folders under the model, as Triton sees them."""
    _, prefixes = client.list(bucket, f"{base}/", delimiter="/")
    names = [p[len(base) + 1:].rstrip("/") for p in prefixes]
    return sorted(int(n) for n in names if n.isdigit())


def object_meta(client: ObjectClient, bucket: str, base: str, version: int) -> dict | None:
    try:
        return json.loads(client.get_bytes(bucket, f"{base}/{version}/lathe.json"))
    except (StorageError, ValueError):
        return None


def _claims(client: ObjectClient, bucket: str, base: str) -> dict[int, list[str]]:
    objs, _ = client.list(bucket, f"{base}/{CLAIMS}/")
    out: dict[int, list[str]] = {}
    for o in objs:
        v, _, token = o.key[len(base) + len(CLAIMS) + 2:].partition("/")
        if v.isdigit():
            out.setdefault(int(v), []).append(token)
    return out


def _claim(client: ObjectClient, bucket: str, base: str, token: str) -> int | None:
    """A version number this publisher now owns, or None when it lost a race (retry)."""
    existing = object_versions(client, bucket, base)
    claims = _claims(client, bucket, base)
    version = max([0, *existing, *claims]) + 1
    key = f"{base}/{CLAIMS}/{version}/{token}"
    client.put_bytes(bucket, key, json.dumps({"token": token, "at": time.time()}).encode(),
                     content_type="application/json")
    mine_alone = _claims(client, bucket, base).get(version) == [token]
    taken = bool(client.list(bucket, f"{base}/{version}/", limit=1)[0])
    if mine_alone and not taken:
        return version
    client.delete(bucket, key)
    return None


class ObjectRepository:
    """Versions of models in a repository on an object store (see the module's docstring)."""

    def __init__(self, repository: str, client: ObjectClient | None = None):
        self.repository = repository
        self.client, self.bucket, prefix = client_for_uri(repository.rstrip("/"), client)
        self.prefix = prefix.strip("/")

    def _base(self, model_name: str) -> str:
        return f"{self.prefix}/{model_name}" if self.prefix else model_name

    def existing(self, model_name: str, ident: Identity, candidate: str) -> Published | None:
        """A version already holding this candidate and digest (an operator restarted after publishing)."""
        base = self._base(model_name)
        for v in reversed(object_versions(self.client, self.bucket, base)):
            meta = object_meta(self.client, self.bucket, base, v)
            if meta and meta.get("sha256") == ident.digest and meta.get("candidate") == candidate:
                return self._published(model_name, v, meta.get("flavour", ident.flavour.name), ident.digest,
                                       candidate)
        return None

    @contextlib.contextmanager
    def staging(self, model_name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix=f"lathe-{model_name}-") as tmp:
            yield Path(tmp)

    def commit(self, model_name: str, st: Staged, candidate: str) -> Published:
        client, bucket, base = self.client, self.bucket, self._base(model_name)
        client.check_bucket(bucket)
        token = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        version = None
        for attempt in range(50):
            version = _claim(client, bucket, base, token)
            if version is not None:
                break
            time.sleep(random.uniform(0.05, 0.25) * min(attempt + 1, 8))
        if version is None:
            raise PublishError(f"{model_name}: could not claim a version number in {client.uri(bucket, base)} "
                               "after 50 attempts")
        claim = f"{base}/{CLAIMS}/{version}/{token}"
        staging = f"{base}/{STAGING}/{token}"
        names = sorted(p.name for p in st.dir.iterdir())
        try:
            for n in names:
                client.upload(bucket, f"{staging}/{n}", st.dir / n)
            _check(client, bucket, staging, st)
            for n in [n for n in names if n != "lathe.json"] + ["lathe.json"]:
                client.copy(bucket, f"{staging}/{n}", f"{base}/{version}/{n}")
            existing = [v for v in object_versions(client, bucket, base) if v != version]
            # Read after the upload, so the served versions it keeps are those of now (next_config keeps them).
            old = _text(client, bucket, f"{base}/config.pbtxt")
            cfg = next_config(st, model_name, old, existing, version)
            client.put_bytes(bucket, f"{base}/config.pbtxt", cfg.encode(), content_type="text/plain")
        except (PublishError, StorageError):
            _drop_partial(client, bucket, base, version)
            raise
        finally:
            for n in names:
                _quiet_delete(client, bucket, f"{staging}/{n}")
            _quiet_delete(client, bucket, claim)
        log.info("published %s (%s)", client.uri(bucket, f"{base}/{version}"), candidate)
        return self._published(model_name, version, st.flavour.name, st.digest, candidate)

    def _published(self, model_name: str, version: int, flavour: str, digest: str, candidate: str) -> Published:
        return Published(repository=self.repository, model_name=model_name, version=version, flavour=flavour,
                         sha256=digest, candidate=candidate,
                         path=self.client.uri(self.bucket, f"{self._base(model_name)}/{version}"))


def _check(client: ObjectClient, bucket: str, staging: str, st: Staged) -> None:
    """Every staged object has its file's size, and its MD5 where the store's ETag is one (an S3 single-part
    PUT; GCS and Azure ETags are not digests, and lathe.json holds every file's sha256 for readers)."""
    objs, _ = client.list(bucket, f"{staging}/")
    got = {o.key[len(staging) + 1:]: o for o in objs}
    for p in st.dir.iterdir():
        o = got.get(p.name)
        if o is None or o.size != p.stat().st_size:
            raise PublishError(f"{client.uri(bucket, f'{staging}/{p.name}')}: upload incomplete "
                               f"({o.size if o else 'missing'} of {p.stat().st_size} bytes)")
        if client.scheme == "s3" and _MD5.match(o.etag) and o.etag != hashlib.md5(p.read_bytes()).hexdigest():  # noqa: S324
            raise PublishError(f"{client.uri(bucket, f'{staging}/{p.name}')}: stored content differs from the upload")


def _drop_partial(client: ObjectClient, bucket: str, base: str, version: int) -> None:
    """A version we claimed but could not finish is removed, so no reader meets half of it."""
    try:
        for o in client.list(bucket, f"{base}/{version}/")[0]:
            client.delete(bucket, o.key)
    except StorageError as e:
        log.warning("could not remove the unfinished %s: %s", client.uri(bucket, f"{base}/{version}"), e)


def _quiet_delete(client: ObjectClient, bucket: str, key: str) -> None:
    try:
        client.delete(bucket, key)
    except StorageError as e:
        log.warning("could not delete %s: %s", client.uri(bucket, key), e)


def _text(client: ObjectClient, bucket: str, key: str) -> str | None:
    try:
        return client.get_bytes(bucket, key).decode()
    except StorageNotFound:
        return None
