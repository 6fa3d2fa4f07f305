"""skopeo against the registry: OCI layout -> registry -> OCI layout, byte for byte."""

import json
import os

from helpers import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                     get_manifest, make_image, make_index, read_oci_layout, sha256,
                     write_oci_layout)


def _layout_manifest(path, tag):
    idx, blobs = read_oci_layout(path)
    for d in idx["manifests"]:
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return d, blobs
    raise AssertionError("tag %s not in %s" % (tag, idx))


def test_skopeo_push_pull_oci_image(reg, repo, sk, tmp_path):
    img = make_image(layer_sizes=(300 * 1024, 2 * 1024 * 1024, 700 * 1024), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("v1", img)])
    dest = "docker://%s/%s:v1" % (reg.host, repo)
    sk("copy", "--dest-tls-verify=false", "oci:%s:v1" % src, dest)

    g = get_manifest(reg, repo, "v1")
    assert g.status_code == 200
    assert g.content == img.manifest, "skopeo re-wrote the manifest or the registry changed it"
    assert g.headers["Content-Type"] == OCI_MANIFEST
    for d, data in img.blobs.items():
        b = reg.get("/v2/%s/blobs/%s" % (repo, d))
        assert b.status_code == 200 and b.content == data

    raw = sk("inspect", "--raw", "--tls-verify=false", dest)
    assert raw == img.manifest
    info = json.loads(sk("inspect", "--tls-verify=false", dest))
    assert info["Digest"] == img.digest
    assert "v1" in info.get("RepoTags", [])

    out = str(tmp_path / "out")
    sk("copy", "--src-tls-verify=false", dest, "oci:%s:v1" % out)
    desc, blobs = _layout_manifest(out, "v1")
    assert desc["digest"] == img.digest
    assert blobs[img.digest] == img.manifest
    for d, data in img.blobs.items():
        assert blobs[d] == data


def test_skopeo_multiarch_index(reg, repo, sk, tmp_path):
    amd = make_image(layer_sizes=(400 * 1024,), real_layers=True, arch="amd64")
    arm = make_image(layer_sizes=(500 * 1024,), real_layers=True, arch="arm64")
    body, mt = make_index([amd, arm])
    src = str(tmp_path / "src")
    write_oci_layout(src, [], indexes=[("multi", body, mt, [amd, arm])])
    dest = "docker://%s/%s:multi" % (reg.host, repo)
    sk("copy", "--all", "--dest-tls-verify=false", "oci:%s:multi" % src, dest)

    g = get_manifest(reg, repo, "multi")
    assert g.status_code == 200
    assert g.headers["Content-Type"] == OCI_INDEX
    assert g.content == body
    for child in (amd, arm):
        c = get_manifest(reg, repo, child.digest)
        assert c.status_code == 200 and c.content == child.manifest

    assert sk("inspect", "--raw", "--tls-verify=false", dest) == body

    out = str(tmp_path / "out")
    sk("copy", "--all", "--src-tls-verify=false", dest, "oci:%s:multi" % out)
    desc, blobs = _layout_manifest(out, "multi")
    assert desc["digest"] == sha256(body)
    assert blobs[sha256(body)] == body
    for child in (amd, arm):
        assert blobs[child.digest] == child.manifest
        for d, data in child.blobs.items():
            assert blobs[d] == data

    # a single-platform pull picks the child manifest
    out2 = str(tmp_path / "out-arm")
    sk("--override-arch", "arm64", "--override-variant", "v8", "copy", "--src-tls-verify=false",
       dest, "oci:%s:arm" % out2)
    desc, blobs = _layout_manifest(out2, "arm")
    assert desc["digest"] == arm.digest


def test_skopeo_docker_schema2(reg, repo, sk, tmp_path):
    img = make_image(layer_sizes=(256 * 1024, 1024 * 1024), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("v2", img)])
    dest = "docker://%s/%s:v2s2" % (reg.host, repo)
    sk("copy", "--format", "v2s2", "--dest-tls-verify=false", "oci:%s:v2" % src, dest)

    g = get_manifest(reg, repo, "v2s2")
    assert g.status_code == 200
    assert g.headers["Content-Type"] == DOCKER_MANIFEST
    m = json.loads(g.content)
    assert m["mediaType"] == DOCKER_MANIFEST
    assert m["config"]["mediaType"] == DOCKER_CONFIG
    assert [l["mediaType"] for l in m["layers"]] == [DOCKER_LAYER] * 2
    # layers are the same blobs
    assert [l["digest"] for l in m["layers"]] == [l["digest"] for l in json.loads(img.manifest)["layers"]]
    assert g.headers["Docker-Content-Digest"] == sha256(g.content)
    for l in m["layers"] + [m["config"]]:
        b = reg.get("/v2/%s/blobs/%s" % (repo, l["digest"]))
        assert b.status_code == 200 and sha256(b.content) == l["digest"]
        assert len(b.content) == l["size"]

    raw = sk("inspect", "--raw", "--tls-verify=false", dest)
    assert raw == g.content
    out = str(tmp_path / "out")
    sk("copy", "--src-tls-verify=false", dest, "dir:%s" % out)
    with open(os.path.join(out, "manifest.json"), "rb") as f:
        assert f.read() == g.content


def test_skopeo_copy_between_repositories(reg, repo, sk, tmp_path):
    """registry -> registry (skopeo mounts or re-uploads blobs across repositories)."""
    img = make_image(layer_sizes=(200 * 1024,), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("a", img)])
    sk("copy", "--dest-tls-verify=false", "oci:%s:a" % src,
       "docker://%s/%s:a" % (reg.host, repo))
    other = repo + "-copy"
    sk("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
       "docker://%s/%s:a" % (reg.host, repo), "docker://%s/%s:b" % (reg.host, other))
    g = get_manifest(reg, other, "b")
    assert g.status_code == 200 and g.content == img.manifest
    tags = json.loads(sk("list-tags", "--tls-verify=false", "docker://%s/%s" % (reg.host, other)))
    assert tags["Tags"] == ["b"]
