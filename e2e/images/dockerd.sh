#!/usr/bin/env bash
# A private Docker engine for building and testing Lathe's images: its own socket, data root and
# exec root, no iptables/bridge (there is no private network here: use --network host), never the
# machine's docker. Layers and BuildKit's cache (pip's downloads) persist in the data root.
#   dockerd.sh start   start it (stopping a stale one of ours first); prints DOCKER_HOST=...
#   dockerd.sh stop    stop it and the containerd it started; fails if any of their processes remain
#   dockerd.sh host    print DOCKER_HOST=... (nothing started)
# Callers hold an exclusive flock on "$LATHE_DOCKER_DIR/lock" while the engine runs (one user of a
# data root at a time): images/build.sh and e2e/images/engine.py (tests/images) do.
set -euo pipefail
D="${LATHE_DOCKER_DIR:-$HOME/.cache/lathe/docker}"
# exec root and socket under /tmp: containerd's socket path must stay under the 108-byte limit
RUN="/tmp/lathe-docker-$(id -u)-$(printf %s "$D" | sha256sum | cut -c1-8)"
SOCK="$RUN/docker.sock" PIDFILE="$RUN/docker.pid" LOG="$D/dockerd.log"
export DOCKER_HOST="unix://$SOCK"

ours() {  # pids of processes that use our paths (dockerd, its containerd, shims)
  pgrep -f -- "$RUN/|--data-root $D/data" || true
}

stop() {
  local pid="" i
  [[ -f "$PIDFILE" ]] && pid=$(cat "$PIDFILE")
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "dockerd.sh: dockerd $pid ignored TERM for 30 s: KILL" >&2; kill -KILL "$pid"; }
  fi
  for i in $(seq 1 50); do [[ -z "$(ours)" ]] && break; sleep 0.2; done
  local left
  left=$(ours)
  if [[ -n "$left" ]]; then  # dockerd stops its containerd; one left behind (dockerd KILLed) goes by pid
    echo "dockerd.sh: stopping leftover processes: $(echo $left)" >&2
    kill -TERM $left 2>/dev/null || true
    sleep 2
    left=$(ours)
    [[ -z "$left" ]] || kill -KILL $left 2>/dev/null || true
    sleep 0.5
  fi
  left=$(ours)
  if [[ -n "$left" ]]; then
    echo "dockerd.sh: still running after stop: $(ps -o pid=,args= -p "$(echo $left | tr ' ' ,)")" >&2
    return 1
  fi
  rm -f "$PIDFILE" "$SOCK"
}

start() {
  command -v dockerd >/dev/null || { echo "dockerd.sh: no dockerd: apt-get install -y --no-install-recommends docker.io" >&2; return 1; }
  stop  # a stale engine of ours (its caller was killed): we hold the lock, so nobody else uses it
  mkdir -p "$D/data" "$RUN"
  # setsid: a Ctrl-C meant for the caller reaches dockerd only through the caller's trap (stop)
  setsid dockerd --host "$DOCKER_HOST" --data-root "$D/data" --exec-root "$RUN/exec" --pidfile "$PIDFILE" \
    --storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none --ip-masq=false \
    </dev/null >>"$LOG" 2>&1 &
  local i
  for i in $(seq 1 300); do
    if /usr/bin/docker version >/dev/null 2>&1; then
      echo "DOCKER_HOST=$DOCKER_HOST"
      return 0
    fi
    if ! kill -0 $! 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "dockerd.sh: dockerd did not come up; last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  stop || true
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  host) echo "DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|host" >&2; exit 2 ;;
esac
