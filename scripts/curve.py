#!/usr/bin/env python3
"""The latency-throughput curve of the fan-out runs, as JSON and SVG.

Reads results/fanout-10x100-r<rate>.json (what scripts/bench.sh's fanout
group writes: 10 rooms x 100 members, one sender per room at <rate> msg/s,
so 1,000 x <rate> deliveries/s offered) and results/floor.json (the
kernel's floor measured at the start of the same run), and writes
results/curve.json (one point per rate: offered and delivered rates, p50 /
p99 / p99.9 latency, server CPU per delivery and its ratio to the floor)
and results/curve.svg (p50 and p99 against the delivered rate, both axes
logarithmic).

  scripts/curve.py [--dir results] [--since UNIX_TIME]

--since keeps only files written at or after that time (bench.sh passes
its start, so a curve never mixes runs).
"""

import argparse
import glob
import json
import math
import os
import re


def points(directory, since):
    out = []
    for path in glob.glob(os.path.join(directory, "fanout-10x100-r*.json")):
        m = re.fullmatch(r"fanout-10x100-r(\d+)\.json", os.path.basename(path))
        if not m or os.path.getmtime(path) < since:
            continue
        r = json.load(open(path))["results"]
        lat = r.get("latency_ms", {})
        out.append({
            "rate_per_sender": int(m.group(1)),
            "offered_deliveries_per_s": r.get("offered_deliveries_per_s"),
            "deliveries_per_s": r.get("deliveries_per_s"),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "p999_ms": lat.get("p999"),
            "server_cpu_ns_per_delivery": r.get("server_cpu_ns_per_delivery"),
            "server_cpu_cores": r.get("server_cpu_cores"),
            "lost": r.get("lost"),
            "file": os.path.basename(path),
        })
    return sorted(out, key=lambda p: p["rate_per_sender"])


def svg(pts, title):
    w, h, left, right, top, bottom = 760, 420, 70, 20, 40, 50
    xs = [p["deliveries_per_s"] for p in pts]
    ys = [v for p in pts for v in (p["p50_ms"], p["p99_ms"]) if v]
    x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    y0, y1 = math.log10(min(ys)) - 0.2, math.log10(max(ys)) + 0.2

    def px(x):
        return left + (math.log10(x) - x0) / (x1 - x0) * (w - left - right)

    def py(y):
        return h - bottom - (math.log10(y) - y0) / (y1 - y0) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">deliveries/s (log)</text>',
             f'<text x="16" y="{h / 2}" text-anchor="middle" transform="rotate(-90 16 {h / 2})">latency, ms (log)</text>']
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for k in (1, 2, 5):
            v = k * 10 ** e
            if x0 <= math.log10(v) <= x1:
                parts.append(f'<line x1="{px(v):.1f}" y1="{h - bottom}" x2="{px(v):.1f}" y2="{h - bottom + 4}" stroke="black"/>')
                parts.append(f'<text x="{px(v):.1f}" y="{h - bottom + 16}" text-anchor="middle">{v:,}</text>')
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for k in (1, 2, 5):
            v = k * 10.0 ** e
            if y0 <= math.log10(v) <= y1:
                parts.append(f'<line x1="{left - 4}" y1="{py(v):.1f}" x2="{w - right}" y2="{py(v):.1f}" stroke="#ddd"/>')
                parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for key, colour in (("p50_ms", "#1f77b4"), ("p99_ms", "#d62728")):
        line = [(px(p["deliveries_per_s"]), py(p[key])) for p in pts if p[key]]
        parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (colour, " ".join(f"{x:.1f},{y:.1f}" for x, y in line)))
        for x, y in line:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        lx, ly = line[-1]
        parts.append(f'<text x="{lx - 6:.1f}" y="{ly - 8:.1f}" text-anchor="end" fill="{colour}">{key[:-3]}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="results")
    ap.add_argument("--since", type=float, default=0.0)
    a = ap.parse_args()
    pts = points(a.dir, a.since)
    if len(pts) < 2:
        raise SystemExit(f"curve: {len(pts)} fan-out runs in {a.dir} (since {a.since:.0f}); need at least 2")
    floor_path = os.path.join(a.dir, "floor.json")
    floor = None
    if os.path.exists(floor_path) and os.path.getmtime(floor_path) >= a.since:
        floor = json.load(open(floor_path))["results"]
        for p in pts:
            ns = p["server_cpu_ns_per_delivery"]
            p["cpu_per_delivery_over_floor_single"] = ns / floor["single_ns_per_frame"] if ns else None
            p["cpu_per_delivery_over_floor_batch8"] = ns / floor["batch8_ns_per_frame"] if ns else None
    doc = {"tool": "scripts/curve.py", "scenario": "fanout 10 rooms x 100 members, 1 sender per room",
           "floor": floor, "points": pts}
    with open(os.path.join(a.dir, "curve.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(os.path.join(a.dir, "curve.svg"), "w") as f:
        f.write(svg(pts, "edge fan-out: latency against throughput (10 rooms x 100 members, one server core)"))
    print(f"{'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU ns/delivery':>16} {'/ floor':>8}")
    for p in pts:
        ratio = p.get("cpu_per_delivery_over_floor_single")
        print(f"{p['deliveries_per_s']:12.0f} {p['p50_ms']:8.2f} {p['p99_ms']:8.2f} {p['server_cpu_ns_per_delivery']:16.0f} {'' if ratio is None else f'{ratio:.2f}':>8}")
    print(f"curve: {os.path.join(a.dir, 'curve.json')} and {os.path.join(a.dir, 'curve.svg')} ({len(pts)} rates)")


if __name__ == "__main__":
    main()
