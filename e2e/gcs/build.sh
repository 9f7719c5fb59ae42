#!/usr/bin/env bash
# Build the pinned Google Cloud Storage emulator: fake-gcs-server (BSD-2-Clause) from the Go module
# pinned in e2e/gcs/go.mod / go.sum (github.com/fsouza/fake-gcs-server v1.56.1, a `tool` entry).
#
# Output: $LATHE_CONTROLPLANE_CACHE/fake-gcs-server-<version>-<key>/fake-gcs-server
#   (default cache: <repo>/.cache/controlplane; e2e/test.sh exports ~/.cache/lathe/controlplane)
# where <key> is the first 16 hex digits of sha256(go.mod + go.sum): a changed pin builds into a
# new folder, which appears whole or not at all (fetch_lib.sh's cache_publish); a finished build is
# reused at once. The fixture (e2e/gcs/fixture.py) computes the same path.
#
# Usage: bash e2e/gcs/build.sh [--force]
# Prints the binary's path as the last line of stdout; timing and size go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/e2e/controlplane/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$root/.cache/controlplane}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

module=github.com/fsouza/fake-gcs-server
version="$(awk -v m="$module" '$1==m && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
dest="$cache/fake-gcs-server-$version-$key"
bin="$dest/fake-gcs-server"

log() { echo "gcs/build.sh: $*" >&2; }
trap 'log "FAILED at line $LINENO (exit $?)"' ERR
t0=$EPOCHREALTIME
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

if [[ $force -eq 0 && -f "$dest/.complete" ]]; then
    log "reusing finished build $bin (fake-gcs-server $version, key $key) in $(elapsed)s"
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH (need Go >= 1.26)"; exit 1; }
mkdir -p "$cache"
exec 9>"$dest.lock"  # one build at a time per pin
if ! flock -n 9; then
    log "another build holds $dest.lock; waiting"
    flock 9
fi
if [[ $force -eq 0 && -f "$dest/.complete" ]]; then
    log "reusing build $bin finished by a concurrent run"
    echo "$bin"
    exit 0
fi

log "building fake-gcs-server $version (key $key) -> $dest ($(go version))"
tmp="$cache/.fake-gcs-server-build.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# Reproducible: no cgo, no VCS stamp, trimmed paths, stripped.
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath -buildvcs=false"

cd "$here"
log "go mod download"
go mod download
log "go build $module"
go build -ldflags "-s -w" -o "$tmp/fake-gcs-server" "$module"

size="$(stat -c %s "$tmp/fake-gcs-server")"
sum="$(sha256sum "$tmp/fake-gcs-server" | cut -d' ' -f1)"
secs="$(elapsed)"
{
    echo "module=$module"
    echo "version=$version"
    echo "key=$key"
    echo "go=$(go env GOVERSION)"
    echo "sha256=$sum"
    echo "bytes=$size"
    echo "build_seconds=$secs"
} > "$tmp/BUILDINFO"
cache_publish "$tmp" "$dest"
trap - EXIT
log "built in ${secs}s: $bin ($(( size / 1024 / 1024 )) MiB, sha256 $sum)"
echo "$bin"
