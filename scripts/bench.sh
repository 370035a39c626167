#!/usr/bin/env bash
# Reproduces the headline results from a clean checkout: builds release,
# starts an edge, runs loadgen's idle, fanout and storm scenarios, writes
# results/<scenario>.json, and regenerates results/README.md and
# results/latency.svg (`loadgen report`), and the fan-out runs'
# latency-throughput curve (results/curve.json and curve.svg,
# scripts/curve.py).
#
# Every run starts with the kernel's floor on this machine today
# (`floorbench`: writer CPU per frame on loopback, one frame per write and
# eight per writev; results/floor.json), and ends by printing each
# result's server CPU per delivery as a ratio to that floor: absolute
# figures move with the hypervisor from day to day, ratios from one run do
# not.
#
# Pinning: with 2+ CPUs the edge runs on CPU 0 with one shard and loadgen on
# the other CPUs (`taskset`), recorded in each JSON (machine.server_cpus,
# machine.loadgen_cpus). With 1 CPU both share it (and the JSON says so).
#
#   scripts/bench.sh                 # everything (~4 minutes on 2 cores)
#   ONLY=fanout scripts/bench.sh     # one group: idle, fanout, durability or storm (the floor runs too)
#   BENCH_OUT=results/x scripts/bench.sh  # write into results/x instead of results/
set -euo pipefail
cd "$(dirname "$0")/.."
SECRET=bench-secret-0123456789abcdef-0123456789
ONLY=${ONLY:-all}
# Where the JSON, the report and the curve go (BENCH_OUT=results/<name> keeps a run apart).
OUT=${BENCH_OUT:-results}
cargo build --release --locked --bin edge --bin loadgen --bin floorbench
mkdir -p "$OUT"
cpus=$(nproc)
if [ "$cpus" -ge 2 ]; then SERVER_CPUS=0; LOADGEN_CPUS=$(seq -s, 1 $((cpus - 1))); else SERVER_CPUS=0; LOADGEN_CPUS=0; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="ws://127.0.0.1:$port/ws"
edge_pid=""

start_edge() { # extra EDGE_* settings as arguments: KEY=VALUE ...
  env EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn "$@" \
    taskset -c "$SERVER_CPUS" target/release/edge serve --listen "127.0.0.1:$port" --cores 1 --jwt-secret "$SECRET" \
      --data-dir "$DATA" >/dev/null &
  edge_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "edge did not start" >&2; exit 1
}
stop_edge() { kill "$edge_pid" 2>/dev/null || true; wait "$edge_pid" 2>/dev/null || true; edge_pid=""; rm -rf "$DATA"; }
# Every edge run starts on an empty embedded store.
DATA=$(mktemp -d)
trap 'stop_edge' EXIT
# Each run dials from its own loopback source addresses (--first-source), so
# ports left in TIME_WAIT by the previous run are not in its way.
src=1
lg() { # loadgen SCENARIO NAME ARGS...
  local scenario=$1 name=$2; shift 2
  local first="127.0.0.$src"; src=$((src + 5))
  echo "== $name"
  taskset -c "$LOADGEN_CPUS" target/release/loadgen "$scenario" --url "$URL" --jwt-secret "$SECRET" \
    --cpus "$LOADGEN_CPUS" --server-cpus "$SERVER_CPUS" --server-pid "$edge_pid" --first-source "$first" \
    --json "$OUT/$name.json" "$@" || {
    echo "!! $name exited with $?" >&2; FAILED=1; }
}
FAILED=0
RUN_START=$(date +%s)

echo "== floor"
target/release/floorbench --writer-cpu "$SERVER_CPUS" --reader-cpu "${LOADGEN_CPUS%%,*}" --json "$OUT/floor.json" || {
  echo "!! floorbench exited with $?" >&2; exit 1; }

if [ "$ONLY" = all ] || [ "$ONLY" = idle ]; then
  start_edge; lg idle idle-10k --conns 10000 --duration-s 3; stop_edge
  # The largest count one edge process holds here: its open-file limit
  # (ulimit -n) minus listeners and spare descriptors.
  MAX=$(( $(ulimit -n) - 1000 ))
  start_edge; lg idle "idle-max" --conns "$MAX" --duration-s 3; stop_edge
fi
if [ "$ONLY" = all ] || [ "$ONLY" = fanout ]; then
  # 10 rooms x 100 members, one sender per room, rising rates: 5k to 600k deliveries/s,
  # from a tenth of the knee (p99 rises past 10 ms between 20k and 50k here) to saturation.
  for rate in 5 10 20 50 100 300 600; do
    start_edge
    lg fanout "fanout-10x100-r$rate" --rooms 10 --members 100 --senders 1 --rate-per-sender "$rate" --warmup-s 2 --duration-s 10
    stop_edge
  done
  # The latency-throughput curve of these runs: results/curve.json and curve.svg.
  python3 scripts/curve.py --dir "$OUT" --since "$RUN_START" || FAILED=1
fi
if [ "$ONLY" = all ] || [ "$ONLY" = durability ]; then
  # The cost of durable acks: the same fan-out with acks (and fan-out) after the store commit.
  for rate in 10 100; do
    for mode in fast durable; do
      start_edge EDGE_DURABILITY=$mode
      lg fanout "fanout-10x100-r$rate-$mode" --rooms 10 --members 100 --senders 1 --rate-per-sender "$rate" --warmup-s 2 --duration-s 10
      stop_edge
    done
  done
fi
if [ "$ONLY" = all ] || [ "$ONLY" = storm ]; then
  start_edge
  lg storm storm-10k-unlimited --conns 10000 --rooms 100 --rate-per-room 2 --hold-s 2
  stop_edge
  start_edge EDGE_ADMISSION_RATE_PER_SHARD=2000 EDGE_ADMISSION_BURST=256
  lg storm storm-10k-admission-2000 --conns 10000 --rooms 100 --rate-per-room 2 --hold-s 2
  stop_edge
fi
target/release/loadgen report --dir "$OUT"

# Each result of this run against the floor measured at its start.
python3 - "$RUN_START" "$OUT" <<'PY'
import glob, json, os, sys
start, out = int(sys.argv[1]), sys.argv[2]
floor = json.load(open(os.path.join(out, "floor.json")))["results"]
single, batch8 = floor["single_ns_per_frame"], floor["batch8_ns_per_frame"]
print(f"\n== against the floor: {single:.0f} ns/frame written alone, {batch8:.0f} ns/frame eight to a writev")
print(f"{'result':34} {'deliveries/s':>12} {'CPU ns/delivery':>16} {'/ single':>9} {'/ batch8':>9} {'p99 ms':>8}")
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    if os.path.getmtime(path) < start:
        continue
    r = json.load(open(path)).get("results", {})
    ns = r.get("server_cpu_ns_per_delivery")
    if not ns:
        continue
    p99 = r.get("latency_ms", {}).get("p99", float("nan"))
    name = os.path.basename(path)[:-5]
    print(f"{name:34} {r.get('deliveries_per_s', 0):12.0f} {ns:16.0f} {ns / single:9.2f} {ns / batch8:9.2f} {p99:8.2f}")
PY
exit "$FAILED"
