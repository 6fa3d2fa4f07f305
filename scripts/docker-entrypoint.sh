#!/bin/sh
# The image's entrypoint, with registry:2's calling conventions:
#   (no arguments), serve            regmirror serve CONFIG
#   /path/config.yml                 regmirror serve /path/config.yml
#   garbage-collect|check-config ... regmirror VERB ... CONFIG (CONFIG added when not given)
#   version, help                    regmirror VERB
#   anything else                    run as a command (sh, ...)
# CONFIG is /etc/distribution/config.yml when one is mounted there (distribution 3's path),
# else /etc/docker/registry/config.yml. Started as root (the default), it makes the storage
# root belong to the regmirror user when it does not (a fresh host directory mounted on
# /var/lib/registry is root's), then runs regmirror as that user.
set -e

config=/etc/docker/registry/config.yml
[ -f /etc/distribution/config.yml ] && config=/etc/distribution/config.yml

last_is_config() {
    for a in "$@"; do last=$a; done
    case ${last:-} in *.yml | *.yaml) return 0 ;; esac
    return 1
}

case ${1:-serve} in
serve | garbage-collect | check-config)
    verb=${1:-serve}
    [ $# -gt 0 ] && shift
    if last_is_config "$@"; then set -- "$verb" "$@"; else set -- "$verb" "$@" "$config"; fi
    set -- regmirror "$@"
    ;;
*.yml | *.yaml) set -- regmirror serve "$@" ;;
version | help | --help | -h) set -- regmirror "$@" ;;
esac

if [ "$1" = regmirror ] && [ "$(id -u)" = 0 ]; then
    data=${REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY:-/var/lib/registry}
    if [ -d "$data" ] && [ "$(stat -c %u "$data")" != "$(id -u regmirror)" ]; then
        chown -R regmirror:regmirror "$data"
    fi
    exec setpriv --reuid=regmirror --regid=regmirror --init-groups "$@"
fi
exec "$@"
