"""Headless Chromium (Debian's `chromium`, installed by e2e/node/install.sh) taking a screenshot of
a local HTML file; its whole process group is killed on every path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from PIL import Image


def binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("chromium is not installed: run e2e/node/install.sh (apt-get install chromium)")
    return found


def screenshot(html: Path, png: Path, width: int = 900, height: int = 700, timeout: float = 90) -> Image.Image:
    with tempfile.TemporaryDirectory(prefix="lathe-chromium-") as profile:
        cmd = [binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # renderer and zygote children too
            except ProcessLookupError:
                pass
            proc.wait()
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {out.decode(errors='replace')[-2000:]}")
    return Image.open(png).convert("RGB")


def count_color(img: Image.Image, hex_color: str, tol: int = 24) -> int:
    """Pixels within `tol` (per channel) of the colour."""
    want = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(n for n, px in img.getcolors(maxcolors=img.width * img.height)
               if all(abs(a - b) <= tol for a, b in zip(px, want, strict=True)))


def blend(hex_color: str, opacity: float) -> str:
    """The colour a fill of `opacity` over white shows."""
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - (255 - c) * opacity):02x}" for c in rgb)
