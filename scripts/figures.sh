#!/usr/bin/env bash
# Measures the edge node's issue-#5 figures with the simple `probe` client
# (bench/src/bin/probe.rs), pinned apart from the server: edge on CPU 0,
# probe on CPU 1 (this machine has 2). Writes results/edge-*.json.
#   scripts/figures.sh            # idle 10k + fanout 10 rooms x 100 members
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=figures-secret-0123456789abcdef-0123456789
CONNS=${CONNS:-10000}
RATE=${RATE:-100}
SHARDS=${SHARDS:-1}
cargo build --release --locked --bin edge --bin probe
mkdir -p results
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_edge() {
  EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn \
    taskset -c 0 target/release/edge serve --listen "127.0.0.1:$port" --cores "$SHARDS" --jwt-secret "$SECRET" >/dev/null &
  edge_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "edge did not start" >&2; exit 1
}
stop_edge() { kill "$edge_pid"; wait "$edge_pid" || true; }
trap 'kill $edge_pid 2>/dev/null || true' EXIT

start_edge
taskset -c 1 target/release/probe idle --addr "127.0.0.1:$port" --jwt-secret "$SECRET" --conns "$CONNS" \
  --server-pid "$edge_pid" --json "results/edge-idle-$CONNS.json"
stop_edge

start_edge
taskset -c 1 target/release/probe fanout --addr "127.0.0.1:$port" --jwt-secret "$SECRET" --rooms 10 --members 100 \
  --rate-per-room "$RATE" --duration-s 10 --server-pid "$edge_pid" --json "results/edge-fanout-10x100-r$RATE.json"
stop_edge
