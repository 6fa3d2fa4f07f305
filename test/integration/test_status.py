"""The status page on http.debug.addr: /status.json after a scripted mix of proxied and cached
pulls with one blob fetch held in flight, checked against /metrics and the upstream traffic the
counting proxy saw; no secret in /status or /status.json (proxy account, http.secret, a webhook's
header and URL credentials, the OSS key); and /status in headless Chromium (browser.py): the
figures it shows against /status.json and the counted traffic, the in-flight fetch, nothing
loaded from elsewhere with the network refused, no console errors, and a screenshot
(build/artifacts/status.png)."""

import json
import os
import re
import socket
import subprocess

import pytest
import requests

import browser
import helpers
from helpers import pull_image

pytestmark = pytest.mark.regmirror_only("the status page is regmirror's")

HTTP_SECRET = "http-secret-Vq93Lx"
HOOK_TOKEN = "hook-token-Jd72Pw"
HOOK_URL_PASSWORD = "hook-pw-Rt55Zk"
MAXSIZE = 3 * 1024 * 1024 * 1024
SCREENSHOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                          "build", "artifacts", "status.png"))
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


def test_status_upstream_errors(make_registry, upstream, seeded):
    """A 429 shows as the upstream's rate limit (its count, the error, the blocked budget); an
    upstream that cannot be reached shows as failing with the transport error."""
    reg = start(make_registry, upstream)
    img = seeded.multi
    upstream.proxy.fail(429, count=1, kinds=("manifest",), retry_after=30)
    assert helpers.pull_manifest(reg, img.repo, img.tag).status_code == 429
    u = status(reg)["upstreams"][0]
    assert u["rate_limited"] == 1 and u["health"] == "rate-limited"
    assert "429" in u["last_error"] and u["last_error_at"]
    assert u["budget"]["hold"] == "blocked" and 0 < u["budget"]["blocked_for_s"] <= 30
    assert u["failures"] == 0  # a 429 is counted as such

    port = helpers.free_port()
    dead = make_registry(name="dead", extra_yaml=(
        "  debug:\n    addr: 127.0.0.1:%d\nproxy:\n  remoteurl: http://127.0.0.1:%d\n"
        % (port, helpers.free_port())))
    dead.debug = "http://127.0.0.1:%d" % port
    assert status(dead)["upstreams"][0]["health"] == "unknown"
    assert helpers.pull_manifest(dead, img.repo, img.tag).status_code == 503
    u = status(dead)["upstreams"][0]
    assert u["health"] == "failing" and u["failures"] == 1 and u["last_answer"] is None
    assert "connect" in u["last_error"].lower(), u["last_error"]
    assert u["budget"] is None


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


# ---- the page in a browser ----

def human(n):
    """The page's byte format (status_page.html bytes())."""
    if n < 1024:
        return "%d B" % n
    v, units = n / 1024, ["KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return "%.1f %s" % (v, units[i])


def pct(r):
    return "\u2013" if r is None else "%.1f %%" % (r * 100)


SHOWN = """
const q = (k, root) => (root || document).querySelector('[data-k="' + k + '"]');
const out = {renders: Number(document.body.dataset.renders || 0), windows: {}};
for (const w of ["minute", "hour", "total"]) {
  const x = {};
  for (const k of ["requests", "hit_ratio", "blob_hit_ratio", "manifest_hit_ratio"])
    x[k] = q(w + "." + k).textContent;
  for (const k of ["bytes_cache", "bytes_upstream", "saved"])
    x[k] = [q(w + "." + k).textContent, q(w + "." + k).title];
  out.windows[w] = x;
}
const tr = document.querySelector('tr[data-digest="' + arguments[0] + '"]');
out.inflight = tr && {bytes: [q("inflight.bytes", tr).textContent, q("inflight.bytes", tr).title],
                      clients: q("inflight.clients", tr).textContent,
                      cells: Array.from(tr.cells).map(c => c.textContent)};
out.upstream = {health: q("upstream.health").textContent,
                token_fetches: q("upstream.token_fetches").textContent,
                rate_limited: q("upstream.rate_limited").textContent,
                budget: q("upstream.budget").textContent};
out.queue = q("queue.pending").textContent;
out.top = document.getElementById("top").textContent;
out.version = q("version").textContent;
out.error = document.getElementById("error").textContent;
out.links = Array.from(document.querySelectorAll("[src],[href],[srcset],[action]"))
  .map(e => e.getAttribute("src") || e.getAttribute("href") || e.getAttribute("srcset")
            || e.getAttribute("action"));
out.resources = performance.getEntriesByType("resource").map(e => e.name);
out.chart = document.querySelectorAll("#chart rect").length;
return out;
"""


def test_status_page_in_chromium(make_registry, upstream, seeded, tmp_path, summary_line):
    why = browser.available()
    if why:
        pytest.skip(why)
    reg = start(make_registry, upstream)
    img, layer, held = scripted(reg, upstream, seeded)
    sizes = sum(len(d) for d in img.blobs.values())
    try:
        with browser.Browser(tmp_path / "chromium") as b:
            b.get(reg.debug + "/status")
            assert b.wait("return document.body.dataset.renders"), "the page never drew"
            # The page's next render falls between two readings of /status.json.
            n = b.run("return Number(document.body.dataset.renders)")
            first = check_figures(reg, upstream, img, layer)
            assert b.wait("return Number(document.body.dataset.renders) > %d" % n, timeout=15)
            shown = b.run(SHOWN, layer.digest)
            last = status(reg)
            check_figures(reg, upstream, img, layer, st=last)
            path = b.screenshot(SCREENSHOT)
            console = b.console()
            # With the network refused, nothing but the loopback loads.
            with pytest.raises(RuntimeError, match="ERR_PROXY_CONNECTION_FAILED|ERR_NAME_NOT"):
                b.get("http://example.com/")
    finally:
        held.close()

    assert shown["error"] == "" and shown["version"] == last["version"]
    for w, x in shown["windows"].items():
        want = last["traffic"][w]
        assert x["requests"] == str(want["requests"])
        for k in ("hit_ratio", "blob_hit_ratio", "manifest_hit_ratio"):
            assert x[k] == pct(want[k]), (w, k)
        assert x["bytes_cache"] == [human(sizes), "%d bytes" % sizes]
        up = int(x["bytes_upstream"][1].split()[0])
        assert x["bytes_upstream"][0] == human(up)
        assert first["traffic"][w]["bytes_upstream"] <= up <= want["bytes_upstream"]
        assert x["saved"] == ["%s (%s)" % (human(sizes), pct(sizes / (sizes + up))),
                              "%d bytes" % sizes]

    f = shown["inflight"]
    assert f, "the in-flight fetch is not shown"
    got, size = [int(v) for v in re.match(r"^(\d+) of (\d+) bytes$", f["bytes"][1]).groups()]
    assert size == layer.size
    assert f["bytes"][0] == "%s of %s" % (human(got), human(size))
    held_first = [x for x in first["inflight"] if x["digest"] == layer.digest][0]
    held_last = [x for x in last["inflight"] if x["digest"] == layer.digest][0]
    assert held_first["bytes"] <= got <= held_last["bytes"]
    assert f["clients"] == "1" and "library/big" in f["cells"] and "streaming" in f["cells"]
    # What the page shows the upstream sent: the cold pull, as the proxy counted it, plus the
    # held fetch so far (one render, one reading).
    shown_up = int(shown["windows"]["total"]["bytes_upstream"][1].split()[0])
    assert shown_up - got == counted_blob_bytes(upstream, set(img.blobs)) == sizes

    u = last["upstreams"][0]
    assert shown["upstream"]["health"] == "ok"
    assert shown["upstream"]["token_fetches"] == str(u["token_fetches"])
    assert shown["upstream"]["rate_limited"] == "0"
    assert shown["upstream"]["budget"].startswith("%d of 100 left" % u["budget"]["remaining"])
    assert int(shown["queue"]) >= 1
    assert img.repo in shown["top"]
    assert shown["chart"] >= 1

    # Nothing external: every link in the DOM is local or data:, every resource the page
    # loaded came from the debug listener, and the console stayed clean.
    for link in shown["links"]:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:)?//", link, re.I), link
    assert shown["resources"] and all(r.startswith(reg.debug + "/") for r in shown["resources"])
    bad = [m for m in console if m.get("level") in ("SEVERE", "WARNING")]
    assert not bad, bad

    assert os.path.getsize(path) > 10000
    print("status page screenshot: %s" % path)
    total = last["traffic"]["total"]
    summary_line("status page screenshot: %s" % path)
    summary_line("status page showed: hit ratio %s (blobs %s, manifests %s), from cache %s, "
                 "from upstream %s bytes, in flight %s of %s bytes to %s client(s)"
                 % (shown["windows"]["total"]["hit_ratio"],
                    shown["windows"]["total"]["blob_hit_ratio"],
                    shown["windows"]["total"]["manifest_hit_ratio"],
                    shown["windows"]["total"]["bytes_cache"][1], shown_up, got, size,
                    f["clients"]))
    summary_line("counted: %d blob hits, %d blob misses (upstream blob GETs %d), %d manifest "
                 "hits, %d misses; cold pull %d bytes sent by the upstream, held fetch at %d..%d "
                 "bytes" % (total["blob_hits"], total["blob_misses"], upstream.proxy.blob_gets(),
                            total["manifest_hits"], total["manifest_misses"],
                            counted_blob_bytes(upstream, set(img.blobs)), held_first["bytes"],
                            counted_blob_bytes(upstream, {layer.digest})))
