#!/usr/bin/env bash
# Idle peers (not in CI): server RSS per idle WebSocket connection, our edge
# against uWebSockets.js, measured the same way in one run so the two can be
# compared as a ratio. For ROUNDS rounds (default 2) it runs, alternately, the
# edge (EDGE_BIN, default target/release/edge; started as scripts/idle-probe.sh
# starts it: one core, pinned to CPU 0) and the uWS peer (node
# scripts/peers/uws/server.js, pinned to CPU 0), each with N (default 10,000)
# idle connections from `loadgen idle` (LOADGEN_BIN, default
# target/release/loadgen) on CPU 1 (LG_CPUS, default 1: loadgen's executors
# pin themselves, so taskset alone would not keep them off CPU 0). Every
# connection upgrades with its own token and counts as open once its
# `welcome` frame arrived; the client then sends nothing and only reads.
# Prints each run's RSS before and during (VmRSS, RssAnon, AnonHugePages from
# /proc) and loadgen's server_rss_bytes_per_conn ((RSS during - before) / open),
# then a summary with the uWS/edge ratio per round.
#
# Install the peer first (its node_modules is not committed):
#   (cd scripts/peers/uws && npm ci)      # or: npm install
# Needs node (16-25; the package ships prebuilt uWS.js binaries), python3,
# curl, taskset. Above ~10,000 connections loadgen moves to the next
# 127.0.0.x source itself (--first-source); keep N below `ulimit -n`. The
# edge caps itself at nofile - 1024 connections (503 beyond): near that, add
# EXTRA_ENV=EDGE_MAX_CONNS=<N> (passed to the edge only).
# Example: EDGE_BIN=target/release/edge N=10000 ROUNDS=2 scripts/peers/idle-peers.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
ROUNDS=${ROUNDS:-2}
source scripts/peers/common.sh

echo "idle-peers: N=$N ROUNDS=$ROUNDS EDGE_BIN=$EDGE_BIN LOADGEN_BIN=$LOADGEN_BIN LG_CPUS=$LG_CPUS"
echo "node $(node --version), uwebsockets $(node -p "require('./$UWS_DIR/node_modules/uwebsockets/package.json').version"), $(nproc) CPUs, THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
echo "load: $(uptime)"

admin=
snap() {
  local extra=
  if [ -n "$admin" ]; then
    local m; m=$(curl -s http://127.0.0.1:$admin/metrics)
    extra=" heap=$(awk '$1=="edge_heap_live_bytes"{print $2}' <<<"$m") open=$(awk '$1 ~ /^edge_connections_open([{]|$)/{s+=$2} END{print s+0}' <<<"$m")"
  fi
  echo "  $1 rss_kib=$(awk '/^VmRSS:/{print $2}' /proc/$pid/status) anon_kib=$(awk '/^RssAnon:/{print $2}' /proc/$pid/status) thp_kib=$(awk '/^AnonHugePages:/{print $2}' /proc/$pid/smaps_rollup) threads=$(awk '/^Threads:/{print $2}' /proc/$pid/status)$extra"
}

start_edge() {
  port=$(freeport); admin=$(freeport); DATA=$(mktemp -d)
  env RUST_LOG=warn EDGE_ADMIN_LISTEN=127.0.0.1:$admin ${EXTRA_ENV:-} taskset -c 0 "$EDGE_BIN" serve --listen 127.0.0.1:$port --cores 1 --jwt-secret $SECRET --data-dir "$DATA" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$admin/healthz && return; sleep 0.1; done
  echo "edge did not come up" >&2; exit 1
}

start_uws() {
  port=$(freeport); admin=
  taskset -c 0 node $UWS_DIR/server.js $port >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && { sleep 0.5; return; }
    sleep 0.1
  done
  echo "uWS peer did not come up" >&2; exit 1
}

declare -A PER
run() { # run SERVER ROUND
  local name=$1 round=$2 out=/tmp/idle-peers-$1-$2
  echo "== round $round: $name, $N idle connections"
  "start_$name"
  snap before
  taskset -c 1 "$LOADGEN_BIN" idle --url ws://127.0.0.1:$port/ws --jwt-secret $SECRET --conns "$N" --duration-s 8 --server-pid $pid --first-source 127.0.0.1 --cpus "$LG_CPUS" --server-cpus 0 --json $out.json > $out.out 2>&1 &
  local lg=$!
  sleep 7
  snap during
  wait $lg || echo "  (loadgen exited non-zero: errors or connections closed during the hold; see $out.out)"
  cleanup
  local line
  line=$(python3 -c "
import json; r=json.load(open('$out.json'))['results']
p=r.get('server_rss_bytes_per_conn')
print('open', r.get('open'), 'errors', r.get('errors'), 'closed_during_hold', r.get('closed_during_hold'), 'connect_s %.2f' % r.get('connect_s', 0), 'rss_kib', r.get('server_rss_kib_before'), '->', r.get('server_rss_kib_after'), 'rss/conn', 'None' if p is None else '%.0f' % p)")
  echo "  loadgen: $line"
  PER[$name,$round]=${line##* }
}

for r in $(seq "$ROUNDS"); do
  run edge "$r"
  run uws "$r"
done

echo "== summary: server RSS bytes per idle connection (N=$N)"
printf '  %-6s %10s %10s %12s\n' round edge uws uws/edge
for r in $(seq "$ROUNDS"); do
  e=${PER[edge,$r]} u=${PER[uws,$r]}
  printf '  %-6s %10s %10s %12s\n' "$r" "$e" "$u" "$(python3 -c "print('%.2f' % ($u/$e))" 2>/dev/null || echo -)"
done
