#!/usr/bin/env bash
# CPU time per thread of a running process over an interval, from
# /proc/<pid>/task/*/schedstat (nanoseconds on CPU), summed by thread name.
#   scripts/thread-cpu.sh <pid> <seconds>
set -euo pipefail
pid=$1; secs=$2
snap() { for t in /proc/"$pid"/task/*; do printf '%s\t%s\n' "$(cat "$t/comm")" "$(cut -d' ' -f1 "$t/schedstat")"; done 2>/dev/null; }
a=$(snap); sleep "$secs"; b=$(snap)
python3 - "$secs" <<PY
import sys, collections
secs = float(sys.argv[1])
def parse(s):
    d = collections.Counter()
    for line in s.strip().splitlines():
        name, ns = line.rsplit('\t', 1)
        d[name] += int(ns)
    return d
a = parse("""$a"""); b = parse("""$b""")
for name in sorted(b, key=lambda n: -(b[n] - a.get(n, 0))):
    d = b[name] - a.get(name, 0)
    if d > 0:
        print(f"{name:20s} {d / 1e6:10.1f} ms  {d / secs / 1e7:6.2f}% of a core")
PY
