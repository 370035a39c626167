#!/usr/bin/env bash
# Fan-out peers (not in CI): server CPU per delivery and send->deliver latency of
# our edge against uWebSockets.js on the same fan-out, measured the same way in
# one run so the two can be compared as ratios. For ROUNDS rounds (default 3) it
# runs, alternately, the edge (EDGE_BIN, default target/release/edge; started as
# scripts/ab.sh starts it: one shard pinned to CPU 0, EDGE_MAX_MSGS_PER_S and
# EDGE_MSGS_BURST at 100000 so the per-connection rate limit stays out of the
# way) and the uWS peer (node scripts/peers/uws/server.js, pinned to CPU 0: one
# thread, rooms as pub/sub topics, each message rendered once and app.publish'ed),
# each under the load of scripts/ab.sh: `loadgen fanout` (LOADGEN_BIN, default
# target/release/loadgen) on CPU 1 (--cpus 1: loadgen's executors pin themselves),
# 10 rooms x 100 members, 1 sender per room at RATE (default 100) messages/s,
# warmup 2 s, 10 s measured. loadgen reads the server's CPU time from /proc
# (utime+stime of every thread) over the measured window and divides it by the
# deliveries in it; latency runs from each message's due send time (stamped in
# its body) to its arrival, so loadgen's own lag is included (its "sender lag"
# line says how much). Prints loadgen's lines per run, plus CPU 0's user/system/
# softirq shares and the server's utime/stime per delivery over 7 s inside the window,
# then per server the mean and median ns per delivery and median p50/p99 latency,
# and the uWS/edge ratios.
#
# Install the peer first (its node_modules is not committed):
#   (cd scripts/peers/uws && npm ci)      # or: npm install
# Needs node (16-25; the package ships prebuilt uWS.js binaries), python3,
# taskset, 2+ CPUs, and a quiet machine (no build running).
# Example: EDGE_BIN=target/release/edge RATE=100 ROUNDS=3 scripts/peers/fanout-peers.sh
# The per-run JSON and output stay in OUT (default: a new /tmp/fanout-peers.* directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-100}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$(mktemp -d /tmp/fanout-peers.XXXXXX)}
mkdir -p "$OUT"
source scripts/peers/common.sh

echo "fanout-peers: RATE=$RATE ROUNDS=$ROUNDS EDGE_BIN=$EDGE_BIN LOADGEN_BIN=$LOADGEN_BIN LG_CPUS=$LG_CPUS OUT=$OUT"
echo "node $(node --version), uwebsockets $(node -p "require('./$UWS_DIR/node_modules/uwebsockets/package.json').version") (uWS.js source commit $(cat $UWS_DIR/node_modules/uwebsockets/source_commit 2>/dev/null || echo '?')), $(nproc) CPUs"
echo "load: $(uptime)"

wait_port() { # wait_port NAME: until the server accepts on $port
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && { sleep 0.5; return; }
    sleep 0.1
  done
  echo "$1 did not come up" >&2; exit 1
}

start_edge() {
  port=$(freeport); DATA=$(mktemp -d)
  EDGE_MAX_MSGS_PER_S=100000 EDGE_MSGS_BURST=100000 RUST_LOG=warn taskset -c 0 "$EDGE_BIN" serve --listen "127.0.0.1:$port" \
    --cores 1 --jwt-secret "$SECRET" --data-dir "$DATA" >/dev/null 2>"$OUT/edge-stderr-$1.log" &
  pid=$!
  wait_port edge
}

start_uws() {
  port=$(freeport)
  taskset -c 0 node $UWS_DIR/server.js "$port" >/dev/null 2>"$OUT/uws-stderr-$1.log" &
  pid=$!
  wait_port "uWS peer"
}

src=150
run() { # run SERVER ROUND
  local name=$1 round=$2 out=$OUT/$1-$2
  echo "== round $round: $name, RATE=$RATE"
  "start_$name" "$round"
  taskset -c 1 "$LOADGEN_BIN" fanout --url "ws://127.0.0.1:$port/ws" --jwt-secret "$SECRET" --cpus "$LG_CPUS" --server-cpus 0 \
    --server-pid "$pid" --first-source "127.0.0.$src" --rooms 10 --members 100 --senders 1 --rate-per-sender "$RATE" \
    --warmup-s 2 --duration-s 10 --json "$out.json" >"$out.out" 2>"$out.err" &
  local lg=$! a b
  # A look inside the measured window (about 3 s to 12 s after the start): where CPU 0's time
  # goes (softirq is mostly the loopback TCP stack; without IRQ time accounting it is charged
  # to the process it interrupts, so it is in loadgen's "server CPU") and the server's
  # user/system split.
  sleep 4; a="$(grep '^cpu0 ' /proc/stat) $(cut -d')' -f2 /proc/$pid/stat)"
  sleep 7; b="$(grep '^cpu0 ' /proc/stat) $(cut -d')' -f2 /proc/$pid/stat)"
  wait $lg || echo "  (loadgen exited non-zero: members missing or messages lost; see $out.out)"
  cleanup
  src=$((src + 5))
  grep -E "members joined|deliveries|latency|correctness|sender lag|errors|CPU" "$out.out" || echo "  (no report: see $out.err)"
  python3 - "$a" "$b" "$out.json" <<'PY'
import json, os, sys
a, b = sys.argv[1].split(), sys.argv[2].split()
d = [int(y) - int(x) for x, y in zip(a[1:9], b[1:9])]  # cpu0: user nice system idle iowait irq softirq steal
t = sum(d) or 1
ut, st = int(b[22]) - int(a[22]), int(b[23]) - int(a[23])  # the server's utime, stime (fields 14, 15)
try: dps = json.load(open(sys.argv[3]))["results"]["deliveries_per_s"]
except (OSError, ValueError, KeyError): dps = 0
per = lambda ticks: "%.0f" % (ticks / os.sysconf("SC_CLK_TCK") * 1e9 / (dps * 7.0)) if dps else "?"
print(f"  cpu0 (7 s)      user {d[0]/t:.2f}, system {d[2]/t:.2f}, softirq {d[6]/t:.2f}, idle {(d[3]+d[4])/t:.2f};"
      f" server utime {per(ut)} + stime {per(st)} ns per delivery")
PY
}

for r in $(seq "$ROUNDS"); do
  run edge "$r"
  run uws "$r"
done

echo "== summary: RATE=$RATE, $ROUNDS rounds (latency in ms, CPU in ns per delivery)"
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics as st, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name, r):
    try: return json.load(open(f"{out}/{name}-{r}.json"))["results"]
    except (OSError, ValueError, KeyError): return None
rows = {n: [x for x in (load(n, r) for r in range(1, rounds + 1)) if x] for n in ("edge", "uws")}
def col(rs, f):
    return [v for v in (f(x) for x in rs) if v is not None]
stats = {}
print(f"  {'round':<6} {'server':<5} {'ns/deliv':>9} {'p50':>7} {'p99':>7} {'deliv/s':>8} {'lag p99':>8} lost errors")
for r in range(1, rounds + 1):
    for n in ("edge", "uws"):
        x = load(n, r)
        if not x: print(f"  {r:<6} {n:<5} (no result)"); continue
        ns = x.get("server_cpu_ns_per_delivery")
        print(f"  {r:<6} {n:<5} {ns if ns is None else round(ns):>9} {x['latency_ms'].get('p50', float('nan')):>7.3f} {x['latency_ms'].get('p99', float('nan')):>7.3f}"
              f" {x['deliveries_per_s']:>8.0f} {x['sender_lag_ms'].get('p99', float('nan')):>8.3f} {x['lost']} {x['errors'] or '-'}")
for n, rs in rows.items():
    ns = col(rs, lambda x: x.get("server_cpu_ns_per_delivery"))
    p50 = col(rs, lambda x: x["latency_ms"].get("p50"))
    p99 = col(rs, lambda x: x["latency_ms"].get("p99"))
    if not (ns and p50 and p99): print(f"  {n}: no complete run"); continue
    stats[n] = dict(ns_mean=st.mean(ns), ns_median=st.median(ns), p50=st.median(p50), p99=st.median(p99),
                    p50_mean=st.mean(p50), p99_mean=st.mean(p99))
    s = stats[n]
    print(f"  {n:<5} ns/delivery mean {s['ns_mean']:.0f}, median {s['ns_median']:.0f};"
          f" latency p50 median {s['p50']:.3f} ms (mean {s['p50_mean']:.3f}), p99 median {s['p99']:.3f} ms (mean {s['p99_mean']:.3f})  [{len(rs)} runs]")
if len(stats) == 2:
    e, u = stats["edge"], stats["uws"]
    print("  uws/edge: " + ", ".join(f"{k} {u[k] / e[k]:.2f}x" for k in ("ns_mean", "ns_median", "p50", "p99")))
EOF
