"""Writes to a pull-through cache (mirror/writepolicy.h): a proxy config is a read-only cache
as registry:2's unless proxy.push is on; proxy.pushusers limits who pushes; the namespaces
of proxy.remotes hosts are never written; a push over a tag pulled from the upstream needs
proxy.shadow."""

import pytest

from helpers import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, assert_error,
                     error_codes, make_image, push_image, put_manifest, sha256, snapshot,
                     snapshot_diff, upload_blob)
from tlsutil import auth_yaml, write_htpasswd

ACCEPT_ALL = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

pytestmark = pytest.mark.regmirror_only("proxy.push, proxy.pushusers and proxy.shadow are "
                                        "regmirror keys")


def get_manifest(reg, repo, ref, method="GET", query=""):
    return reg.session.request(method, reg.url("/v2/%s/manifests/%s%s" % (repo, ref, query)),
                               headers={"Accept": ACCEPT_ALL}, timeout=60)


def writes(repo, img):
    """(label, method, path, body, headers) of every kind of write a client can send."""
    blob = sha256(b"x")
    return [
        ("manifest PUT by tag", "PUT", "/v2/%s/manifests/v1" % repo, img.manifest,
         {"Content-Type": img.media_type}),
        ("manifest PUT by digest", "PUT", "/v2/%s/manifests/%s" % (repo, img.digest),
         img.manifest, {"Content-Type": img.media_type}),
        ("upload POST", "POST", "/v2/%s/blobs/uploads/" % repo, b"", {}),
        ("monolithic POST", "POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, blob), b"x",
         {"Content-Type": "application/octet-stream"}),
        ("cross-repository mount", "POST",
         "/v2/%s/blobs/uploads/?mount=%s&from=library/alpine" % (repo, blob), b"", {}),
        ("manifest DELETE by tag", "DELETE", "/v2/%s/manifests/v1" % repo, None, {}),
        ("manifest DELETE by digest", "DELETE", "/v2/%s/manifests/%s" % (repo, img.digest), None,
         {}),
        ("blob DELETE", "DELETE", "/v2/%s/blobs/%s" % (repo, blob), None, {}),
    ]


def send(reg, write):
    _, method, path, body, headers = write
    return reg.request(method, path, data=body, headers=headers)


# registry:2 answers these for an upload id it never issued (404 BLOB_UPLOAD_INVALID: no session
# can exist in proxy mode); regmirror refuses the method itself, as for every other write.
UPLOAD_WRITES = [("PATCH", b"x"), ("PUT", b"x"), ("DELETE", None)]


def test_proxy_without_push_is_a_read_only_cache(make_registry, upstream, seeded):
    mirror = make_registry(name="ro", extra_yaml=upstream.proxy_yaml())
    img = seeded.alpine
    assert get_manifest(mirror, img.repo, img.tag).status_code == 200
    before = snapshot(mirror.rootdir)
    local = make_image()
    for repo in (img.repo, "org/app"):
        for w in writes(repo, local):
            assert_error(send(mirror, w), 405, "UNSUPPORTED")
        for method, body in UPLOAD_WRITES:
            r = mirror.request(method, "/v2/%s/blobs/uploads/0123-abcd?digest=%s" %
                               (repo, sha256(b"x")), data=body)
            assert_error(r, 405, "UNSUPPORTED")
    assert snapshot_diff(before, snapshot(mirror.rootdir)) == {
        "added": [], "removed": [], "changed": []}
    r = get_manifest(mirror, img.repo, img.tag)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == img.digest
    assert "proxy.push: true" in mirror.log_tail(100000)


def test_read_only_answers_match_registry2_in_proxy_mode(make_registry, upstream, seeded):
    mirror = make_registry(name="ro-mirror", extra_yaml=upstream.proxy_yaml())
    ref = make_registry(kind="docker-registry", name="ro-reference",
                        extra_yaml=upstream.proxy_yaml())
    local = make_image()
    for w in writes("org/app", local) + writes(seeded.alpine.repo, local):
        want, got = send(ref, w), send(mirror, w)
        assert (got.status_code, error_codes(got)) == (want.status_code, error_codes(want)), w[0]
        assert want.status_code == 405, w[0]


def test_remote_namespaces_are_never_written(make_registry, upstream, seeded):
    host_port = upstream.host  # 127.0.0.1:<port>: cached under 127.0.0.1-<port>/
    extra = ("  push: true\n  shadow: true\n  remotes:\n"
             "    - host: ghcr.io\n      remoteurl: %s\n"
             "    - host: %s\n      remoteurl: %s\n" % (upstream.url, host_port, upstream.url))
    mirror = make_registry(name="ns", extra_yaml=upstream.proxy_yaml(extra=extra))
    img = seeded.alpine
    for ns, prefix in (("ghcr.io", "ghcr.io"), (host_port, host_port.replace(":", "-"))):
        r = get_manifest(mirror, img.repo, img.tag, query="?ns=" + ns)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == img.digest
        before = snapshot(mirror.rootdir)
        local = make_image()
        for repo in ("%s/%s" % (prefix, img.repo), "%s/org/app" % prefix):
            for w in writes(repo, local):
                assert_error(send(mirror, w), 403, "DENIED")
        assert snapshot_diff(before, snapshot(mirror.rootdir)) == {
            "added": [], "removed": [], "changed": []}
        r = get_manifest(mirror, img.repo, img.tag, query="?ns=" + ns)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == img.digest
        assert r.content == img.manifest
    # The same names without a remote's prefix are the main upstream's and take pushes.
    push_image(mirror, "org/app", make_image(), "v1")


def test_push_true_without_auth_accepts_pushes(make_registry, upstream, tmp_path):
    root = tmp_path / "store"
    mirror = make_registry(name="open", rootdir=root,
                           extra_yaml=upstream.proxy_yaml(extra="  push: true\n"))
    assert "anyone who can reach this mirror can push" in mirror.log_tail(100000)
    local = make_image()
    push_image(mirror, "org/app", local, "v1")
    r = get_manifest(mirror, "org/app", "v1")
    assert r.status_code == 200 and r.content == local.manifest
    mirror.stop()
    # Local tags already in a store are served whatever the push policy.
    ro = make_registry(name="open-ro", rootdir=root, extra_yaml=upstream.proxy_yaml())
    r = get_manifest(ro, "org/app", "v1")
    assert r.status_code == 200 and r.content == local.manifest
    assert_error(ro.delete("/v2/org/app/manifests/v1"), 405, "UNSUPPORTED")


def test_pushusers_limit_who_pushes(make_registry, upstream, tmp_path):
    path = write_htpasswd(tmp_path / "htpasswd", [("ann", "ann-pw"), ("bob", "bob-pw")])
    mirror = make_registry(name="users", extra_yaml=auth_yaml(path) + upstream.proxy_yaml(
        extra="  push: true\n  pushusers: [ann]\n"))
    local = make_image()
    mirror.session.auth = ("bob", "bob-pw")
    for w in writes("org/app", local):
        assert_error(send(mirror, w), 403, "DENIED")
    mirror.session.auth = None
    assert_error(mirror.post("/v2/org/app/blobs/uploads/"), 401, "UNAUTHORIZED")
    mirror.session.auth = ("ann", "ann-pw")
    push_image(mirror, "org/app", local, "v1")
    mirror.session.auth = ("bob", "bob-pw")
    r = get_manifest(mirror, "org/app", "v1")
    assert r.status_code == 200 and r.content == local.manifest


def test_pushusers_need_client_auth(make_registry, upstream):
    mirror = make_registry(name="users-noauth", start=False, extra_yaml=upstream.proxy_yaml(
        extra="  push: true\n  pushusers: [ann]\n"))
    with pytest.raises(RuntimeError) as e:
        mirror.start(timeout=10)
    assert "proxy.pushusers" in str(e.value)


def pull_tag(mirror, img):
    r = get_manifest(mirror, img.repo, img.tag)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == img.digest


def test_shadow_off_keeps_the_upstreams_tags(make_registry, upstream, seeded):
    mirror = make_registry(name="noshadow", extra_yaml=upstream.proxy_yaml(extra="  push: true\n"))
    img = seeded.alpine
    pull_tag(mirror, img)
    local = make_image()
    for d, data in local.blobs.items():
        upload_blob(mirror, img.repo, data, d)
    assert_error(put_manifest(mirror, img.repo, img.tag, local.manifest, local.media_type), 403,
                 "DENIED")
    assert_error(mirror.delete("/v2/%s/manifests/%s" % (img.repo, img.tag)), 403, "DENIED")
    pull_tag(mirror, img)
    # By digest, or to a tag the mirror never pulled, the push is the pusher's.
    push_image(mirror, img.repo, local)
    push_image(mirror, img.repo, local, "mine")
    assert get_manifest(mirror, img.repo, "mine").content == local.manifest
    pull_tag(mirror, img)


def test_shadow_on_lets_a_push_replace_a_proxied_tag(make_registry, upstream, seeded):
    mirror = make_registry(name="shadow", extra_yaml=upstream.proxy_yaml(
        extra="  push: true\n  shadow: true\n"))
    assert "replace the upstream's tags (proxy.shadow)" in mirror.log_tail(100000)
    img = seeded.alpine
    pull_tag(mirror, img)
    local = make_image()
    push_image(mirror, img.repo, local, img.tag)
    r = get_manifest(mirror, img.repo, img.tag)
    assert r.status_code == 200 and r.content == local.manifest
    r = mirror.delete("/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status_code == 202, r.text
    pull_tag(mirror, img)
