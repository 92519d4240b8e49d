#!/usr/bin/env bash
# Builds the C guests that run on MicroVM with lwIP networking:
#   Guests/build/kvstore.elf   TCP key-value store (Guests/apps/kvstore.c)
#   Guests/build/journal.elf   disk journal (Guests/apps/journal.c)
#
# lwIP is not committed: the first run fetches Debian 12's source package
# (lwip 2.1.3+dfsg1-2) with `apt-get source` into Guests/build/ (adding a
# deb-src entry for deb.debian.org bookworm if none is configured; needs root
# then). Later runs reuse the unpacked tree. Everything produced goes under
# Guests/build/. Needs gcc, binutils, and (first run) apt and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$root/Guests/build
lwip_version=2.1.3+dfsg1-2
lwip_dir=$build/lwip-2.1.3+dfsg1
mkdir -p "$build"

log() { echo "build-guests: $*"; }

# --- 1. lwIP source ---------------------------------------------------------
if [ ! -f "$lwip_dir/src/core/tcp.c" ]; then
    log "fetching Debian source package lwip $lwip_version"
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v dpkg-source >/dev/null; then
        as_root apt-get install -y -q dpkg-dev >/dev/null
    fi
    # A deb-src entry for bookworm main (only written if none exists yet).
    if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ \
       || ! apt-cache showsrc lwip 2>/dev/null | grep -q "^Version: $lwip_version"; then
        as_root tee /etc/apt/sources.list.d/understudy-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        as_root apt-get update -q >/dev/null
    fi
    (cd "$build" && apt-get source -q "lwip=$lwip_version" >/dev/null 2>"$build/apt-source.log") \
        || { cat "$build/apt-source.log" >&2; exit 1; }
    [ -f "$lwip_dir/src/core/tcp.c" ] || { echo "build-guests: lwIP tree not found at $lwip_dir" >&2; exit 1; }
fi

# --- 2. compile -------------------------------------------------------------
# Freestanding x86-64 code for CPL3 without a kernel or libc; system headers
# are used for stdint/stddef/limits only, every function comes from
# Guests/runtime. Objects are rebuilt when their source or any header is newer.
CC=${CC:-gcc}
CFLAGS=(-O2 -g0 -std=gnu11 -ffreestanding -fno-stack-protector -fno-pic -no-pie -mno-red-zone
        -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -Wall -Wextra
        -Wno-unused-parameter -I"$root/Guests/lwip-port" -I"$lwip_dir/src/include")
LDFLAGS=(-nostdlib -static -no-pie -T "$root/Guests/apps/link.ld" -Wl,--build-id=none
         -Wl,-z,max-page-size=0x1000 -Wl,--no-warn-rwx-segments)
obj=$build/obj
mkdir -p "$obj/lwip" "$obj/guest"
header_time=$(find "$root/Guests/include" "$root/Guests/runtime" "$root/Guests/drivers" "$root/Guests/lwip-port" \
              "$lwip_dir/src/include" -name '*.h' -printf '%T@\n' | sort -n | tail -1 | cut -d. -f1)
compiled=0
compile() {   # compile SOURCE OBJECT [extra flags...]
    local src=$1 out=$2
    shift 2
    if [ -f "$out" ] && [ "$out" -nt "$src" ] && [ "$(stat -c %Y "$out")" -gt "$header_time" ]; then
        return
    fi
    "$CC" "${CFLAGS[@]}" "$@" -c "$src" -o "$out"
    compiled=$((compiled + 1))
}

lwip_sources=("$lwip_dir"/src/core/{def,inet_chksum,init,ip,mem,memp,netif,pbuf,stats,sys,tcp,tcp_in,tcp_out,timeouts}.c
              "$lwip_dir"/src/core/ipv4/{etharp,icmp,ip4,ip4_addr,ip4_frag}.c
              "$lwip_dir"/src/netif/ethernet.c)
lwip_objects=()
for src in "${lwip_sources[@]}"; do
    o=$obj/lwip/$(basename "${src%.c}").o
    compile "$src" "$o" -w       # lwIP's own code: not our warnings to fix
    lwip_objects+=("$o")
done

common_objects=()
for src in Guests/runtime/{crt,string,malloc,print}.c Guests/drivers/{virtio,virtio_net,virtio_blk}.c Guests/lwip-port/netif.c; do
    o=$obj/guest/$(basename "${src%.c}").o
    compile "$root/$src" "$o"
    common_objects+=("$o")
done

for app in kvstore journal badqueue; do
    compile "$root/Guests/apps/$app.c" "$obj/guest/$app.o"
    # Link only when an object or the linker script is newer than the image.
    if [ -f "$build/$app.elf" ] && [ -z "$(find "$obj" "$root/Guests/apps/link.ld" -newer "$build/$app.elf" -print -quit)" ]; then
        continue
    fi
    "$CC" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$build/$app.elf" "$obj/guest/$app.o" "${common_objects[@]}" \
        "${lwip_objects[@]}" -lgcc
done
log "compiled $compiled file(s); outputs:"
for app in kvstore journal badqueue; do
    log "  $build/$app.elf ($(stat -c %s "$build/$app.elf") bytes)"
done
