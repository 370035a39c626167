#!/usr/bin/env bash
# The regression gate on instruction counts (CI runs it from scripts/test.sh).
#
# Runs the hot-path benches of bench/benches/icount.rs under callgrind
# (gungraun) and compares each one's instruction count (Ir) with the
# baseline committed in bench/baselines/. A count more than 3% above its
# baseline fails the run (exit 3); a lower count passes and is printed.
# Counts are exact and repeat from run to run on one toolchain, so the gate
# does not flake; they change with rustc, valgrind or glibc, so a toolchain
# upgrade updates the baseline in the same commit. The bench profile builds
# with one codegen unit (Cargo.toml): with several, code added anywhere in a
# crate could change what is inlined in a benched path and move its count
# (results/icount-cgu1-20261205.txt).
#
#   scripts/icount.sh                # compare with the committed baseline
#   ICOUNT_UPDATE=1 scripts/icount.sh # measure and overwrite the baseline, on purpose:
#                                    # commit bench/baselines/ with the change that moved it
#   ICOUNT_LIMIT_PCT=3               # the allowed growth (default 3)
#
# Installs what it needs: valgrind (Debian's package) and gungraun-runner,
# whose version must equal the gungraun library's (into target/tools).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNNER_VERSION=0.20.0
LIMIT=${ICOUNT_LIMIT_PCT:-3}
HOME_DIR=$PWD/bench/baselines
# One baseline file per benchmark of bench/benches/icount.rs.
BENCHES=6

need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq valgrind
fi
TOOLS=$PWD/target/tools
if ! "$TOOLS/bin/gungraun-runner" --version 2>/dev/null | grep -q "$RUNNER_VERSION"; then
  echo "== installing gungraun-runner $RUNNER_VERSION into $TOOLS"
  cargo install --locked --quiet --version "$RUNNER_VERSION" --root "$TOOLS" gungraun-runner
fi
export PATH=$TOOLS/bin:$PATH

if [ "${ICOUNT_UPDATE:-0}" = 1 ]; then
  cargo bench --locked -p bench --bench icount -- --home="$HOME_DIR" --save-baseline=main
  echo "icount: baseline saved in bench/baselines/; commit it with the change that moved it"
  exit 0
fi

# A missing baseline would be saved instead of compared, and pass: refuse that.
have=$(find "$HOME_DIR" -name '*.out.base@main' | wc -l)
if [ "$have" -ne "$BENCHES" ]; then
  echo "icount: bench/baselines/ holds $have of $BENCHES baselines; run ICOUNT_UPDATE=1 scripts/icount.sh and commit them" >&2
  exit 1
fi
# Compare without overwriting: the run's own figures go to the non-baseline files (ignored by git).
cargo bench --locked -p bench --bench icount -- --home="$HOME_DIR" --baseline=main \
  --callgrind-limits="ir=$LIMIT%" || {
  rc=$?
  echo "icount: an instruction count grew more than $LIMIT% over bench/baselines/ (exit $rc)." >&2
  echo "icount: if the cost is meant, update the baseline on purpose: ICOUNT_UPDATE=1 scripts/icount.sh" >&2
  exit "$rc"
}
