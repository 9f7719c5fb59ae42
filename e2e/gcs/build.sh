#!/usr/bin/env bash
# Build the pinned Google Cloud Storage emulator: fake-gcs-server (BSD-2-Clause) from the Go module pinned in
# e2e/gcs/go.mod / go.sum (github.com/fsouza/fake-gcs-server v1.56.1, a `tool` entry), into
# $LATHE_CONTROLPLANE_CACHE/fake-gcs-server-<version>-<key>/fake-gcs-server (e2e/gotool_build.sh says how;
# e2e/gcs/fixture.py computes the same path).
#
# Usage: bash e2e/gcs/build.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$here/../gotool_build.sh" "$here" github.com/fsouza/fake-gcs-server github.com/fsouza/fake-gcs-server \
    fake-gcs-server '-s -w' "$@"
