#!/usr/bin/env bash
# Starts a 3-node edge cluster on loopback: a private redis-server on a free
# port (unless REDIS_URL is given), then three edge nodes, each with its own
# data dir, prints their URLs and a token per node, and stops everything on
# Ctrl-C (or when any node exits).
#
#   scripts/cluster.sh                                # private Redis
#   REDIS_URL=redis://127.0.0.1:6379 scripts/cluster.sh
#   NODES=5 BASE_PORT=9100 scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
BASE_PORT=${BASE_PORT:-8181}
SECRET=${EDGE_JWT_SECRET:-cluster-dev-secret-0123456789abcdef-0123}
cargo build --release --locked --bin edge
RUN=$(mktemp -d)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server), or set REDIS_URL" >&2; exit 2; }
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" >"$RUN/redis.log" 2>&1 &
  pids+=($!)
  REDIS_URL="redis://127.0.0.1:$rport"
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break; sleep 0.1; done
  echo "redis: $REDIS_URL (private, log $RUN/redis.log)"
fi

for i in $(seq 1 "$NODES"); do
  port=$((BASE_PORT + i - 1))
  RUST_LOG=${RUST_LOG:-warn} target/release/edge serve --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" \
    --redis-url "$REDIS_URL" --node-id "n$i" --data-dir "$RUN/n$i" >"$RUN/n$i.out" 2>"$RUN/n$i.log" &
  pids+=($!)
done
for i in $(seq 1 "$NODES"); do
  port=$((BASE_PORT + i - 1))
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  token=$(target/release/edge token --user "user$i" --jwt-secret "$SECRET")
  echo "node n$i: ws://127.0.0.1:$port/ws   (log $RUN/n$i.log)"
  echo "  websocat 'ws://127.0.0.1:$port/ws?token=$token&room=lobby'"
done
echo "EDGE_JWT_SECRET=$SECRET   (loadgen --url ws://127.0.0.1:$BASE_PORT/ws --url ... mints its own tokens)"
echo "Ctrl-C stops the cluster."
wait -n "${pids[@]}" || true
echo "a process of the cluster exited; stopping the rest" >&2
