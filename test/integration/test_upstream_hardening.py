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


@pytest.mark.parametrize("value,status", [
    # Read by libcurl, refused by the mirror: 502.
    ("12abc", 502), ("9223372036854775808", 502), ("99999999999999999999999", 502),
    # Refused by libcurl as a malformed reply: a broken transfer, retried, then 503.
    ("abc", 503), ("-1", 503), ("", 503),
])
def test_unreadable_blob_size_is_refused(mirror, upstream, seeded, value, status):
    """A blob HEAD or GET whose upstream Content-Length cannot be read (not a number,
    negative, above INT64_MAX) gets an error with an OCI body, never an invented size;
    nothing is stored and a clean fetch afterwards works."""
    img = seeded.alpine
    d, data = next(iter(img.blobs.items()))
    path = "/v2/%s/blobs/%s" % (img.repo, d)
    upstream.proxy.bad_length(value, method="HEAD", count=None)
    r = mirror.head(path)
    assert r.status_code == status, (r.status_code, dict(r.headers))
    assert r.headers.get("Content-Length") != "0"
    upstream.proxy.bad_length(value, method="GET", count=None)
    r = mirror.get(path)
    assert_error(r, status, "UNKNOWN" if status == 502 else "UNAVAILABLE")
    upstream.proxy.clear_faults()
    r = mirror.head(path)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
    r = mirror.get(path)
    assert r.status_code == 200 and r.content == data
