#!/usr/bin/env bash
# The test command: builds the package and its tests, builds the C guests, then
# runs every test where KVM is: natively when /dev/kvm opens here, otherwise
# inside the KVM box (Scripts/kvm-box.sh), serially. Never silently without KVM.
#
#   Scripts/test.sh [swift-testing options, e.g. --filter StateRoundTripTests]
#
# Environment:
#   UNDERSTUDY_TEST_IN_BOX=1   run in the box even where /dev/kvm opens natively
#                              (the box is how kvm_amd is tested on every host)
#   UNDERSTUDY_TEST_LOG=FILE   keep the full test output there (default: a temp file)
#
# Linux guests need a KVM that runs guest kernel code: on a kvm_pvm host their
# suites are skipped natively ("runs in the KVM box") and, in a full run (no
# arguments), run afterwards in the box (UNDERSTUDY_TEST_LINUX_IN_BOX=0: not).
#
# The last lines say where the tests ran, on which KVM, how many passed, failed
# and were skipped (and why), and how long the run took.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"

say() { echo "test.sh: $*"; }

started=$(date +%s)
kvm_opens() { [ -c /dev/kvm ] && { exec 3<>/dev/kvm; } 2>/dev/null && exec 3>&-; }
kvm_module() {
    for m in kvm_intel kvm_amd kvm_pvm; do [ -d /sys/module/$m ] && { echo "$m"; return; }; done
    echo "unknown"
}
in_box=0
if [ "${UNDERSTUDY_TEST_IN_BOX:-0}" = 1 ] || ! kvm_opens; then in_box=1; fi

# Natively: the debug build. For the box: an optimised build with testing
# enabled, in its own scratch path (.build-box): everything in the box is
# emulated, the test's own host-side code too, and debug code there is ~3x
# slower (Docs/Testing.md has the figures).
if [ "$in_box" = 1 ]; then
    build=(swift build -c release -Xswiftc -enable-testing --scratch-path .build-box)
    say "building the package and its tests (release, testing enabled, for the box)"
else
    build=(swift build)
    say "building the package and its tests (debug)"
fi
set +e
"${build[@]}" --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Write|Emitting|Linking|Applying)'
build_status=${PIPESTATUS[0]}
set -e
[ "$build_status" = 0 ] || { say "the build failed (output above)"; exit 1; }
# Executables the process tests start (found next to the test bundle), and the
# C guests, are built here, outside the box (the box has no network and sees
# the host read-only).
"${build[@]}" --product understudy-primary >/dev/null
"${build[@]}" --product understudy-standby >/dev/null
"${build[@]}" --product understudy-ctl >/dev/null
Scripts/build-guests.sh | tail -n 1
# The Linux guest (Debian's kernel and an initramfs), fetched and built here:
# the box has no network.
Scripts/linux-guest.sh >/dev/null

bin=$("${build[@]}" --show-bin-path)
tests=("$bin/UnderstudyPackageTests.xctest" --testing-library swift-testing)
log=${UNDERSTUDY_TEST_LOG:-$(mktemp /tmp/understudy-tests.XXXXXX.log)}

if [ "$in_box" = 0 ]; then
    where="natively on this host's /dev/kvm ($(kvm_module))"
    say "running the tests $where"
    set +e
    "${tests[@]}" "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
else
    if [ "${UNDERSTUDY_TEST_IN_BOX:-0}" = 1 ]; then
        reason="UNDERSTUDY_TEST_IN_BOX=1"
    else
        reason="/dev/kvm does not open here ($(dmesg 2>/dev/null | grep -m1 -o 'kvm-pvm: cannot run guests natively[^;]*' || echo 'no KVM module bound'))"
    fi
    where="inside the KVM box (QEMU TCG, kvm_amd with nested paging), one test at a time"
    say "$reason: running the tests $where"
    set +e
    Scripts/kvm-box.sh -- "${tests[@]}" --no-parallel "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
fi

# Linux guests on a kvm_pvm host: their suites, in the box, after the rest
# (a full run only; UNDERSTUDY_TEST_LINUX_IN_BOX=0 leaves them out).
linux_suites="LinuxGuestTests|LinuxFailoverProcessTests"
if [ "$in_box" = 0 ] && [ "$(kvm_module)" = kvm_pvm ] && [ $# -eq 0 ] && [ "${UNDERSTUDY_TEST_LINUX_IN_BOX:-1}" = 1 ]; then
    box_build=(swift build -c release -Xswiftc -enable-testing --scratch-path .build-box)
    say "kvm_pvm cannot run Linux guests: building for the KVM box and running their suites there"
    set +e
    "${box_build[@]}" --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Write|Emitting|Linking|Applying)'
    box_status=${PIPESTATUS[0]}
    if [ "$box_status" = 0 ]; then
        "${box_build[@]}" --product understudy-primary >/dev/null && "${box_build[@]}" --product understudy-standby >/dev/null && "${box_build[@]}" --product understudy-ctl >/dev/null
        box_bin=$("${box_build[@]}" --show-bin-path)
        Scripts/kvm-box.sh -- "$box_bin/UnderstudyPackageTests.xctest" --testing-library swift-testing --no-parallel \
            --filter "$linux_suites" 2>&1 | tee -a "$log"
        box_status=${PIPESTATUS[0]}
    fi
    set -e
    [ "$box_status" = 0 ] || status=$box_status
    where="$where; Linux guests inside the KVM box"
fi

# The account of the run.
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
count() { grep -cE "$1" <<<"$plain" || true; }
passed=$(count '^. Test [^r].* passed after|^. Test r[^u].* passed after')
failed=$(count '^. Test .* failed after|^. DEADLINE: ')
skipped=$(count '^. Test .* skipped')
suites_skipped=$(grep -E '^. Suite .* skipped' <<<"$plain" || true)
echo
echo "================================================================"
say "ran $where"
say "$passed passed, $failed failed, $skipped tests skipped; in $(( ($(date +%s) - started) / 60 )) min $(( ($(date +%s) - started) % 60 )) s (build included)"
if [ -n "$suites_skipped" ]; then
    case "$where" in
        *"Linux guests inside the KVM box"*) say "skipped suites, and why (the Linux guests' then ran in the box, counted above):" ;;
        *) say "skipped suites, and why:" ;;
    esac
    sed 's/^/    /' <<<"$suites_skipped"
fi
grep -E '^. Test .* skipped' <<<"$plain" | sed 's/^/    /' || true
if [ "$failed" != 0 ]; then
    say "failed:"
    grep -E '^. Test .* failed after|^. DEADLINE: ' <<<"$plain" | sed 's/^/    /'
fi
say "full output: $log"
if grep -qE 'skipped.*(needs|/dev/kvm|root)' <<<"$plain"; then
    say "tests that need KVM or root were skipped: on a CI host that is a failure (run as root; the box supplies KVM)"
    exit 1
fi
if [ "$status" = 0 ] && [ "$passed" = 0 ]; then
    say "no test ran: that is a failure"
    exit 1
fi
exit "$status"
