#!/usr/bin/env bash
# Autobahn|Testsuite cases 1-10 against the real edge echo endpoint
# (`--echo-path /echo`, the same io_uring framing path as /ws).
# Installs autobahntestsuite (Python 2.7 only) into target/autobahn-py.
# Writes target/autobahn/report/ and results/autobahn.json; fails when any
# case's behavior is FAILED.
#   DRIVER=epoll scripts/autobahn.sh   # the driver to test (default io_uring)
set -euo pipefail
cd "$(dirname "$0")/.."
DRIVER=${DRIVER:-io_uring}
PYDIR=target/autobahn-py
OUT=target/autobahn

py2=""
for c in "$HOME"/.pyenv/versions/2.7*/bin/python2.7 python2.7; do
  # pyenv shims exist for every installed version but fail outside it: run it.
  if "$c" -c pass >/dev/null 2>&1; then py2=$(command -v "$c"); break; fi
done
if [ -z "$py2" ]; then
  echo "autobahn: no python2.7 found (pyenv 2.7.x or Debian python2.7 needed)" >&2
  exit 1
fi
if [ ! -f "$PYDIR/.installed" ]; then
  echo "== installing autobahntestsuite into $PYDIR"
  "$py2" -m pip install --quiet --disable-pip-version-check --target "$PYDIR" autobahntestsuite
  touch "$PYDIR/.installed"
fi

cargo build --release --locked --bin edge
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
RUST_LOG=warn target/release/edge serve --listen "127.0.0.1:$port" --cores 2 --driver "$DRIVER" --data-dir "$data" \
  --jwt-secret autobahn-conformance-run-secret-0123456789 --echo-path /echo >/dev/null &
edge_pid=$!
trap 'kill $edge_pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

rm -rf "$OUT" && mkdir -p "$OUT"
cat > "$OUT/spec.json" <<JSON
{"outdir": "report",
 "servers": [{"agent": "edge-$DRIVER", "url": "ws://127.0.0.1:$port/echo"}],
 "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
 "exclude-cases": [], "exclude-agent-cases": {}}
JSON
# addsitedir (not PYTHONPATH) so the *-nspkg.pth files of namespace packages (zope) load.
(cd "$OUT" && timeout 1200 "$py2" -c \
  'import sys, site; site.addsitedir(sys.argv[1]); from autobahntestsuite import wstest; sys.argv=["wstest","-m","fuzzingclient","-s","spec.json"]; wstest.run()' \
  "$OLDPWD/$PYDIR" \
  >wstest.log 2>&1) || { tail -20 "$OUT/wstest.log"; exit 1; }
mkdir -p results
python3 scripts/autobahn_summary.py "$OUT/report/index.json" "edge-$DRIVER" results/autobahn-$DRIVER.json
