"""On-disk compatibility: what one registry stored, the other serves (same rootdirectory).
Needs both REGMIRROR_BIN and /usr/bin/docker-registry."""

import os

import pytest

import helpers
from helpers import (get_manifest, make_image, make_index, push_image, put_manifest_ok,
                     random_bytes, sha256, unique_repo, upload_blob_chunked)


def _need_both():
    if not helpers.regmirror_bin():
        pytest.skip("interop needs REGMIRROR_BIN (only meaningful with regmirror)")
    if not os.access(helpers.binary_for("docker-registry"), os.X_OK):
        pytest.skip("interop needs docker-registry")


def populate(reg):
    """Pushes a bit of everything; returns what to expect."""
    repo, repo2 = unique_repo("interop"), unique_repo("interop2")
    oci = make_image(layer_sizes=(300 * 1024, 1000))
    docker = make_image(docker=True, layer_sizes=(200 * 1024,))
    push_image(reg, repo, oci, "oci")
    push_image(reg, repo, docker, "docker")
    kids = [make_image(layer_sizes=(5000,), arch=a) for a in ("amd64", "arm64")]
    dkids = [make_image(layer_sizes=(5000,), arch=a, docker=True) for a in ("amd64", "arm64")]
    for k in kids + dkids:
        push_image(reg, repo, k)
    index, index_mt = make_index(kids)
    mlist, mlist_mt = make_index(dkids, docker=True)
    put_manifest_ok(reg, repo, "index", index, index_mt)
    put_manifest_ok(reg, repo, "list", mlist, mlist_mt)
    untagged = make_image(layer_sizes=(100,))
    push_image(reg, repo, untagged)
    gone = make_image(layer_sizes=(100,))
    push_image(reg, repo, gone, "deleted")
    assert reg.delete("/v2/%s/manifests/%s" % (repo, gone.digest)).status_code == 202
    chunked = random_bytes(1024 * 1024 + 7)
    upload_blob_chunked(reg, repo, chunked, chunk=256 * 1024)
    # cross-repository mount
    layer = [d for d in oci.blobs if oci.blobs[d] is not oci.config][0]
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo2, layer, repo))
    assert r.status_code == 201
    push_image(reg, repo2, oci, "mounted")

    manifests = {  # (repo, ref) -> (body, media type)
        (repo, "oci"): (oci.manifest, oci.media_type),
        (repo, oci.digest): (oci.manifest, oci.media_type),
        (repo, "docker"): (docker.manifest, docker.media_type),
        (repo, docker.digest): (docker.manifest, docker.media_type),
        (repo, "index"): (index, index_mt),
        (repo, sha256(index)): (index, index_mt),
        (repo, "list"): (mlist, mlist_mt),
        (repo, sha256(mlist)): (mlist, mlist_mt),
        (repo, untagged.digest): (untagged.manifest, untagged.media_type),
        (repo2, "mounted"): (oci.manifest, oci.media_type),
    }
    for k in kids + dkids:
        manifests[(repo, k.digest)] = (k.manifest, k.media_type)
    blobs = {}
    for img in [oci, docker, untagged] + kids + dkids:
        for d, data in img.blobs.items():
            blobs[(repo, d)] = data
    blobs[(repo, sha256(chunked))] = chunked
    for d, data in oci.blobs.items():
        blobs[(repo2, d)] = data
    return {
        "manifests": manifests, "blobs": blobs,
        "tags": {repo: sorted(["oci", "docker", "index", "list"]), repo2: ["mounted"]},
        "gone": [(repo, gone.digest), (repo, "deleted")],
    }


def verify(reg, expect):
    for (repo, ref), (body, mt) in expect["manifests"].items():
        g = get_manifest(reg, repo, ref)
        assert g.status_code == 200, (repo, ref, g.status_code, g.text[:200])
        assert g.content == body, (repo, ref)
        assert g.headers.get("Content-Type") == mt, (repo, ref)
        assert g.headers.get("Docker-Content-Digest") == sha256(body)
    for (repo, d), data in expect["blobs"].items():
        g = reg.get("/v2/%s/blobs/%s" % (repo, d))
        assert g.status_code == 200, (repo, d, g.status_code)
        assert g.content == data
        assert g.headers.get("Docker-Content-Digest") == d
    for repo, tags in expect["tags"].items():
        r = reg.get("/v2/%s/tags/list" % repo)
        assert r.status_code == 200
        assert sorted(r.json()["tags"]) == tags
    catalog = reg.get("/v2/_catalog").json()["repositories"]
    for repo in expect["tags"]:
        assert repo in catalog
    for repo, ref in expect["gone"]:
        assert get_manifest(reg, repo, ref).status_code == 404


def _stop(reg):
    rc = reg.stop()
    assert rc in (0, -15), "%s exited with %s on SIGTERM; log tail:\n%s" % (
        reg.kind, rc, reg.log_tail())


def roundtrip(make_registry, tmp_path, first, second):
    root = tmp_path / "shared-root"
    root.mkdir()
    a = make_registry(kind=first, rootdir=root, name="a-" + first)
    expect = populate(a)
    verify(a, expect)
    _stop(a)
    b = make_registry(kind=second, rootdir=root, name="b-" + second)
    verify(b, expect)
    # and back: what the second one adds, the first one serves
    more = populate(b)
    _stop(b)
    a2 = make_registry(kind=first, rootdir=root, name="a2-" + first)
    verify(a2, expect)
    verify(a2, more)


def test_regmirror_writes_reference_reads(make_registry, tmp_path):
    _need_both()
    roundtrip(make_registry, tmp_path, "regmirror", "docker-registry")


def test_reference_writes_regmirror_reads(make_registry, tmp_path):
    _need_both()
    roundtrip(make_registry, tmp_path, "docker-registry", "regmirror")
