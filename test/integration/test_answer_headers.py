"""A blob's answer headers are the same wherever its bytes come from: the store, the spool of
an upstream fetch in flight, an upstream HEAD, or a HEAD/GET that links a blob stored for
another repository."""

import concurrent.futures
import copy
import http.client
import time

import pytest

from helpers import sha256, unique_repo

pytestmark = pytest.mark.regmirror_only("pull-through answers are regmirror's behaviour")

# Hop-by-hop or per-answer: everything else must match.
VOLATILE = {"date", "connection", "keep-alive"}


@pytest.fixture
def mirror(make_registry, upstream):
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice"))


def ask(reg, method, path, headers=None):
    """(status, headers without the volatile ones, body, complete) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        try:
            body, complete = resp.read(), True
        except http.client.IncompleteRead as e:
            body, complete = e.partial, False
        hdrs = {k.lower(): v for k, v in resp.getheaders() if k.lower() not in VOLATILE}
        return resp.status, hdrs, body, complete
    finally:
        conn.close()


def answer(reg, method, path, headers=None):
    status, hdrs, _, complete = ask(reg, method, path, headers)
    assert complete
    return status, hdrs


def test_same_headers_from_every_source(mirror, upstream, seeded):
    img = seeded.alpine
    layer = img.layers[1]
    d = layer.digest
    path = "/v2/%s/blobs/%s" % (img.repo, d)
    rng = {"Range": "bytes=100-199"}
    # The same blob in two more upstream repositories, for the linking HEAD and GET.
    copy_head, copy_get = unique_repo("answer-head"), unique_repo("answer-get")
    for repo in (copy_head, copy_get):
        twin = copy.copy(img)  # pushing names the image after the repository
        twin.tags = []
        upstream.push(repo, twin, ["1"])

    head_upstream = answer(mirror, "HEAD", path)
    upstream.proxy.reset()

    # In flight: the fetching GET and a Range GET joining it read the spool.
    upstream.proxy.throttle(256 * 1024)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(ask, mirror, "GET", path)
        time.sleep(0.3)
        assert not first.done(), "the Range GET must join the fetch in flight"
        # It ends with the fetch: no answer looks complete before the digest matched.
        status, range_inflight, body, complete = ask(mirror, "GET", path, rng)
        assert status == 206 and complete and body == layer.data[100:200]
        status, get_inflight, body, complete = first.result()
    assert status == 200 and complete and sha256(body) == d
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(d) == 1
    upstream.proxy.clear_faults()

    get_stored = answer(mirror, "GET", path)
    range_stored = answer(mirror, "GET", path, rng)
    head_stored = answer(mirror, "HEAD", path)
    head_linking = answer(mirror, "HEAD", "/v2/%s/blobs/%s" % (copy_head, d))
    get_linking = answer(mirror, "GET", "/v2/%s/blobs/%s" % (copy_get, d))
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(d) == 1

    whole = (200, get_inflight)
    assert get_stored == whole
    assert get_linking == whole
    assert (206, range_inflight) == range_stored
    assert head_upstream == whole
    assert head_stored == whole
    assert head_linking == whole
    assert get_inflight["content-length"] == str(layer.size)
    assert get_inflight["etag"] == '"%s"' % d
    assert get_inflight["cache-control"] == "max-age=31536000"
    assert range_inflight["content-range"] == "bytes 100-199/%d" % layer.size


def test_unsatisfiable_range_same_from_every_source(mirror, upstream, seeded):
    img = seeded.alpine
    layer = img.layers[0]
    path = "/v2/%s/blobs/%s" % (img.repo, layer.digest)
    rng = {"Range": "bytes=%d-" % (layer.size + 10)}
    head_upstream = answer(mirror, "HEAD", path, rng)
    fetched = answer(mirror, "GET", path, rng)
    upstream.proxy.wait_idle()
    stored = answer(mirror, "GET", path, rng)
    assert fetched[0] == 416
    assert fetched[1]["content-range"] == "bytes */%d" % layer.size
    assert stored == fetched
    assert head_upstream[0] == 416
    assert head_upstream[1]["content-range"] == fetched[1]["content-range"]
