#!/usr/bin/env bash
# The CI base image, made with no registry: Debian bookworm from debootstrap, with the host's CA
# bundle trusted (pip here goes through a TLS-intercepting proxy). CI-only: the Dockerfiles default
# to debian:bookworm-slim and never mention this CA. This file's content is part of the base key
# (e2e/images/keys.py), so editing the recipe makes a new base.
#   base.sh make TAR        debootstrap into a temporary folder, write the root filesystem as TAR
#   base.sh import TAR REF  docker import it (DOCKER_HOST says which daemon)
set -euo pipefail
MIRROR="${LATHE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_PATH=/usr/local/share/lathe-ci/ca.crt  # not /etc/ssl/certs: update-ca-certificates rewrites that
cd "$(dirname "$0")/../.."
work=""

cleanup() {  # a failed debootstrap can leave /proc or /sys mounted in the target: unmount first
  [[ -n "$work" && -d "$work" ]] || return 0
  awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

make_rootfs() {
  local tar="$1"
  mkdir -p "$(dirname "$tar")"
  work=$(mktemp -d "$(dirname "$tar")/.rootfs.XXXXXX")
  debootstrap --variant=minbase bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; return 1; }
  # The suites debian:bookworm-slim has, so `apt-get install` gets the same security updates.
  rm -f "$work/root/etc/apt/sources.list"
  cat >"$work/root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
SRC
  local ca
  ca=$(python3 -m e2e.images.keys ca)
  if [[ -n "$ca" ]]; then
    install -D -m 0644 "$ca" "$work/root$CA_PATH"
  fi
  rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/* "$work/root"/var/log/*.log
  tar -C "$work/root" --numeric-owner --xattrs -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
}

import_rootfs() {
  local tar="$1" ref="$2" ca
  ca=$(python3 -m e2e.images.keys ca)
  local changes=(--change 'CMD ["/bin/bash"]')
  if [[ -n "$ca" ]]; then
    changes+=(--change "ENV PIP_CERT=$CA_PATH" --change "ENV SSL_CERT_FILE=$CA_PATH"
              --change "ENV REQUESTS_CA_BUNDLE=$CA_PATH")
  fi
  /usr/bin/docker import "${changes[@]}" "$tar" "$ref" >/dev/null
}

case "${1:-}" in
  make) make_rootfs "$2" ;;
  import) import_rootfs "$2" "$3" ;;
  *) echo "usage: $0 make TAR | import TAR REF" >&2; exit 2 ;;
esac
