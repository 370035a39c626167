#!/usr/bin/env bash
# Cluster-on-PostgreSQL figures (issue #13), reproducible: three edge nodes on one
# Redis and one private PostgreSQL.
#
# - send -> ack and send -> deliver latency, `fast` vs `durable` (the durable ack waits
#   for the shared store's commit), with loadgen's fan-out: 10 rooms x 30 members over
#   the three nodes, at 10 and 100 msg/s per room;
# - a history page read from the Redis stream vs from PostgreSQL below it (HTTP API,
#   one keep-alive connection, 300 pages each).
#
# Pinning on 2 CPUs: edges, redis-server and postgres on CPU 0, loadgen on CPU 1.
# Writes results/cluster-pg-*.json.
#
#   scripts/store-bench.sh           # ~2 minutes after the release build
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=bench-secret-0123456789abcdef-0123456789
KEY=bench-api-key-0123456789abcdef
cargo build --release --locked --bin edge --bin loadgen
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 2; }
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "PostgreSQL not found (apt-get install postgresql)" >&2; exit 2; }
cpus=$(nproc)
if [ "$cpus" -ge 2 ]; then SERVER_CPUS=0; LOADGEN_CPUS=$(seq -s, 1 $((cpus - 1))); else SERVER_CPUS=0; LOADGEN_CPUS=0; fi
RUN=$(mktemp -d /tmp/store-bench.XXXXXX)
pids=()
pg_pid=""
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
# The postmaster runs under runuser, which does not pass signals on: stop it by its data dir.
cleanup() { stop_all; [ -z "$pg_pid" ] || { "${as_pg[@]}" "$bindir/pg_ctl" -D "$RUN/pg" -m fast stop >/dev/null 2>&1 || true; wait "$pg_pid" 2>/dev/null || true; }; rm -rf "$RUN"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# A private PostgreSQL (as the postgres user when root: initdb refuses root).
as_pg=(); [ "$(id -u)" != 0 ] || { as_pg=(runuser -u postgres --); chown postgres "$RUN"; }
pport=$(free_port)
"${as_pg[@]}" "$bindir/initdb" -D "$RUN/pg" -U postgres -A trust >"$RUN/initdb.log" 2>&1
taskset -c "$SERVER_CPUS" "${as_pg[@]}" "$bindir/postgres" -D "$RUN/pg" -p "$pport" -k "$RUN" \
  -c listen_addresses=127.0.0.1 -c max_connections=200 >"$RUN/pg.log" 2>&1 &
pg_pid=$!
wait_port "$pport"
for _ in $(seq 100); do psql -h 127.0.0.1 -p "$pport" -U postgres -c 'select 1' postgres >/dev/null 2>&1 && break; sleep 0.1; done

# start_cluster MODE: Redis, a fresh database, three nodes on it with durability MODE.
start_cluster() {
  local mode=$1
  rport=$(free_port)
  taskset -c "$SERVER_CPUS" redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" >/dev/null 2>&1 &
  pids+=($!); wait_port "$rport"
  local db="bench_${mode}_$$_$RANDOM"
  psql -h 127.0.0.1 -p "$pport" -U postgres -q -c "CREATE DATABASE $db" postgres
  URLS=(); PORTS=()
  for i in 1 2 3; do
    local port; port=$(free_port)
    EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 EDGE_API_KEYS="$KEY" EDGE_REDIS_RECENT_LEN=100 RUST_LOG=warn \
      taskset -c "$SERVER_CPUS" target/release/edge serve \
      --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" --data-dir "$RUN/d$i-$port" \
      --redis-url "redis://127.0.0.1:$rport" --node-id "n$i" --durability "$mode" \
      --store postgres --postgres-url "postgres://postgres@127.0.0.1:$pport/$db" >/dev/null &
    pids+=($!)
    [ "$i" = 1 ] && EDGE_PID=$!
    URLS+=(--url "ws://127.0.0.1:$port/ws"); PORTS+=("$port")
  done
  for p in "${PORTS[@]}"; do wait_port "$p"; done
}
src=101
lg() { # NAME ARGS...
  local name=$1; shift
  echo "== $name"
  taskset -c "$LOADGEN_CPUS" target/release/loadgen fanout "${URLS[@]}" --jwt-secret "$SECRET" \
    --cpus "$LOADGEN_CPUS" --server-cpus "$SERVER_CPUS" --server-pid "$EDGE_PID" --first-source "127.0.0.$src" \
    --json "results/$name.json" "$@"
  src=$((src + 5))
}

RUNS=(--rooms 10 --members 30 --senders 1 --warmup-s 2 --duration-s 10)
for rate in 10 100; do
  for mode in fast durable; do
    start_cluster "$mode"
    lg "cluster-pg-3nodes-10x30-r$rate-$mode" "${RUNS[@]}" --rate-per-sender "$rate"
    stop_all
  done
done

# History pages: 300 messages into one room (the stream keeps the newest ~100), then
# 300 pages of 50 from the stream (the newest) and 300 from PostgreSQL (before seq 101).
start_cluster fast
taskset -c "$LOADGEN_CPUS" python3 - "${PORTS[0]}" "$KEY" <<'EOF'
import http.client, json, os, platform, statistics, subprocess, sys, time
port, key = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
hdr = {"X-API-Key": key, "Content-Type": "application/json"}
for i in range(300):
    c.request("POST", "/api/rooms/hist/messages", body=json.dumps({"body": f"m{i} " + "x" * 100, "user": "bench"}), headers=hdr)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
time.sleep(1)  # the writes land in PostgreSQL within a batch interval
def page(path, want_first):
    c.request("GET", path, headers=hdr)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
    msgs = json.loads(body)["messages"]
    assert len(msgs) == 50 and msgs[0]["seq"] == want_first, (path, msgs[0]["seq"] if msgs else None)
def timed(path, want_first, n=300):
    for _ in range(30):
        page(path, want_first)  # warm up
    out = []
    for _ in range(n):
        t = time.perf_counter_ns(); page(path, want_first); out.append((time.perf_counter_ns() - t) / 1e3)
    out.sort()
    return {"pages": n, "p50_us": round(out[n // 2], 1), "p99_us": round(out[int(n * 0.99) - 1], 1), "max_us": round(out[-1], 1)}
# Alternate the two sources, three rounds each, so drift hits both alike.
rounds = {"stream": [], "store": []}
for _ in range(3):
    rounds["stream"].append(timed("/api/rooms/hist/messages?limit=50", 251))
    rounds["store"].append(timed("/api/rooms/hist/messages?limit=50&before=101", 51))
ratio = [round(b["p50_us"] / a["p50_us"], 2) for a, b in zip(rounds["stream"], rounds["store"])]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = {"tool": "store-bench", "scenario": "history-page-stream-vs-store", "command": "scripts/store-bench.sh",
       "git_commit": commit, "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
       "note": "HTTP GET of a 50-message history page on one keep-alive connection (Python client, the same for both); "
               "stream: the newest page (seqs 251..300, in the Redis stream of ~100); store: seqs 51..100, below the stream, from PostgreSQL",
       "results": rounds, "store_over_stream_p50": ratio}
json.dump(out, open("results/cluster-pg-history.json", "w"), indent=1)
print(json.dumps(out, indent=1))
EOF
stop_all
