#!/bin/bash
# The whole of Understudy on one machine: a standby and a primary on loopback
# run the built-in workload guest; its console output (after output commit) is
# shown with the name of the process that released it. After a few seconds a
# planned switchover (understudy-ctl switchover) moves the guest to the
# standby's process and the old primary becomes its standby, then back; then
# the primary is killed with SIGKILL, the standby carries on from its last
# committed checkpoint, and a standby started where the primary was protects
# the guest again. Needs root (or access to /dev/kvm). On a host where
# /dev/kvm does not open, it says so and runs inside the KVM box
# (Scripts/kvm-box.sh), where everything is emulated and so much slower.
#
#   Scripts/failover-demo.sh [seconds-before-the-kill] [epoch]
#   Scripts/failover-demo.sh --linux [seconds-before-the-kill] [epoch]
#   Scripts/failover-demo.sh --kvstore [seconds-before-the-kill] [epoch]
#
# With --linux the guest is Debian's own kernel running the journalling
# kvstore (Scripts/linux-guest.sh) with a virtio-net card on a bridge and a
# virtio-blk disk on each host; a client on this host holds one TCP connection
# to it and writes a key every 0.2 s, through the kill and after it; the guest
# that took over is then protected again by a standby started on the first
# host (--reprotect) and killed in turn, failing back there; the client reads
# every key back, and the run's figures (boot, checkpoint rate and pause,
# each failover as the client saw it, re-protection) are printed. A Linux guest needs a KVM that
# runs guest kernel code: on a kvm_pvm host (or none) it runs inside the KVM
# box. --kvstore does the same with MicroVM's own kvstore guest (to compare).
# Both need root (taps, a bridge).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
GUEST_KIND=workload
case "${1:-}" in
    --linux) GUEST_KIND=linux; shift ;;
    --kvstore) GUEST_KIND=cpl3; shift ;;
esac
RUN_SECONDS=${1:-4}
EPOCH=${2:-5ms}
[ "$GUEST_KIND" != workload ] && EPOCH=${2:-10ms}
PORT=${UNDERSTUDY_DEMO_PORT:-7700}

fail() { echo "== demo failed: $*" >&2; exit 1; }
kvm_opens() { [ -c /dev/kvm ] && { exec 3<>/dev/kvm; } 2>/dev/null && exec 3>&-; }

if [ -z "${UNDERSTUDY_IN_BOX:-}" ]; then
    echo "== building (release)"
    build_log=$(mktemp)
    swift build -c release --product understudy-primary >"$build_log" 2>&1 \
        && swift build -c release --product understudy-standby >>"$build_log" 2>&1 \
        && swift build -c release --product understudy-ctl >>"$build_log" 2>&1 \
        || { cat "$build_log" >&2; fail "the build failed (output above)"; }
    GUEST_FLAG=()
    if [ "$GUEST_KIND" = linux ]; then
        echo "== building the Linux guest (Scripts/linux-guest.sh: Debian's kernel, busybox, the kvstore; cached)"
        Scripts/linux-guest.sh >/dev/null
        GUEST_FLAG=(--linux)
    elif [ "$GUEST_KIND" = cpl3 ]; then
        echo "== building the C guests (Scripts/build-guests.sh)"
        Scripts/build-guests.sh | tail -n 1
        GUEST_FLAG=(--kvstore)
    fi
    why=""
    if ! kvm_opens; then why="/dev/kvm does not open on this host"
    elif [ "$GUEST_KIND" = linux ] && [ -d /sys/module/kvm_pvm ]; then why="this host's KVM (kvm_pvm) emulates guest kernel code"
    elif [ "${UNDERSTUDY_DEMO_IN_BOX:-0}" = 1 ]; then why="UNDERSTUDY_DEMO_IN_BOX=1"; fi
    if [ -n "$why" ]; then
        echo "== $why: running the demo inside the KVM box (emulated, slow; Docs/Testing.md)"
        # The guest runs ~10x slower there: give it longer before the kill.
        exec Scripts/kvm-box.sh -- Scripts/failover-demo.sh "${GUEST_FLAG[@]}" "$((RUN_SECONDS * 5))" "$EPOCH"
    fi
fi
BIN=$(swift build -c release --show-bin-path)
# In the box everything is ~10x slower: a 200 ms silence is no sign of a dead primary there.
HEARTBEAT=()
[ -n "${UNDERSTUDY_IN_BOX:-}" ] && HEARTBEAT=(--heartbeat-timeout 2s)
LOGS=$(mktemp -d)
cleanup() { kill -9 "${PRIMARY:-}" "${STANDBY:-}" "${BACK:-}" 2>/dev/null || true; }
trap cleanup EXIT

# Shows a process's log and stops, when it has ended on its own.
died() { echo "== the $1 stopped early; its log ($LOGS/$1.log):" >&2; sed 's/^/   /' "$LOGS/$1.log" >&2; fail "the $1 did not run"; }
wait_for() {   # wait_for LOG PATTERN SECONDS PID NAME [COUNT]: COUNT lines match (default 1)
    local tries=$(( $3 * 10 ))
    for _ in $(seq "$tries"); do
        [ "$(grep -c "$2" "$1" || true)" -ge "${6:-1}" ] && return 0
        kill -0 "$4" 2>/dev/null || died "$5"
        sleep 0.1
    done
    echo "== no \"$2\" from the $5 after $3 s; its log:" >&2; sed 's/^/   /' "$1" >&2
    fail "the $5 did not get going"
}

[ "$GUEST_KIND" != workload ] && { source Scripts/lib/kvstore-demo.sh; exit 0; }

echo "== starting the standby on 127.0.0.1:$PORT (logs: $LOGS/standby.log)"
"$BIN/understudy-standby" --listen "127.0.0.1:$PORT" "${HEARTBEAT[@]}" --control "$LOGS/standby.sock" \
    2>"$LOGS/standby.log" > >(sed -u 's/^/[standby] /') &
STANDBY=$!
wait_for "$LOGS/standby.log" "standby listening" 60 "$STANDBY" standby

echo "== starting the primary with --epoch $EPOCH (logs: $LOGS/primary.log)"
"$BIN/understudy-primary" --standby "127.0.0.1:$PORT" --epoch "$EPOCH" --memory 128M "${HEARTBEAT[@]}" \
    --listen "127.0.0.1:$((PORT + 1))" --control "$LOGS/primary.sock" \
    --cmdline "pages=16 wss=256 every=100000" 2>"$LOGS/primary.log" > >(sed -u 's/^/[primary] /') &
PRIMARY=$!
wait_for "$LOGS/primary.log" "protected by the standby" 120 "$PRIMARY" primary
sleep "$RUN_SECONDS"
kill -0 "$PRIMARY" 2>/dev/null || died primary

echo "== planned switchover: understudy-ctl switchover (the guest moves to the standby's process)"
"$BIN/understudy-ctl" switchover --socket "$LOGS/primary.sock" | sed 's/^/   /'
wait_for "$LOGS/standby.log" "protected by the standby" 120 "$STANDBY" standby
sleep "$RUN_SECONDS"
echo "== and back"
"$BIN/understudy-ctl" switchover --socket "$LOGS/standby.sock" | sed 's/^/   /'
wait_for "$LOGS/primary.log" "protected by the standby" 120 "$PRIMARY" primary 2
echo "== understudy-ctl status of both processes:"
"$BIN/understudy-ctl" status --socket "$LOGS/primary.sock" | sed 's/^/   /'
"$BIN/understudy-ctl" status --socket "$LOGS/standby.sock" | sed 's/^/   /'
sleep "$RUN_SECONDS"

echo "== SIGKILL to the primary (pid $PRIMARY)"
kill -9 "$PRIMARY"
wait "$PRIMARY" 2>/dev/null || true
wait_for "$LOGS/standby.log" "released the output" 120 "$STANDBY" standby
sleep 3
kill -0 "$STANDBY" 2>/dev/null || died standby
echo "== the standby's account of the failover:"
grep -E "primary lost|taking over|released the output" "$LOGS/standby.log" | sed 's/^/   /'
# After the switchovers the standby's process knows the other side's address
# (127.0.0.1:$((PORT + 1))): a standby started there protects the guest again.
echo "== the failed host repaired: a new standby on 127.0.0.1:$((PORT + 1)); the guest is protected again without another step"
"$BIN/understudy-standby" --listen "127.0.0.1:$((PORT + 1))" "${HEARTBEAT[@]}" 2>"$LOGS/standby2.log" > >(sed -u 's/^/[new standby] /') &
BACK=$!
wait_for "$LOGS/standby.log" "protected by the standby" 120 "$STANDBY" standby 2
"$BIN/understudy-ctl" status --socket "$LOGS/standby.sock" | sed 's/^/   /'
sleep 2
echo "== stopping the guest (its standby is told goodbye)"
"$BIN/understudy-ctl" stop --socket "$LOGS/standby.sock" | sed 's/^/   /'
wait "$STANDBY" 2>/dev/null || true
wait "$BACK" 2>/dev/null || true
