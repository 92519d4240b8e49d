# The kvstore part of Scripts/failover-demo.sh (sourced by it, with BIN, LOGS,
# PORT, EPOCH, RUN_SECONDS, HEARTBEAT, GUEST_KIND and its helpers set): a
# key-value server, protected, with a client holding one TCP connection
# through the SIGKILL of the primary; the standby then protects the guest again
# with a standby started on the first host (--reprotect), and a second SIGKILL
# fails the guest back there. GUEST_KIND linux: Debian's kernel and
# Guests/linux/kvstore.c journalling to a virtio disk; cpl3: MicroVM's own
# kvstore guest (Guests/kvstore, on lwIP, in memory). At the end it prints the
# figures of the run: boot, checkpoint rate and pause, failover as the client
# saw it.

if [ "$GUEST_KIND" = linux ]; then
    read -r KERNEL INITRD < <(Scripts/linux-guest.sh 2>/dev/null | tail -n 1)
    GUEST_ARGS=(--kernel "$KERNEL" --initrd "$INITRD" --disk "$LOGS/primary.img"
                --append "console=ttyS0 quiet reboot=k panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd understudy.ip=10.77.0.2/24")
    STANDBY_ARGS=(--disk "$LOGS/standby.img")
    WHAT="Debian's kernel ($KERNEL)"
else
    GUEST_ARGS=(--guest Guests/build/kvstore.elf --cmdline "ip=10.77.0.2 mask=255.255.255.0")
    STANDBY_ARGS=()
    WHAT="MicroVM's kvstore guest (Guests/build/kvstore.elf)"
fi
BRIDGE=usdemo0 PRIMARY_TAP=usdemo1 STANDBY_TAP=usdemo2
GUEST=10.77.0.2
BACK_PORT=$((PORT + 1))
linux_cleanup() {
    kill -9 "${PRIMARY:-}" "${STANDBY:-}" "${BACK:-}" "${CLIENT:-}" 2>/dev/null || true
    for link in "$PRIMARY_TAP" "$STANDBY_TAP" "$BRIDGE"; do ip link del "$link" 2>/dev/null || true; done
}
trap linux_cleanup EXIT
linux_cleanup
ip link add "$BRIDGE" type bridge
ip addr add 10.77.0.1/24 dev "$BRIDGE"
ip link set "$BRIDGE" up
for tap in "$PRIMARY_TAP" "$STANDBY_TAP"; do
    ip tuntap add dev "$tap" mode tap
    ip link set "$tap" master "$BRIDGE" up
done
[ "$GUEST_KIND" = linux ] && truncate -s 16M "$LOGS/primary.img" "$LOGS/standby.img"

echo "== starting the standby on 127.0.0.1:$PORT with tap $STANDBY_TAP (logs: $LOGS/standby.log)"
"$BIN/understudy-standby" --listen "127.0.0.1:$PORT" --tap "$STANDBY_TAP" "${STANDBY_ARGS[@]}" "${HEARTBEAT[@]}" \
    --reprotect "127.0.0.1:$BACK_PORT" --status-interval 2s \
    2>"$LOGS/standby.log" > >(sed -u 's/^/[standby] /') &
STANDBY=$!
wait_for "$LOGS/standby.log" "standby listening" 60 "$STANDBY" standby

echo "== booting $WHAT on the primary, --epoch $EPOCH (logs: $LOGS/primary.log)"
started=$EPOCHREALTIME
"$BIN/understudy-primary" --standby "127.0.0.1:$PORT" "${GUEST_ARGS[@]}" --memory 256M --epoch "$EPOCH" \
    --tap "$PRIMARY_TAP" "${HEARTBEAT[@]}" --status-interval 2s \
    2>"$LOGS/primary.log" > >(tee "$LOGS/primary.console" | sed -u 's/^/[primary] /') &
PRIMARY=$!
wait_for "$LOGS/primary.log" "protected by the standby" 600 "$PRIMARY" primary
protected=$EPOCHREALTIME
# The service is up when it answers (the Linux guest also says so on its console).
until (exec 4<>"/dev/tcp/$GUEST/7000") 2>/dev/null; do kill -0 "$PRIMARY" 2>/dev/null || died primary; sleep 0.2; done
serving=$EPOCHREALTIME

# The client: one TCP connection for the whole demo. Each SET is acknowledged
# only once the guest journalled it to its disk and the standby committed the
# checkpoint holding that reply.
echo "== the client connects to the guest's kvstore at $GUEST:7000 and writes a key every 0.2 s"
(
    exec 3<>"/dev/tcp/$GUEST/7000"
    i=0
    while [ ! -e "$LOGS/stop-client" ]; do
        i=$((i + 1))
        echo "SET k$i v$i" >&3
        read -r reply <&3 || { echo "[client] the connection was lost after $((i - 1)) writes"; exit 1; }
        echo "$EPOCHREALTIME" >> "$LOGS/replies"
        echo "[client] SET k$i v$i -> ${reply%$'\r'}"
        sleep 0.2
    done
    bad=0
    for j in $(seq 1 "$i"); do
        echo "GET k$j" >&3
        read -r reply <&3
        reply=${reply%$'\r'}
        [ "$reply" = "VALUE v$j" ] || { echo "[client] k$j: $reply"; bad=$((bad + 1)); }
    done
    echo "[client] read back all $i keys on the same connection: $((i - bad)) as written, $bad lost"
    [ "$bad" = 0 ]
) &
CLIENT=$!
sleep "$RUN_SECONDS"
kill -0 "$PRIMARY" 2>/dev/null || died primary

status=$(grep -o "status: PROTECTED.*" "$LOGS/primary.log" | tail -n 1)
echo "== SIGKILL to the primary (pid $PRIMARY)"
killed=$EPOCHREALTIME
kill -9 "$PRIMARY"
wait "$PRIMARY" 2>/dev/null || true
wait_for "$LOGS/standby.log" "released the output" 300 "$STANDBY" standby
echo "== the standby's account of the failover:"
grep -E "primary lost|taking over|released the output" "$LOGS/standby.log" | sed 's/^/   /'
sleep "$RUN_SECONDS"

# The first host is repaired: a standby there, and the guest that took over
# (started with --reprotect towards it) copies itself to it while it serves.
echo "== the first host is back: a standby there on 127.0.0.1:$BACK_PORT with tap $PRIMARY_TAP (logs: $LOGS/back.log)"
BACK_ARGS=()
[ "$GUEST_KIND" = linux ] && BACK_ARGS=(--disk "$LOGS/primary.img")
back_started=$EPOCHREALTIME
"$BIN/understudy-standby" --listen "127.0.0.1:$BACK_PORT" --tap "$PRIMARY_TAP" "${BACK_ARGS[@]}" "${HEARTBEAT[@]}" \
    --reprotect "127.0.0.1:$PORT" 2>"$LOGS/back.log" > >(sed -u 's/^/[back] /') &
BACK=$!
wait_for "$LOGS/standby.log" "protected by the standby" 600 "$STANDBY" standby
reprotected=$EPOCHREALTIME
echo "== the guest that took over is protected again by the first host"
sleep "$RUN_SECONDS"
echo "   $(grep -o "status: PROTECTED.*" "$LOGS/standby.log" | tail -n 1 | cut -c1-110)"
echo "== SIGKILL to the copy that took over (pid $STANDBY): the guest fails back to the first host"
killed_again=$EPOCHREALTIME
kill -9 "$STANDBY"
wait "$STANDBY" 2>/dev/null || true
wait_for "$LOGS/back.log" "released the output" 300 "$BACK" back
sleep "$RUN_SECONDS"
touch "$LOGS/stop-client"
client_status=0
wait "$CLIENT" || client_status=$?
echo "== stopping the guest on the first host"
kill -TERM "$BACK"
wait "$BACK" 2>/dev/null || true
echo "== figures of this run ($WHAT, --epoch $EPOCH):"
answered=$(awk -v k="$killed" '$1 > k { print; exit }' "$LOGS/replies")
answered_again=$(awk -v k="$killed_again" '$1 > k { print; exit }' "$LOGS/replies")
awk -v s="$started" -v p="$protected" -v v="$serving" -v k="$killed" -v a="${answered:-0}" \
    -v b="$back_started" -v r="$reprotected" -v k2="$killed_again" -v a2="${answered_again:-0}" 'BEGIN {
    printf "   start to protected: %.1f s; start to serving: %.1f s\n", p - s, v - s
    if (a > 0) printf "   SIGKILL to the next reply on the same connection: %.0f ms\n", (a - k) * 1000
    else print "   no reply after the SIGKILL"
    printf "   standby started on the first host to protected again: %.1f s\n", r - b
    if (a2 > 0) printf "   second SIGKILL (fail back) to the next reply on the same connection: %.0f ms\n", (a2 - k2) * 1000
    else print "   no reply after the second SIGKILL"
}'
echo "   primary before the kill: ${status:-no status line}"
[ "$client_status" = 0 ] || fail "the client saw a lost connection or a lost write"
echo "== done: through a failover, re-protection and a fail-back, the guest's kvstore kept its client's connection and every acknowledged write"
