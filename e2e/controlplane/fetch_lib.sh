# Sourced by the scripts that fetch test inputs into the control-plane cache (gateway_api.sh,
# e2e/gitops/crds.sh, e2e/gitops/promql.sh): a cached folder appears whole or not at all.

# module_dir MODULE@VERSION: the unpacked module zip (only the zip is downloaded, nothing built).
module_dir() {
    local work
    work="$(mktemp -d)"
    # Outside any module, so `go mod download` fetches exactly this one.
    (cd "$work" && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$1") \
        | python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'
    local rc=$?  # the callers set pipefail: either side failing fails
    rmdir "$work"
    return "$rc"
}

# cache_publish SRC DEST: mark SRC complete and move it to DEST (replacing a half-made one).
cache_publish() {
    chmod -R u+w "$1"
    touch "$1/.complete"
    mkdir -p "$(dirname "$2")"
    rm -rf "$2"
    mv "$1" "$2"
}
