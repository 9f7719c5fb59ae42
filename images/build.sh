#!/usr/bin/env bash
# Builds Lathe's images with no registry, cached by content, as `docker save` tars:
#   images/build.sh [operator] [worker]          (default: both; the GPU image needs nvcr.io, see README)
# A tar whose content key (e2e/images/keys.py: Dockerfile, lock, pyproject, operator/, base)
# matches is reused without starting anything. Otherwise: a private dockerd (e2e/images/dockerd.sh,
# stopped on every exit path), the CI base (e2e/images/base.sh: debootstrap + the host's CA), then
# `docker build` with BuildKit (pip's cache persists in the engine's data root) and `docker save`.
# Env: LATHE_IMAGE_CACHE (tars, default ~/.cache/lathe/images), LATHE_DOCKER_DIR (engine data,
# default ~/.cache/lathe/docker), LATHE_IMAGE_BASE (use this base image instead of debootstrap's).
# Last lines: `IMAGE <ref> <tar>` for each image. Needs root, docker.io and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
export LATHE_IMAGE_CACHE="${LATHE_IMAGE_CACHE:-$HOME/.cache/lathe/images}"
export LATHE_DOCKER_DIR="${LATHE_DOCKER_DIR:-$HOME/.cache/lathe/docker}"
DOCKER=/usr/bin/docker  # docker.io's client: BuildKit (a newer /usr/local/bin/docker may lack buildx)
want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(operator worker)
mkdir -p "$LATHE_IMAGE_CACHE/logs"
t_start=$(date +%s)
say() { echo "images/build.sh: $*" >&2; }
mib() { echo "$(( ($1 + 524288) / 1048576 )) MiB"; }
meta() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Fail with the numbers, not with a write error halfway through a 5 GB save.
need_space() {  # need_space DIR BYTES WHAT
  local avail
  avail=$(( $(df --output=avail -k "$1" | tail -1) * 1024 ))
  if (( avail < $2 )); then
    say "$3 needs $(mib "$2") in $1 but only $(mib "$avail") is free; free some (old image tars," \
        "\$LATHE_DOCKER_DIR's build cache: \`docker builder prune\`) and rerun"
    exit 1
  fi
}

declare -A REF TAR KEY
todo=()
while read -r name ref key tar; do
  [[ " ${want[*]} " == *" $name "* ]] || continue
  REF[$name]=$ref TAR[$name]=$tar KEY[$name]=$key
  if [[ -f "$tar" && -f "$tar.json" ]]; then
    say "$name: reused $(basename "$tar") (image $(mib "$(meta "$tar.json" size)"), tar $(mib "$(stat -c %s "$tar")"))"
  else
    todo+=("$name")
  fi
done < <(python3 -m e2e.images.keys plan)
for name in "${want[@]}"; do
  [[ -n "${REF[$name]:-}" ]] || { say "unknown image '$name' (built here: operator worker)"; exit 2; }
done

child=""
cleanup() {
  local rc=$?
  [[ -z "$child" ]] || kill "$child" 2>/dev/null || true
  if ! e2e/images/dockerd.sh stop; then say "dockerd did not stop cleanly"; rc=1; fi
  exit "$rc"
}
# Long steps run in the background and are waited for, so a TERM reaches the trap at once.
bg() { "$@" & child=$!; wait "$child"; local rc=$?; child=""; return "$rc"; }

if [[ ${#todo[@]} -gt 0 ]]; then
  mkdir -p "$LATHE_DOCKER_DIR"
  exec 9>"$LATHE_DOCKER_DIR/lock"
  if ! flock -n 9; then
    say "waiting for $LATHE_DOCKER_DIR/lock (another image build or tests/images holds it)"
    flock -w 3600 9 || { say "gave up waiting for $LATHE_DOCKER_DIR/lock"; exit 1; }
  fi
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  host=$(e2e/images/dockerd.sh start)
  export "${host?}"

  base_key=$(python3 -m e2e.images.keys base-key)
  if [[ -n "${LATHE_IMAGE_BASE:-}" ]]; then
    BASE=$LATHE_IMAGE_BASE
  else
    BASE="lathe.local/bookworm-base:${base_key:0:16}"
    if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
      rootfs="$LATHE_IMAGE_CACHE/base-${base_key:0:16}.rootfs.tar"
      if [[ ! -f "$rootfs" ]]; then
        t0=$(date +%s)
        bg e2e/images/base.sh make "$rootfs"
        say "base: debootstrap bookworm minbase in $(( $(date +%s) - t0 ))s ($(mib "$(stat -c %s "$rootfs")"))"
      fi
      t0=$(date +%s)
      bg e2e/images/base.sh import "$rootfs" "$BASE"
      say "base: imported $BASE in $(( $(date +%s) - t0 ))s"
    else
      say "base: $BASE already in the engine"
    fi
  fi

  $DOCKER builder prune -f --keep-storage "${LATHE_BUILD_CACHE_KEEP:-8GB}" >/dev/null
  for name in "${todo[@]}"; do
    ref=${REF[$name]} tar=${TAR[$name]} log="$LATHE_IMAGE_CACHE/logs/$name.log"
    t0=$(date +%s)
    if ! DOCKER_BUILDKIT=1 bg $DOCKER build --network host --progress plain --build-arg "BASE=$BASE" \
        --label "dev.lathe.content-key=${KEY[$name]}" -f "images/$name.Dockerfile" -t "$ref" . >"$log" 2>&1; then
      tail -40 "$log" >&2
      say "$name: docker build failed (whole log: $log)"
      exit 1
    fi
    t_build=$(( $(date +%s) - t0 ))
    size=$($DOCKER image inspect -f '{{.Size}}' "$ref")
    id=$($DOCKER image inspect -f '{{.Id}}' "$ref")
    # Older tars of this image go before the new one is written: the cache holds one per image
    # (the key names the current one), and a 5 GB worker tar twice over can fill the disk.
    find "$LATHE_IMAGE_CACHE" -maxdepth 1 -name "lathe-$name-[0-9]*.tar*" ! -name "$(basename "$tar")*" -delete
    need_space "$LATHE_IMAGE_CACHE" "$size" "saving $name"
    t1=$(date +%s)
    bg $DOCKER save -o "$tar.tmp" "$ref"
    t_save=$(( $(date +%s) - t1 ))
    printf '{"ref": "%s", "key": "%s", "id": "%s", "size": %s, "build_s": %s, "save_s": %s}\n' \
      "$ref" "${KEY[$name]}" "$id" "$size" "$t_build" "$t_save" >"$tar.json"
    chmod 0644 "$tar.tmp"  # docker save makes it 0600; a node fixture may import it as another user
    mv "$tar.tmp" "$tar"
    say "$name: built in ${t_build}s, saved in ${t_save}s (image $(mib "$size"), tar $(mib "$(stat -c %s "$tar")"))"
  done
  $DOCKER image prune -f >/dev/null  # untagged images of earlier builds
  # BuildKit keeps every earlier build's layers (16 GB after a day of edits here); keep the most
  # recently used share, which holds pip's download cache and the current layers.
  $DOCKER builder prune -f --keep-storage "${LATHE_BUILD_CACHE_KEEP:-8GB}" >/dev/null
fi
say "done in $(( $(date +%s) - t_start ))s"
for name in "${want[@]}"; do
  echo "IMAGE ${REF[$name]} ${TAR[$name]}"
done
