#!/usr/bin/env bash
# A two-node Ray cluster on this one machine: try `ray job submit` and split placement.
#   scripts/cluster.sh up       head + worker node on 127.0.0.1, each with its own custom resource
#   scripts/cluster.sh status   nodes and resources (`ray status`)
#   scripts/cluster.sh down     stop this cluster's processes only (never `ray stop`), delete its temp dir
# The head node has the custom resource `rlhf_head`, the worker node `rlhf_worker` (8 units
# each), so `cluster.role_resources` can pin roles to either node. Jobs go to the dashboard:
#   ray job submit --address http://127.0.0.1:8266 ...
# Settings (environment): RLHF_CLUSTER_DIR (temp dir, default /tmp/rlhf-cluster-$UID; keep it
# short: Ray's socket paths live under it), RLHF_CLUSTER_PORT (GCS port, 6390; the next 3
# ports are used too), RLHF_CLUSTER_DASHBOARD_PORT (8266), RLHF_CLUSTER_CPUS (logical CPUs
# per node, 2; the tiny recipes' roles ask for 1.75 in all).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLHF_VENV:-$ROOT/.venv}"
RAY="$VENV/bin/ray"
DIR="${RLHF_CLUSTER_DIR:-/tmp/rlhf-cluster-$(id -u)}"
PORT="${RLHF_CLUSTER_PORT:-6390}"
DASHBOARD_PORT="${RLHF_CLUSTER_DASHBOARD_PORT:-8266}"
CPUS="${RLHF_CLUSTER_CPUS:-2}"
# Job entrypoints (`python -m rlhf.cli ...`) run with the PATH of the Ray processes.
export PATH="$VENV/bin:$PATH"
# Ray token auth on every node (a head started while ~/.ray/auth_token exists enables it, and
# nodes that do not would be refused). Clients need it too: export RAY_AUTH_MODE=token.
export RAY_AUTH_MODE=token

# Every process of this cluster inherits RLHF_CLUSTER_ID from `ray start` (Ray daemons,
# workers, job drivers, vLLM engines): `down` finds them by it, and by the temp dir in
# their command line, plus their children. Other Ray instances are never touched.
own_processes() {  # $1 = "list" | "stop"
  "$VENV/bin/python" - "$1" "$DIR" <<'EOF'
import os, sys, psutil
action, tag = sys.argv[1], sys.argv[2]
me = {os.getpid(), os.getppid()}
found = set()
for p in psutil.process_iter():
    try:
        if p.pid in me:
            continue
        if p.environ().get("RLHF_CLUSTER_ID") == tag or any(tag + "/" in a for a in p.cmdline()):
            found.add(p)
            found.update(p.children(recursive=True))
    except psutil.Error:
        pass
found = [p for p in found if p.pid not in me]
if action == "list":
    print(len(found))
    sys.exit(0)
for p in found:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(found, timeout=10)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
psutil.wait_procs(alive, timeout=5)
print(f"stopped {len(found)} processes")
EOF
}

start_node() {  # $1 = node name, then `ray start` arguments
  local name="$1"; shift
  RLHF_CLUSTER_ID="$DIR" "$RAY" start --node-ip-address 127.0.0.1 --temp-dir "$DIR/$name" \
    --num-cpus "$CPUS" --object-store-memory $((512 << 20)) --disable-usage-stats "$@" >"$DIR/$name.log" 2>&1 \
    || { cat "$DIR/$name.log" >&2; echo "cluster.sh: could not start the $name node" >&2; return 1; }
}

up() {
  if [[ "$(own_processes list)" != 0 ]]; then
    echo "cluster.sh: a cluster with temp dir $DIR is already running (scripts/cluster.sh down)" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  "$RAY" get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token if missing
  trap 'own_processes stop >/dev/null; rm -rf "$DIR"' ERR
  start_node head --head --port "$PORT" --include-dashboard true --dashboard-host 127.0.0.1 \
    --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port $((PORT + 1)) \
    --dashboard-agent-listen-port $((PORT + 2)) --resources '{"rlhf_head": 8}'
  # Same machine: the worker needs its own agent port and temp dir, and the same node IP.
  start_node worker --address "127.0.0.1:$PORT" --dashboard-agent-listen-port $((PORT + 3)) \
    --resources '{"rlhf_worker": 8}'
  trap - ERR
  echo "two-node Ray cluster up: GCS 127.0.0.1:$PORT, temp dir $DIR"
  echo "jobs: export RAY_AUTH_MODE=token; ray job submit --address http://127.0.0.1:$DASHBOARD_PORT ..."
}

case "${1:-}" in
  up) up ;;
  status) "$RAY" status --address "127.0.0.1:$PORT" ;;
  down)
    own_processes stop
    rm -rf "$DIR"
    ;;
  *) echo "usage: scripts/cluster.sh up|status|down" >&2; exit 2 ;;
esac
