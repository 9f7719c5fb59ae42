"""Parsing of model/data/repository locations (pure; resolving them is storage.resolve's job).

Forms: a plain path, file:///path, pvc://claim/path (a PersistentVolumeClaim mounted into the
Job at $LATHE_PVC_ROOT/claim), https://host/path (read-only, needs a sha256 for models and data) and the
object stores s3://bucket/key, gs://bucket/key and az://container/key (credentials from spec.storage.s3,
.gcs, .azure; docs/storage.md). Every form's path is checked by storage.paths (the same rules for every
scheme): nothing parsed here can climb out of its claim, bucket or prefix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .paths import check_local, check_location, safe_join

SCHEMES = ("file", "pvc", "https", "s3", "gs", "az")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """-> (scheme, authority, path). authority is the claim for pvc://, the bucket for s3:// and gs://, the
    container for az://. Raises ValueError (storage.paths.PathRefused for a path that could escape: '..', '.',
    empty segments, an absolute key, backslashes, NUL)."""
    if "://" not in uri:
        if not uri.strip():
            raise ValueError("empty location")
        return "file", "", check_local(uri, uri)
    scheme, rest = uri.split("://", 1)
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme}:// (supported: path, {', '.join(s + '://' for s in SCHEMES)})")
    if scheme == "file":
        return "file", "", check_local(rest, uri)
    authority, _, path = rest.partition("/")
    if not authority:
        raise ValueError(f"{uri}: {scheme}:// needs a {'claim' if scheme == 'pvc' else 'host or bucket'} name")
    if scheme == "pvc" and not _CLAIM.match(authority):
        raise ValueError(f"{uri}: {authority!r} is not a valid PersistentVolumeClaim name")
    check_location(uri, uri)  # the same rules for every scheme (an https query included)
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
    """Where a claim (and `sub` inside it) is in this process: $LATHE_PVC_MOUNTS (JSON {claim: path}, what
    the operator's Job sets) first, then $LATHE_PVC_ROOT/<claim> (default /mnt/pvc). `sub` is resolved,
    symlinks included, and refused (PathRefused) when it lands outside the claim."""
    if not _CLAIM.match(claim):
        raise ValueError(f"{claim!r} is not a valid PersistentVolumeClaim name")
    mounts = json.loads(os.environ.get("LATHE_PVC_MOUNTS") or "{}")
    base = Path(mounts[claim]) if claim in mounts else Path(os.environ.get("LATHE_PVC_ROOT", "/mnt/pvc")) / claim
    return safe_join(base, sub, f"pvc://{claim}/{sub}") if sub else base
