#!/usr/bin/env bash
# The KVM box: a machine with a real, hardware-style KVM on any x86-64 host.
#
# QEMU's TCG emulates an AMD CPU with SVM and nested paging; Debian's own
# kernel boots in it and loads kvm-amd, so /dev/kvm works inside, at emulation
# speed. The box sees the host's root file system read-only (so /opt/swift,
# the host's libraries and tools are there) and this checkout read-write at its
# own path; /tmp, /run and /dev/shm are fresh tmpfs. Build outside, run inside.
#
#   Scripts/kvm-box.sh [options] [--] COMMAND [ARG...]   run COMMAND in the box
#   Scripts/kvm-box.sh --prepare                          build the box and stop
#
# COMMAND runs as root in the current directory (which must be under / of the
# host; paths are the same inside); its output streams to this terminal and
# its exit status is this script's. Exit status 125 means the box itself
# failed (its log is printed).
#
# Options:
#   --memory SIZE     the box's memory, QEMU syntax (default 8G; $UNDERSTUDY_BOX_MEMORY)
#   --cpus N          emulated CPUs (default 1; $UNDERSTUDY_BOX_CPUS). Single-threaded
#                     TCG runs every emulated CPU on one host thread, so a second one
#                     adds no speed, only QEMU's round-robin kick every 100 ms; and a
#                     kick can make QEMU's SVM deliver an injected interrupt to the
#                     nested guest twice (helper_vmrun leaves exception_index set to
#                     the vector it injected; the kick replays it). Linux guests
#                     died of it (a timer interrupt inside its own handler) in most
#                     boots with 2 CPUs, in none of 7 with 1.
#   --env NAME        pass the host's variable NAME into the box (repeatable);
#                     PATH, HOME, TERM and every UNDERSTUDY_* variable always pass
#   --prepare         build (or check) the cached kernel and initramfs only
#   $UNDERSTUDY_BOX_KERNEL_ARGS   more on the box kernel's command line (e.g. loglevel=7)
#       The box kernel always gets nohz=off highres=off: a periodic tick from
#       the local APIC's periodic mode, which QEMU reloads by itself. With the
#       default one-shot timer (re-armed by the kernel at each interrupt), the
#       box sometimes lost one while a nested guest ran, and then slept: QEMU
#       at 0% CPU, every process in the box waiting on a timer that never came
#       (a 3 s freeze made a standby take over a live primary; longer ones
#       hung Linux failover tests). With the periodic tick: 10 of 10 runs,
#       none frozen, where 2 of 2 had hung the same day without it.
#   $UNDERSTUDY_BOX_TCG_THREAD    single (default) or multi: QEMU's TCG threading.
#       With multi-threaded TCG the box's kernel locked up (soft lockups on both
#       CPUs, the test stalled) in 2 of 3 runs of randomPointsContinueExactly;
#       single-threaded, none in 3, at about the same speed.
#
# Everything the box is made of comes from Debian packages and is built on
# first use into $UNDERSTUDY_BOX_CACHE (default ~/.cache/understudy-box), one
# folder per kernel version; nothing of it is committed. Needs (apt-get
# install): qemu-system-x86 busybox-static kmod cpio. The kernel package is
# fetched with `apt-get download` (network to the Debian mirror, first use only).
set -euo pipefail

say() { echo "kvm-box: $*" >&2; }
die() { say "$*"; exit 125; }

checkout=$(cd "$(dirname "$0")/.." && pwd)
cache=${UNDERSTUDY_BOX_CACHE:-${HOME:-/root}/.cache/understudy-box}
memory=${UNDERSTUDY_BOX_MEMORY:-8G}
cpus=${UNDERSTUDY_BOX_CPUS:-1}
prepare_only=0
pass_env=(PATH HOME TERM)

while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --env) pass_env+=("$2"); shift 2 ;;
        --prepare) prepare_only=1; shift ;;
        --help|-h) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
if [ "$prepare_only" = 0 ] && [ $# -eq 0 ]; then die "no command given (see --help)"; fi

# --- What the host needs --------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] && [[ $'\n'$(/bin/busybox --list 2>/dev/null)$'\n' == *$'\n'insmod$'\n'* ]] || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || missing+=(kmod)
if [ ${#missing[@]} -gt 0 ]; then
    die "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})"
fi
if ldd /bin/busybox >/dev/null 2>&1; then
    die "/bin/busybox is dynamically linked; the box needs busybox-static (apt-get install busybox-static)"
fi
PATH=$PATH:/sbin:/usr/sbin

# --- The kernel: the one Debian's linux-image-amd64 depends on ------------
. "$checkout/Scripts/lib/debian-kernel.sh"
kernel_package=$(debian_kernel_package "$cache")
version=${kernel_package#linux-image-}
box=$cache/$kernel_package
vmlinuz=$box/vmlinuz
initramfs=$box/initramfs.cpio.gz

# Modules the box loads, in this order, each after its dependencies.
box_modules=(kvm-amd 9p 9pnet_virtio virtio_pci tun veth bridge sch_netem sch_tbf)

build_box() {
    say "building the box for $kernel_package in $box (first use only)"
    rm -rf "$box.tmp" && mkdir -p "$box.tmp"
    fetch_debian_kernel "$kernel_package" "$box.tmp"

    # The initramfs: busybox, the modules (uncompressed), and /init.
    local root=$box.tmp/initramfs
    mkdir -p "$root"/{bin,dev,proc,sys,host}
    cp /bin/busybox "$root/bin/busybox"
    for m in sh mount umount insmod mkdir chroot sleep cat echo reboot stty ip sync mknod ls; do
        ln -s busybox "$root/bin/$m"
    done
    copy_modules "$box.tmp/kernel/lib/modules/$version" "$root/modules" "${box_modules[@]}"
    write_init > "$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$box.tmp/initramfs.cpio.gz"
    cp "$box.tmp/kernel/boot/vmlinuz-$version" "$box.tmp/vmlinuz"
    echo "$kernel_package $MODULES_COPIED" > "$box.tmp/manifest"
    init_sum > "$box.tmp/init.sum"

    rm -rf "$box"
    mkdir -p "$box"
    mv "$box.tmp/vmlinuz" "$box.tmp/initramfs.cpio.gz" "$box.tmp/manifest" "$box.tmp/init.sum" "$box/"
    rm -rf "$box.tmp"
    say "box ready: $(cat "$box/manifest")"
}

# /init of the box. It reads what to run from the "run" share, which the host
# fills per run: cwd, env, cmd (a shell script). It writes the exit status there.
write_init() {
    cat <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -F /dev/console raw -echo 2>/dev/null
fail() { echo "kvm-box(init): $*" > /dev/console; sync; reboot -f; sleep 5; }
for m in $(cat /modules/order); do
    insmod /modules/$m > /dev/null 2>&1 || { [ -d /sys/module/$(echo ${m#*-} | sed 's/\.ko$//; s/-/_/g') ] || fail "insmod $m failed"; }
done
p9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o ro,$p9,cache=loose host /host || fail "mounting the host's root failed"
mount -t tmpfs -o mode=1777 tmp /host/tmp
mount -t tmpfs -o mode=755 run /host/run
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts /host/run/box
ln -sf /proc/self/fd /host/dev/fd
ln -sf /proc/self/fd/0 /host/dev/stdin
ln -sf /proc/self/fd/1 /host/dev/stdout
ln -sf /proc/self/fd/2 /host/dev/stderr
mount -t tmpfs -o mode=1777 shm /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t 9p -o $p9 run /host/run/box || fail "mounting the run share failed"
checkout=$(cat /host/run/box/checkout)
# A checkout under /tmp or /run is under the box's own tmpfs: make its mount point there.
mkdir -p "/host$checkout" 2>/dev/null
mount -t 9p -o $p9 work "/host$checkout" || fail "mounting the checkout at $checkout failed"
[ -e /host/dev/kvm ] || fail "no /dev/kvm in the box (kvm-amd did not load: is SVM emulated?)"
ip link set lo up
chroot /host /bin/sh /run/box/cmd < /dev/null > /dev/console 2>&1
echo $? > /host/run/box/status
sync
umount "/host$checkout" /host/run/box 2>/dev/null
echo 0 > /proc/sys/kernel/printk
reboot -f
INIT
}

# The /init a cached box was built with: a box built by an older script is built again.
init_sum() { write_init | md5sum | cut -d' ' -f1; }
if [ ! -f "$vmlinuz" ] || [ ! -f "$initramfs" ] || [ "$(cat "$box/init.sum" 2>/dev/null)" != "$(init_sum)" ]; then
    build_box
fi
if [ "$prepare_only" = 1 ]; then
    say "box ready in $box"
    exit 0
fi

# --- One run --------------------------------------------------------------
run=$(mktemp -d /tmp/understudy-box.XXXXXX)
qemu_pid=
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "$checkout" > "$run/checkout"
{
    echo "#!/bin/sh"
    for name in "${pass_env[@]}" $(compgen -e | grep '^UNDERSTUDY_' || true); do
        [ -n "${!name+x}" ] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    echo "export UNDERSTUDY_IN_BOX=1"
    printf 'cd %q || exit 126\n' "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} > "$run/cmd"

qemu-system-x86_64 \
    -accel "tcg,thread=${UNDERSTUDY_BOX_TCG_THREAD:-single}" -cpu EPYC,+svm,+npt -smp "$cpus" -m "$memory" \
    -nodefaults -no-user-config -display none -no-reboot \
    -chardev stdio,id=console,signal=off -serial chardev:console \
    -kernel "$vmlinuz" -initrd "$initramfs" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 transparent_hugepage=never nohz=off highres=off ${UNDERSTUDY_BOX_KERNEL_ARGS:-}" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$checkout,mount_tag=work,security_model=none,multidevs=remap" \
    -virtfs "local,path=$run,mount_tag=run,security_model=none,multidevs=remap" \
    < /dev/null 2> "$run/qemu.log" &
qemu_pid=$!
wait "$qemu_pid" || true
qemu_pid=

if [ ! -f "$run/status" ]; then
    grep -v "TCG doesn't support requested feature" "$run/qemu.log" >&2 || true
    die "the box stopped before the command finished (see the console output above)"
fi
exit "$(cat "$run/status")"
