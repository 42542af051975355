#!/usr/bin/env bash
# Builds libnginx-mod-http-wsgi for another Debian release (default: trixie, Debian 13) in a
# root made with debootstrap from Debian's archive, against that release's nginx-dev and
# default python3: `make deb DIST=trixie`. Run as root (debootstrap, chroot, mount).
#
#   tools/deb-chroot.sh [DIST]           build; the results go to build/deb-DIST/
#   tools/deb-chroot.sh --root [DIST]    only make (or update) the root build/DIST-root
#
# The root is made once (debootstrap --variant=minbase, about a minute) and reused; the build
# dependencies (Build-Depends of debian/control, plus nginx and python3-venv for the tests)
# are installed in it with apt from the same archive; the host's own CA certificates
# (/usr/local/share/ca-certificates) are added to its trust store. Inside the root:
#   /build/src            a fresh copy of the source tree (no build/, target/, .git)
#   /build/target         cargo's target directory (kept between builds)
#   /build/nginx-VER-src  nginx-dev's tree configured with its conf_flags (the Makefile rule)
# The host's rustup toolchain and cargo home (with its registry cache: the build is offline
# like `make deb`, CARGO_NET_OFFLINE=false lets cargo download) are bind-mounted at
# /root/.rustup and /root/.cargo, and /proc at /proc, for the build only: a trap unmounts
# them whatever happens. cargo runs with CARGO_BUILD_JOBS (default 1) under nice -n NICE
# (default 19).
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), CARGO_BUILD_JOBS, NICE,
# CARGO_NET_OFFLINE.
set -euo pipefail

only_root=false
if [ "${1:-}" = "--root" ]; then only_root=true; shift; fi
DIST=${1:-trixie}
case "$DIST" in *[!a-z0-9-]*|"") echo "bad distribution name: $DIST" >&2; exit 2;; esac

TOP=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=$TOP/build/$DIST-root
OUT=$TOP/build/deb-$DIST
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
HOST_RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
PKGS=(nginx nginx-dev libclang-dev python3-dev python3-venv libpcre2-dev libssl-dev zlib1g-dev
      debhelper dpkg-dev fakeroot pkg-config build-essential ca-certificates)

[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, chroot, mount)" >&2; exit 1; }
command -v debootstrap >/dev/null || {
    echo "$0: debootstrap is not installed (apt-get install debootstrap, or make deps)" >&2; exit 1; }

mkdir -p "$TOP/build"
# One build or root update at a time per root.
exec 9>"$TOP/build/.$DIST-root.lock"
flock 9

# ---- mounts, always undone -------------------------------------------------------------
MOUNTED=()
cleanup() {
    local i m
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[i]}
        umount "$m" 2>/dev/null || umount -l "$m" || echo "$0: could not unmount $m" >&2
    done
    MOUNTED=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

bind() {  # bind SRC DEST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    MOUNTED+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

in_root() {  # a command in the root, with a clean environment
    chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# ---- the root ---------------------------------------------------------------------------
if [ ! -d "$ROOTFS" ]; then
    echo "== debootstrap $DIST into $ROOTFS ($MIRROR)"
    # An interrupted debootstrap may have left its own /proc or /sys mounted there.
    { grep -o " $ROOTFS.tmp/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$ROOTFS.tmp"
    debootstrap --variant=minbase "$DIST" "$ROOTFS.tmp" "$MIRROR"
    mv "$ROOTFS.tmp" "$ROOTFS"     # only a finished root gets the name
fi
# Installing nginx must not start it (it would listen on the host's port 80): no services.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true

bind /proc "$ROOTFS/proc"
missing=()
for p in "${PKGS[@]}"; do
    in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install in $ROOTFS: ${missing[*]}"
    in_root apt-get update -qq
    in_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The root trusts the certificate authorities this machine added to its own store
# (/usr/local/share/ca-certificates), so that pip in the root reaches PyPI the way the
# host's pip does (e.g. through a TLS-inspecting proxy).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    changed=false
    for crt in /usr/local/share/ca-certificates/*.crt; do
        cmp -s "$crt" "$ROOTFS/usr/local/share/ca-certificates/${crt##*/}" && continue
        cp "$crt" "$ROOTFS/usr/local/share/ca-certificates/" && changed=true
    done
    if $changed; then in_root update-ca-certificates >/dev/null; fi
fi
if $only_root; then echo "$ROOTFS"; exit 0; fi

# ---- the build --------------------------------------------------------------------------
[ -x "$HOST_CARGO_HOME/bin/cargo" ] || {
    echo "$0: no cargo in $HOST_CARGO_HOME/bin: install Rust with rustup (debian/README.source)" >&2
    exit 1; }
bind "$HOST_CARGO_HOME" "$ROOTFS/root/.cargo"
bind "$HOST_RUSTUP_HOME" "$ROOTFS/root/.rustup" ro

NGX_VERSION=$(in_root dpkg-query -W -f='${Version}' nginx-dev)
PY=$(in_root readlink -f /usr/bin/python3)
DEB_MAJOR=$(cut -d. -f1 "$ROOTFS/etc/debian_version")
case "$DEB_MAJOR" in *[!0-9]*|"") SUFFIX="+$DIST";; *) SUFFIX="+deb$DEB_MAJOR";; esac

echo "== copying the source tree to $ROOTFS/build/src"
rm -rf "$ROOTFS/build/src"
mkdir -p "$ROOTFS/build/src"
# Everything but the build products; tar keeps the mtimes, so cargo reuses /build/target.
tar -C "$TOP" --exclude=./build --exclude=./target --exclude=./.git --exclude=__pycache__ \
    --exclude=./debian/.debhelper --exclude=./debian/build --exclude=./debian/tmp \
    --exclude=./debian/libnginx-mod-http-wsgi --exclude=./debian/files \
    --exclude=./debian/debhelper-build-stamp --exclude='./debian/*.substvars' \
    --exclude='./debian/*.debhelper' --exclude='./debian/*.debhelper.log' -cf - . \
    | tar -C "$ROOTFS/build/src" -xf -

# A changelog entry for this release, so the two packages have distinct versions
# (0.1.0-1 for Debian 12, 0.1.0-1+deb13 for Debian 13: an upgrade from one to the other).
src_changelog=$ROOTFS/build/src/debian/changelog
base_version=$(in_root dpkg-parsechangelog -l /build/src/debian/changelog -S Version)
{
    echo "ngx-wsgi ($base_version$SUFFIX) $DIST; urgency=medium"
    echo
    echo "  * Built for $DIST: nginx $NGX_VERSION, $(basename "$PY")."
    echo
    echo " -- ngx-wsgi developers <ngx-wsgi@localhost>  $(date -R)"
    echo
    cat "$TOP/debian/changelog"
} > "$src_changelog"

echo "== dpkg-buildpackage in $ROOTFS (nginx-dev $NGX_VERSION, $PY)"
rm -f "$ROOTFS"/build/*.deb "$ROOTFS"/build/*.ddeb "$ROOTFS"/build/*.buildinfo "$ROOTFS"/build/*.changes
# -J: DEB_BUILD_OPTIONS parallel=JOBS, which debian/rules gives cargo as -j (newer
# dpkg-buildpackage defaults to one job per core otherwise).
JOBS=${CARGO_BUILD_JOBS:-1}
case "$JOBS" in *[!0-9]*|""|0) echo "bad CARGO_BUILD_JOBS: $JOBS" >&2; exit 2;; esac
in_root CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup \
    CARGO_BUILD_JOBS="$JOBS" CARGO_NET_OFFLINE="${CARGO_NET_OFFLINE:-true}" \
    NGX_DEB_TREE="/build/nginx-$NGX_VERSION-src" DEB_TARGET_DIR=/build/target \
    nice -n "${NICE:-19}" sh -c "cd /build/src && dpkg-buildpackage -b -us -uc -J$JOBS"

rm -rf "$OUT" && mkdir -p "$OUT"
mv "$ROOTFS"/build/*.deb "$ROOTFS"/build/*.buildinfo "$ROOTFS"/build/*.changes "$OUT"/
ls "$ROOTFS"/build/*.ddeb >/dev/null 2>&1 && mv "$ROOTFS"/build/*.ddeb "$OUT"/
ls -l "$OUT"
