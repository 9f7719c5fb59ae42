#!/usr/bin/env bash
# Build the pinned Kubernetes control-plane binaries used by the test suite:
#   etcd, kube-apiserver, kube-controller-manager, and for the real node kube-scheduler and kubelet
# from the Go modules pinned in e2e/controlplane/go.mod / go.sum
# (k8s.io/kubernetes v1.37.2, go.etcd.io/etcd/server/v3 v3.7.0).
#
# Output: $LATHE_CONTROLPLANE_CACHE/<key>/bin  (default cache: <repo>/.cache/controlplane)
# where <key> is the first 16 hex digits of sha256(go.mod + go.sum), so a changed pin
# builds into a new folder and a finished build is reused.  The fixture
# (e2e/controlplane/fixture.py) computes the same key to find the binaries.
#
# Usage: bash e2e/controlplane/build.sh [--force]
# Prints the bin folder as the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${LATHE_CONTROLPLANE_CACHE:-$root/.cache/controlplane}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
dest="$cache/$key"
bin="$dest/bin"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"

log() { echo "controlplane/build.sh: $*" >&2; }
trap 'log "FAILED at line $LINENO (exit $?)"' ERR

if [[ $force -eq 0 && -f "$bin/.complete" ]]; then
    log "reusing finished build $bin (key $key: kubernetes $k8s_version, etcd $etcd_version)"
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH (need Go >= 1.26)"; exit 1; }
mkdir -p "$cache"
# One build at a time per cache folder.
exec 9>"$cache/.lock"
if ! flock -n 9; then
    log "another build holds $cache/.lock; waiting"
    flock 9
fi
if [[ $force -eq 0 && -f "$bin/.complete" ]]; then
    log "reusing build $bin finished by a concurrent run"
    echo "$bin"
    exit 0
fi

log "building kubernetes $k8s_version (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) and etcd $etcd_version"
log "key $key -> $bin ($(go version))"
start=$(date +%s)
tmp="$dest/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags="$ldflags -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

cd "$here"
log "go mod download"
go mod download
log "go build kube-apiserver kube-controller-manager kube-scheduler kubelet"
go build -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet
log "go build etcd"
go build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3

"$tmp/kube-apiserver" --version >&2
etcd_v="$("$tmp/etcd" --version)"   # no pipe into head: SIGPIPE + pipefail would abort the build
echo "${etcd_v%%$'\n'*}" >&2
touch "$tmp/.complete"
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
log "built in $(( $(date +%s) - start ))s: $(ls "$bin" | tr '\n' ' ')"
echo "$bin"
