# Sourced by scripts/peers/idle-peers.sh and fanout-peers.sh (not in CI): the uWS peer's
# install check, free ports, and the cleanup of the server a run started ($pid, its
# data directory $DATA).
# The settings both scripts share (EDGE_BIN, LOADGEN_BIN, LG_CPUS are the caller's to set).
SECRET=bench-secret-0123456789abcdef-0123456789
EDGE_BIN=${EDGE_BIN:-target/release/edge}
LOADGEN_BIN=${LOADGEN_BIN:-target/release/loadgen}
LG_CPUS=${LG_CPUS:-1}
UWS_DIR=scripts/peers/uws
[ -d "$UWS_DIR/node_modules/uwebsockets" ] || { echo "uWS peer not installed: (cd $UWS_DIR && npm ci)" >&2; exit 1; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pid=; DATA=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$DATA" ]; then rm -rf "$DATA"; fi
  pid=; DATA=
}
trap cleanup EXIT
