#!/usr/bin/env bash
# Install the Prometheus project's own PromQL grammar (@prometheus-io/lezer-promql, the parser of
# Prometheus's web UI) from npm into the control-plane cache, for the test that parses every query
# of docs/grafana-dashboard.json. Exact versions; reuses a finished install; prints the
# node_modules folder (NODE_PATH).
#
# Usage: bash e2e/gitops/promql.sh
set -euo pipefail
packages=(@prometheus-io/lezer-promql@0.315.0 @lezer/lr@1.4.12 @lezer/highlight@1.2.5 @lezer/common@1.5.5)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../controlplane/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$here/../../.cache/controlplane}"
key="$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-12)"
dest="$cache/lezer-promql-$key"
if [[ -f "$dest/.complete" ]]; then
    echo "$dest/node_modules"
    exit 0
fi
command -v npm >/dev/null || { echo "promql.sh: 'npm' not found on PATH (apt-get install nodejs npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
npm install --prefix "$work/out" --no-audit --no-fund --no-save --silent "${packages[@]}" >&2
cache_publish "$work/out" "$dest"
echo "promql.sh: ${packages[*]} -> $dest" >&2
echo "$dest/node_modules"
