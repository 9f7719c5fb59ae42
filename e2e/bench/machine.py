"""What machine a bench ran on: CPU figures are labelled by the machine they came from."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model and its VNNI flags: CPU figures are labelled by the machine they came from."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "cpu"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "cpu")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}, {'/'.join(vnni) if vnni else 'no VNNI'}"

