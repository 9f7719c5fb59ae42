#!/usr/bin/env bash
# Install the Azure Blob Storage emulator Azurite (MIT, npm `azurite` 3.37.0) for the tests, with the
# exact dependency tree of e2e/azurite/package-lock.json (`npm ci`, install scripts off: Azurite needs
# none for its blob service), into $LATHE_CONTROLPLANE_CACHE/azurite-<version>-<key>/ where <key> is
# the first 16 hex digits of sha256(package.json + package-lock.json). The folder appears whole or
# not at all (fetch_lib.sh's cache_publish); a finished install is reused at once. The fixture
# (e2e/azurite/fixture.py) computes the same path and starts `node .../azurite-blob` per session.
#
# Usage: bash e2e/azurite/install.sh      Prints the azurite-blob entry point as the last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/e2e/controlplane/fetch_lib.sh"
cache="${LATHE_CONTROLPLANE_CACHE:-$root/.cache/controlplane}"
version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["azurite"])' "$here/package.json")"
key="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
dest="$cache/azurite-$version-$key"
entry="$dest/node_modules/azurite/dist/src/blob/main.js"
log() { echo "azurite/install.sh: $*" >&2; }
if [[ -f "$dest/.complete" ]]; then
    log "reusing $dest"
    echo "$entry"
    exit 0
fi
command -v npm >/dev/null || { log "ERROR: 'npm' not found on PATH (Node 20 and npm: apt-get install nodejs npm)"; exit 1; }
mkdir -p "$cache"
exec 9>"$dest.lock"  # one install at a time per pin
flock 9
if [[ -f "$dest/.complete" ]]; then
    echo "$entry"
    exit 0
fi
t0=$EPOCHREALTIME
work="$(mktemp -d "$cache/.azurite-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --silent) >&2
[[ -f "$work/node_modules/azurite/dist/src/blob/main.js" ]] || { log "ERROR: azurite's blob entry point is missing"; exit 1; }
cache_publish "$work" "$dest"
trap - EXIT
log "installed azurite $version (key $key) in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s: $dest"
echo "$entry"
