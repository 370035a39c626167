#!/usr/bin/env bash
# Soak run (not part of CI): churn against ONE edge node for SOAK_MINUTES
# (default 30), then a verdict on whether its memory, fds and rooms stayed
# flat.
#
# Builds release, starts an edge (default embedded store, a temp data dir,
# free loopback ports: the WebSocket port and an admin port for /metrics)
# and runs `loadgen churn` against it: clients that connect, join pool rooms
# and fresh `soak-<tag>-<n>` rooms, send and check acks, leave, close and
# reconnect, all continuously, with a reconnect storm every
# SOAK_STORM_EVERY_S. Rooms left empty leave the edge's memory after
# SOAK_ROOM_IDLE_EVICT_MS (60 s here, passed as EDGE_ROOM_IDLE_EVICT_MS
# unless that is set; the edge's default is 5 min). A tenth of the sessions
# join an older fresh name instead, one created that idle time + 10 s ago
# (up to SOAK_REVISIT_BAND_S more), so evicted rooms come back from the
# store. A name then stays in memory about 3.5 minutes at most, and the
# rooms held level off long before minute 10 (with the edge's 5-minute
# default they would still be rising then).
# Every SOAK_SAMPLE_S it samples the edge's RSS
# (VmRSS in /proc/<pid>/status), open fds (/proc/<pid>/fd), open connections
# (edge_connections_open), rooms (edge_rooms_held when the edge has it,
# and edge_rooms_owned summed over shards; edge_rooms_evicted_total), the
# heap SQLite holds (edge_store_sqlite_memory_bytes: its page caches grow
# with the database up to EDGE_STORE_CACHE_MIB, then stay), the size of
# the data dir, anonymous RSS (RssAnon), the process's threads, the C heap's
# free memory the process keeps (edge_c_heap_free_bytes), and with SOAK_FEATURES=heap-stats
# the live heap (edge_heap_live_bytes: what the program holds, against what
# the allocator keeps) into results/<name>-<date>.csv,
# then scripts/soak_plot.py draws results/<name>.svg and judges: the mean
# of minutes 10-15 (M/3-M/2) against the mean of the last 5 (last M/6) must
# grow less than SOAK_TOLERANCE_PCT (5) for RSS, fds and rooms.
#
#   scripts/soak.sh                                      # 30 minutes
#   SOAK_MINUTES=3 SOAK_NAME=soak-smoke scripts/soak.sh  # a short check of the script
#
# Settings (environment): SOAK_MINUTES (30), SOAK_NAME (soak), SOAK_CLIENTS
# (400), SOAK_FRESH_ROOMS_PER_S (10), SOAK_STORM_EVERY_S (60),
# SOAK_SAMPLE_S (10), SOAK_TOLERANCE_PCT (5), SOAK_EDGE_CORES (2),
# SOAK_ROOM_IDLE_EVICT_MS (60000), SOAK_REVISIT_BAND_S (60),
# SOAK_LOADGEN_ARGS (more `loadgen churn` flags), SOAK_FEATURES (edge
# features to build with, e.g. heap-stats), SOAK_NO_BUILD=1 (use the
# binaries in target/release), SOAK_KEEP_TMP=1 (keep the data dir and logs).
# EDGE_* variables in the environment configure the edge as usual.
#
# Exit status: 0 flat and loadgen counted no error; 1 not flat, loadgen
# counted errors, or the edge died; 2 the run could not be set up.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${SOAK_MINUTES:-30}
NAME=${SOAK_NAME:-soak}
CLIENTS=${SOAK_CLIENTS:-400}
FRESH=${SOAK_FRESH_ROOMS_PER_S:-10}
STORM_S=${SOAK_STORM_EVERY_S:-60}
SAMPLE_S=${SOAK_SAMPLE_S:-10}
TOL=${SOAK_TOLERANCE_PCT:-5}
CORES=${SOAK_EDGE_CORES:-2}
export EDGE_ROOM_IDLE_EVICT_MS=${EDGE_ROOM_IDLE_EVICT_MS:-${SOAK_ROOM_IDLE_EVICT_MS:-60000}}
BAND=${SOAK_REVISIT_BAND_S:-60}
for v in MINUTES CLIENTS STORM_S SAMPLE_S CORES EDGE_ROOM_IDLE_EVICT_MS BAND; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "soak: $v must be a whole number (got '${!v}')" >&2; exit 2; }
done
if [ "$MINUTES" -lt 1 ] || [ "$SAMPLE_S" -lt 1 ]; then
  echo "soak: SOAK_MINUTES and SOAK_SAMPLE_S must be at least 1" >&2
  exit 2
fi
REVISIT_AGE=$((EDGE_ROOM_IDLE_EVICT_MS / 1000 + 10))

if [ "${SOAK_NO_BUILD:-0}" != 1 ]; then
  # shellcheck disable=SC2086 # a list of features
  cargo build --release -p edge -p loadgen ${SOAK_FEATURES:+--features "edge/$SOAK_FEATURES"} || { echo "soak: the build failed" >&2; exit 2; }
fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p results
CSV="results/$NAME-$STAMP.csv"
SVG="results/$NAME.svg"
TMP=$(mktemp -d -t edge-soak.XXXXXX)
SECRET="soak-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
read -r PORT ADMIN < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
edge_pid="" lg_pid=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$lg_pid" ]; then kill "$lg_pid" 2>/dev/null || true; fi
  if [ -n "$edge_pid" ]; then
    kill "$edge_pid" 2>/dev/null || true
    wait "$edge_pid" 2>/dev/null || true
  fi
  if [ "${SOAK_KEEP_TMP:-0}" = 1 ]; then echo "soak: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

start_edge() {
  env RUST_LOG="${RUST_LOG:-warn}" EDGE_ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    target/release/edge serve --listen "127.0.0.1:$PORT" --cores "$CORES" --jwt-secret "$SECRET" \
    --data-dir "$TMP/data" >"$TMP/edge.out" 2>"$TMP/edge.log" &
  edge_pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && return 0
    kill -0 "$edge_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "soak: the edge did not start; its log:" >&2
  tail -20 "$TMP/edge.log" >&2
  exit 2
}

# The sum of a metric's samples over its labels; empty when the edge has no such metric.
metric_sum() { # NAME METRICS_TEXT
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; k++ } END { if (k) printf "%d", s }' <<<"$2"
}

t0=$EPOCHREALTIME
sample() { # PHASE
  local t rss fds m sqlite db heap anon threads cfree thp
  t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$edge_pid/status" 2>/dev/null || true)
  fds=$(find "/proc/$edge_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  m=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" || true)
  sqlite=$(metric_sum edge_store_sqlite_memory_bytes "$m")
  heap=$(metric_sum edge_heap_live_bytes "$m")
  anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$edge_pid/status" 2>/dev/null || true)
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$edge_pid/status" 2>/dev/null || true)
  cfree=$(metric_sum edge_c_heap_free_bytes "$m")
  thp=$(awk '/^AnonHugePages:/ { print $2 }' "/proc/$edge_pid/smaps_rollup" 2>/dev/null || true)
  db=$(du -sk "$TMP/data" 2>/dev/null | awk '{ print $1 }' || true)
  echo "$t,$1,$rss,$fds,$(metric_sum edge_connections_open "$m"),$(metric_sum edge_rooms_held "$m"),$(metric_sum edge_rooms_owned "$m"),$(metric_sum edge_rooms_evicted_total "$m"),${sqlite:+$((sqlite / 1024))},$db,${heap:+$((heap / 1024))},$anon,$threads,${cfree:+$((cfree / 1024))},$thp" >>"$CSV"
}

edge_alive() { kill -0 "$edge_pid" 2>/dev/null; }

start_edge
echo "soak: edge pid $edge_pid on ws://127.0.0.1:$PORT/ws (metrics on 127.0.0.1:$ADMIN), data in $TMP/data"
echo "soak: $MINUTES min of churn: $CLIENTS clients, $FRESH fresh rooms/s (revisited at ${REVISIT_AGE}-$((REVISIT_AGE + BAND)) s old;" \
  "rooms idle ${EDGE_ROOM_IDLE_EVICT_MS} ms leave memory), a storm every ${STORM_S}s; sampling every ${SAMPLE_S}s into $CSV"
echo "t_s,phase,rss_kib,fds,connections,rooms_held,rooms_owned,rooms_evicted,sqlite_kib,db_kib,heap_kib,anon_kib,threads,c_free_kib,thp_kib" >"$CSV"
t0=$EPOCHREALTIME
sample start
# shellcheck disable=SC2086 # SOAK_LOADGEN_ARGS is a list of flags
EDGE_JWT_SECRET="$SECRET" target/release/loadgen churn --url "ws://127.0.0.1:$PORT/ws" \
  --duration-s $((MINUTES * 60)) --clients "$CLIENTS" --fresh-rooms-per-s "$FRESH" --storm-every-s "$STORM_S" \
  --revisit-age-s "$REVISIT_AGE" --revisit-band-s "$BAND" \
  --server-pid "$edge_pid" --json "$TMP/loadgen.json" ${SOAK_LOADGEN_ARGS:-} \
  >"$TMP/loadgen.out" 2>"$TMP/loadgen.log" &
lg_pid=$!

edge_died=0
next=$SAMPLE_S
while kill -0 "$lg_pid" 2>/dev/null; do
  now=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }')
  if [ "$now" -ge "$next" ]; then
    if ! edge_alive; then edge_died=1; break; fi
    sample load
    next=$((next + SAMPLE_S))
    if [ $((next % 60)) -lt "$SAMPLE_S" ]; then
      echo "soak: $((now / 60)) min: $(tail -1 "$CSV")"
    fi
  fi
  sleep 0.5
done
lg_rc=0
wait "$lg_pid" || lg_rc=$?
lg_pid=""
if [ "$edge_died" = 0 ] && edge_alive; then
  # After the load: every client has gone; connections and fds should be back.
  sleep 5; sample after
  sleep "$SAMPLE_S"; sample after
else
  edge_died=1
fi

echo
echo "== loadgen churn (exit $lg_rc)"
cat "$TMP/loadgen.out"
grep '^churn:' "$TMP/loadgen.log" | head -20 || true
grep -E '^loadgen: ' "$TMP/loadgen.log" || true
cp "$TMP/loadgen.json" "results/$NAME-$STAMP-loadgen.json" 2>/dev/null || true

echo
echo "== edge log (RUST_LOG=${RUST_LOG:-warn})"
warn=$(grep -c -E ' (WARN|ERROR) ' "$TMP/edge.log" || true)
echo "$warn warning/error lines"
if [ -s "$TMP/edge.log" ]; then
  grep -E ' (WARN|ERROR) ' "$TMP/edge.log" | sed -E 's/^[^ ]+ //' | sort | uniq -c | sort -rn | head -15 || true
  head -2000 "$TMP/edge.log" >"results/$NAME-$STAMP-edge.log"
fi
if [ "$edge_died" = 1 ]; then
  echo "!! the edge exited during the run; the end of its log:"
  tail -30 "$TMP/edge.log"
fi

echo
echo "== samples: $CSV"
verdict=0
python3 scripts/soak_plot.py "$CSV" --svg "$SVG" --minutes "$MINUTES" --tolerance "$TOL" \
  --title "edge soak $STAMP: $MINUTES min churn, $CLIENTS clients, $FRESH fresh rooms/s, storm every ${STORM_S}s" || verdict=$?

status=0
[ "$verdict" = 0 ] || { echo "soak: NOT FLAT (see above)"; status=1; }
[ "$lg_rc" = 0 ] || { echo "soak: loadgen exited $lg_rc (it counted errors, see above)"; status=1; }
[ "$edge_died" = 0 ] || { echo "soak: the edge died"; status=1; }
[ "$status" = 0 ] && echo "soak: flat, no errors"
exit "$status"
