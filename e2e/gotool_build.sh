#!/usr/bin/env bash
# Build one pinned Go test server (a `tool` entry of <dir>/go.mod) into the shared build cache. What
# e2e/s3/build.sh (versitygw) and e2e/gcs/build.sh (fake-gcs-server) run, with their own names.
#
# Output: $LATHE_CONTROLPLANE_CACHE/<name>-<version>-<key>/<name>
#   (default cache: <repo>/.cache/controlplane; e2e/test.sh exports ~/.cache/lathe/controlplane)
# where <key> is the first 16 hex digits of sha256(go.mod + go.sum): a changed pin builds into a new
# folder, which appears whole or not at all (fetch_lib.sh's cache_publish); a finished build is reused at
# once. The fixtures (e2e/s3/fixture.py, e2e/gcs/fixture.py) compute the same path.
#
# Usage: bash e2e/gotool_build.sh DIR MODULE PACKAGE NAME LDFLAGS [--force]
#   LDFLAGS may name $version (expanded here), e.g. '-s -w -X=main.Version=$version'.
# Prints the binary's path as the last line of stdout; timing and size go to stderr.
set -euo pipefail

here="$(cd "$1" && pwd)" module="$2" package="$3" name="$4" ldflags_template="$5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/e2e/controlplane/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$root/.cache/controlplane}"
force=0
[[ "${6:-}" == "--force" ]] && force=1

version="$(awk -v m="$module" '$1==m && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
dest="$cache/$name-$version-$key"
bin="$dest/$name"
ldflags="${ldflags_template//\$version/$version}"

log() { echo "$(basename "$here")/build.sh: $*" >&2; }
trap 'log "FAILED at line $LINENO (exit $?)"' ERR
t0=$EPOCHREALTIME
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

if [[ $force -eq 0 && -f "$dest/.complete" ]]; then
    log "reusing finished build $bin ($name $version, key $key) in $(elapsed)s"
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

log "building $name $version (key $key) -> $dest ($(go version))"
tmp="$cache/.$name-build.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# Reproducible: no cgo, no VCS stamp, trimmed paths (and whatever fixed strings LDFLAGS sets).
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath -buildvcs=false"

cd "$here"
log "go mod download"
go mod download
log "go build $package"
go build -ldflags "$ldflags" -o "$tmp/$name" "$package"

size="$(stat -c %s "$tmp/$name")"
sum="$(sha256sum "$tmp/$name" | cut -d' ' -f1)"
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
