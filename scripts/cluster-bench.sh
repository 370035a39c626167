#!/usr/bin/env bash
# Cluster figures (issue #4), reproducible: the same fan-out on one node
# without Redis (same-node path), one node through Redis, and three nodes
# through Redis with members spread over them (cross-node path); then Redis
# round trips per message from the nodes' /metrics.
#
# Pinning on 2 CPUs: edges and redis-server on CPU 0, loadgen on CPU 1
# (recorded in each JSON). Writes results/cluster-*.json and regenerates
# results/README.md.
#
#   scripts/cluster-bench.sh                 # everything (~4 minutes)
#   ONLY=batch scripts/cluster-bench.sh      # one group: latency, throughput or batch
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=bench-secret-0123456789abcdef-0123456789
ONLY=${ONLY:-all}
cargo build --release --locked --bin edge --bin loadgen
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 2; }
cpus=$(nproc)
if [ "$cpus" -ge 2 ]; then SERVER_CPUS=0; LOADGEN_CPUS=$(seq -s, 1 $((cpus - 1))); else SERVER_CPUS=0; LOADGEN_CPUS=0; fi
RUN=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$RUN"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

start_redis() {
  rport=$(free_port)
  taskset -c "$SERVER_CPUS" redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" >/dev/null 2>&1 &
  pids+=($!); wait_port "$rport"
}
# start_edges N [redis]: N nodes, one shard each; sets URLS (loadgen flags), PORTS, EDGE_PID
start_edges() {
  local n=$1 with_redis=${2:-}
  URLS=(); PORTS=()
  for i in $(seq 1 "$n"); do
    local port; port=$(free_port)
    local extra=()
    [ -n "$with_redis" ] && extra=(--redis-url "redis://127.0.0.1:$rport" --node-id "n$i")
    EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn taskset -c "$SERVER_CPUS" target/release/edge serve \
      --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" --data-dir "$RUN/d$i-$port" "${extra[@]}" >/dev/null &
    pids+=($!)
    [ "$i" = 1 ] && EDGE_PID=$!
    URLS+=(--url "ws://127.0.0.1:$port/ws"); PORTS+=("$port")
  done
  for p in "${PORTS[@]}"; do wait_port "$p"; done
}
src=101
lg() { # NAME ARGS...
  local name=$1; shift
  echo "== $name"
  taskset -c "$LOADGEN_CPUS" target/release/loadgen fanout "${URLS[@]}" --jwt-secret "$SECRET" \
    --cpus "$LOADGEN_CPUS" --server-cpus "$SERVER_CPUS" --server-pid "$EDGE_PID" --first-source "127.0.0.$src" \
    --json "results/$name.json" "$@"
  src=$((src + 5))
}
# Sums a counter over the nodes' /metrics.
metric() { local sum=0; for p in "${PORTS[@]}"; do
  v=$(python3 -c "import urllib.request,sys; t=urllib.request.urlopen('http://127.0.0.1:$p/metrics').read().decode(); print(sum(int(l.split()[-1]) for l in t.splitlines() if l.startswith('edge_$1 ')))")
  sum=$((sum + v)); done; echo "$sum"; }
ROUNDTRIPS="$RUN/roundtrips.txt"
record_roundtrips() { # NAME
  echo "$1 $(metric redis_published_total) $(metric redis_script_calls_total)" >>"$ROUNDTRIPS"
}

RUNS=(--rooms 10 --members 30 --senders 1 --warmup-s 2 --duration-s 10)
if [ "$ONLY" = all ] || [ "$ONLY" = latency ]; then
  for rate in 10 100; do
    start_edges 1; lg "cluster-off-1node-10x30-r$rate" "${RUNS[@]}" --rate-per-sender "$rate"; stop_all
    start_redis; start_edges 1 redis; lg "cluster-redis-1node-10x30-r$rate" "${RUNS[@]}" --rate-per-sender "$rate"
    record_roundtrips "cluster-redis-1node-10x30-r$rate"; stop_all
    start_redis; start_edges 3 redis; lg "cluster-redis-3nodes-10x30-r$rate" "${RUNS[@]}" --rate-per-sender "$rate"
    record_roundtrips "cluster-redis-3nodes-10x30-r$rate"; stop_all
  done
fi
if [ "$ONLY" = all ] || [ "$ONLY" = throughput ]; then
  # Cross-node fan-out throughput: 10 rooms x 100 members over 3 nodes.
  start_redis; start_edges 3 redis
  lg "cluster-redis-3nodes-10x100-r100" --rooms 10 --members 100 --senders 1 --warmup-s 2 --duration-s 10 --rate-per-sender 100
  record_roundtrips "cluster-redis-3nodes-10x100-r100"; stop_all
fi
if [ "$ONLY" = all ] || [ "$ONLY" = batch ]; then
  # Batching: many senders in one room, so sends queue behind a publish in flight and
  # share one script call (one Redis round trip per batch).
  for senders in 10 40; do
    start_redis; start_edges 1 redis
    lg "cluster-redis-1node-1x40-s$senders" --rooms 1 --members 40 --senders "$senders" --rate-per-sender $((2000 / senders)) --warmup-s 2 --duration-s 10
    record_roundtrips "cluster-redis-1node-1x40-s$senders"; stop_all
  done
fi

python3 - "$ROUNDTRIPS" <<'EOF'
import json, subprocess, sys, platform, os
path = "results/cluster-redis-roundtrips.json"
try:
    kept = {r["run"]: r for r in json.load(open(path))["results"]}
except (OSError, ValueError, KeyError):
    kept = {}
for line in open(sys.argv[1]):
    name, published, calls = line.split()
    published, calls = int(published), int(calls)
    kept[name] = ({"run": name, "messages_published": published, "script_calls": calls,
                 "redis_round_trips_per_message": round(calls / published, 4) if published else None,
                 "mean_batch": round(published / calls, 2) if calls else None})
rows = sorted(kept.values(), key=lambda r: r["run"])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = {"tool": "cluster-bench", "scenario": "redis-round-trips", "command": "scripts/cluster-bench.sh",
       "git_commit": commit, "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
       "note": "one sequencing script call (EVALSHA: INCRBY + XADD + PUBLISH per message) per batch; counters summed over the nodes' /metrics after each run",
       "results": rows}
json.dump(out, open(path, "w"), indent=1)
for r in rows: print(r)
EOF
target/release/loadgen report --dir results
