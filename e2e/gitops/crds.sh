#!/usr/bin/env bash
# Fetch the third-party CRDs the GitOps examples and the chart's ServiceMonitor are checked
# against, from the projects' own Go modules (their config/crd/bases, or the equivalent), into
# the control-plane cache: Argo CD's Application, Flux's GitRepository, HelmRelease and
# Kustomization, and the Prometheus Operator's ServiceMonitor. Only module zips are downloaded
# (Argo CD's is ~56 MB), nothing is built. Reuses a finished fetch; prints the folder holding them.
#
# Versions: what the Go module proxy serves here. Flux: one release line (Flux 2.7: helm-controller
# v1.4, source-controller v1.7, kustomize-controller v1.7). Argo CD v3.5.7: v3.6.x needs Go 1.27.
#
# Usage: bash e2e/gitops/crds.sh
set -euo pipefail
modules=(
    "github.com/argoproj/argo-cd/v3@v3.5.7 manifests/crds/application-crd.yaml"
    "github.com/fluxcd/source-controller@v1.7.0 config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml"
    "github.com/fluxcd/helm-controller@v1.4.0 config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml"
    "github.com/fluxcd/kustomize-controller@v1.7.3 config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml"
    "github.com/prometheus-operator/prometheus-operator@v0.85.0 example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../controlplane/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$here/../../.cache/controlplane}"
key="$(printf '%s\n' "${modules[@]}" | sha256sum | cut -c1-12)"
dest="$cache/gitops-crds-$key"
if [[ -f "$dest/.complete" ]]; then
    echo "$dest"
    exit 0
fi
command -v go >/dev/null || { echo "crds.sh: 'go' not found on PATH" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"
for entry in "${modules[@]}"; do
    read -r module file <<<"$entry"
    dir="$(module_dir "$module")"
    cp "$dir/$file" "$work/out/"
    echo "crds.sh: $module $(basename "$file")" >&2
done
cache_publish "$work/out" "$dest"
echo "crds.sh: CRDs -> $dest" >&2
echo "$dest"
