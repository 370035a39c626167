#!/usr/bin/env bash
# Starts a 3-node edge cluster on loopback: a private redis-server on a free
# port (unless REDIS_URL is given), then three edge nodes, each with its own
# data dir, prints their URLs and a token per node, and stops everything on
# Ctrl-C (or when any node exits).
#
#   scripts/cluster.sh                                # private Redis
#   REDIS_URL=redis://127.0.0.1:6379 scripts/cluster.sh
#   NODES=5 BASE_PORT=9100 scripts/cluster.sh
#   PG=private scripts/cluster.sh                     # + a private PostgreSQL: history beyond the Redis stream
#   POSTGRES_URL=postgres://user@host:5432/db scripts/cluster.sh   # + an existing PostgreSQL database
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
BASE_PORT=${BASE_PORT:-8181}
SECRET=${EDGE_JWT_SECRET:-cluster-dev-secret-0123456789abcdef-0123}
cargo build --release --locked --bin edge
RUN=$(mktemp -d)
pids=()
PGDIR=""
cleanup() {
  trap - INT TERM EXIT
  # A private postmaster runs under runuser, which does not pass signals on: stop it by its data dir.
  [ -z "$PGDIR" ] || "${as_pg[@]}" "$bindir/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
  [ -z "$PGDIR" ] || rm -rf "$PGDIR"
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

if [ "${PG:-}" = private ] && [ -z "${POSTGRES_URL:-}" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bindir/initdb" ] || { echo "PostgreSQL not found (apt-get install postgresql), or set POSTGRES_URL" >&2; exit 2; }
  as_pg=(); [ "$(id -u)" != 0 ] || as_pg=(runuser -u postgres --)
  PGDIR=$(mktemp -d /tmp/edge-cluster-pg.XXXXXX)
  [ "$(id -u)" != 0 ] || chown postgres "$PGDIR"
  pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${as_pg[@]}" "$bindir/initdb" -D "$PGDIR/data" -U postgres -A trust >"$PGDIR/initdb.log" 2>&1
  "${as_pg[@]}" "$bindir/postgres" -D "$PGDIR/data" -p "$pport" -k "$PGDIR" -c listen_addresses=127.0.0.1 >"$PGDIR/pg.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.1; done
  POSTGRES_URL="postgres://postgres@127.0.0.1:$pport/postgres"
  echo "postgres: $POSTGRES_URL (private, log $PGDIR/pg.log)"
fi
store_flags=()
[ -z "${POSTGRES_URL:-}" ] || store_flags=(--postgres-url "$POSTGRES_URL")

for i in $(seq 1 "$NODES"); do
  port=$((BASE_PORT + i - 1))
  RUST_LOG=${RUST_LOG:-warn} target/release/edge serve --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" \
    --redis-url "$REDIS_URL" --node-id "n$i" --data-dir "$RUN/n$i" "${store_flags[@]}" >"$RUN/n$i.out" 2>"$RUN/n$i.log" &
  pids+=($!)
done
for i in $(seq 1 "$NODES"); do
  port=$((BASE_PORT + i - 1))
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  token=$(target/release/edge token --user "user$i" --jwt-secret "$SECRET")
  echo "node n$i: ws://127.0.0.1:$port/ws   page http://127.0.0.1:$port/   (log $RUN/n$i.log)"
  echo "  token for user$i: $token"
done
echo "EDGE_JWT_SECRET=$SECRET   (loadgen --url ws://127.0.0.1:$BASE_PORT/ws --url ... mints its own tokens)"
echo "Ctrl-C stops the cluster."
wait -n "${pids[@]}" || true
echo "a process of the cluster exited; stopping the rest" >&2
