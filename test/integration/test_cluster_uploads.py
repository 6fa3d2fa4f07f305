"""Uploads on a cluster (cluster.py): every upload style through nginx round robin, where each
request of a sequence lands on another node, and straight to chosen nodes, also across a
node's restart between the requests. Every pushed blob reads back right from every node.
Runs on one OSS bucket and on one shared filesystem root; with
REGISTRY_UNDER_TEST=docker-registry on registry:2 replicas (the reference)."""

import hashlib
import os
from urllib.parse import urljoin, urlsplit

import pytest

from helpers import raw_get, sha256, target_kind, unique_repo, with_query

ROUNDS = 12
REFERENCE = target_kind() == "docker-registry"
OCTET = {"Content-Type": "application/octet-stream"}


def location(base, resp):
    loc = resp.headers.get("Location")
    assert loc, "no Location in the %d answer: %s" % (resp.status_code, resp.text)
    return urljoin(base + "/", loc)


def on(node, url):
    """url (a Location) sent to node instead of the host it names."""
    parts = urlsplit(url)
    return node.base + parts.path + ("?" + parts.query if parts.query else "")


def ok(resp, status, what):
    assert resp.status_code == status, "%s: %d %s" % (what, resp.status_code, resp.text[:400])
    return resp


def post(client, repo, **params):
    r = ok(client.post(with_query("/v2/%s/blobs/uploads/" % repo, **params) if params
                       else "/v2/%s/blobs/uploads/" % repo, data=b""), 202, "POST")
    return location(client.base, r)


def patch(client, url, data, offset=None):
    headers = dict(OCTET)
    if offset is not None:
        headers["Content-Range"] = "%d-%d" % (offset, offset + len(data) - 1)
    r = ok(client.patch(url, data=data, headers=headers), 202, "PATCH")
    end = (offset or 0) + len(data) - 1 if offset is not None else None
    if end is not None:
        assert r.headers.get("Range") == "0-%d" % end, r.headers
    return location(client.base, r)


def put(client, url, digest, data=b"", offset=None):
    headers = dict(OCTET)
    if data and offset is not None:
        headers["Content-Range"] = "%d-%d" % (offset, offset + len(data) - 1)
    r = ok(client.put(with_query(url, digest=digest), data=data, headers=headers), 201, "PUT")
    # registry:2 names a sha384 / sha512 blob by its sha256 here
    if not REFERENCE or digest.startswith("sha256:"):
        assert r.headers.get("Docker-Content-Digest") == digest
    return r


def streamed(data, piece=64 * 1024):
    """A body without Content-Length (chunked), as docker's PATCH sends it."""
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


def reads_back(cluster, repo, data):
    digest = sha256(data)
    cluster.settle()
    for node in cluster.nodes:
        r = node.head("/v2/%s/blobs/%s" % (repo, digest))
        assert r.status_code == 200, "HEAD on %r: %d" % (node, r.status_code)
        assert int(r.headers["Content-Length"]) == len(data)
        status, _, body, complete = raw_get(node, "/v2/%s/blobs/%s" % (repo, digest))
        assert status == 200 and complete and body == data, "GET on %r: %d, %d bytes" % (
            node, status, len(body))


def blob(i):
    """Sizes from a few bytes to a few hundred KiB, so bodies span several reads."""
    return os.urandom(1 + i * 41017)


# -- every style through nginx -------------------------------------------------------

def style_monolithic(f, repo, data):
    """POST, then PUT ?digest= with the whole blob (containerd, buildkit)."""
    put(f, post(f, repo), sha256(data), data)


def style_post_digest(f, repo, data):
    """One POST ?digest= with the blob; registry:2 answers 202 instead (the spec allows it)
    and takes the blob in a PUT."""
    r = f.post(with_query("/v2/%s/blobs/uploads/" % repo, digest=sha256(data)), data=data,
               headers=OCTET)
    if r.status_code == 202 and REFERENCE:
        put(f, location(f.base, r), sha256(data), data)
        return
    ok(r, 201, "POST ?digest=")
    assert r.headers.get("Docker-Content-Digest") == sha256(data)


def style_chunked(f, repo, data, piece=64 * 1024):
    """POST, PATCHes with Content-Range, an empty PUT ?digest=."""
    url = post(f, repo)
    for off in range(0, len(data), piece):
        url = patch(f, url, data[off:off + piece], off)
    put(f, url, sha256(data))


def style_chunked_last_in_put(f, repo, data, piece=64 * 1024):
    """POST, PATCHes, and the last chunk in the PUT."""
    url = post(f, repo)
    last = ((len(data) - 1) // piece) * piece
    for off in range(0, last, piece):
        url = patch(f, url, data[off:off + piece], off)
    put(f, url, sha256(data), data[last:], last)


def style_streamed_patch(f, repo, data):
    """POST, one PATCH without Content-Length (docker), an empty PUT ?digest=."""
    url = patch(f, post(f, repo), streamed(data))
    put(f, url, sha256(data))


def style_streamed_patch_and_put(f, repo, data):
    """POST, a streamed PATCH with the first half, PUT ?digest= with the rest."""
    half = len(data) // 2
    url = patch(f, post(f, repo), streamed(data[:half]))
    put(f, url, sha256(data), data[half:])


STYLES = [style_monolithic, style_post_digest, style_chunked, style_chunked_last_in_put,
          style_streamed_patch, style_streamed_patch_and_put]
# Styles whose session is empty when the blob's bytes come: hashed as they are written on
# whichever node, never read back from storage.
HASHED_AS_WRITTEN = (style_monolithic, style_post_digest)


def session_reads(cluster):
    """GETs of upload session data in the bucket since the test began (None off OSS)."""
    reqs = cluster.storage_requests(op="GetObject")
    return None if reqs is None else [r["path"] for r in reqs if "/_uploads/" in r["path"]]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.__name__[len("style_"):])
def test_every_style_through_nginx(cluster, style):
    repo = unique_repo("cl-up")
    pushed = []
    for i in range(ROUNDS):
        data = blob(i)
        style(cluster.front, repo, data)
        pushed.append(data)
    if style in HASHED_AS_WRITTEN and cluster.kind == "regmirror":
        assert session_reads(cluster) in (None, []), session_reads(cluster)[:3]
    # one read-back of every node for a few of them keeps the test short
    for data in pushed[::5]:
        reads_back(cluster, repo, data)
    for data in pushed:
        r = cluster.front.head("/v2/%s/blobs/%s" % (repo, sha256(data)))
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)


def test_mount_through_nginx(cluster):
    src, dst = unique_repo("cl-src"), unique_repo("cl-dst")
    f = cluster.front
    for i in range(ROUNDS):
        data = blob(i)
        style_monolithic(f, src, data)
        r = f.post(with_query("/v2/%s/blobs/uploads/" % dst, mount=sha256(data), **{"from": src}))
        ok(r, 201, "mount")
        assert r.headers.get("Docker-Content-Digest") == sha256(data)
        if i % 5 == 0:
            reads_back(cluster, dst, data)


# -- chosen nodes ---------------------------------------------------------------------

def test_patch_on_one_node_put_on_another(cluster):
    """Each request of a sequence straight to the node named, the PUT carrying a body."""
    a, b, c = cluster.nodes[:3]
    repo = unique_repo("cl-nodes")
    data = os.urandom(3 * 1024 * 1024 + 5)
    third = len(data) // 3
    url = post(a, repo)
    url = patch(b, on(b, url), data[:third], 0)
    url = patch(a, on(a, url), data[third:2 * third], third)
    put(c, on(c, url), sha256(data), data[2 * third:], 2 * third)
    reads_back(cluster, repo, data)
    # the same without PATCH: POST on one node, the whole blob in the PUT on the next
    data = os.urandom(700 * 1024)
    put(b, on(b, post(a, repo)), sha256(data), data)
    reads_back(cluster, repo, data)


def test_wrong_digest_fails_on_any_node_and_the_session_stays(cluster):
    a, b = cluster.nodes[:2]
    repo = unique_repo("cl-bad")
    data = os.urandom(200 * 1024)
    url = patch(a, post(a, repo), data[:1000], 0)
    r = b.put(with_query(on(b, url), digest=sha256(b"other")), data=data[1000:], headers=OCTET)
    assert r.status_code == 400 and "DIGEST_INVALID" in r.text, r.text
    assert b.head("/v2/%s/blobs/%s" % (repo, sha256(b"other"))).status_code == 404
    assert a.head("/v2/%s/blobs/%s" % (repo, sha256(data))).status_code == 404


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_between_patch_and_put(cluster, kill):
    node = cluster.nodes[0]
    repo = unique_repo("cl-restart")
    data = os.urandom(1024 * 1024 + 3)
    half = len(data) // 2
    url = patch(node, post(node, repo), data[:half], 0)
    node.restart(kill=kill)
    put(node, on(node, url), sha256(data), data[half:], half)
    reads_back(cluster, repo, data)
    # a monolithic push whose node restarts after the POST
    data = os.urandom(300 * 1024)
    url = post(node, repo)
    node.restart(kill=kill)
    put(node, on(node, url), sha256(data), data)
    reads_back(cluster, repo, data)


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
def test_big_parts_across_nodes(cluster, algo):
    """Sessions past the OSS part size, continued on other nodes (a part copy of what is
    stored), the last part in the PUT; sha512 is always re-hashed from storage."""
    import hashlib
    a, b, c = cluster.nodes[:3]
    repo = unique_repo("cl-big")
    data = os.urandom(13 * 1024 * 1024 + 11)
    digest = "%s:%s" % (algo, hashlib.new(algo, data).hexdigest())
    cut1, cut2 = 6 * 1024 * 1024 + 1, 12 * 1024 * 1024 + 7
    url = patch(a, post(a, repo), data[:cut1], 0)
    url = patch(b, on(b, url), data[cut1:cut2], cut1)
    put(c, on(c, url), digest, data[cut2:], cut2)
    url = post(c, repo)
    other = os.urandom(11 * 1024 * 1024)
    odigest = "%s:%s" % (algo, hashlib.new(algo, other).hexdigest())
    put(a, on(a, url), odigest, other)
    cluster.settle()
    for node in cluster.nodes:
        for d, blob_ in ((digest, data), (odigest, other)):
            status, _, body, complete = raw_get(node, "/v2/%s/blobs/%s" % (repo, d))
            assert status == 200 and complete and body == blob_
