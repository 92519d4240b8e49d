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
