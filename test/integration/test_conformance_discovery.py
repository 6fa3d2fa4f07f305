"""OCI distribution spec v1.1: content discovery — tags/list (end-8a/b), _catalog, and the
referrers API (end-12a/b)."""

import json
import re
from urllib.parse import urljoin

import pytest

from helpers import (OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, assert_error, make_image,
                     make_index, push_image, put_manifest_ok, random_bytes, sha256,
                     unique_repo, upload_blob)

LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def next_link(reg, resp):
    link = resp.headers.get("Link")
    if not link:
        return None
    m = LINK_RE.search(link)
    assert m, "Link header without rel=next: %r" % link
    return urljoin(reg.base + "/", m.group(1))


def _push_tags(reg, repo, tags):
    img = make_image(layer_sizes=(32,))
    push_image(reg, repo, img, tags[0])
    for t in tags[1:]:
        put_manifest_ok(reg, repo, t, img.manifest, img.media_type)
    return img


TAGS = ["v1.0", "alpha", "zeta", "beta", "1.0", "delta", "gamma", "epsilon", "_under", "latest"]


# ---------------------------------------------------------------------------
# tags/list

def test_tags_list(reg, repo):
    _push_tags(reg, repo, TAGS)
    r = reg.get("/v2/%s/tags/list" % repo)
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("application/json")
    body = r.json()
    assert body["name"] == repo
    assert sorted(body["tags"]) == sorted(TAGS)
    assert len(body["tags"]) == len(TAGS)


@pytest.mark.reference_deviation("tags come back in storage directory order, not lexical")
def test_tags_list_lexical_order(reg, repo):
    _push_tags(reg, repo, TAGS)
    tags = reg.get("/v2/%s/tags/list" % repo).json()["tags"]
    assert tags == sorted(TAGS)


@pytest.mark.reference_deviation("tags/list ignores n and last and never sends Link")
def test_tags_list_pagination(reg, repo):
    _push_tags(reg, repo, TAGS)
    want = sorted(TAGS)
    r = reg.get("/v2/%s/tags/list?n=3" % repo)
    assert r.status_code == 200
    assert r.json()["tags"] == want[:3]
    got = list(r.json()["tags"])
    url = next_link(reg, r)
    assert url, "no Link header with n below the tag count"
    pages = 1
    while url:
        r = reg.get(url)
        assert r.status_code == 200
        page = r.json()["tags"]
        assert 0 < len(page) <= 3
        got += page
        url = next_link(reg, r)
        pages += 1
        assert pages < 20
    assert got == want


@pytest.mark.reference_deviation("tags/list ignores n and last")
def test_tags_list_last(reg, repo):
    _push_tags(reg, repo, TAGS)
    want = sorted(TAGS)
    r = reg.get("/v2/%s/tags/list?last=%s" % (repo, want[3]))
    assert r.json()["tags"] == want[4:]
    r = reg.get("/v2/%s/tags/list?n=2&last=%s" % (repo, want[3]))
    assert r.json()["tags"] == want[4:6]
    r = reg.get("/v2/%s/tags/list?n=2&last=%s" % (repo, want[-1]))
    assert r.json()["tags"] in ([], None)
    assert not r.headers.get("Link")


@pytest.mark.reference_deviation("tags/list ignores n=0 and returns every tag")
def test_tags_list_n_zero(reg, repo):
    _push_tags(reg, repo, TAGS[:3])
    r = reg.get("/v2/%s/tags/list?n=0" % repo)
    assert r.status_code == 200
    assert r.json()["tags"] in ([], None)
    assert not r.headers.get("Link")


def test_tags_list_n_covers_all(reg, repo):
    _push_tags(reg, repo, TAGS[:4])
    r = reg.get("/v2/%s/tags/list?n=100" % repo)
    assert r.status_code == 200
    assert sorted(r.json()["tags"]) == sorted(TAGS[:4])
    assert not r.headers.get("Link")


def test_tags_list_unknown_repository(reg):
    assert_error(reg.get("/v2/%s/tags/list" % unique_repo("nosuch")), 404, "NAME_UNKNOWN")


# ---------------------------------------------------------------------------
# _catalog (on a registry of its own, so the list is known)

@pytest.fixture
def catalog_registry(make_registry):
    reg = make_registry(name="catalog")
    repos = sorted(["lib/alpine", "lib/busybox", "a", "z/y/x", "m-n_o.p", "team/app1", "team/app2"])
    for r in repos:
        upload_blob(reg, r, b"x" + r.encode())
        push_image(reg, r, make_image(layer_sizes=(16,)), "latest")
    return reg, repos


def test_catalog(catalog_registry):
    reg, repos = catalog_registry
    r = reg.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json()["repositories"] == repos


def test_catalog_pagination(catalog_registry):
    reg, repos = catalog_registry
    r = reg.get("/v2/_catalog?n=2")
    assert r.status_code == 200
    got = r.json()["repositories"]
    assert got == repos[:2]
    url = next_link(reg, r)
    assert url
    while url:
        r = reg.get(url)
        assert r.status_code == 200
        page = r.json()["repositories"]
        assert 0 < len(page) <= 2
        got += page
        url = next_link(reg, r)
        assert len(got) <= len(repos)
    assert got == repos


def test_catalog_last(catalog_registry):
    reg, repos = catalog_registry
    r = reg.get("/v2/_catalog?n=3&last=%s" % repos[1])
    assert r.json()["repositories"] == repos[2:5]
    r = reg.get("/v2/_catalog?last=%s" % repos[-2])
    assert r.json()["repositories"] == repos[-1:]


def test_catalog_n_zero(catalog_registry):
    reg, _ = catalog_registry
    r = reg.get("/v2/_catalog?n=0")
    assert r.status_code == 200
    assert r.json()["repositories"] in ([], None)
    assert not r.headers.get("Link")


# ---------------------------------------------------------------------------
# referrers (OCI 1.1; distribution 2.8 predates them)

SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"


def _artifact(subject, artifact_type=None, annotations=None, config_type=None):
    if artifact_type:
        return make_image(layer_sizes=(100,), subject=subject, artifact_type=artifact_type,
                          annotations=annotations, config=b"{}", config_type=OCI_EMPTY)
    return make_image(layer_sizes=(100,), subject=subject, annotations=annotations,
                      config_type=config_type)


@pytest.mark.regmirror_only("referrers API and OCI-Subject")
def test_referrers(reg, repo):
    subject = make_image()
    push_image(reg, repo, subject, "app")
    sdesc = subject.desc()
    sbom = _artifact(sdesc, SBOM, {"org.example.sbom.format": "json"})
    sig = _artifact(sdesc, SIG, {"org.example.signature.fingerprint": "abcd"})
    plain = _artifact(sdesc, None, {"k": "v"}, config_type="application/vnd.example.config.v1+json")
    for art in (sbom, sig, plain):
        r = push_image(reg, repo, art)
        assert r.headers.get("OCI-Subject") == subject.digest
    # an index with a subject and no artifactType
    idx_children = [make_image(layer_sizes=(10,)), make_image(layer_sizes=(10,), arch="arm64")]
    for c in idx_children:
        push_image(reg, repo, c)
    body, mt = make_index(idx_children)
    m = json.loads(body)
    m["subject"] = sdesc
    m["annotations"] = {"idx": "yes"}
    body = json.dumps(m).encode()
    r = put_manifest_ok(reg, repo, sha256(body), body, OCI_INDEX)
    assert r.headers.get("OCI-Subject") == subject.digest

    r = reg.get("/v2/%s/referrers/%s" % (repo, subject.digest))
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").split(";")[0] == OCI_INDEX
    doc = r.json()
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in doc["manifests"]}
    assert set(by_digest) == {sbom.digest, sig.digest, plain.digest, sha256(body)}
    assert by_digest[sbom.digest] == {"mediaType": OCI_MANIFEST, "digest": sbom.digest,
                                      "size": len(sbom.manifest), "artifactType": SBOM,
                                      "annotations": {"org.example.sbom.format": "json"}}
    assert by_digest[sig.digest]["artifactType"] == SIG
    assert by_digest[sig.digest]["annotations"] == {"org.example.signature.fingerprint": "abcd"}
    # no artifactType: the config media type stands in
    assert by_digest[plain.digest]["artifactType"] == "application/vnd.example.config.v1+json"
    assert by_digest[plain.digest]["annotations"] == {"k": "v"}
    # an index without artifactType: none in the descriptor
    idesc = by_digest[sha256(body)]
    assert idesc["mediaType"] == OCI_INDEX
    assert idesc["size"] == len(body)
    assert "artifactType" not in idesc
    assert idesc["annotations"] == {"idx": "yes"}


@pytest.mark.regmirror_only("referrers API")
def test_referrers_artifact_type_filter(reg, repo):
    subject = make_image()
    push_image(reg, repo, subject, "app")
    sbom = _artifact(subject.desc(), SBOM)
    sig = _artifact(subject.desc(), SIG)
    push_image(reg, repo, sbom)
    push_image(reg, repo, sig)
    r = reg.get("/v2/%s/referrers/%s?artifactType=%s" % (repo, subject.digest, SBOM))
    assert r.status_code == 200
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in r.json()["manifests"]] == [sbom.digest]
    r = reg.get("/v2/%s/referrers/%s?artifactType=application/vnd.none" % (repo, subject.digest))
    assert r.status_code == 200
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert r.json()["manifests"] == []


@pytest.mark.regmirror_only("referrers API")
def test_referrers_empty(reg, repo):
    subject = make_image()
    push_image(reg, repo, subject, "app")
    for dgst in (subject.digest, sha256(random_bytes(8))):
        r = reg.get("/v2/%s/referrers/%s" % (repo, dgst))
        assert r.status_code == 200
        assert r.headers.get("Content-Type", "").split(";")[0] == OCI_INDEX
        doc = r.json()
        assert doc["schemaVersion"] == 2
        assert doc["mediaType"] == OCI_INDEX
        assert doc["manifests"] == []


@pytest.mark.regmirror_only("referrers API")
def test_referrers_before_subject_and_scoped_to_repo(reg, repo):
    subject = make_image()
    art = _artifact(subject.desc(), SBOM)
    r = push_image(reg, repo, art)  # subject not pushed yet: MUST be accepted
    assert r.headers.get("OCI-Subject") == subject.digest
    push_image(reg, repo, subject, "later")
    r = reg.get("/v2/%s/referrers/%s" % (repo, subject.digest))
    assert [d["digest"] for d in r.json()["manifests"]] == [art.digest]
    other = unique_repo("other")
    push_image(reg, other, subject, "x")
    r = reg.get("/v2/%s/referrers/%s" % (other, subject.digest))
    assert r.status_code == 200
    assert r.json()["manifests"] == []


@pytest.mark.regmirror_only("referrers API")
def test_referrers_invalid_digest(reg, repo):
    push_image(reg, repo, make_image(), "x")
    r = reg.get("/v2/%s/referrers/sha256:nothex" % repo)
    assert r.status_code == 400


@pytest.mark.regmirror_only("referrers API")
def test_referrers_drop_deleted_manifest(reg, repo):
    subject = make_image()
    push_image(reg, repo, subject, "app")
    art = _artifact(subject.desc(), SIG)
    push_image(reg, repo, art)
    r = reg.delete("/v2/%s/manifests/%s" % (repo, art.digest))
    assert r.status_code == 202
    r = reg.get("/v2/%s/referrers/%s" % (repo, subject.digest))
    assert r.status_code == 200
    assert r.json()["manifests"] == []


def test_subject_push_without_referrers_api(reg, repo, is_reference):
    """Every registry takes a manifest with subject; only one with the referrers API says
    OCI-Subject (clients then skip the tag-schema fallback)."""
    subject = make_image()
    push_image(reg, repo, subject, "app")
    r = push_image(reg, repo, _artifact(subject.desc(), SBOM))
    if is_reference:
        assert r.headers.get("OCI-Subject") is None
    else:
        assert r.headers.get("OCI-Subject") == subject.digest
