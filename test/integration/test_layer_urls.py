"""Layers clients fetch from their urls (validation.manifests.urls): a Docker foreign layer and
an OCI non-distributable layer need not be stored when the configuration allows their urls,
as in registry:2. Every test runs against regmirror and docker-registry 2.8 alike."""

import json
import subprocess

import pytest

import helpers
from helpers import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST,
                     descriptor, image_config, put_manifest, random_bytes, sha256, upload_blob)

FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ND_GZ = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

KINDS = ["regmirror", "docker-registry"]
ALLOW = ("validation:\n  manifests:\n    urls:\n      allow: ['^https?://([^/]+\\.)?example\\.com/']\n"
         "      deny: ['^https?://example\\.com/nope']\n")


def manifest(reg, repo, layer_type, urls, docker=True, upload_layer=False, config=None):
    """A manifest with one stored layer and one layer of layer_type carrying urls (None: no
    urls property); the second layer is uploaded only with upload_layer. Returns (body, mt)."""
    cfg = config or image_config()
    upload_blob(reg, repo, cfg, sha256(cfg))
    stored = random_bytes(512)
    upload_blob(reg, repo, stored, sha256(stored))
    remote = random_bytes(700)
    if upload_layer:
        upload_blob(reg, repo, remote, sha256(remote))
    extra = {} if urls is None else {"urls": urls}
    mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
    m = {"schemaVersion": 2, "mediaType": mt,
         "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, cfg),
         "layers": [descriptor(DOCKER_LAYER if docker else OCI_GZ, stored),
                    descriptor(layer_type, remote, **extra)]}
    return json.dumps(m, indent=3).encode(), mt


def put(reg, repo, body, mt):
    """(status, error codes) of a manifest PUT; a refusal is normalized to (400, codes):
    docker-registry answers a layer url it does not allow with 500 (UNKNOWN and
    MANIFEST_BLOB_UNKNOWN), regmirror with 400 MANIFEST_BLOB_UNKNOWN."""
    r = put_manifest(reg, repo, "v1", body, mt)
    codes = [e.get("code") for e in r.json().get("errors", [])] if r.status_code >= 400 else []
    status = r.status_code
    if status == 500 and reg.kind == "docker-registry" and "MANIFEST_BLOB_UNKNOWN" in codes:
        status = 400
    return status, codes


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_layer_refused_by_default(make_registry, repo, kind):
    """No validation.manifests.urls: registry:2 allows no URL at all."""
    reg = make_registry(kind=kind)
    body, mt = manifest(reg, repo, FOREIGN, ["https://example.com/layer"])
    status, codes = put(reg, repo, body, mt)
    assert status == 400 and "MANIFEST_BLOB_UNKNOWN" in codes, (status, codes)


@pytest.mark.parametrize("kind", KINDS)
def test_foreign_layer_with_allowed_urls(make_registry, repo, kind):
    reg = make_registry(kind=kind, extra_yaml=ALLOW)
    body, mt = manifest(reg, repo, FOREIGN, ["https://mcr.example.com/a", "http://example.com/b"])
    assert put(reg, repo, body, mt) == (201, [])
    r = reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": mt})
    assert r.status_code == 200 and r.content == body
    # denied, not allowed, not http(s), with a fragment, or no urls at all: refused
    for urls in (["https://example.com/nope/x"], ["https://example.org/x"],
                 ["ftp://example.com/x"], ["https://example.com/x#frag"], [], None):
        body, mt = manifest(reg, repo, FOREIGN, urls)
        status, codes = put(reg, repo, body, mt)
        assert status == 400 and "MANIFEST_BLOB_UNKNOWN" in codes, (urls, status, codes)


@pytest.mark.parametrize("kind", KINDS)
def test_oci_layers_with_urls(make_registry, repo, kind):
    """OCI (as 2.8): a layer with allowed urls need not be stored, distributable or not;
    without urls it must be; a url not allowed is refused, stored or not."""
    reg = make_registry(kind=kind, extra_yaml=ALLOW)
    body, mt = manifest(reg, repo, OCI_ND_GZ, ["https://example.com/nd"], docker=False)
    assert put(reg, repo, body, mt) == (201, [])
    body, mt = manifest(reg, repo, OCI_ND_GZ, None, docker=False)
    assert put(reg, repo, body, mt)[0] == 400
    body, mt = manifest(reg, repo, OCI_GZ, ["https://example.com/d"], docker=False)
    assert put(reg, repo, body, mt) == (201, [])
    body, mt = manifest(reg, repo, OCI_GZ, None, docker=False)
    assert put(reg, repo, body, mt)[0] == 400
    body, mt = manifest(reg, repo, OCI_GZ, ["https://example.org/d"], docker=False,
                        upload_layer=True)
    assert put(reg, repo, body, mt)[0] == 400


@pytest.mark.parametrize("kind", KINDS)
def test_validation_disabled_allows_any_http_url(make_registry, repo, kind):
    reg = make_registry(kind=kind, extra_yaml="validation:\n  disabled: true\n")
    body, mt = manifest(reg, repo, FOREIGN, ["http://anything.example.net/x"])
    assert put(reg, repo, body, mt) == (201, [])
    body, mt = manifest(reg, repo, FOREIGN, ["file:///etc/passwd"])
    assert put(reg, repo, body, mt)[0] == 400


@pytest.mark.regmirror_only("the reference panics on a pattern it cannot compile")
def test_bad_pattern_refused_at_start(tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text(helpers.render_config(str(tmp_path / "root"), "127.0.0.1:%d" % helpers.free_port(),
                                         extra_yaml="validation:\n  manifests:\n    urls:\n"
                                                    "      allow: ['(unclosed']\n"))
    binary = helpers.regmirror_bin()
    if not binary:
        pytest.skip("REGMIRROR_BIN is not set")
    p = subprocess.run([binary, "serve", str(cfg)], capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    assert "validation.manifests.urls.allow[0]" in p.stderr, p.stderr
