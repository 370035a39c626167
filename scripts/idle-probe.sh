#!/usr/bin/env bash
# Idle probe (not in CI): RSS and live heap of one edge (one shard, CPU 0)
# before and while N idle connections (default 10,000; loadgen on CPU 1) are
# open. Build the edge with `--features heap-stats` for the live heap
# (edge_heap_live_bytes); EDGE_BIN picks the binary (default
# target/release/edge), EXTRA_ENV adds settings. Prints both snapshots and
# loadgen's RSS per connection (results/idle-breakdown-20261205.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=bench-secret-0123456789abcdef-0123456789
N=${N:-10000}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
env RUST_LOG=warn EDGE_ADMIN_LISTEN=127.0.0.1:$admin ${EXTRA_ENV:-} taskset -c 0 ${EDGE_BIN:-target/release/edge} serve --listen 127.0.0.1:$port --cores 1 --jwt-secret $SECRET --data-dir $DATA >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf $DATA' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$admin/healthz && break; sleep 0.1; done
snap() { local m; m=$(curl -s http://127.0.0.1:$admin/metrics); echo "$1 rss_kib=$(awk '/^VmRSS:/{print $2}' /proc/$pid/status) anon_kib=$(awk '/^RssAnon:/{print $2}' /proc/$pid/status) thp_kib=$(awk '/^AnonHugePages:/{print $2}' /proc/$pid/smaps_rollup) heap=$(awk '$1=="edge_heap_live_bytes"{print $2}' <<<"$m") open=$(awk '$1=="edge_connections_open"{s+=$2} END{print s}' <<<"$m")"; }
snap before
taskset -c 1 target/release/loadgen idle --url ws://127.0.0.1:$port/ws --jwt-secret $SECRET --conns $N --duration-s 8 --server-pid $pid --first-source 127.0.0.1 --json /tmp/idle-probe.json > /tmp/idle-probe.out 2>&1 &
lg=$!
sleep 7
snap during
wait $lg || true
python3 -c "import json; r=json.load(open('/tmp/idle-probe.json'))['results']; print('loadgen: open', r.get('open'), 'rss/conn', r.get('server_rss_bytes_per_conn'))"
