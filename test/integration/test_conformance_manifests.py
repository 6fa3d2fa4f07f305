"""OCI distribution spec v1.1: manifests (end-3, end-7), for the four manifest types
clients push: Docker schema2, Docker manifest list, OCI manifest, OCI index."""

import hashlib
import json

import pytest

from helpers import (API_VERSION_HEADER, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                     abs_location, assert_error, error_codes, get_manifest, make_image,
                     make_index, push_image, put_manifest, put_manifest_ok, random_bytes, sha256,
                     upload_blob)


def _push_kind(reg, repo, kind):
    """Pushes one manifest of the given kind (and what it needs); returns (body, media_type)."""
    if kind in ("oci", "docker"):
        img = make_image(docker=(kind == "docker"))
        for d, b in img.blobs.items():
            upload_blob(reg, repo, b, d)
        return img.manifest, img.media_type
    docker = kind == "docker-list"
    children = [make_image(docker=docker, arch=a, layer_sizes=(512,)) for a in ("amd64", "arm64")]
    for c in children:
        push_image(reg, repo, c)
    return make_index(children, docker=docker)


KINDS = {"oci": OCI_MANIFEST, "oci-index": OCI_INDEX, "docker": DOCKER_MANIFEST,
         "docker-list": DOCKER_LIST}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_manifest_roundtrip_byte_identical(reg, repo, kind):
    body, mt = _push_kind(reg, repo, kind)
    assert mt == KINDS[kind]
    d = sha256(body)
    r = put_manifest(reg, repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == d
    assert abs_location(reg, r)
    for ref in ("v1", d):
        g = get_manifest(reg, repo, ref)
        assert g.status_code == 200, g.text
        assert g.content == body, "manifest not returned byte for byte"
        assert g.headers.get("Content-Type") == mt
        assert g.headers.get("Docker-Content-Digest") == d
        assert g.headers.get("Content-Length") == str(len(body))
        h = get_manifest(reg, repo, ref, method="HEAD")
        assert h.status_code == 200
        assert h.content == b""
        assert h.headers.get("Content-Type") == mt
        assert h.headers.get("Docker-Content-Digest") == d
        assert h.headers.get("Content-Length") == str(len(body))


def test_put_by_tag_location(reg, repo):
    img = make_image()
    r = push_image(reg, repo, img, "latest")
    loc = abs_location(reg, r)
    assert "/v2/%s/manifests/" % repo in loc
    g = reg.get(loc, headers={"Accept": OCI_MANIFEST})
    assert g.status_code == 200 and g.content == img.manifest


def test_put_by_digest_is_untagged(reg, repo):
    img = make_image()
    push_image(reg, repo, img, "tagged")
    img2 = make_image()
    r = push_image(reg, repo, img2)  # by digest
    assert r.headers.get("Docker-Content-Digest") == img2.digest
    assert get_manifest(reg, repo, img2.digest).content == img2.manifest
    tags = reg.get("/v2/%s/tags/list" % repo).json()["tags"]
    assert tags == ["tagged"]


def test_put_by_wrong_digest(reg, repo):
    img = make_image()
    for d, b in img.blobs.items():
        upload_blob(reg, repo, b, d)
    wrong = sha256(b"other")
    r = put_manifest(reg, repo, wrong, img.manifest, img.media_type)
    assert_error(r, 400, "DIGEST_INVALID")
    assert get_manifest(reg, repo, wrong).status_code == 404
    assert get_manifest(reg, repo, img.digest).status_code == 404


def test_retag_moves_tag(reg, repo):
    a, b = make_image(), make_image()
    push_image(reg, repo, a, "moving")
    push_image(reg, repo, b, "moving")
    g = get_manifest(reg, repo, "moving")
    assert g.content == b.manifest
    # the old manifest stays reachable by digest
    assert get_manifest(reg, repo, a.digest).content == a.manifest


def test_content_type_as_pushed_not_negotiated(reg, repo):
    """A client that accepts every type gets the stored type back."""
    img = make_image(docker=True)
    push_image(reg, repo, img, "d")
    g = reg.get("/v2/%s/manifests/d" % repo, headers={"Accept": "%s, %s, %s, %s" % (
        OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)})
    assert g.headers.get("Content-Type") == DOCKER_MANIFEST
    # several Accept header lines (skopeo, podman, dockerd send them that way)
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
    conn.putrequest("GET", "/v2/%s/manifests/d" % repo)
    conn.putheader("Accept", OCI_MANIFEST)
    conn.putheader("Accept", DOCKER_MANIFEST)
    conn.putheader("Accept", DOCKER_LIST)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == DOCKER_MANIFEST
    assert body == img.manifest


def test_manifest_blob_unknown(reg, repo):
    img = make_image()
    # upload the config only; the layers are missing
    upload_blob(reg, repo, img.config)
    r = put_manifest(reg, repo, "v1", img.manifest, img.media_type)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert set(error_codes(r)) == {"MANIFEST_BLOB_UNKNOWN"}
    assert get_manifest(reg, repo, "v1").status_code == 404
    assert get_manifest(reg, repo, img.digest).status_code == 404


def test_manifest_config_unknown(reg, repo):
    img = make_image(docker=True)
    for d, b in img.blobs.items():
        if b is not img.config:
            upload_blob(reg, repo, b, d)
    r = put_manifest(reg, repo, "v1", img.manifest, img.media_type)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-list"])
def test_index_child_unknown(reg, repo, docker):
    present = make_image(docker=docker)
    push_image(reg, repo, present)
    missing = make_image(docker=docker)
    for d, b in missing.blobs.items():  # blobs present, the child manifest itself is not
        upload_blob(reg, repo, b, d)
    body, mt = make_index([present, missing], docker=docker)
    r = put_manifest(reg, repo, "multi", body, mt)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(reg, repo, "multi").status_code == 404


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[]", b"\xff\xfe\x00garbage",
    pytest.param(b"null", marks=pytest.mark.reference_deviation(
        "a JSON null manifest answers 500 UNKNOWN (unrecognized schema version 0)")),
    pytest.param(b"{}", marks=pytest.mark.reference_deviation(
        "an empty JSON object manifest answers 500 UNKNOWN (unrecognized schema version 0)")),
], ids=["truncated", "empty", "array", "binary", "null", "empty-object"])
def test_manifest_invalid_json(reg, repo, body):
    upload_blob(reg, repo, b"repo exists")
    r = put_manifest(reg, repo, "bad", body, OCI_MANIFEST)
    assert r.status_code == 400, r.text
    assert "MANIFEST_INVALID" in error_codes(r)
    assert get_manifest(reg, repo, "bad").status_code == 404


def test_manifest_without_config(reg, repo):
    """Valid JSON, but not a usable manifest: 400 with a manifest error code."""
    upload_blob(reg, repo, b"repo exists")
    r = put_manifest(reg, repo, "noconf", b'{"schemaVersion": 2, "mediaType": "%s"}'
                     % OCI_MANIFEST.encode(), OCI_MANIFEST)
    assert r.status_code == 400, r.text
    assert set(error_codes(r)) <= {"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID"}
    assert get_manifest(reg, repo, "noconf").status_code == 404


def test_manifest_mediatype_mismatch(reg, repo):
    """A body whose mediaType field contradicts the Content-Type is rejected."""
    img = make_image()
    for d, b in img.blobs.items():
        upload_blob(reg, repo, b, d)
    r = put_manifest(reg, repo, "x", img.manifest, DOCKER_MANIFEST)
    assert_error(r, 400, "MANIFEST_INVALID")


def test_manifest_unknown(reg, repo):
    img = make_image()
    push_image(reg, repo, img, "exists")
    assert_error(get_manifest(reg, repo, "nosuchtag"), 404, "MANIFEST_UNKNOWN")
    assert_error(get_manifest(reg, repo, sha256(b"nothing")), 404, "MANIFEST_UNKNOWN")
    h = get_manifest(reg, repo, "nosuchtag", method="HEAD")
    assert h.status_code == 404
    assert h.headers.get(API_VERSION_HEADER) == "registry/2.0"


def test_manifest_unknown_repository(reg):
    r = get_manifest(reg, "it/never-pushed-here", "latest")
    assert r.status_code == 404
    assert set(error_codes(r)) & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}


@pytest.mark.reference_deviation("a malformed digest as manifest reference is taken for a tag "
                                 "and answers 500 UNKNOWN")
def test_manifest_malformed_digest_reference(reg, repo):
    push_image(reg, repo, make_image(), "t")
    for bad in ("sha256:" + "a" * 40, "sha256:" + "A" * 64 + "zz"):
        r = get_manifest(reg, repo, bad)
        assert r.status_code in (400, 404), r.text
        assert set(error_codes(r)) & {"DIGEST_INVALID", "TAG_INVALID", "MANIFEST_UNKNOWN"}


@pytest.mark.parametrize("ref", [".INVALID_MANIFEST_NAME", "-dash", "t" * 129])
def test_manifest_reference_neither_tag_nor_digest_404(reg, repo, is_reference, ref):
    """The conformance suite's nonexistent manifest: a reference that is neither a tag nor a
    digest names no manifest, 404 for every method as registry:2 answers (its route does not
    match; regmirror gives the OCI error body too)."""
    img = make_image()
    push_image(reg, repo, img, "t")
    for method in ("GET", "HEAD", "DELETE", "PUT"):
        if method == "PUT":
            r = put_manifest(reg, repo, ref, img.manifest, img.media_type)
        else:
            r = get_manifest(reg, repo, ref, method=method)
        assert r.status_code == 404, (method, r.status_code, r.text[:200])
        if not is_reference and method != "HEAD":
            assert_error(r, 404, "MANIFEST_UNKNOWN")
    assert get_manifest(reg, repo, "t").status_code == 200


def test_manifest_sha384_reference(reg, repo, is_reference):
    """sha384 digests name manifests as sha512 ones do (go-digest's three algorithms); one
    that is not stored is MANIFEST_UNKNOWN, not a refused algorithm."""
    r = get_manifest(reg, repo, "sha384:" + "0" * 96)
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    if is_reference:
        return  # registry:2 2.8 hashes a pushed manifest with sha256 only
    assert_error(get_manifest(reg, repo, "sha384:" + "0" * 64), 400, "DIGEST_INVALID")
    img = make_image()
    push_image(reg, repo, img, "t")
    d = "sha384:" + hashlib.sha384(img.manifest).hexdigest()
    r = put_manifest(reg, repo, d, img.manifest, img.media_type)
    assert r.status_code == 201, r.text[:300]
    assert r.headers.get("Docker-Content-Digest") == d
    g = get_manifest(reg, repo, d)
    assert g.status_code == 200 and g.content == img.manifest
    assert g.headers.get("Docker-Content-Digest") == d


def test_subject_to_missing_manifest_accepted(reg, repo):
    """Spec: a manifest whose subject does not exist MUST be accepted (push in any order)."""
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(random_bytes(20)), "size": 1234}
    art = make_image(layer_sizes=(64,), subject=subject,
                     artifact_type="application/vnd.example.sig.v1")
    r = push_image(reg, repo, art)
    assert r.status_code == 201
    assert get_manifest(reg, repo, art.digest).content == art.manifest


def test_large_manifest_accepted(reg, repo):
    """Spec: registries SHOULD accept manifests of up to 4 MB; push ~1 MB of annotations."""
    img = make_image(layer_sizes=(64,),
                     annotations={"org.example.k%05d" % i: "v" * 100 for i in range(9000)})
    assert len(img.manifest) > 1000000
    push_image(reg, repo, img, "big")
    assert get_manifest(reg, repo, "big").content == img.manifest


def test_oversized_manifest_rejected(reg, repo):
    """Above the registry's limit (distribution: 4 MiB) -> 413 (spec SHOULD) or 400."""
    img = make_image(layer_sizes=(64,),
                     annotations={"org.example.k%06d" % i: "v" * 100 for i in range(50000)})
    assert len(img.manifest) > 5 * 1024 * 1024
    for d, b in img.blobs.items():
        upload_blob(reg, repo, b, d)
    r = put_manifest(reg, repo, "huge", img.manifest, img.media_type)
    assert r.status_code in (400, 413), r.status_code
    if r.status_code == 400:
        assert "MANIFEST_INVALID" in error_codes(r)
    assert reg.alive()
    assert get_manifest(reg, repo, "huge").status_code == 404
    # The same body chunked, without a Content-Length to refuse it by up front.
    r = reg.session.put(reg.url("/v2/%s/manifests/huge" % repo),
                        data=iter([img.manifest[i:i + 65536]
                                   for i in range(0, len(img.manifest), 65536)]),
                        headers={"Content-Type": img.media_type}, timeout=60)
    assert r.status_code in (400, 413), r.status_code
    if r.status_code == 413 and not reg.is_reference:
        assert error_codes(r) == ["SIZE_INVALID"]
        assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0"
    assert reg.alive()
    assert get_manifest(reg, repo, "huge").status_code == 404


def test_manifest_json_is_not_reformatted(reg, repo):
    """Whitespace, key order and a trailing newline survive (digest = bytes as pushed)."""
    img = make_image()
    for d, b in img.blobs.items():
        upload_blob(reg, repo, b, d)
    m = json.loads(img.manifest)
    body = ("{\n  \"layers\" : %s,\n\t\"config\":%s ,\"mediaType\": \"%s\", \"schemaVersion\":2 }\n\n"
            % (json.dumps(m["layers"], indent=5), json.dumps(m["config"]), OCI_MANIFEST)).encode()
    put_manifest_ok(reg, repo, "odd", body, OCI_MANIFEST)
    assert get_manifest(reg, repo, "odd").content == body
    assert get_manifest(reg, repo, sha256(body)).content == body
