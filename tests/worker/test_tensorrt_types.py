"""Strict mypy on lathe/worker/backends/tensorrt.py against tensorrt-stubs (TensorRT 10.13's Python API): every
TensorRT call the backend makes must name a real API of that version with the right argument types. The
backend never runs here (no TensorRT, no GPU), so this is what keeps it honest; a probe file using APIs
TensorRT 10 removed must fail the same check, so a check that silently read `tensorrt` as Any would fail too.

tensorrt-stubs 10.13.0.35.1 cannot be used as installed: its `tensorrt/` folder has no py.typed (mypy skips
it: "module is installed, but missing library stubs or py.typed marker", every call then unchecked) and
its tensorrt_bindings/tensorrt.pyi does not parse (pybind11-stubgen wrote parameters named `in`, a keyword,
and one parameter without a default after defaulted ones) and its `bool: DataType` shadows the builtin in every
`-> bool` of the file. So the test copies the installed .pyi files
into a folder on MYPYPATH and repairs exactly those lines, checking that each repair still applies.
e2e/setup.sh installs the stubs into .venv/typing, outside site-packages (e2e/typing-requirements.txt says why)."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lathe.worker.backends import tensorrt as trtb

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "operator" / "lathe" / "worker" / "backends" / "tensorrt.py"
CONFIG = Path(__file__).with_name("mypy-tensorrt.ini")
STUBS = "10.13.0.35.1"
TYPING = Path(sys.prefix) / "typing"  # where e2e/setup.sh puts them

# (pattern, replacement, how many times it must apply) on tensorrt_bindings/tensorrt.pyi
REPAIRS = [
    (r"(?<=[(,] )in(?=: list\[)", "in_", 4),  # IPluginV2DynamicExt/IPluginV3 methods: `in: list[...]`
    (r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", 1),  # INetworkDefinition.add_scale_nd
    # the module defines `bool: DataType` (trt.bool), which shadows the builtin in every annotation of the file:
    # each `-> bool` would read as an unresolved type (Any), so `ok: str = parser.parse_from_file(...)` passed
    (r"(?<=-> )bool(?=:)|(?<=: )bool(?=$|[,)]| =)|(?<=\[)bool(?=[,\]])|(?<=, )bool(?=[,\]])", "builtins.bool", 378),
]

PROBE = '''
import tensorrt as trt


def probe(network: trt.INetworkDefinition, config: trt.IBuilderConfig, builder: trt.Builder) -> None:
    builder.build_engine(network, config)
    config.max_workspace_size = 1 << 30
    profile = builder.create_optimization_profile()
    profile.set_shape("x", [1, 3], [1, 3], [1, 3])
    ok: str = trt.OnnxParser(network, trt.Logger()).parse_from_file("m.onnx")
'''
PROBE_ERRORS = [  # (line, error code)
    (6, "attr-defined"),   # Builder.build_engine: TensorRT 8, removed in 10 (build_serialized_network)
    (7, "attr-defined"),   # IBuilderConfig.max_workspace_size: removed in 10 (set_memory_pool_limit)
    (9, "arg-type"),       # set_shape takes trt.Dims, not lists
    (10, "assignment"),    # parse_from_file returns bool
]


def _stub_tree(dst: Path) -> None:
    dist = next(iter(md.distributions(name="tensorrt-stubs", path=[str(TYPING)])), None)
    assert dist is not None, f"tensorrt-stubs not found in {TYPING} (e2e/setup.sh installs them there)"
    assert dist.version == STUBS, f"tensorrt-stubs {dist.version} installed, the check is written for {STUBS}"
    copied = 0
    for f in dist.files or []:
        if f.suffix == ".pyi":
            out = dst / str(f)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.locate(), out)
            copied += 1
    assert copied >= 3, f"tensorrt-stubs holds {copied} .pyi files"
    path = dst / "tensorrt_bindings" / "tensorrt.pyi"
    text = path.read_text()
    for pattern, repl, count in REPAIRS:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == count, f"repair {pattern!r} applied {n} times, expected {count}: the stubs changed"
    path.write_text("import builtins\n" + text)


def test_the_backend_targets_the_stubbed_tensorrt():
    """The TensorRT version the backend is written for (TRT_API) is the one the type check reads: the stubs
    installed in .venv/typing and the pin e2e/setup.sh installs them from (the GPU image's own TensorRT is
    tests/images/test_gpu_dockerfile.py's)."""
    installed = next(iter(md.distributions(name="tensorrt-stubs", path=[str(TYPING)])), None)
    assert installed is not None, f"tensorrt-stubs not found in {TYPING} (e2e/setup.sh installs them there)"
    pins = re.findall(r"^tensorrt-stubs==(\S+)$", (ROOT / "e2e" / "typing-requirements.txt").read_text(), re.M)
    assert pins == [installed.version] == [STUBS], (pins, installed.version, STUBS)
    assert installed.version.startswith(trtb.TRT_API + "."), (installed.version, trtb.TRT_API)


def test_tensorrt_backend_type_checks_against_tensorrt_stubs(tmp_path):
    stubs = tmp_path / "stubs"
    _stub_tree(stubs)
    probe = tmp_path / "probe_removed_api.py"
    probe.write_text(PROBE)
    env = {**os.environ, "MYPYPATH": str(stubs)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(tmp_path / "cache"),
         "--no-color-output", "--show-error-codes", str(MODULE), str(probe)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if ": error:" in ln]
    ours = [ln for ln in lines if not ln.startswith(str(probe))]
    assert not ours, "strict mypy on backends/tensorrt.py against tensorrt-stubs:\n" + "\n".join(ours) + "\n" + out
    got = sorted({(int(ln.split(":")[1]), ln.rsplit("[", 1)[-1].rstrip("]")) for ln in lines})
    assert got == PROBE_ERRORS, f"the probe of removed/mistyped TensorRT APIs should fail exactly so:\n{out}"
    assert proc.returncode == 1, out
