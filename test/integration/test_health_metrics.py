"""Health checks (/debug/health on http.debug.addr, /healthz on the main listener) and the
Prometheus metrics on http.debug.addr, against real servers: a storage root that goes away,
file / tcp / http checks, an unreachable upstream, and counters that move with proxied and
cached pulls."""

import http.client
import os
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import helpers
from helpers import make_image, push_image, wait_until

pytestmark = pytest.mark.regmirror_only("debug listener, /healthz and metrics names are "
                                        "regmirror's")


def debug_yaml(port, prometheus=True, health=""):
    text = "  debug:\n    addr: 127.0.0.1:%d\n" % port
    if prometheus:
        text += "    prometheus:\n      enabled: true\n      path: /metrics\n"
    # render_config ends inside the http: section, so the debug keys go right after it
    return text + health


def start(make_registry, health="", prometheus=True, extra="", name=None):
    port = helpers.free_port()
    reg = make_registry(name=name, extra_yaml=debug_yaml(port, prometheus) + health + extra)
    reg.debug = "http://127.0.0.1:%d" % port
    return reg


def scrape(reg):
    r = requests.get(reg.debug + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def metric(m, name, **labels):
    """Sum of the samples of name whose labels include the given ones."""
    total = 0.0
    for key, v in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(have.get(k) == str(val) for k, val in labels.items()):
            total += v
    return total


def test_healthz_and_debug_health_when_healthy(make_registry):
    reg = start(make_registry)
    r = reg.get("/healthz")
    assert r.status_code == 200 and r.text == "ok\n"
    r = requests.get(reg.debug + "/debug/health", timeout=10)
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["Content-Type"].startswith("application/json")
    assert requests.get(reg.debug + "/nothing", timeout=10).status_code == 404
    # /healthz is the exact path only; under /v2/ it is a (bad) repository route
    assert reg.get("/healthz/x").status_code == 404


def test_storage_driver_failure_after_threshold(make_registry):
    health = ("health:\n  storagedriver:\n    enabled: true\n    interval: 100ms\n"
              "    threshold: 3\n")
    reg = start(make_registry, health=health)
    assert requests.get(reg.debug + "/debug/health", timeout=10).json() == {}
    shutil.rmtree(reg.rootdir)
    t0 = time.monotonic()

    def failing():
        r = requests.get(reg.debug + "/debug/health", timeout=10)
        return r if r.status_code == 503 else None

    r = wait_until(failing)
    assert r is not None, reg.log_tail()
    # three failed runs 100 ms apart before it counts
    assert time.monotonic() - t0 >= 0.2
    body = r.json()
    assert list(body) == ["storagedriver_filesystem"]
    assert "missing" in body["storagedriver_filesystem"]
    r = reg.get("/healthz")
    assert r.status_code == 503
    assert r.text.startswith("unhealthy\nstoragedriver_filesystem: ")
    m = scrape(reg)
    assert metric(m, "regmirror_healthy") == 0
    assert metric(m, "regmirror_health_check_up", check="storagedriver_filesystem") == 0
    # a storage root that is a file fails too; a directory again heals it
    with open(reg.rootdir, "w") as f:
        f.write("not a directory")
    time.sleep(0.3)
    r = requests.get(reg.debug + "/debug/health", timeout=10)
    assert r.status_code == 503 and "not a directory" in r.text
    os.unlink(reg.rootdir)
    os.makedirs(reg.rootdir)
    assert wait_until(lambda: reg.get("/healthz").status_code == 200)
    assert requests.get(reg.debug + "/debug/health", timeout=10).json() == {}
    assert "health: storagedriver_filesystem passes again" in reg.log_tail(20000)


class StatusServer:
    def __init__(self, status):
        self.status = status
        self.heads = 0
        srv = self

        class H(BaseHTTPRequestHandler):
            def do_HEAD(self):
                srv.heads += 1
                self.send_response(srv.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_file_tcp_http_checks(make_registry, tmp_path):
    ok_srv, bad_srv = StatusServer(200), StatusServer(500)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    closed_port = helpers.free_port()
    drain = tmp_path / "drain"
    try:
        health = (
            "health:\n"
            "  file:\n    - file: %s\n      interval: 100ms\n"
            "  http:\n"
            "    - uri: http://127.0.0.1:%d/ok\n      interval: 100ms\n"
            "    - uri: http://127.0.0.1:%d/bad\n      interval: 100ms\n      threshold: 2\n"
            "  tcp:\n"
            "    - addr: 127.0.0.1:%d\n      interval: 100ms\n      timeout: 1s\n"
            "    - addr: 127.0.0.1:%d\n      interval: 100ms\n      timeout: 1s\n"
        ) % (drain, ok_srv.port, bad_srv.port, listener.getsockname()[1], closed_port)
        reg = start(make_registry, health=health)

        def body():
            r = requests.get(reg.debug + "/debug/health", timeout=10)
            return r.status_code, r.json()

        want = {"http://127.0.0.1:%d/bad" % bad_srv.port,
                "127.0.0.1:%d" % closed_port}
        st, b = wait_until(lambda: (lambda s, j: (s, j) if set(j) == want else None)(*body()))
        assert st == 503
        assert "unexpected status: 500" in b["http://127.0.0.1:%d/bad" % bad_srv.port]
        assert "connection to 127.0.0.1:%d failed" % closed_port in b["127.0.0.1:%d" % closed_port]
        assert ok_srv.heads >= 1  # registry:2's http checker sends HEAD
        # the file check fails while the file exists (registry:2's drain switch)
        drain.write_text("")
        assert wait_until(lambda: str(drain) in body()[1])
        assert body()[1][str(drain)] == "file exists"
        drain.unlink()
        bad_srv.status = 200
        closed = socket.socket()
        closed.bind(("127.0.0.1", closed_port))
        closed.listen(8)
        try:
            assert wait_until(lambda: body() == (200, {}))
        finally:
            closed.close()
    finally:
        ok_srv.stop()
        bad_srv.stop()
        listener.close()


def test_unreachable_upstream_is_reported_not_fatal(make_registry, repo):
    port = helpers.free_port()
    reg = start(make_registry, extra="proxy:\n  remoteurl: http://127.0.0.1:%d\n  push: true\n" % port)
    key = "upstream_http://127.0.0.1:%d" % port

    def reported():
        r = requests.get(reg.debug + "/debug/health", timeout=10)
        return r if key in r.json() else None

    r = wait_until(reported)
    assert r is not None and r.status_code == 200, reg.log_tail()
    r = reg.get("/healthz")
    assert r.status_code == 200
    assert r.text.startswith("ok\n") and key in r.text and "not counted" in r.text
    m = scrape(reg)
    assert metric(m, "regmirror_healthy") == 1
    assert metric(m, "regmirror_health_check_up", check=key, counts="false") == 0
    # and local content is still served
    img = make_image()
    push_image(reg, repo, img, ref="v1")
    assert reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": img.media_type}).ok


def raw_get(reg, path):
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_metrics_move_with_proxied_and_cached_pulls(make_registry, upstream, seeded):
    reg = start(make_registry, name="mirror", extra=upstream.proxy_yaml(username="alice"))
    img = seeded.alpine
    total = sum(len(b) for b in img.blobs.values())
    before = scrape(reg)
    assert metric(before, "regmirror_blob_bytes_total", source="upstream") == 0
    assert metric(before, "regmirror_proxy_cache_hit_ratio") == 0

    def pull():
        r = reg.get("/v2/%s/manifests/%s" % (img.repo, img.tag),
                    headers={"Accept": img.media_type})
        assert r.status_code == 200 and r.content == img.manifest
        for d, data in img.blobs.items():
            assert raw_get(reg, "/v2/%s/blobs/%s" % (img.repo, d)) == (200, data)

    pull()  # cold: every blob comes from the upstream
    m1 = scrape(reg)
    assert metric(m1, "regmirror_blob_bytes_total", source="upstream") == total
    assert metric(m1, "regmirror_blob_bytes_total", source="cache") == 0
    assert metric(m1, "regmirror_proxy_cache_requests_total", kind="blob",
                  result="miss") == len(img.blobs)
    assert metric(m1, "regmirror_proxy_cache_requests_total", kind="manifest",
                  result="miss") == 1
    assert metric(m1, "regmirror_upstream_token_fetches_total") >= 1
    assert metric(m1, "regmirror_upstream_requests_total") >= 1 + len(img.blobs)
    assert wait_until(lambda: metric(scrape(reg), "regmirror_upstream_requests_in_flight") == 0)

    pull()  # warm: every blob from the cache, the tag re-checked with one HEAD
    m2 = scrape(reg)
    assert metric(m2, "regmirror_blob_bytes_total", source="upstream") == total
    assert metric(m2, "regmirror_blob_bytes_total", source="cache") == total
    assert metric(m2, "regmirror_proxy_cache_requests_total", kind="blob",
                  result="hit") == len(img.blobs)
    assert metric(m2, "regmirror_proxy_cache_hit_ratio") == pytest.approx(
        (len(img.blobs) + 1) / (2 * (len(img.blobs) + 1)), abs=1e-4)
    # requests by route, method and status, with latency histograms
    assert metric(m2, "regmirror_http_requests_total", route="blob", method="GET",
                  code="200") == 2 * len(img.blobs)
    assert metric(m2, "regmirror_http_requests_total", route="manifest", method="GET",
                  code="200") == 2
    assert metric(m2, "regmirror_http_request_duration_seconds_count", route="blob",
                  method="GET") == 2 * len(img.blobs)
    assert metric(m2, "regmirror_http_request_duration_seconds_bucket", route="blob",
                  method="GET", le="+Inf") == 2 * len(img.blobs)
    assert metric(m2, "regmirror_storage_errors_total") == 0

    # an upstream 429 is counted
    upstream.proxy.fail(429, count=1, retry_after=3)
    r = reg.get("/v2/%s/manifests/%s" % (img.repo, "nope-429"), headers={"Accept": img.media_type})
    assert r.status_code == 429
    m3 = scrape(reg)
    assert metric(m3, "regmirror_upstream_rate_limited_total") == 1
    assert metric(m3, "regmirror_http_requests_total", route="manifest", code="429") == 1


def test_joined_waiters_counted(make_registry, upstream, seeded):
    reg = start(make_registry, name="mirror", extra=upstream.proxy_yaml(username="alice"))
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.throttle(40 * 1024 * 1024, count=1)  # keep the fetch running ~1 s
    results = []

    def one():
        conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=120)
        conn.request("GET", "/v2/%s/blobs/%s" % (img.repo, layer.digest))
        resp = conn.getresponse()
        results.append((resp.status, helpers.sha256(resp.read())))
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [(200, layer.digest)] * 4
    m = scrape(reg)
    assert metric(m, "regmirror_blob_bytes_total", source="upstream") == len(layer.data)
    assert metric(m, "regmirror_proxy_joined_waiters_total") + \
        metric(m, "regmirror_proxy_cache_requests_total", kind="blob", result="hit") == 3


def test_metrics_off_without_prometheus(make_registry):
    reg = start(make_registry, prometheus=False)
    assert requests.get(reg.debug + "/metrics", timeout=10).status_code == 404
    assert requests.get(reg.debug + "/debug/health", timeout=10).status_code == 200
