"""Summarises an Autobahn|Testsuite report: counts by behavior, fails on FAILED."""
import json
import sys
from collections import Counter

index_path, agent, out_path = sys.argv[1:4]
with open(index_path) as f:
    index = json.load(f)
cases = index[agent]
behavior = Counter(c["behavior"] for c in cases.values())
close = Counter(c["behaviorClose"] for c in cases.values())
failed = sorted(k for k, c in cases.items() if c["behavior"] == "FAILED" or c["behaviorClose"] == "FAILED")
summary = {"agent": agent, "cases": len(cases), "behavior": dict(behavior),
           "behaviorClose": dict(close), "failed": failed}
with open(out_path, "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")
print(f"autobahn {agent}: {len(cases)} cases, behavior {dict(behavior)}, close {dict(close)}")
if failed:
    print("FAILED cases:", ", ".join(failed))
    sys.exit(1)
