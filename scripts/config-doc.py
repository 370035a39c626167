#!/usr/bin/env python3
"""Regenerates docs/CONFIG.md: every field of edge's Config (edge/src/config.rs) with its
doc comment, and its default as `edge config` prints it. Run from the repo root:
    cargo build -p edge && python3 scripts/config-doc.py
A unit test in edge/src/config.rs checks that every field is listed in docs/CONFIG.md."""
import re
import subprocess

src = open("edge/src/config.rs").read()
body = src[src.index("pub struct Config {"):]
body = body[: body.index("\n}\n")]
fields, doc, skip = [], [], False
for line in body.split("\n")[1:]:
    l = line.strip()
    if l.startswith("///"):
        doc.append(l[3:].strip())
    elif l == "#[serde(skip)]":
        skip = True  # set at run time, not a setting
    elif l.startswith("pub "):
        name, ty = re.match(r"pub (\w+): (.+),", l).groups()
        if not skip:
            fields.append((name, ty, " ".join(doc)))
        doc, skip = [], False
toml = subprocess.run(["target/debug/edge", "config"], capture_output=True, text=True, check=True).stdout
defaults = dict(re.match(r"(\w+) = (.*)", l).groups() for l in toml.splitlines() if " = " in l)
out = [
    "# Configuration",
    "",
    "Every setting of `edge serve`: the fields of `Config` in `edge/src/config.rs` with their doc comments, and the",
    "defaults `edge config` prints (regenerate with `python3 scripts/config-doc.py`; a unit test checks every field is here).",
    "Set them in the TOML file given with `--config`; `EDGE_<FIELD>` (the name upper-cased; lists comma-separated)",
    "overrides the file, and a flag (`edge serve --help`) overrides both. Unknown fields are an error naming them;",
    "`validate()` checks every bound at start and names the field. `edge config [--config FILE]` prints the result.",
    "",
    "| field | default | what it does |",
    "|---|---|---|",
]
for name, ty, d in fields:
    out.append(f"| `{name}` | `{defaults.get(name, 'unset')}` | {d} |")
out += [
    "",
    "Example (`edge.toml`):",
    "",
    "```toml",
    'listen = "0.0.0.0:8080"',
    'jwt_secret = "a-secret-of-at-least-32-bytes-0123456789"',
    'durability = "durable"',
    'data_dir = "/var/lib/edge"',
    'redis_url = "redis://10.0.0.5:6379"   # joins a cluster; omit to run alone',
    'node_id = "edge-a"',
    "```",
]
open("docs/CONFIG.md", "w").write("\n".join(out) + "\n")
print(f"docs/CONFIG.md: {len(fields)} fields")
