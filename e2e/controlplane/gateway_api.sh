#!/usr/bin/env bash
# Fetch the Gateway API HTTPRoute CRD (standard channel) from the pinned Go module into the
# control-plane cache, so tests apply Lathe's HTTPRoutes to the real API server with the real
# schema and CEL rules. Reuses a finished fetch; prints the folder holding the CRD YAML.
#
# Usage: bash e2e/controlplane/gateway_api.sh
set -euo pipefail
version=v1.6.3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$here/../../.cache/controlplane}"
dest="$cache/gateway-api-$version"
if [[ -f "$dest/.complete" ]]; then
    echo "$dest"
    exit 0
fi
command -v go >/dev/null || { echo "gateway_api.sh: 'go' not found on PATH" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dir="$(module_dir "sigs.k8s.io/gateway-api@$version")"  # a few MB
mkdir -p "$work/out"
cp "$dir/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" "$work/out/"
cache_publish "$work/out" "$dest"
echo "gateway_api.sh: Gateway API $version HTTPRoute CRD -> $dest" >&2
echo "$dest"
