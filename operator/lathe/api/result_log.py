"""The full worker result as it travels through the worker's log: the termination message holds
only a 4 KiB summary, and the worker holds no Kubernetes credentials, so its last log lines carry
the whole result (result.json, the report's details, the effective budget), gzipped, base64, in
lines short enough for any container runtime's log format. The operator reads them through the
API server (pods/log) when the Job succeeds and keeps them in a ConfigMap owned by the resource.

    lines = encode(doc)            # worker: print each line to stdout
    doc = decode(log_text)         # operator / `lathe report`: None when absent or incomplete
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from typing import Any

BEGIN, LINE, END = "LATHE-RESULT-BEGIN", "LATHE-RESULT", "LATHE-RESULT-END"
CHUNK = 8000  # characters per line: below containerd's 16 KiB partial-line split
LIMIT = 900_000  # bytes of gzip: a ConfigMap holds at most 1 MiB
CONFIG_MAP_KEY = "result.json.gz"
_LINE = re.compile(rf"^{LINE} (\d+)/(\d+) ([A-Za-z0-9+/=]+)\s*$")
_BEGIN = re.compile(rf"^{BEGIN} parts=(\d+) sha256=([0-9a-f]{{64}})\s*$")


def pack(doc: dict[str, Any]) -> bytes:
    """gzip of the JSON, shedding the bulkiest details until it fits a ConfigMap."""
    def gz(d: dict[str, Any]) -> bytes:
        return gzip.compress(json.dumps(d, separators=(",", ":"), default=str).encode(), mtime=0)

    data = gz(doc)
    if len(data) > LIMIT and isinstance(doc.get("details"), dict):
        details = {k: v for k, v in doc["details"].items() if k != "candidates"}
        data = gz({**doc, "details": details, "trimmed": "per-candidate details dropped to fit"})
    if len(data) > LIMIT:
        data = gz({k: v for k, v in doc.items() if k != "details"} | {"trimmed": "details dropped to fit"})
    return data


def unpack(data: bytes) -> dict[str, Any]:
    return json.loads(gzip.decompress(data))


def encode(doc: dict[str, Any]) -> list[str]:
    text = base64.b64encode(pack(doc)).decode()
    parts = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    digest = hashlib.sha256(text.encode()).hexdigest()
    return ([f"{BEGIN} parts={len(parts)} sha256={digest}"]
            + [f"{LINE} {i + 1}/{len(parts)} {p}" for i, p in enumerate(parts)] + [END])


def extract(log_text: str) -> bytes | None:
    """The gzip payload of the last complete block in a log; None when there is none (a worker
    that died first, a log cut by rotation or by the tail read)."""
    found: bytes | None = None
    parts: dict[int, str] = {}
    total, digest = 0, ""
    for raw in log_text.splitlines():
        line = raw.strip()
        if m := _BEGIN.match(line):
            parts, total, digest = {}, int(m.group(1)), m.group(2)
        elif (m := _LINE.match(line)) and total and int(m.group(2)) == total:
            parts[int(m.group(1))] = m.group(3)
        elif line == END and total and len(parts) == total:
            text = "".join(parts[i] for i in range(1, total + 1))
            if hashlib.sha256(text.encode()).hexdigest() == digest:
                found = base64.b64decode(text)
            parts, total = {}, 0
    return found


def decode(log_text: str) -> dict[str, Any] | None:
    data = extract(log_text)
    return unpack(data) if data is not None else None
