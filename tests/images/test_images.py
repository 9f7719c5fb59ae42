"""Both images, as a Lathe pod runs them: non-root 65532, read-only root with /tmp writable, no
capabilities, no compilers; versions exactly those of pyproject.toml and the image's lock."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from e2e.images import locks
from e2e.images.keys import version

PROBE = (Path(__file__).parent / "probe.py").read_text()
MISSING = re.compile(r"^(\S+) (\S+) requires (\S+), which is not installed\.$")


@pytest.fixture(scope="module", params=["operator", "worker"])
def probed(request, docker, images):
    name = request.param
    p = docker.run(images[name], "-c", PROBE, entrypoint="/opt/lathe/bin/python")
    assert p.returncode == 0, f"probe failed in {name}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return name, json.loads(p.stdout.strip().splitlines()[-1])


def _pins(lines: list[str]) -> dict[str, str]:
    """pip freeze -> {name: version}; Lathe itself shows as `lathe @ file:///wheels/...` (its version is
    checked through its metadata)."""
    out = {}
    for line in lines:
        req = Requirement(line)
        out[canonicalize_name(req.name)] = str(next(iter(req.specifier)).version) if req.specifier else req.url
    return out


def test_image_config_is_non_root_with_lathe_entrypoint(docker, images):
    for name, r in images.items():
        cfg = json.loads(docker("image", "inspect", r).stdout)[0]["Config"]
        assert cfg["User"] == "65532:65532", (name, cfg["User"])
        assert cfg["Entrypoint"] == ["lathe"], (name, cfg["Entrypoint"])
        assert cfg["Labels"]["dev.lathe.content-key"], name


def test_runs_as_65532_read_only_with_tmp_writable(probed):
    name, p = probed
    assert (p["uid"], p["gid"], p["user"]) == (65532, 65532, "lathe"), (name, p["uid"], p["gid"], p["user"])
    assert p["write_root"] == "EROFS" and p["write_venv"] == "EROFS", (name, p["write_root"], p["write_venv"])
    assert p["write_tmp"] == "ok", (name, p["write_tmp"])
    assert p["env"]["HOME"] == "/tmp" and p["env"]["TMPDIR"] == "/tmp", (name, p["env"])
    assert int(p["cap_eff"], 16) == 0 and p["no_new_privs"] == "1", (name, p["cap_eff"], p["no_new_privs"])
    assert p["python"].startswith("3.11.") and p["executable"] == "/opt/lathe/bin/python", (name, p["python"])


def test_no_compilers(probed):
    name, p = probed
    found = {c: w for c, w in p["which"].items() if w}
    assert not found, f"{name} has compilers or build tools on PATH: {found}"
    assert not p["compiler_files"], f"{name} has compiler executables: {p['compiler_files']}"
    assert not p["build_packages"], f"{name} has build packages installed: {p['build_packages']}"


def test_versions_match_pyproject_and_lock(probed):
    name, p = probed
    assert p["lathe"] == version(), (name, p["lathe"], version())
    assert p["freeze_rc"] == 0, p["freeze_err"]
    have = _pins(p["freeze"])
    want = {n: v for n, (v, _) in locks.Lock.read(locks.lock_path(name)).pins.items()}
    want |= {"pip": "26.3"}  # the one e2e/setup.sh pins
    assert have.pop("lathe", "").startswith("file:///wheels/lathe-"), p["freeze"]
    extra = sorted(f"{n}=={v}" for n, v in have.items() if n not in want)
    missing = sorted(f"{n}=={v}" for n, v in want.items() if n not in have)
    wrong = sorted(f"{n}: {have[n]} (lock: {v})" for n, v in want.items() if n in have and have[n] != v)
    assert not (extra or missing or wrong), f"{name}: not installed as pinned: extra {extra}, missing {missing}, wrong {wrong}"


def test_pip_check_finds_only_what_is_left_out_on_purpose(probed):
    """pip check may only report packages e2e/images/locks.py leaves out of this image on purpose."""
    name, p = probed
    problems = [line for line in p["pip_check"] if line != "No broken requirements found."]
    unexpected = [line for line in problems
                  if not (m := MISSING.match(line)) or canonicalize_name(m[3]) not in locks.left_out(name)]
    assert not unexpected, f"{name}: pip check: {problems}"
    assert (p["pip_check_rc"] == 0) == (not problems)
