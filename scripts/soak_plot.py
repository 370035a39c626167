#!/usr/bin/env python3
"""Plot a soak run's samples as SVG and judge whether they stayed flat.

Reads the CSV that scripts/soak.sh writes (columns: t_s, phase, rss_kib,
fds, connections, rooms_held, rooms_owned, rooms_evicted, and in newer runs
sqlite_kib, db_kib, heap_kib, anon_kib, threads, c_free_kib and thp_kib; phase is `start`, `load` or `after`), writes an SVG
with one panel per series (RSS, open fds, rooms, connections, and where
sampled SQLite's heap, RSS less SQLite's heap and the data dir's size over
minutes), and prints a verdict for RSS, fds and rooms:

  base = mean of the samples in minutes [M/3, M/2] of an M-minute load
         (minutes 10-15 of 30), after the warm-up;
  last = mean of the samples in the last M/6 minutes (the last 5 of 30);
  growth = (last - base) / base; flat when growth < --tolerance percent.

The least-squares slope over the second half of the load is printed too
(percent of base per minute), as is what the samples after the load show
(connections should be 0 and fds back near their level before it).

`rooms` is `edge_rooms_held` when the edge exports it, else the sum of
`edge_rooms_owned` over shards. Exit status: 0 all flat, 1 not flat, 2 bad
input. Standard library only.
"""

import argparse
import csv
import sys
from xml.sax.saxutils import escape

SERIES = [  # (column, title, unit divisor, unit, judged)
    ("rss_kib", "RSS", 1024.0, "MiB", True),
    ("fds", "open fds", 1.0, "", True),
    ("rooms", "rooms", 1.0, "", True),
    ("connections", "open connections", 1.0, "", False),
    ("sqlite_kib", "SQLite heap (page caches, bounded by store_cache_mib)", 1024.0, "MiB", False),
    ("rss_less_sqlite_kib", "RSS less SQLite heap", 1024.0, "MiB", False),
    ("db_kib", "data dir (database and WAL)", 1024.0, "MiB", False),
    ("anon_kib", "anonymous RSS (RssAnon)", 1024.0, "MiB", False),
    ("heap_kib", "live heap (heap-stats builds)", 1024.0, "MiB", False),
    ("threads", "threads", 1.0, "", False),
    ("c_free_kib", "C heap free, kept (glibc)", 1024.0, "MiB", False),
    ("thp_kib", "RSS in transparent huge pages (AnonHugePages)", 1024.0, "MiB", False),
]


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def load(path):
    """The rows as dicts of floats (None where a value is missing) plus phase."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no samples")
    held_known = any(number(r.get("rooms_held")) is not None for r in rows)
    out = []
    for r in rows:
        row = {k: number(r.get(k)) for k in ("t_s", "rss_kib", "fds", "connections", "rooms_evicted", "sqlite_kib", "db_kib", "anon_kib", "heap_kib", "threads", "c_free_kib", "thp_kib")}
        sq = row["sqlite_kib"]
        row["rss_less_sqlite_kib"] = row["rss_kib"] - sq if row["rss_kib"] is not None and sq is not None else None
        row["rooms"] = number(r.get("rooms_held" if held_known else "rooms_owned"))
        row["phase"] = r.get("phase", "load")
        out.append(row)
    return out, ("edge_rooms_held" if held_known else "edge_rooms_owned (no edge_rooms_held gauge)")


def mean_in(rows, col, lo_s, hi_s):
    vals = [r[col] for r in rows if r["phase"] == "load" and lo_s <= r["t_s"] <= hi_s and r[col] is not None]
    return (sum(vals) / len(vals), len(vals)) if vals else (None, 0)


def slope_per_min(rows, col, lo_s, hi_s):
    pts = [(r["t_s"] / 60.0, r[col]) for r in rows if r["phase"] == "load" and lo_s <= r["t_s"] <= hi_s and r[col] is not None]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def windows(minutes):
    total = minutes * 60.0
    return (total / 3, total / 2), (total - total / 6, total)


def judge(rows, minutes, tolerance):
    """Prints one line per judged series; returns True when all are flat."""
    (b_lo, b_hi), (l_lo, l_hi) = windows(minutes)
    print(
        f"verdict: growth from the mean of minutes {b_lo / 60:.1f}-{b_hi / 60:.1f} to the mean of minutes "
        f"{l_lo / 60:.1f}-{l_hi / 60:.1f}; flat when under {tolerance:g}%"
    )
    all_flat = True
    for col, title, div, unit, judged in SERIES:
        if not judged and not any(r[col] is not None for r in rows):
            continue
        base, nb = mean_in(rows, col, b_lo, b_hi)
        last, nl = mean_in(rows, col, l_lo, l_hi)
        if base is None or last is None:
            print(f"  {title[:24]:<24} no samples in a window ({nb} / {nl})" + (": NOT JUDGED" if judged else ""))
            all_flat = all_flat and not judged
            continue
        growth = (last - base) / base * 100 if base else (0.0 if last == base else float("inf"))
        slope = slope_per_min(rows, col, l_hi / 2, l_hi)
        slope_txt = f"{slope / base * 100:+.2f}%/min" if slope is not None and base else "n/a"
        flat = growth < tolerance
        mark = ("flat" if flat else "NOT FLAT") if judged else "(not judged)"
        print(
            f"  {title[:24]:<24} {base / div:10.1f} -> {last / div:10.1f} {unit:<3} {growth:+7.2f}%  "
            f"slope over the 2nd half {slope_txt:>12}  {mark}  ({nb} / {nl} samples)"
        )
        if judged and not flat:
            all_flat = False
    return all_flat


def after_load(rows):
    """Prints what the samples before and after the load show; returns warnings."""
    start = [r for r in rows if r["phase"] == "start"]
    after = [r for r in rows if r["phase"] == "after"]
    if not after:
        return []
    a = after[-1]
    warnings = []
    s = start[0] if start else None
    fds0 = s["fds"] if s else None
    end = max(r["t_s"] for r in rows if r["phase"] != "after")
    print(
        f"{a['t_s'] - end:.0f} s after the load: "
        f"connections {fmt(a['connections'])}, fds {fmt(a['fds'])} (before the load {fmt(fds0)}), "
        f"RSS {fmt(a['rss_kib'], 1024)} MiB (before {fmt(s and s['rss_kib'], 1024)}), rooms {fmt(a['rooms'])} "
        f"(evicted during the run: {fmt(a['rooms_evicted'])})"
    )
    if a["connections"]:
        warnings.append(f"{a['connections']:.0f} connections still open after every client left")
    if fds0 is not None and a["fds"] is not None and a["fds"] > fds0 + 16:
        warnings.append(f"{a['fds'] - fds0:.0f} more fds open after the load than before it")
    return warnings


def fmt(v, div=1.0):
    return "-" if v is None else f"{v / div:.1f}" if div != 1.0 else f"{v:.0f}"


def svg(rows, minutes, rooms_source, title):
    """The SVG document: one panel per series, judged windows shaded."""
    w, ph, left, right, top, gap = 960, 150, 80, 20, 70, 40
    series = [s for s in SERIES if any(r[s[0]] is not None for r in rows) or s[4]]
    h = top + len(series) * (ph + gap)
    t_max = max(minutes * 60.0, max(r["t_s"] for r in rows))
    x = lambda t: left + (w - left - right) * t / t_max  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="15">{escape(title)}</text>',
    ]
    (b_lo, b_hi), (l_lo, l_hi) = windows(minutes)
    out.append(
        f'<text x="{left}" y="40" fill="#555">shaded: minutes {b_lo / 60:.1f}-{b_hi / 60:.1f} and '
        f"{l_lo / 60:.1f}-{l_hi / 60:.1f}, compared by the verdict; dashed: the end of the load</text>"
    )
    for i, (col, name, div, unit, _) in enumerate(series):
        y0 = top + i * (ph + gap)
        label = f"{name} ({unit})" if unit else name
        if col == "rooms":
            label += f" [{rooms_source}]"
        out.append(f'<text x="{left}" y="{y0 - 6}">{escape(label)}</text>')
        for lo, hi in ((b_lo, b_hi), (l_lo, l_hi)):
            out.append(f'<rect x="{x(lo):.1f}" y="{y0}" width="{x(hi) - x(lo):.1f}" height="{ph}" fill="#eef3fb"/>')
        out.append(f'<rect x="{left}" y="{y0}" width="{w - left - right}" height="{ph}" fill="none" stroke="#888"/>')
        out.extend(panel(rows, col, div, x, y0, ph, left))
        end = x(minutes * 60.0)
        out.append(f'<line x1="{end:.1f}" y1="{y0}" x2="{end:.1f}" y2="{y0 + ph}" stroke="#888" stroke-dasharray="4 3"/>')
    for m in range(0, int(t_max // 60) + 1, max(1, int(t_max // 60) // 10)):
        out.append(f'<text x="{x(m * 60):.1f}" y="{h - 8}" text-anchor="middle">{m} min</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def panel(rows, col, div, x, y0, ph, left):
    pts = [(r["t_s"], r[col] / div) for r in rows if r[col] is not None]
    if not pts:
        return [f'<text x="{left + 10}" y="{y0 + ph / 2}" fill="#a00">no data</text>']
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    lo = min(lo, 0.0) if lo >= 0 and lo < hi * 0.2 else lo
    span = (hi - lo) or 1.0
    y = lambda v: y0 + ph - 4 - (ph - 8) * (v - lo) / span  # noqa: E731
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    return [
        f'<text x="{left - 6}" y="{y0 + 12}" text-anchor="end">{hi:.4g}</text>',
        f'<text x="{left - 6}" y="{y0 + ph}" text-anchor="end">{lo:.4g}</text>',
        f'<polyline points="{line}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>',
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--svg", required=True, help="where to write the plot")
    p.add_argument("--minutes", type=float, required=True, help="length of the load phase")
    p.add_argument("--tolerance", type=float, default=5.0, help="largest flat growth, percent")
    p.add_argument("--title", default="soak run")
    a = p.parse_args()
    try:
        rows, rooms_source = load(a.csv)
    except (OSError, ValueError) as e:
        print(f"soak_plot: {e}", file=sys.stderr)
        return 2
    with open(a.svg, "w") as f:
        f.write(svg(rows, a.minutes, rooms_source, a.title))
    print(f"wrote {a.svg}; rooms from {rooms_source}")
    flat = judge(rows, a.minutes, a.tolerance)
    for warning in after_load(rows):
        print(f"  !! {warning}")
    print("VERDICT: " + ("flat" if flat else "NOT FLAT"))
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
