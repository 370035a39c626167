#!/usr/bin/env bash
# The chat features' figures (issue #11), with loadgen, edge pinned to CPU 0
# with one shard and loadgen to CPU 1 (as scripts/ab.sh pins):
#   - typing: 100 members who all type, paced (default typing_interval_ms)
#     and unpaced (EDGE_TYPING_INTERVAL_MS=0): server CPU per event delivered;
#   - inbox: the latency of `sync` for a user in 500 rooms;
#   - receipts: the cost of delivered marks on the fan-out path at 10 rooms x
#     100 members, rate 10 (EDGE_DELIVERED_MARKS=false vs true, same binary),
#     alternated ROUNDS times.
# Needs target/release/{edge,loadgen}. Writes results/chat-*.json.
#   ROUNDS=3 scripts/chat-figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=chat-figures-secret-0123456789abcdef-01234
ROUNDS=${ROUNDS:-3}
EDGE=${EDGE:-target/release/edge}
LOADGEN=${LOADGEN:-target/release/loadgen}
mkdir -p results
src=180
run_edge() { # env assignments..., then the loadgen arguments after --
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local port=$((9500 + src)) D
  D=$(mktemp -d)
  env EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn "${envs[@]}" \
    taskset -c 0 "$EDGE" serve --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" --data-dir "$D" >/dev/null &
  local ep=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 "$LOADGEN" "$@" --url "ws://127.0.0.1:$port/ws" --jwt-secret "$SECRET" --cpus 1 --server-cpus 0 \
    --server-pid "$ep" --first-source "127.0.0.$src" || true
  kill "$ep"; wait "$ep" 2>/dev/null || true; rm -rf "$D"; src=$((src + 3))
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== typing, paced (typing_interval_ms 500), round $round"
  run_edge -- typing --members 100 --duration-s 10 --json "results/chat-typing-paced-$round.json"
  echo "== typing, unpaced (EDGE_TYPING_INTERVAL_MS=0), round $round"
  run_edge EDGE_TYPING_INTERVAL_MS=0 -- typing --members 100 --duration-s 10 --json "results/chat-typing-unpaced-$round.json"
done
echo "== inbox: sync of a user in 500 rooms"
run_edge EDGE_MAX_ROOMS_PER_CONN=500 -- inbox --rooms 500 --requests 200 --json results/chat-inbox-500.json
for round in $(seq 1 "$ROUNDS"); do
  echo "== fanout 10 x 100 r10, delivered marks off, round $round"
  run_edge EDGE_DELIVERED_MARKS=false -- fanout --rooms 10 --members 100 --senders 1 --rate-per-sender 10 \
    --warmup-s 2 --duration-s 10 --json "results/chat-receipts-off-$round.json"
  echo "== fanout 10 x 100 r10, delivered marks on, round $round"
  run_edge EDGE_DELIVERED_MARKS=true -- fanout --rooms 10 --members 100 --senders 1 --rate-per-sender 10 \
    --warmup-s 2 --duration-s 10 --json "results/chat-receipts-on-$round.json"
done
