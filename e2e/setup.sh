#!/usr/bin/env bash
# Creates .venv with Lathe and every pinned dependency (requirements.lock). Idempotent: a second
# run with an unchanged lock file does nothing. Needs Python 3.11 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Lathe needs Python 3.11, found {sys.version}"'
stamp=.venv/.lathe-lock-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [[ -f "$stamp" ]]; then
  echo "setup: .venv is up to date ($stamp)"
  exit 0
fi
t0=$(date +%s)
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip==26.3 wheel setuptools
echo "setup: installing pinned dependencies (torch and friends: several GB on a cold machine)"
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
rm -f .venv/.lathe-lock-*
touch "$stamp"
echo "setup: done in $(( $(date +%s) - t0 ))s"
