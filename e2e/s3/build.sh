#!/usr/bin/env bash
# Build the pinned S3-compatible test server: the Versity S3 Gateway (versitygw, Apache-2.0), run with its
# posix backend, from the Go module pinned in e2e/s3/go.mod / go.sum (github.com/versity/versitygw v1.7.0, a
# `tool` entry), into $LATHE_CONTROLPLANE_CACHE/versitygw-<version>-<key>/versitygw (e2e/gotool_build.sh says
# how; e2e/s3/fixture.py computes the same path).
#
# Usage: bash e2e/s3/build.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# fixed version strings (no build date): the same pin gives the same binary
exec bash "$here/../gotool_build.sh" "$here" github.com/versity/versitygw github.com/versity/versitygw/cmd/versitygw \
    versitygw '-s -w -X=main.Version=$version -X=main.Build=$version -X=main.BuildTime=1970-01-01T00:00:00Z' "$@"
