#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test regmirror.
# Does nothing (and needs no network) when everything is already there.
set -euo pipefail

pkgs=(build-essential pkg-config clang libclang-rt-14-dev
      libevent-dev libhttp-parser-dev libcurl4-openssl-dev libssl-dev libyaml-dev
      libhiredis-dev libjansson-dev libcrypt-dev libcmocka-dev
      python3 python3-pytest python3-requests python3-cryptography
      docker-registry redis-server skopeo podman docker.io containerd runc
      apache2-utils iproute2 curl)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

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
