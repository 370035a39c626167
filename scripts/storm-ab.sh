#!/usr/bin/env bash
# A/B of a 10k reconnect storm: each binary serves one shard on CPU 0, `loadgen storm`
# runs on CPU 1; ROUNDS rounds, interleaved. Prints each run's peak accept rate, the storm's
# outcomes and what happened to messages across it, and counts the edge's warnings.
#
#   OLD=/tmp/old-target/release/edge scripts/storm-ab.sh   # NEW defaults to target/release/edge
set -u
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to the baseline edge binary}"
NEW=${NEW:-target/release/edge}
ROUNDS=${ROUNDS:-1}
SECRET=bench-secret-0123456789abcdef-0123456789
src=40
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$OLD" "$NEW"; do
    D=$(mktemp -d); port=$((9700 + src))
    EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" \
      --cores 1 --jwt-secret "$SECRET" --data-dir "$D" >/dev/null 2>"$D.log" &
    EP=$!; sleep 0.5
    echo "== $bin round $round"
    timeout 300 taskset -c 1 target/release/loadgen storm --url "ws://127.0.0.1:$port/ws" --jwt-secret "$SECRET" --cpus 1 --server-cpus 0 \
      --server-pid "$EP" --first-source "127.0.0.$src" --conns 10000 --rooms 100 --rate-per-room 2 --hold-s 2 2>/dev/null \
      | grep -E "peak accepted|storm outcomes|messages across|server"
    echo "  edge warnings: $(grep -c ' WARN ' "$D.log")   'last seen not stored': $(grep -c 'last seen not stored' "$D.log")"
    kill "$EP"; wait "$EP" 2>/dev/null || true; rm -rf "$D" "$D.log"; src=$((src + 5))
  done
done
