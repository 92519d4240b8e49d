# Debian's kernel, fetched and cut down: shared by kvm-box.sh (the box's
# kernel) and linux-guest.sh (the Linux guest's). Source it; it defines
# functions only. Callers provide die().

# The kernel package Debian's linux-image-amd64 depends on; else the newest
# one named in $1 (a cache directory with one folder per package).
debian_kernel_package() {
    local package
    package=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
    if [ -z "$package" ]; then
        package=$(ls -1 "$1" 2>/dev/null | grep '^linux-image-' | sort -V | tail -n 1 || true)
        [ -n "$package" ] || die "cannot tell which kernel to use: apt-cache knows no linux-image-amd64 (run apt-get update) and $1 is empty"
    fi
    echo "$package"
}

# fetch_debian_kernel PACKAGE DIR: downloads PACKAGE and unpacks it into
# DIR/kernel, with modules.dep built; the kernel is DIR/kernel/boot/vmlinuz-*.
fetch_debian_kernel() {
    local package=$1 dir=$2 version=${1#linux-image-}
    (cd "$dir" && apt-get download "$package" >/dev/null 2>"$dir/download.log") \
        || die "apt-get download $package failed: $(tail -n 3 "$dir/download.log")"
    dpkg -x "$dir"/"$package"_*.deb "$dir/kernel"
    depmod -b "$dir/kernel" "$version"
    [ -f "$dir/kernel/boot/vmlinuz-$version" ] || die "$package has no /boot/vmlinuz-$version"
}

# copy_modules MODDIR DEST MODULE...: copies each MODULE and what it needs
# (from MODDIR/modules.dep), uncompressed, into DEST as NN-name.ko in load
# order, and lists them in DEST/order. Modules built into the kernel are skipped.
copy_modules() {
    local moddir=$1 dest=$2; shift 2
    local ordered=() seen=" "
    resolve() {
        local name=${1//[-_]/[-_]} line path deps dep
        line=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -n 1 || true)
        if [ -z "$line" ]; then
            grep -qE "(^|/)${name}\.ko$" "$moddir/modules.builtin" && return 0
            die "module $1 is neither in modules.dep nor built into the kernel"
        fi
        path=${line%%:*}
        deps=${line#*:}
        case "$seen" in *" $path "*) return 0 ;; esac
        for dep in $deps; do
            dep=$(basename "$dep"); resolve "${dep%%.ko*}"
        done
        seen="$seen$path "
        ordered+=("$path")
    }
    local m
    for m in "$@"; do resolve "$m"; done
    mkdir -p "$dest"
    : > "$dest/order"
    local i=0 p f
    for p in "${ordered[@]}"; do
        i=$((i + 1))
        f=$(printf '%02d-%s' "$i" "$(basename "${p%%.ko*}").ko")
        case "$p" in
            *.ko.xz) xz -dc "$moddir/$p" > "$dest/$f" ;;
            *.ko.zst) zstd -qdc "$moddir/$p" > "$dest/$f" ;;
            *.ko.gz) gzip -dc "$moddir/$p" > "$dest/$f" ;;
            *) cp "$moddir/$p" "$dest/$f" ;;
        esac
        echo "$f" >> "$dest/order"
    done
    MODULES_COPIED="${ordered[*]}"
}
