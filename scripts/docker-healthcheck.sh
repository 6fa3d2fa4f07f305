#!/bin/sh
# HEALTHCHECK of the image: /healthz on the listener, over http, or https when the listener
# has TLS (the certificate is not checked: the name clients use is not known here). The port
# is REGISTRY_HTTP_ADDR's, else http.addr of the config the entrypoint serves by default.
addr=$REGISTRY_HTTP_ADDR
if [ -z "$addr" ]; then
    config=/etc/docker/registry/config.yml
    [ -f /etc/distribution/config.yml ] && config=/etc/distribution/config.yml
    addr=$(regmirror check-config "$config" 2>/dev/null |
        awk '/^[^ ]/ { s = $1 } s == "http:" && /^  addr:/ { gsub(/"/, "", $2); print $2; exit }')
fi
port=${addr##*:}
port=${port:-5000}
curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:$port/healthz" ||
    exec curl -fsS -o /dev/null --max-time 4 -k "https://127.0.0.1:$port/healthz"
