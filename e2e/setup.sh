#!/usr/bin/env bash
# Creates .venv with Lathe and every pinned dependency (requirements.lock). Idempotent: a second
# run with an unchanged lock file does nothing. Needs Python 3.11 and PyPI.
#
# Installs with uv (pinned below, bootstrapped into ~/.cache/lathe once): its cache links the wheels
# into a new .venv in seconds, where pip unpacked torch and its CUDA libraries (about 4 min) for every
# fresh clone. The result is the same set of packages (tests/images compare images with the lock;
# `pip freeze` of the two venvs was compared when this changed). Cache: $UV_CACHE_DIR, default
# ~/.cache/lathe/uv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Lathe needs Python 3.11, found {sys.version}"'
stamp=.venv/.lathe-lock-$(sha256sum requirements.lock pyproject.toml e2e/typing-requirements.txt e2e/llm-model-requirements.txt | sha256sum | cut -c1-16)
if [[ -f "$stamp" ]]; then
  echo "setup: .venv is up to date ($stamp)"
  exit 0
fi
t0=$(date +%s)
UV_VERSION=0.13.9
cache="${LATHE_CACHE_ROOT:-$HOME/.cache/lathe}"
boot="$cache/uv-$UV_VERSION"
if [[ ! -x "$boot/bin/uv" ]]; then
  rm -rf "$boot.tmp"
  "$PY" -m venv "$boot.tmp"
  "$boot.tmp/bin/python" -m pip install -q "uv==$UV_VERSION"
  rm -rf "$boot" && mv "$boot.tmp" "$boot"  # whole or not at all (bin/uv is a binary: it survives the move)
fi
uv="$boot/bin/uv"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$cache/uv}"
[[ -x .venv/bin/python ]] || "$uv" venv -q --seed --python "$PY" .venv
echo "setup: installing pinned dependencies (torch and friends: several GB on a cold machine)"
"$uv" pip install -q --python .venv/bin/python -r requirements.lock pip==26.3 wheel setuptools
# stubs for the type check only, outside site-packages (why: e2e/typing-requirements.txt)
"$uv" pip uninstall -q --python .venv/bin/python tensorrt-stubs 2>/dev/null || true  # a .venv from before this change
rm -rf .venv/typing && "$uv" pip install -q --python .venv/bin/python --no-deps --target .venv/typing -r e2e/typing-requirements.txt
# the causal-LM example's model, outside site-packages (why: e2e/llm-model-requirements.txt)
rm -rf .venv/llm-model && "$uv" pip install -q --python .venv/bin/python --no-deps --target .venv/llm-model -r e2e/llm-model-requirements.txt
"$uv" pip install -q --python .venv/bin/python --no-deps -e .
rm -f .venv/.lathe-lock-*
touch "$stamp"
echo "setup: done in $(( $(date +%s) - t0 ))s"
