"""The status page on http.debug.addr: /status.json after a scripted mix of proxied and cached
pulls with one blob fetch held in flight, checked against /metrics and the upstream traffic the
counting proxy saw; no secret in /status or /status.json (proxy account, http.secret, a webhook's
header and URL credentials, the OSS key)."""

import json
import socket
import subprocess

import pytest
import requests

import helpers
from helpers import pull_image

pytestmark = pytest.mark.regmirror_only("the status page is regmirror's")

HTTP_SECRET = "http-secret-Vq93Lx"
HOOK_TOKEN = "hook-token-Jd72Pw"
HOOK_URL_PASSWORD = "hook-pw-Rt55Zk"
MAXSIZE = 3 * 1024 * 1024 * 1024
# The in-flight fetch: slow enough to stay in flight for the whole test.
HELD_RATE = 128 * 1024


def start(make_registry, upstream, name="mirror", **kw):
    """A mirror with the debug listener, the upstream account, http.secret and a webhook
    endpoint that nothing answers (its queue stays pending)."""
    port = helpers.free_port()
    hook = helpers.free_port()
    extra = ("  secret: %s\n  debug:\n    addr: 127.0.0.1:%d\n    prometheus:\n"
             "      enabled: true\n      path: /metrics\n" % (HTTP_SECRET, port)
             + upstream.proxy_yaml(username="alice", extra="  maxsize: %d\n" % MAXSIZE)
             + "notifications:\n  endpoints:\n"
             "    - name: hook\n      url: http://hook:%s@127.0.0.1:%d/events\n"
             "      timeout: 1s\n      threshold: 1\n      backoff: 30s\n"
             "      headers:\n        Authorization: [Bearer %s]\n"
             % (HOOK_URL_PASSWORD, hook, HOOK_TOKEN))
    reg = make_registry(name=name, extra_yaml=extra, **kw)
    reg.debug = "http://127.0.0.1:%d" % port
    return reg


def status(reg):
    r = requests.get(reg.debug + "/status.json", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


def metric_samples(reg):
    out = {}
    for line in requests.get(reg.debug + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def hold_fetch(reg, repo, digest):
    """Starts a blob GET and never reads its answer: the mirror's upstream fetch goes on at the
    upstream's pace while the client's answer waits. Returns the socket (close it)."""
    s = socket.create_connection(("127.0.0.1", reg.port), timeout=10)
    s.sendall(("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: mirror\r\n\r\n" % (repo, digest)).encode())
    return s


def scripted(reg, upstream, seeded):
    """Pulls alpine cold then cached, and holds a fetch of the big layer in flight. Returns
    (alpine, the big layer, the held socket)."""
    upstream.proxy.hub_ratelimit(100, 90, heads=True)
    img = seeded.alpine
    pull_image(reg, img)
    pull_image(reg, img)
    upstream.proxy.wait_idle()
    layer = seeded.big.layers[0]
    upstream.proxy.throttle(HELD_RATE, path=layer.digest)
    held = hold_fetch(reg, seeded.big.repo, layer.digest)
    helpers.wait_until(lambda: any(f["bytes"] > 0 for f in status(reg)["inflight"]), timeout=20)
    return img, layer, held


def counted_blob_bytes(upstream, digests):
    return sum(r["bytes"] for r in upstream.proxy.records(method="GET", kind="blob")
               if r["ref"] in digests and r["status"] == 200)


def check_figures(reg, upstream, img, layer, st=None):
    """The figures of one /status.json against what the script did, /metrics and the counting
    proxy. Returns the answer."""
    before = counted_blob_bytes(upstream, {layer.digest})
    st = st or status(reg)
    after = counted_blob_bytes(upstream, {layer.digest})
    sizes = sum(len(d) for d in img.blobs.values())
    nblobs = len(img.blobs)

    total = st["traffic"]["total"]
    # A daemon younger than a minute: the windows hold everything since start.
    assert st["uptime_s"] < 60
    assert st["traffic"]["minute"] == total
    assert st["traffic"]["hour"] == total
    # Cold: every blob a miss; cached: every blob a hit; the held fetch one miss more.
    assert total["blob_hits"] == nblobs
    assert total["blob_misses"] == nblobs + 1
    assert total["blob_misses"] == upstream.proxy.blob_gets()
    assert total["manifest_hits"] + total["manifest_misses"] == 4
    assert total["manifest_misses"] >= 1
    m = metric_samples(reg)
    for kind in ("blob", "manifest"):
        for res, key in (("hit", "hits"), ("miss", "misses")):
            assert m['regmirror_proxy_cache_requests_total{kind="%s",result="%s"}'
                     % (kind, res)] == total["%s_%s" % (kind, key)]
    hits = total["blob_hits"] + total["manifest_hits"]
    assert total["hit_ratio"] == pytest.approx(
        hits / (hits + total["blob_misses"] + total["manifest_misses"]))
    assert total["blob_hit_ratio"] == pytest.approx(nblobs / (2 * nblobs + 1))

    # Bytes: the cached pull came from the store; the upstream sent the cold pull's bytes
    # (as the counting proxy counted them) and what the held fetch has received so far.
    assert total["bytes_cache"] == sizes
    assert total["saved_bytes"] == sizes
    held = [f for f in st["inflight"] if f["digest"] == layer.digest]
    assert len(held) == 1, st["inflight"]
    f = held[0]
    assert total["bytes_upstream"] - f["bytes"] == sizes
    assert counted_blob_bytes(upstream, set(img.blobs)) == sizes
    assert f["repository"] == "library/big" and f["upstream"] == "docker.io"
    assert f["size"] == layer.size and 0 < f["bytes"] < layer.size
    assert f["state"] == "streaming" and f["clients"] == 1
    # The mirror has received at most what the proxy sent, and (up to what is on the wire)
    # at least what it had sent before.
    assert before - 4 * 1024 * 1024 <= f["bytes"] <= after

    up = st["upstreams"]
    assert [u["name"] for u in up] == ["docker.io"]
    u = up[0]
    assert u["origin"] == upstream.url
    assert u["health"] == "ok" and u["last_error"] is None
    assert u["token_fetches"] >= 1
    assert u["token_fetches"] == m["regmirror_upstream_token_fetches_total"]
    assert u["rate_limited"] == 0
    assert u["requests"] == m["regmirror_upstream_requests_total"]
    b = u["budget"]
    assert b["limit"] == 100 and b["remaining"] == m[
        'regmirror_upstream_ratelimit_remaining{upstream="docker.io"}']
    assert b["window_s"] == 21600 and b["hold"] == "open" and b["source"] == "127.0.0.1"

    assert st["storage"]["maxsize"] == MAXSIZE == m["regmirror_proxy_maxsize_bytes"]
    assert st["storage"]["driver"] in ("filesystem", "oss")
    assert isinstance(st["storage"]["stored_bytes"], int)
    assert st["storage"]["evictions"] == 0
    # Pulls are manifest GETs: two of alpine by digest (the tags were HEADs).
    assert st["top_repositories"] == [{"name": img.repo, "pulls": 2}]
    q = st["notifications"]
    assert [e["endpoint"] for e in q] == ["hook"]
    assert q[0]["pending"] >= 1 and q[0]["sent"] == 0

    assert len(st["history"]["hits"]) == 60
    assert st["history"]["hits"][-1] == hits
    assert st["history"]["bytes_cache"][-1] == sizes
    return st


def assert_no_secret(text):
    for secret in (HTTP_SECRET, HOOK_TOKEN, HOOK_URL_PASSWORD, "wonderland", "alice",
                   helpers.OssStore.SK, "Bearer", "eyJ"):
        assert secret not in text, secret


def test_status_json(make_registry, upstream, seeded):
    reg = start(make_registry, upstream)
    version = subprocess.run([reg.binary, "version"], capture_output=True, text=True,
                             timeout=10).stdout.split()[1]
    empty = status(reg)
    assert empty["version"] == version and empty["proxy"] is True
    assert empty["traffic"]["total"]["hit_ratio"] is None
    assert empty["inflight"] == [] and empty["top_repositories"] == []
    img, layer, held = scripted(reg, upstream, seeded)
    try:
        check_figures(reg, upstream, img, layer)
        r = requests.get(reg.debug + "/status.json", timeout=10)
        assert r.headers["Cache-Control"] == "no-store"
        assert_no_secret(r.text)
        page = requests.get(reg.debug + "/status", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert_no_secret(page.text)
        assert requests.head(reg.debug + "/status", timeout=10).status_code == 200
        assert requests.post(reg.debug + "/status.json", timeout=10).status_code == 405
        # the registry listener does not serve it
        assert requests.get(reg.url("/status.json"), timeout=10).status_code == 404
    finally:
        held.close()


def test_status_hides_the_oss_key(make_registry, upstream, seeded, tmp_path):
    """With storage.oss, the access key secret shows in neither answer."""
    own = None
    try:
        helpers.oss_store()
    except RuntimeError:
        own = helpers.OssStore(tmp_path / "oss")
        helpers.set_oss_store(own)
    try:
        reg = start(make_registry, upstream, name="oss-mirror", storage="oss")
        pull_image(reg, seeded.alpine)
        st = requests.get(reg.debug + "/status.json", timeout=10)
        assert st.status_code == 200 and json.loads(st.text)["storage"]["driver"] == "oss"
        assert_no_secret(st.text)
        assert_no_secret(requests.get(reg.debug + "/status", timeout=10).text)
        reg.stop()
    finally:
        if own:
            helpers.set_oss_store(None)
            own.stop()
