#!/usr/bin/env bash
# A/B of two edge binaries on the same fan-out, alternating ROUNDS times, pinned
# as bench.sh pins (edge on CPU 0 with one shard, loadgen on CPU 1).
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p edge --bin edge)
#   OLD=/tmp/old-target/release/edge scripts/ab.sh        # NEW defaults to target/release/edge
#   RATE=10 ROUNDS=3 OLD=... scripts/ab.sh
#   CORES=2 OLD=... scripts/ab.sh   # two shards, both on CPU 0: a room's members on both, so
#                                   # every delivery to the other shard crosses the mesh
#   THREADS=1 OLD=... scripts/ab.sh # also the server's CPU per thread over 8 s of the steady
#                                   # state (scripts/thread-cpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to the baseline edge binary}"
NEW=${NEW:-target/release/edge}
RATE=${RATE:-100}
ROUNDS=${ROUNDS:-2}
CORES=${CORES:-1}
SECRET=bench-secret-0123456789abcdef-0123456789
src=150
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$OLD" "$NEW"; do
    D=$(mktemp -d); port=$((9400 + src))
    EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" \
      --cores "$CORES" --jwt-secret "$SECRET" --data-dir "$D" >/dev/null &
    EP=$!; sleep 0.5
    echo "== $bin round $round"
    taskset -c 1 target/release/loadgen fanout --url "ws://127.0.0.1:$port/ws" --jwt-secret "$SECRET" --cpus 1 --server-cpus 0 \
      --server-pid "$EP" --first-source "127.0.0.$src" --rooms 10 --members 100 --senders 1 --rate-per-sender "$RATE" \
      --warmup-s 2 --duration-s 10 2>/dev/null | grep -E "latency|CPU" &
    LG=$!
    if [ "${THREADS:-0}" = 1 ]; then sleep 4; scripts/thread-cpu.sh "$EP" 8; fi
    wait "$LG"
    kill "$EP"; wait "$EP" 2>/dev/null || true; rm -rf "$D"; src=$((src + 5))
  done
done
