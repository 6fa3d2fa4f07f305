"""Range requests on a blob the mirror does not hold yet: the one full upstream download starts
as for a GET, and a Range beyond what it has is answered at once by a ranged upstream request
of its own (lazy-pulling snapshotters read a layer's table of contents from its end first)."""

import concurrent.futures
import time

import pytest

from helpers import raw_get, wait_until

pytestmark = pytest.mark.regmirror_only("ranged side fetches of a pull-through cache are "
                                        "regmirror's behaviour")

MB = 1024 * 1024


@pytest.fixture
def mirror(make_registry, upstream):
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice"))


def blob_path(img, layer):
    return "/v2/%s/blobs/%s" % (img.repo, layer.digest)


def blob_gets(upstream, layer, ranged):
    """The upstream's blob GETs of layer that it answered (not the token challenges): the
    full ones (ranged=False) or the ranged ones."""
    return [r for r in upstream.proxy.records(method="GET", kind="blob", ref=layer.digest)
            if (r["range"] is not None) == ranged and r["status"] != 401]


def test_range_at_the_end_of_a_cold_blob_comes_at_once(mirror, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    rate = 10 * MB
    # The full download takes size / rate (5 s for the 50 MB layer); the range does not.
    upstream.proxy.throttle(rate, ranged=False)
    t0 = time.monotonic()
    status, headers, body, complete = raw_get(mirror, blob_path(img, layer),
                                              headers={"Range": "bytes=-%d" % MB})
    took = time.monotonic() - t0
    full_s = layer.size / rate
    print("last 1 MB of a cold %d-byte blob: %.3f s (the full download: %.1f s)"
          % (layer.size, took, full_s))
    assert status == 206 and complete
    assert headers["Content-Range"] == "bytes %d-%d/%d" % (layer.size - MB, layer.size - 1,
                                                           layer.size)
    assert body == layer.data[-MB:]
    assert took < 2.0 < full_s
    # The full download goes on and is stored; it was the one full GET, plus the one range.
    # The full download goes on after the Range's answer; between its token challenge and
    # its retry the upstream may look idle, so wait for the GET itself.
    wait_until(lambda: len(blob_gets(upstream, layer, ranged=False)) == 1, timeout=60)
    assert upstream.proxy.wait_idle(timeout=60)
    assert len(blob_gets(upstream, layer, ranged=False)) == 1
    assert [r["range"] for r in blob_gets(upstream, layer, ranged=True)] == ["bytes=-%d" % MB]
    upstream.proxy.clear_faults()
    # Once stored, a Range is answered from the store with no upstream request.
    deadline = time.monotonic() + 30
    while True:
        upstream.proxy.reset()
        status, headers, body, complete = raw_get(mirror, blob_path(img, layer),
                                                  headers={"Range": "bytes=1000-2999"})
        assert status == 206 and complete and body == layer.data[1000:3000]
        upstream.proxy.wait_idle()
        if upstream.proxy.count() == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert upstream.proxy.count() == 0


def test_scattered_ranges_of_a_cold_blob(mirror, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.throttle(10 * MB, ranged=False)
    step = layer.size // 10
    ranges = [(i * step + 12345, i * step + 12345 + 64 * 1024 - 1) for i in range(10)]
    ranges[-1] = (layer.size - 100, layer.size - 1)

    def get(rg):
        t0 = time.monotonic()
        got = raw_get(mirror, blob_path(img, layer), headers={"Range": "bytes=%d-%d" % rg})
        return got, time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
        results = list(pool.map(get, ranges))
    for (a, b), ((status, headers, body, complete), took) in zip(ranges, results):
        assert status == 206 and complete, (a, b, status)
        assert headers["Content-Range"] == "bytes %d-%d/%d" % (a, b, layer.size)
        assert body == layer.data[a:b + 1], (a, b)
    print("10 scattered ranges of a cold blob: %s s"
          % ", ".join("%.2f" % took for _, took in results))
    # None waits for the full download (5 s): not even the one it brings first.
    assert max(took for _, took in results) < 2.5
    # The full download goes on after the Range's answer; between its token challenge and
    # its retry the upstream may look idle, so wait for the GET itself.
    wait_until(lambda: len(blob_gets(upstream, layer, ranged=False)) == 1, timeout=60)
    assert upstream.proxy.wait_idle(timeout=60)
    assert len(blob_gets(upstream, layer, ranged=False)) == 1
    asked = ["bytes=%d-%d" % rg for rg in ranges]
    side = [r["range"] for r in blob_gets(upstream, layer, ranged=True)]
    print("upstream blob GETs: 1 full, %d ranged" % len(side))
    assert len(side) == len(set(side)) and set(side) <= set(asked)
    # The first range lies in the download's first 8 MiB: it waits for the download.
    assert asked[0] not in side


def test_range_refused_upstream_waits_for_the_download(mirror, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.fail(404, ranged=True, method="GET", kinds="blob")
    a, b = layer.size - 5000, layer.size - 1
    status, headers, body, complete = raw_get(mirror, blob_path(img, layer),
                                              headers={"Range": "bytes=%d-%d" % (a, b)})
    assert status == 206 and complete and body == layer.data[a:]
    assert headers["Content-Range"] == "bytes %d-%d/%d" % (a, b, layer.size)
    assert upstream.proxy.wait_idle(timeout=60)
    assert len(blob_gets(upstream, layer, ranged=True)) == 1
    assert len(blob_gets(upstream, layer, ranged=False)) == 1


def test_several_ranges_get_the_whole_blob(mirror, upstream, seeded):
    layer = seeded.alpine.layers[0]
    status, headers, body, complete = raw_get(mirror, blob_path(seeded.alpine, layer),
                                              headers={"Range": "bytes=0-9,100-199"})
    assert status == 200 and complete and body == layer.data
    assert "Content-Range" not in headers
    assert upstream.proxy.wait_idle()
    assert len(blob_gets(upstream, layer, ranged=True)) == 0
