#!/usr/bin/env bash
# Debian packages the real test node and the image builds need: containerd + runc (the node's
# CRI runtime), the CNI plugins (bridge, host-local, loopback), docker.io (builds the images) and
# debootstrap (the base image, made without a registry), and chromium (tests open the HTML report
# headless). Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v chromium >/dev/null || need+=(chromium)
if (( ${#need[@]} == 0 )); then
  echo "node/install.sh: containerd, runc, docker.io, debootstrap, CNI plugins, chromium present"
  exit 0
fi
echo "node/install.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
