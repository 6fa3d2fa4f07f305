#!/bin/sh
# HEALTHCHECK of the image: /healthz on the listener (REGISTRY_HTTP_ADDR's port, default
# 5000), over http, or https when the listener has TLS (the certificate is not checked: the
# name clients use is not known here).
port=${REGISTRY_HTTP_ADDR##*:}
port=${port:-5000}
curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:$port/healthz" ||
    exec curl -fsS -o /dev/null --max-time 4 -k "https://127.0.0.1:$port/healthz"
