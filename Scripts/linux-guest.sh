#!/usr/bin/env bash
# The Linux guest: Debian's own kernel and an initramfs built from Debian
# packages only (busybox-static, the kernel's virtio modules), for MicroVM's
# `--kernel`/`--initrd`. Built on first use into $UNDERSTUDY_LINUX_CACHE
# (default ~/.cache/understudy-linux), one folder per kernel; never committed.
#
#   Scripts/linux-guest.sh          build if needed; print the kernel's and the initramfs's paths
#
# The guest's /init loads virtio_mmio, virtio_net and virtio_blk; with
# understudy.ip=A.B.C.D/N on the kernel command line it gives eth0 that
# address; with a disk (/dev/vda) it starts Guests/linux/kvstore.c on port
# 7000, journalling to the disk. It prints "understudy-linux: up" on its
# console (ttyS0), then a numbered line every second ("understudy-linux: tick
# N"), so a watcher sees it keep running.
# Needs (apt-get install): busybox-static kmod cpio gcc libc6-dev; the kernel
# package is fetched with `apt-get download` (first use only).
set -euo pipefail

say() { echo "linux-guest: $*" >&2; }
die() { say "$*"; exit 1; }

checkout=$(cd "$(dirname "$0")/.." && pwd)
cache=${UNDERSTUDY_LINUX_CACHE:-${HOME:-/root}/.cache/understudy-linux}
PATH=$PATH:/sbin:/usr/sbin
. "$checkout/Scripts/lib/debian-kernel.sh"

[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "needs busybox-static (apt-get install busybox-static)"
command -v cpio >/dev/null || die "needs cpio (apt-get install cpio)"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "needs a static C library (apt-get install gcc libc6-dev)"

kernel_package=$(debian_kernel_package "$cache")
version=${kernel_package#linux-image-}
# One folder per kernel and per version of what goes into the initramfs.
sources=$(cat "$0" "$checkout/Guests/linux/kvstore.c" | sha256sum | cut -c1-12)
guest=$cache/$kernel_package-$sources
guest_modules=(virtio_mmio virtio_net virtio_blk)

write_init() {
    cat <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# insmod, unlike modprobe, does not read a module's parameters from the
# kernel command line (name.parameter=value): pass them on.
for m in $(cat /modules/order); do
    name=${m#*-}; name=${name%.ko}
    args=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^$name\.//p" | tr '\n' ' ')
    insmod /modules/$m $args || echo "understudy-linux: insmod $m failed"
done
# The virtio-mmio devices come from the ACPI tables (the VMM's DSDT).
echo "understudy-linux: virtio devices: $(ls /sys/bus/virtio/devices 2>/dev/null | tr '\n' ' ')"
address=$(sed -n 's/.*understudy\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$address" ] && [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip addr add "$address" dev eth0
    ip link set eth0 up
fi
[ -b /dev/vda ] && /bin/kvstore /dev/vda 7000 &
echo "understudy-linux: up"
n=0
while true; do
    n=$((n + 1))
    echo "understudy-linux: tick $n"
    sleep 1
done
INIT
}

built() { [ -f "$guest/vmlinuz" ] && [ -f "$guest/initramfs.cpio.gz" ]; }
if ! built; then
    # One build at a time (tests in parallel may all ask for the guest at once).
    mkdir -p "$cache"
    exec 9>"$cache/.lock"
    flock 9
fi
if ! built; then
    say "building the Linux guest for $kernel_package in $guest (first use only)"
    rm -rf "$guest.tmp" && mkdir -p "$guest.tmp"
    fetch_debian_kernel "$kernel_package" "$guest.tmp"
    root=$guest.tmp/initramfs
    mkdir -p "$root"/{bin,dev,proc,sys,tmp}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"; done
    copy_modules "$guest.tmp/kernel/lib/modules/$version" "$root/modules" "${guest_modules[@]}"
    gcc -static -Os -Wall -o "$root/bin/kvstore" "$checkout/Guests/linux/kvstore.c"
    write_init > "$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$guest.tmp/initramfs.cpio.gz"
    cp "$guest.tmp/kernel/boot/vmlinuz-$version" "$guest.tmp/vmlinuz"
    echo "$kernel_package $MODULES_COPIED" > "$guest.tmp/manifest"
    rm -rf "$guest"
    mkdir -p "$guest"
    mv "$guest.tmp/vmlinuz" "$guest.tmp/initramfs.cpio.gz" "$guest.tmp/manifest" "$guest/"
    rm -rf "$guest.tmp"
    say "guest ready: $(cat "$guest/manifest")"
fi
echo "$guest/vmlinuz $guest/initramfs.cpio.gz"
