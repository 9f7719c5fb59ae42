#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs (.venv, the control-plane binaries
# built from Go modules), checks style and generated files, then runs pytest against real
# components (kube-apiserver + etcd, Triton Inference Server, ONNX Runtime, torch).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
e2e/setup.sh
# Reuse finished control-plane builds across clones on the same machine (CI clones afresh).
export LATHE_CONTROLPLANE_CACHE="${LATHE_CONTROLPLANE_CACHE:-$HOME/.cache/lathe/controlplane}"
bash e2e/controlplane/build.sh >/dev/null
bash e2e/controlplane/gateway_api.sh >/dev/null  # the Gateway API HTTPRoute CRD, for the gateway router's tests
echo "test.sh: set-up took $(( $(date +%s) - t0 ))s"
.venv/bin/ruff check operator tests e2e
.venv/bin/lathe crd --check -o crds/modeloptimization.yaml
.venv/bin/lathe reference --check -o docs/reference.md
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
