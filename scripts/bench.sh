#!/usr/bin/env bash
# Reproduces the headline results from a clean checkout: builds release,
# starts an edge, runs loadgen's idle, fanout and storm scenarios, writes
# results/<scenario>.json, and regenerates results/README.md and
# results/latency.svg (`loadgen report`).
#
# Pinning: with 2+ CPUs the edge runs on CPU 0 with one shard and loadgen on
# the other CPUs (`taskset`), recorded in each JSON (machine.server_cpus,
# machine.loadgen_cpus). With 1 CPU both share it (and the JSON says so).
#
#   scripts/bench.sh                 # everything (~4 minutes on 2 cores)
#   ONLY=fanout scripts/bench.sh     # one group: idle, fanout, durability or storm
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=bench-secret-0123456789abcdef-0123456789
ONLY=${ONLY:-all}
cargo build --release --locked --bin edge --bin loadgen
mkdir -p results
cpus=$(nproc)
if [ "$cpus" -ge 2 ]; then SERVER_CPUS=0; LOADGEN_CPUS=$(seq -s, 1 $((cpus - 1))); else SERVER_CPUS=0; LOADGEN_CPUS=0; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="ws://127.0.0.1:$port/ws"
edge_pid=""

start_edge() { # extra EDGE_* settings as arguments: KEY=VALUE ...
  env EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn "$@" \
    taskset -c "$SERVER_CPUS" target/release/edge serve --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" \
      --data-dir "$DATA" >/dev/null &
  edge_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "edge did not start" >&2; exit 1
}
stop_edge() { kill "$edge_pid" 2>/dev/null || true; wait "$edge_pid" 2>/dev/null || true; edge_pid=""; rm -rf "$DATA"; }
# Every edge run starts on an empty embedded store.
DATA=$(mktemp -d)
trap 'stop_edge' EXIT
# Each run dials from its own loopback source addresses (--first-source), so
# ports left in TIME_WAIT by the previous run are not in its way.
src=1
lg() { # loadgen SCENARIO NAME ARGS...
  local scenario=$1 name=$2; shift 2
  local first="127.0.0.$src"; src=$((src + 5))
  echo "== $name"
  taskset -c "$LOADGEN_CPUS" target/release/loadgen "$scenario" --url "$URL" --jwt-secret "$SECRET" \
    --cpus "$LOADGEN_CPUS" --server-cpus "$SERVER_CPUS" --server-pid "$edge_pid" --first-source "$first" \
    --json "results/$name.json" "$@" || {
    echo "!! $name exited with $?" >&2; FAILED=1; }
}
FAILED=0

if [ "$ONLY" = all ] || [ "$ONLY" = idle ]; then
  start_edge; lg idle idle-10k --conns 10000 --duration-s 3; stop_edge
  # The largest count one edge process holds here: its open-file limit
  # (ulimit -n) minus listeners and spare descriptors.
  MAX=$(( $(ulimit -n) - 1000 ))
  start_edge; lg idle "idle-max" --conns "$MAX" --duration-s 3; stop_edge
fi
if [ "$ONLY" = all ] || [ "$ONLY" = fanout ]; then
  # 10 rooms x 100 members, one sender per room, rising rates.
  for rate in 10 20 50 100 300 600; do
    start_edge
    lg fanout "fanout-10x100-r$rate" --rooms 10 --members 100 --senders 1 --rate-per-sender "$rate" --warmup-s 2 --duration-s 10
    stop_edge
  done
fi
if [ "$ONLY" = all ] || [ "$ONLY" = durability ]; then
  # The cost of durable acks: the same fan-out with acks (and fan-out) after the store commit.
  for rate in 10 100; do
    for mode in fast durable; do
      start_edge EDGE_DURABILITY=$mode
      lg fanout "fanout-10x100-r$rate-$mode" --rooms 10 --members 100 --senders 1 --rate-per-sender "$rate" --warmup-s 2 --duration-s 10
      stop_edge
    done
  done
fi
if [ "$ONLY" = all ] || [ "$ONLY" = storm ]; then
  start_edge
  lg storm storm-10k-unlimited --conns 10000 --rooms 100 --rate-per-room 2 --hold-s 2
  stop_edge
  start_edge EDGE_ADMISSION_RATE_PER_SHARD=2000 EDGE_ADMISSION_BURST=256
  lg storm storm-10k-admission-2000 --conns 10000 --rooms 100 --rate-per-room 2 --hold-s 2
  stop_edge
fi
target/release/loadgen report --dir results
exit "$FAILED"
