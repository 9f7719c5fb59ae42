#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs (Debian's containerd/docker/CNI, .venv,
# the control-plane and node binaries and the S3 and GCS servers built from Go modules, Azurite from npm,
# Lathe's images), checks style and generated files, then runs pytest against real components (kube-apiserver + etcd, a kubelet on
# containerd, Triton Inference Server, ONNX Runtime, torch). Needs root (the node's bridge, cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash e2e/node/install.sh  # containerd, runc, CNI plugins, docker.io, debootstrap, chromium (only what is missing)
e2e/setup.sh
# Reuse finished builds across clones on the same machine (CI clones afresh).
export LATHE_CONTROLPLANE_CACHE="${LATHE_CONTROLPLANE_CACHE:-$HOME/.cache/lathe/controlplane}"
export LATHE_IMAGE_CACHE="${LATHE_IMAGE_CACHE:-$HOME/.cache/lathe/images}"
# The causal-LM tests' dequantized GGUF and model-builder exports (content-keyed: tests/llm/conftest.py)
export LATHE_LLM_CACHE="${LATHE_LLM_CACHE:-$HOME/.cache/lathe/llm}"
# The Go builds are CPU-bound and the image build mostly downloads: run them side by side.
logs="$(mktemp -d)"
bash e2e/controlplane/build.sh >"$logs/controlplane.log" 2>&1 & cp_pid=$!
# The images go on building while the first tests run (saving the 5 GB worker image alone takes
# over a minute): e2e/images/built.py waits for their status file before any fixture touches an
# image or the private Docker engine, and fails with the build's log tail if it failed.
export LATHE_IMAGE_BUILD_STATUS="$logs/images.status" LATHE_IMAGE_BUILD_LOG="$logs/images.log"
( rc=0; bash images/build.sh >"$LATHE_IMAGE_BUILD_LOG" 2>&1 || rc=$?
  echo "$rc" >"$LATHE_IMAGE_BUILD_STATUS.tmp" && mv "$LATHE_IMAGE_BUILD_STATUS.tmp" "$LATHE_IMAGE_BUILD_STATUS" ) &
bash e2e/s3/build.sh >"$logs/s3.log" 2>&1 & s3_pid=$!  # versitygw, the S3 server of tests/s3, tests/stores, tests/e2e
bash e2e/gcs/build.sh >"$logs/gcs.log" 2>&1 & gcs_pid=$!  # fake-gcs-server, the GCS emulator of tests/stores
bash e2e/azurite/install.sh >"$logs/azurite.log" 2>&1 & az_pid=$!  # Azurite (npm ci), the Azure Blob emulator
status=0
wait "$cp_pid" || { echo "test.sh: control-plane build failed:"; tail -n 40 "$logs/controlplane.log"; status=1; }
wait "$s3_pid" || { echo "test.sh: S3 server build failed:"; tail -n 40 "$logs/s3.log"; status=1; }
wait "$gcs_pid" || { echo "test.sh: GCS emulator build failed:"; tail -n 40 "$logs/gcs.log"; status=1; }
wait "$az_pid" || { echo "test.sh: Azurite install failed:"; tail -n 40 "$logs/azurite.log"; status=1; }
(( status == 0 )) || exit 1
bash e2e/controlplane/gateway_api.sh >/dev/null  # the Gateway API HTTPRoute CRD, for the gateway router's tests
bash e2e/gitops/crds.sh >/dev/null   # Argo CD, Flux and Prometheus Operator CRDs (Go module zips, no build)
bash e2e/gitops/promql.sh >/dev/null  # Prometheus's PromQL grammar (npm, exact versions) for the dashboard test
echo "test.sh: set-up took $(( $(date +%s) - t0 ))s"
.venv/bin/ruff check operator tests e2e
.venv/bin/python -m e2e.images.locks --check   # images/*.lock still cut from requirements.lock + pyproject
.venv/bin/lathe crd --check -o crds/modeloptimization.yaml
.venv/bin/lathe reference --check -o docs/reference.md
# Two pytest processes side by side, one per core: most tests wait on servers, pods and canary pauses, so
# one process alone leaves a core idle. Each is a plain serial pytest run over whole folders (their session
# fixtures set up once, the one real node of tests/cluster in one process); the halves were balanced on
# `--durations` of a full run (docs/testing.md). tests/architectures stays in the second half, where it sorts
# first, so it still runs before any test there starts the session's node agent. Options given to this
# script go to both halves. Each line of output says its half.
FIRST=(tests/cluster tests/llm tests/e2e tests/images)
run_half() {  # label, pytest arguments...
  local label=$1; shift
  .venv/bin/python -m pytest "$@" -p no:cacheprovider --durations=15 "${ARGS[@]}" 2>&1 | sed -u "s/^/[$label] /"
}
ARGS=("$@")
run_half 1 "${FIRST[@]}" & first=$!
rc2=0; run_half 2 tests "${FIRST[@]/#/--ignore=}" || rc2=$?
rc1=0; wait "$first" || rc1=$?
echo "test.sh: half 1 (${FIRST[*]}) exit $rc1, half 2 (the rest) exit $rc2; $(( $(date +%s) - t0 ))s in all"
(( rc1 == 0 && rc2 == 0 ))
