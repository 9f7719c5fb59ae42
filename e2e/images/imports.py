"""What `lathe operator` imports, found from the sources: every import statement (module level and
inside functions) of every lathe module the operator can reach, so the operator image's test can run
each one inside the image. Lazy imports that only the worker's code paths reach are listed, with why,
in NOT_OPERATOR; an unclassified new one makes the image test import it (and fail if it is missing)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from .keys import ROOT

SRC = ROOT / "operator"
ENTRY = "lathe.cli"
# Imported by modules the operator loads, but only on paths it never takes.
NOT_OPERATOR = {
    "lathe.api.crd": "`lathe crd` (a generator)",
    "lathe.api.reference": "`lathe reference` (a generator)",
    "lathe.local_run": "`lathe run`",
    "lathe.worker.main": "`lathe worker`",
    "lathe.worker.intake": "the prune pass's run(): the worker",
    "lathe.worker.backends": "the passes' run(): the worker",
    "lathe.worker.llm": "the causal-LM quantize pass's run() and the worker's pipeline: the worker",
    "onnx": "lathe.serving.config.onnx_signature and the passes' run(): the worker's publish step and passes",
    "openvino": "lathe.serving.openvino_flavour.openvino_signature: the worker's publish step",
    "onnxruntime": "the passes' run(): the worker",
    "torch": "the passes' run(): the worker",
    "nncf": "the passes' run(): the worker",
    "modelopt": "runtime tensorrt's quantize pass run(): the GPU worker",
}
WORKER_PACKAGES = ("torch", "onnxruntime", "openvino", "onnx", "nncf", "onnxscript", "modelopt")  # absent from the operator image


def _file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = module if _file(module).name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        pkg = pkg.rpartition(".")[0]
    return f"{pkg}.{node.module}" if node.module else pkg


def _excluded(name: str) -> bool:
    return any(name == k or name.startswith(k + ".") for k in NOT_OPERATOR)


def operator_imports() -> tuple[list[str], list[str]]:
    """(lathe modules the operator can load, third-party import statements they run)."""
    todo, seen, statements = [ENTRY], set(), set()
    while todo:
        module = todo.pop()
        if module in seen or _excluded(module):
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        for node in ast.walk(ast.parse(_file(module).read_text())):
            if isinstance(node, ast.Import):
                targets = [(a.name, f"import {a.name}") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(module, node)
                if src == "__future__":
                    continue
                targets = [(src, f"from {src} import {', '.join(a.name for a in node.names)}")]
                targets += [(f"{src}.{a.name}", None) for a in node.names if _file(f"{src}.{a.name}")]
            else:
                continue
            for name, stmt in targets:
                top = name.split(".")[0]
                if _excluded(name) or top in sys.stdlib_module_names:
                    continue
                if top == "lathe":
                    if _file(name):
                        todo.append(name)
                elif stmt:
                    statements.add(stmt)
    return sorted(seen), sorted(statements)
