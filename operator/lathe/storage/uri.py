"""Parsing of model/data/repository locations (pure; resolving them is storage.resolve's job).

Forms: a plain path, file:///path, pvc://claim/path (a PersistentVolumeClaim mounted into the
Job at $LATHE_PVC_ROOT/claim), https://host/path (read-only, needs a sha256 for models and data) and the
object stores s3://bucket/key, gs://bucket/key and az://container/key (credentials from spec.storage.s3,
.gcs, .azure; docs/storage.md)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SCHEMES = ("file", "pvc", "https", "s3", "gs", "az")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """-> (scheme, authority, path). authority is the claim for pvc://, the bucket for s3:// and gs://, the
    container for az://."""
    if "://" not in uri:
        if not uri.strip():
            raise ValueError("empty location")
        return "file", "", uri
    scheme, rest = uri.split("://", 1)
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme}:// (supported: path, {', '.join(s + '://' for s in SCHEMES)})")
    if scheme == "file":
        return "file", "", rest
    authority, _, path = rest.partition("/")
    if not authority:
        raise ValueError(f"{uri}: {scheme}:// needs a {'claim' if scheme == 'pvc' else 'host or bucket'} name")
    if scheme == "pvc" and not _CLAIM.match(authority):
        raise ValueError(f"{uri}: {authority!r} is not a valid PersistentVolumeClaim name")
    return scheme, authority, path


def pvc_claims(*uris: str | None) -> list[str]:
    """The claims a set of locations needs mounted, in first-seen order."""
    out: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = parse_uri(uri)[1]
            if claim not in out:
                out.append(claim)
    return out


def pvc_path(claim: str, sub: str = "") -> Path:
    """Where a claim is mounted in this process: $LATHE_PVC_MOUNTS (JSON {claim: path}, what the
    operator's Job sets) first, then $LATHE_PVC_ROOT/<claim> (default /mnt/pvc)."""
    mounts = json.loads(os.environ.get("LATHE_PVC_MOUNTS") or "{}")
    base = Path(mounts[claim]) if claim in mounts else Path(os.environ.get("LATHE_PVC_ROOT", "/mnt/pvc")) / claim
    return base / sub if sub else base
