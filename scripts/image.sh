#!/usr/bin/env bash
# Builds the container image (Dockerfile) as regmirror:latest and regmirror:VERSION into the
# daemon DOCKER_HOST names. Nothing is pulled: when that daemon lacks the debian:bookworm-slim
# base, it is made here (debootstrap --variant=minbase from the Debian archive, trimmed as the
# official slim image is, then docker import) and its tarball is kept in
# ${XDG_CACHE_HOME:-~/.cache}/regmirror/ for the next time.
#   scripts/image.sh VERSION         build the image
#   scripts/image.sh --base-only     only make sure the daemon has the base
set -euo pipefail

BASE=debian:bookworm-slim
DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/regmirror
TARBALL=$CACHE/debian-bookworm-slim.tar

make_tarball() {
    local root
    command -v debootstrap >/dev/null || { echo "image.sh: debootstrap is needed to make $BASE" >&2; exit 1; }
    [ "$(id -u)" -eq 0 ] || { echo "image.sh: making $BASE with debootstrap needs root" >&2; exit 1; }
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf --one-file-system "$root"' EXIT
    echo "image.sh: debootstrap --variant=minbase bookworm from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # As the official slim image: no docs, man pages or translations installed later either.
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
    printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' \
        >"$root/etc/apt/apt.conf.d/docker-slim"
    printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n' \
        >"$root/etc/apt/apt.conf.d/docker-clean"
    cat >"$root/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SRC
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
        "$root"/var/cache/debconf/*-old "$root"/tmp/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf --one-file-system "$root"
    trap - EXIT
}

ensure_base() {
    "$DOCKER" image inspect "$BASE" >/dev/null 2>&1 && return 0
    [ -s "$TARBALL" ] || make_tarball
    echo "image.sh: docker import $TARBALL $BASE"
    "$DOCKER" import -c 'CMD ["bash"]' "$TARBALL" "$BASE" >/dev/null
}

ensure_base
[ "${1:-}" = --base-only ] && exit 0
VERSION=${1:-dev}
cd "$(dirname "$0")/.."
"$DOCKER" build --network host --build-arg VERSION="$VERSION" \
    -t regmirror:latest -t "regmirror:$VERSION" .
