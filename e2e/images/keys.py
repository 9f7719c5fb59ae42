"""Content keys of Lathe's images: what images/build.sh names its tars by and built.py looks up.

A key hashes every input of a build, so a finished tar is reused exactly when nothing it was built
from changed. Standard library only: build.sh runs this with whatever python3 the machine has.

    python3 -m e2e.images.keys ca | base-key | plan
"""

from __future__ import annotations

import configparser
import hashlib
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPOS = {"operator": "ghcr.io/lathe-dev/lathe-operator", "worker": "ghcr.io/lathe-dev/lathe-worker",
         "worker-gpu": "ghcr.io/lathe-dev/lathe-worker-gpu"}
BUILT = ("operator", "worker")  # worker-gpu needs NVIDIA's registry (nvcr.io) for its base
BASE_SCRIPT = ROOT / "e2e/images/base.sh"
SKIP_DIRS = {"__pycache__", ".pytest_cache"}  # what the .dockerignore files keep out of the context


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def ref(name: str) -> str:
    return f"{REPOS[name]}:{version()}"


def cache_dir() -> Path:
    return Path(os.environ.get("LATHE_IMAGE_CACHE") or Path.home() / ".cache/lathe/images")


def _pip_config_cert() -> str | None:
    """`cert` from pip's config files, in pip's order (later files win)."""
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path.home() / ".pip/pip.conf",
             Path.home() / ".config/pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    found = None
    for f in files:
        if f.is_file():
            cp = configparser.ConfigParser()
            cp.read(f)
            for section in ("global", "install"):
                found = cp.get(section, "cert", fallback=found)
    return found


def ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (where a TLS-intercepting proxy's CA lives), if one is set."""
    for cand in (os.environ.get("PIP_CERT"), _pip_config_cert(), os.environ.get("SSL_CERT_FILE"),
                 os.environ.get("REQUESTS_CA_BUNDLE")):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def base_key() -> str:
    """The CI base: base.sh's recipe, the mirror, the CA bundle baked in; or a given base's name."""
    given = os.environ.get("LATHE_IMAGE_BASE")
    if given:
        return _digest([("given", given.encode())])
    ca = ca_bundle()
    return _digest([("recipe", BASE_SCRIPT.read_bytes()),
                    ("mirror", os.environ.get("LATHE_DEBIAN_MIRROR", "").encode()),
                    ("ca", ca.read_bytes() if ca else b"")])


def _tree(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for f in sorted(filenames):
            if not f.endswith(".pyc"):
                p = Path(dirpath, f)
                out.append((str(p.relative_to(ROOT)), p.read_bytes()))
    return out


def inputs(name: str) -> list[Path]:
    """The files of one image's build context (its .dockerignore lets exactly these in)."""
    d = ROOT / "images"
    return [d / f"{name}.Dockerfile", d / f"{name}.Dockerfile.dockerignore", d / f"{name}.lock",
            ROOT / "pyproject.toml"]


def image_key(name: str, base: str | None = None) -> str:
    parts = [("name", name.encode()), ("base", (base or base_key()).encode())]
    parts += [(str(p.relative_to(ROOT)), p.read_bytes()) for p in inputs(name)]
    return _digest(parts + _tree(ROOT / "operator"))


def tar_path(name: str, key: str | None = None) -> Path:
    key = key or image_key(name)
    return cache_dir() / f"lathe-{name}-{version()}-{key[:16]}.tar"


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "plan"
    if cmd == "ca":
        ca = ca_bundle()
        print(ca or "")
    elif cmd == "base-key":
        print(base_key())
    elif cmd == "plan":  # one line per built image: name ref key tar
        base = base_key()
        for name in BUILT:
            key = image_key(name, base)
            print(name, ref(name), key, tar_path(name, key))
    else:
        print(f"usage: python3 -m e2e.images.keys ca|base-key|plan (got {cmd!r})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
