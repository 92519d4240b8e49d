#!/bin/bash
# The whole of Understudy on one machine: a standby and a primary on loopback
# run the built-in workload guest; its console output (after output commit) is
# shown with the name of the host that released it; after a few seconds the
# primary is killed with SIGKILL and the standby carries on from its last
# committed checkpoint. Needs root (or access to /dev/kvm).
#
#   Scripts/failover-demo.sh [seconds-before-the-kill] [epoch]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS=${1:-4}
EPOCH=${2:-5ms}
PORT=${UNDERSTUDY_DEMO_PORT:-7700}

echo "== building (release)"
swift build -c release --product understudy-primary >/dev/null
swift build -c release --product understudy-standby >/dev/null
BIN=$(swift build -c release --show-bin-path)
LOGS=$(mktemp -d)
cleanup() { kill -9 "${PRIMARY:-}" "${STANDBY:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting the standby on 127.0.0.1:$PORT (logs: $LOGS/standby.log)"
"$BIN/understudy-standby" --listen "127.0.0.1:$PORT" 2>"$LOGS/standby.log" > >(sed -u 's/^/[standby] /') &
STANDBY=$!
for _ in $(seq 50); do grep -q "standby listening" "$LOGS/standby.log" && break; sleep 0.1; done

echo "== starting the primary with --epoch $EPOCH (logs: $LOGS/primary.log)"
"$BIN/understudy-primary" --standby "127.0.0.1:$PORT" --epoch "$EPOCH" --memory 128M \
    --cmdline "pages=16 wss=256 every=100000" 2>"$LOGS/primary.log" > >(sed -u 's/^/[primary] /') &
PRIMARY=$!
sleep "$RUN_SECONDS"

echo "== SIGKILL to the primary (pid $PRIMARY)"
kill -9 "$PRIMARY"
wait "$PRIMARY" 2>/dev/null || true
sleep 3
echo "== the standby's account of the failover:"
grep -E "primary lost|taking over|released the output" "$LOGS/standby.log" | sed 's/^/   /'
echo "== stopping the standby's guest"
kill -TERM "$STANDBY"
wait "$STANDBY" 2>/dev/null || true
