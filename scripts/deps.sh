#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test regmirror.
# Does nothing (and needs no network) when everything is already there.
set -euo pipefail

pkgs=(build-essential pkg-config clang libclang-rt-14-dev
      libevent-dev libhttp-parser-dev libcurl4-openssl-dev libssl-dev libyaml-dev
      libhiredis-dev libjansson-dev libcrypt-dev libcmocka-dev libpsl-dev publicsuffix
      python3 python3-pytest python3-requests python3-cryptography
      docker-registry redis-server redis-sentinel skopeo podman docker.io containerd runc
      nginx wrk apache2-utils iproute2 curl
      chromium chromium-driver
      cppcheck clang-tidy clang-format
      debootstrap dpkg-dev debhelper lintian)

# Node.js + npm for test/oss/sdkcheck (Aliyun's ali-oss SDK checks the OSS emulator). A
# nodesource nodejs bundles npm and conflicts with Debian's npm package: only when npm is absent.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)

# ali-oss as pinned by test/oss/sdkcheck/package-lock.json.
sdkcheck() {
    local d
    d="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/test/oss/sdkcheck"
    [ -e "$d/node_modules/ali-oss/package.json" ] && return 0
    command -v npm >/dev/null 2>&1 || return 0
    echo "deps.sh: npm ci in test/oss/sdkcheck (ali-oss)"
    npm ci --prefix "$d" --no-audit --no-fund
}

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    sdkcheck
    exit 0
fi

echo "deps.sh: installing ${missing[*]}"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Keep apt from starting services (redis-server, docker-registry): the tests start their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
sdkcheck
