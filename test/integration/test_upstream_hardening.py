"""Pull-through hardening: what the mirror does with malformed or hostile upstream input
(?ns=, sizes it cannot read, token realms on other hosts) and with space it cannot use."""

import pytest

from helpers import assert_error

pytestmark = pytest.mark.regmirror_only("pull-through hardening is regmirror's behaviour")


@pytest.fixture
def mirror(make_registry, upstream):
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(
        username="alice",
        extra="  remotes:\n    - host: ghcr.example\n      remoteurl: %s\n" % upstream.url))


@pytest.mark.parametrize("ns", ["%00", "a" * 5000, "not/a/host", "a..b", "host:99999",
                                "ghcr.example%00"])
def test_malformed_ns_is_refused(mirror, upstream, seeded, ns):
    """A malformed ?ns= is 400 NAME_INVALID (an unknown host is 404 NAME_UNKNOWN); neither
    is served from the main upstream."""
    img = seeded.alpine
    d = next(iter(img.blobs))
    upstream.proxy.reset()
    for path in ("/v2/%s/manifests/%s" % (img.repo, img.tag), "/v2/%s/blobs/%s" % (img.repo, d)):
        for method in ("GET", "HEAD"):
            r = mirror.request(method, path + "?ns=" + ns)
            assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
            if method == "GET":
                assert_error(r, 400, "NAME_INVALID")
            r = mirror.request(method, path + "?ns=unknown.example")
            assert r.status_code == 404, (method, path, r.status_code)
    upstream.proxy.wait_idle()
    assert upstream.proxy.count() == 0
    # Well-formed ones still work.
    for ns in ("docker.io", "ghcr.example"):
        r = mirror.get("/v2/%s/manifests/%s?ns=%s" % (img.repo, img.tag, ns),
                       headers={"Accept": img.media_type})
        assert r.status_code == 200 and r.content == img.manifest, (ns, r.status_code)
