#!/usr/bin/env bash
# Runs the whole test suite from a fresh checkout, installing what it needs
# (on Debian/Ubuntu, as root or with sudo): fmt, clippy, unit and integration
# tests on both io drivers, the stress tests (loadgen against a release edge),
# the instruction-count regression gate (valgrind, gungraun; scripts/icount.sh),
# the web client's browser test (Debian's chromium, playwright-core from npm),
# and the Autobahn conformance run.
#
#   scripts/test.sh            # everything CI runs
#   SKIP_AUTOBAHN=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@"
}

if ! need cargo; then
  echo "== cargo not found: installing Debian's rust toolchain"
  apt_install cargo rustc
fi
need cc || apt_install build-essential
# The Redis bridge tests start their own redis-server on a free port.
need redis-server || apt_install redis-server
# The PostgreSQL store tests start their own server (initdb on a free port) unless PG_URL is set.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need initdb || apt_install postgresql

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (unit + integration, both drivers)"
cargo test --workspace --locked
echo "== the engine's deterministic harnesses: 5,000 seeded interleavings per mode"
HARNESS_SEEDS=5000 cargo test --locked -p edge --lib -- engine::owner::harness engine::cluster_harness
echo "== fuzzing every network parser (proptest, FUZZ_CASES per property)"
FUZZ_CASES=10000 cargo test --locked -p edge --test fuzz_parsers && FUZZ_CASES=20000 cargo test --locked -p router --test fuzz_wire
echo "== stress tests (10k idle connections + a 10k reconnect storm, release build)"
# Same command as scripts/autobahn.sh, so the Autobahn step reuses this build.
cargo build --release --locked --bin edge
cargo test --release --locked -p loadgen --test against_edge -- --ignored
echo "== the instruction-count gate: hot paths under callgrind against bench/baselines/ (3%)"
scripts/icount.sh
echo "== the web client in headless Chromium (playwright-core) against the release edge"
need chromium || apt_install chromium
need npm || apt_install nodejs npm
(cd web-test && npm ci --no-audit --no-fund --loglevel=error)
EDGE_BIN=target/release/edge node web-test/browser-test.mjs
if [ "${SKIP_AUTOBAHN:-0}" != 1 ]; then
  echo "== Autobahn|Testsuite (cases 1-10) against the echo endpoint"
  DRIVER=io_uring scripts/autobahn.sh
  DRIVER=epoll scripts/autobahn.sh
fi
