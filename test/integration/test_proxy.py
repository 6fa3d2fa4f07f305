"""Pull-through cache: a regmirror with a proxy section in front of the test upstream
(docker-registry with token auth behind a counting, fault-injecting proxy)."""

import concurrent.futures
import os
import time

import pytest

import upstream as U

from helpers import (API_VERSION_HEADER, assert_error, blob_files, herd_get, make_image,
                     pull_image, pull_manifest, push_image, raw_get, snapshot)

pytestmark = pytest.mark.regmirror_only("pull-through with local pushes and counted upstream "
                                        "traffic is regmirror's behaviour")


@pytest.fixture
def mirror(make_registry, upstream):
    """A fresh (cold) regmirror pulling through from the upstream, with the upstream account."""
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice"))


@pytest.fixture
def pushing_mirror(make_registry, upstream):
    """The same, accepting pushes (proxy.push)."""
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice",
                                                                       extra="  push: true\n"))


def test_pull_then_cached(mirror, upstream, seeded):
    img = seeded.alpine
    pull_image(mirror, img)
    upstream.proxy.wait_idle()
    for d in img.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d
    stored = blob_files(mirror.rootdir)
    for d, data in img.blobs.items():
        assert stored.get(d) == len(data)
    upstream.proxy.reset()
    pull_image(mirror, img)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0
    # The tag is re-checked with exactly one HEAD and nothing else.
    assert upstream.proxy.count(kind="manifest", method="HEAD") == 1
    assert upstream.proxy.count(kind="manifest", method="GET") == 0


def test_tag_freshness_skips_the_check(make_registry, upstream, seeded):
    reg = make_registry(name="fresh", extra_yaml=upstream.proxy_yaml(extra="  tagfreshness: 1h\n"))
    img = seeded.alpine
    assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    upstream.proxy.reset()
    for _ in range(3):
        assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest") == 0


def test_fresh_tag_follows_local_writes(make_registry, upstream, seeded):
    # A fresh proxied tag is answered from memory for a few seconds; a push or a delete of
    # the tag here is seen by the very next request.
    reg = make_registry(name="fresh-local", extra_yaml=upstream.proxy_yaml(
        extra="  tagfreshness: 1h\n  push: true\n  shadow: true\n"))
    img = seeded.alpine
    for _ in range(3):
        assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    local = make_image()
    push_image(reg, img.repo, local, img.tag)
    assert pull_manifest(reg, img.repo, img.tag).content == local.manifest
    r = reg.delete("/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status_code == 202, r.text
    assert pull_manifest(reg, img.repo, img.tag).content == img.manifest


def test_multi_arch(mirror, upstream, seeded):
    for idx in (seeded.multi, seeded.multi_oci):
        r = pull_manifest(mirror, idx.repo, idx.tag)
        assert r.status_code == 200
        assert r.content == idx.manifest
        assert r.headers["Content-Type"] == idx.media_type
        child = idx.child("arm", "v7")
        r = pull_manifest(mirror, idx.repo, child.digest)
        assert r.content == child.manifest
        for d, data in child.blobs.items():
            status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (idx.repo, d))
            assert status == 200 and complete and body == data


def test_private_image_with_mirror_credentials(mirror, make_registry, upstream, seeded):
    img = seeded.secret
    pull_image(mirror, img)
    anon = make_registry(name="anon", extra_yaml=upstream.proxy_yaml())
    assert_error(pull_manifest(anon, img.repo, img.tag), 404, "MANIFEST_UNKNOWN")


def test_unknown_upstream_names(mirror, upstream):
    assert_error(pull_manifest(mirror, "library/nope", "1"), 404, "MANIFEST_UNKNOWN")
    missing = "sha256:" + "0" * 64
    r = mirror.session.get(mirror.url("/v2/library/alpine/blobs/" + missing), timeout=30)
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_herd_one_upstream_fetch(mirror, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    upstream.proxy.reset()
    upstream.proxy.throttle(40 * 1024 * 1024)  # long enough for every client to join

    results = herd_get(mirror, img.repo, layer.digest, 16)
    upstream.proxy.wait_idle()
    for status, n, d in results:
        assert status == 200 and n == layer.size and d == layer.digest
    assert upstream.proxy.blob_gets(layer.digest) == 1


def test_head_uncached_blob_fetches_no_body(mirror, upstream, seeded):
    layer = seeded.big.layers[0]
    r = mirror.session.head(mirror.url("/v2/%s/blobs/%s" % (seeded.big.repo, layer.digest)),
                            timeout=30)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == layer.size
    assert r.headers["Docker-Content-Digest"] == layer.digest
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(layer.digest) == 0
    assert upstream.proxy.count(kind="blob", method="HEAD") >= 1


def test_range_on_uncached_blob(mirror, upstream, seeded):
    layer = seeded.alpine.layers[0]
    status, headers, body, complete = raw_get(
        mirror, "/v2/%s/blobs/%s" % (seeded.alpine.repo, layer.digest),
        headers={"Range": "bytes=100-199"})
    assert status == 206 and complete
    assert body == layer.data[100:200]
    assert headers["Content-Range"] == "bytes 100-199/%d" % layer.size


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_bad_upstream_bytes_never_cached(mirror, upstream, seeded, fault):
    img = seeded.alpine
    layer = img.layers[1]
    # The manifest first: the mirror then holds a token, so the fault hits the blob itself.
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    if fault == "cut":
        upstream.proxy.cut_after(layer.size // 2)
    else:
        upstream.proxy.corrupt(offset=layer.size - 10)
    status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    # Never a complete-looking 200 with the wrong bytes.
    assert not (status == 200 and complete and body != layer.data)
    assert not complete or status != 200
    assert layer.digest not in blob_files(mirror.rootdir)
    upstream.proxy.clear_faults()
    status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert status == 200 and complete and body == layer.data
    assert blob_files(mirror.rootdir).get(layer.digest) == layer.size


def test_upstream_down_serves_cache(mirror, upstream, seeded):
    img = seeded.alpine
    pull_image(mirror, img)
    upstream.proxy.down()
    try:
        pull_image(mirror, img)
        assert_error(pull_manifest(mirror, "library/other", "1"), 503, "UNAVAILABLE")
    finally:
        upstream.proxy.up()


def test_token_server_down(mirror, upstream, seeded):
    img = seeded.alpine
    pull_image(mirror, img)
    upstream.token.stop()
    pull_image(mirror, img)  # served from the cache; the tag check fails over to it
    r = pull_manifest(mirror, seeded.multi.repo, seeded.multi.tag)
    # A keep-alive connection to the stopped token server may still answer; either the right
    # manifest or a clean error (the token request failed: 503 UNAVAILABLE).
    if r.status_code == 200:
        assert r.content == seeded.multi.manifest
    else:
        assert_error(r, 503, "UNAVAILABLE")
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"


def test_429_passed_on_with_retry_after(mirror, upstream, seeded):
    upstream.proxy.fail(429, count=5, retry_after=17)
    r = pull_manifest(mirror, seeded.alpine.repo, seeded.alpine.tag)
    assert_error(r, 429, "TOOMANYREQUESTS")
    assert r.headers.get("Retry-After") == "17"


def test_500_retried(mirror, upstream, seeded):
    upstream.proxy.fail(500, count=2)
    pull_image(mirror, seeded.alpine)


def test_local_push_next_to_proxied(pushing_mirror, upstream, seeded):
    # A push works in proxy mode (proxy.push), and a locally pushed tag is never replaced by the
    # upstream's. This mirror never pulled the tag, so the push needs no proxy.shadow.
    mirror = pushing_mirror
    img = make_image()
    push_image(mirror, seeded.alpine.repo, img, seeded.alpine.tag)
    for _ in range(2):
        r = pull_manifest(mirror, seeded.alpine.repo, seeded.alpine.tag)
        assert r.content == img.manifest
    push_image(mirror, "local/only", img, "v1")
    assert pull_manifest(mirror, "local/only", "v1").content == img.manifest
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest", ref=seeded.alpine.tag) == 0


def test_tag_moved_upstream(mirror, upstream, seeded):
    repo = "library/moving"
    first = U.build_image([[("/v", os.urandom(2048), 0o644)]], label="first")
    upstream.push(repo, first, ["v"])
    assert pull_manifest(mirror, repo, "v").content == first.manifest
    second = U.build_image([[("/v", os.urandom(4096), 0o644)]], label="second")
    upstream.push(repo, second, ["v"])
    upstream.proxy.reset()
    assert pull_manifest(mirror, repo, "v").content == second.manifest
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest", method="HEAD") == 1
    assert upstream.proxy.count(kind="manifest", method="GET") == 1


def test_concurrent_tag_checks_share_one_request(mirror, upstream, seeded):
    img = seeded.alpine
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    upstream.proxy.reset()
    upstream.proxy.stall(0.5, kinds=["manifest"], count=1)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: pull_manifest(mirror, img.repo, img.tag), range(8)))
    assert all(r.content == img.manifest for r in rs)
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest") == 1


def test_catalog_lists_cached(mirror, upstream, seeded):
    pull_image(mirror, seeded.alpine)
    r = mirror.session.get(mirror.url("/v2/_catalog"), timeout=30)
    assert seeded.alpine.repo in r.json()["repositories"]
    r = mirror.session.get(mirror.url("/v2/%s/tags/list" % seeded.alpine.repo), timeout=30)
    assert seeded.alpine.tag in r.json()["tags"]


def test_no_partial_files_after_faults(mirror, upstream, seeded):
    assert pull_manifest(mirror, seeded.alpine.repo, seeded.alpine.tag).status_code == 200
    upstream.proxy.cut_after(1000, count=3)
    for layer in seeded.alpine.layers:
        raw_get(mirror, "/v2/%s/blobs/%s" % (seeded.alpine.repo, layer.digest))
    time.sleep(0.2)
    for path in snapshot(mirror.rootdir):
        assert "/_uploads/" not in path, path


def test_pull_records_for_ttl(pushing_mirror, upstream, seeded):
    """Proxied content gets a pull record (proxy.ttl expiry reads its mtime); local content
    never does."""
    mirror = pushing_mirror
    img = seeded.alpine
    pull_image(mirror, img)
    base = os.path.join(mirror.rootdir, "docker/registry/v2/repositories", img.repo,
                        "_proxy/pulled/sha256")
    recorded = set("sha256:" + n for n in os.listdir(base))
    assert set(img.blobs) | {img.digest} <= recorded
    local = make_image()
    push_image(mirror, "local/thing", local, "v1")
    assert pull_manifest(mirror, "local/thing", "v1").status_code == 200
    assert not os.path.exists(os.path.join(mirror.rootdir, "docker/registry/v2/repositories",
                                           "local/thing", "_proxy"))


def test_expiring_tokens_are_renewed(mirror, upstream, seeded):
    """Tokens that expire (lifetime 2 s, as the token server says in expires_in) are fetched
    again; no pull fails on a stale token."""
    upstream.token.configure(lifetime=2)
    img = seeded.alpine
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    issued = upstream.token.stats()["issued"]
    time.sleep(3)
    pull_image(mirror, img)
    assert upstream.token.stats()["issued"] > issued
