"""The cache admin API on http.debug.addr (/admin/cache) and `regmirror cache`, against a
mirror pulling through from the test upstream (counted upstream traffic): what ls shows, rm of
one image, verify of a corrupted blob, warm of a multi-arch image, auth, bad references."""

import json
import os
import pty
import subprocess
import threading
import time

import pytest
import requests

import helpers
from helpers import (assert_error, blob_files, make_image, pull_image, pull_manifest,
                     push_image, raw_get, upload_blob)
from tlsutil import auth_yaml, write_htpasswd

pytestmark = pytest.mark.regmirror_only("the cache admin API and CLI are regmirror's")

LOCAL_REPO = "local/app"


def start_mirror(make_registry, upstream, extra=""):
    port = helpers.free_port()
    # render_config ends inside the http: section: the debug keys go first
    yaml = ("  debug:\n    addr: 127.0.0.1:%d\n" % port + extra
            + upstream.proxy_yaml(username="alice", extra="  push: true\n"))
    reg = make_registry(name="admin", extra_yaml=yaml)
    reg.admin = "http://127.0.0.1:%d/admin/cache" % port
    return reg


@pytest.fixture
def mirror(make_registry, upstream):
    reg = start_mirror(make_registry, upstream)
    yield reg
    # a clean exit: no job left behind, nothing leaked (ASan fails the exit code)
    rc = reg.stop()
    assert rc in (0, -15, None), "exit status %s; log tail:\n%s" % (rc, reg.log_tail())


def pull_index(reg, idx):
    """The index by tag, every child by digest, every blob."""
    r = pull_manifest(reg, idx.repo, idx.tag)
    assert r.status_code == 200 and r.content == idx.manifest, r.text
    for c in idx.children:
        r = pull_manifest(reg, idx.repo, c.digest)
        assert r.status_code == 200 and r.content == c.manifest, r.text
        for d, data in c.blobs.items():
            status, _, body, complete = raw_get(reg, "/v2/%s/blobs/%s" % (idx.repo, d))
            assert status == 200 and complete and body == data


def pull_from_cache(reg, upstream, img):
    upstream.proxy.reset()
    if img.is_index:
        pull_index(reg, img)
    else:
        pull_image(reg, img)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0, img.ref


def err_text(r):
    """The first error's message and detail: what the operator reads."""
    e = r.json()["errors"][0]
    return "%s: %s" % (e["message"], e.get("detail", ""))


def listing(reg, **params):
    r = requests.get(reg.admin, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r


def images_by_repo(reg):
    return {repo["name"]: repo["images"] for repo in listing(reg).json()["repositories"]}


def image_size(img):
    if img.is_index:
        return img.size + sum(image_size(c) for c in img.children)
    return img.size + sum(len(b) for b in img.blobs.values())


@pytest.fixture
def filled(mirror, upstream, seeded):
    """The mirror after pulling alpine and multi through it and pushing one local image."""
    pull_image(mirror, seeded.alpine)
    pull_index(mirror, seeded.multi)
    local = make_image()
    push_image(mirror, LOCAL_REPO, local, "v1")
    upstream.proxy.wait_idle()
    return local


def test_ls_shows_sources_sizes_and_pulls(mirror, upstream, seeded, filled):
    repos = images_by_repo(mirror)
    alpine, multi, local = seeded.alpine, seeded.multi, filled
    [a] = repos[alpine.repo]
    assert a["tag"] == alpine.tag and a["digest"] == alpine.digest
    assert a["source"] == "proxied" and a["upstream"] == upstream.url
    assert a["size"] == image_size(alpine)
    assert a["last_pulled"] and a["pulls"] >= 1
    [m] = repos[multi.repo]
    assert m["tag"] == multi.tag and m["digest"] == multi.digest
    assert m["source"] == "proxied" and m["size"] == image_size(multi)
    # the index GET and each child's count for the one image
    assert m["pulls"] == 1 + len(multi.children)
    [l] = repos[LOCAL_REPO]
    assert l["tag"] == "v1" and l["digest"] == local.digest and l["source"] == "pushed"
    assert "upstream" not in l and l["last_pulled"] is None
    assert l["size"] == len(local.manifest) + sum(len(b) for b in local.blobs.values())
    # paged as _catalog: n and last, a Link to the next page
    r = listing(mirror, n=1)
    assert [x["name"] for x in r.json()["repositories"]] == [sorted(repos)[0]]
    assert 'rel="next"' in r.headers["Link"] and "last=" in r.headers["Link"]
    r = listing(mirror, n=1, last=sorted(repos)[0])
    assert [x["name"] for x in r.json()["repositories"]] == [sorted(repos)[1]]
    r = listing(mirror, repo=alpine.repo)
    assert [x["name"] for x in r.json()["repositories"]] == [alpine.repo]


def test_rm_one_proxied_image(mirror, upstream, seeded, filled):
    alpine = seeded.alpine
    r = requests.delete("%s/%s:%s" % (mirror.admin, alpine.repo, alpine.tag), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["manifests"] == 1 and body["blobs"] == len(alpine.blobs) + 1
    stored = blob_files(mirror.rootdir)
    assert alpine.digest not in stored and not set(alpine.blobs) & set(stored)
    assert alpine.repo not in {n for n, imgs in images_by_repo(mirror).items() if imgs}
    # every other image is whole and served from the cache
    pull_from_cache(mirror, upstream, seeded.multi)
    r = pull_manifest(mirror, LOCAL_REPO, "v1")
    assert r.status_code == 200 and r.content == filled.manifest
    # the next pull of the purged image fetches every blob again, once
    upstream.proxy.reset()
    pull_image(mirror, alpine)
    upstream.proxy.wait_idle()
    for d in alpine.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d
    assert upstream.proxy.count(kind="manifest", method="GET") >= 1


def test_rm_keeps_local_pushes_unless_asked(mirror, upstream, seeded, filled):
    url = "%s/%s:v1" % (mirror.admin, LOCAL_REPO)
    r = requests.delete(url, timeout=30)
    assert_error(r, 403, "DENIED")
    assert "include-local" in err_text(r)
    assert pull_manifest(mirror, LOCAL_REPO, "v1").status_code == 200
    r = requests.delete(url, params={"include-local": "true"}, timeout=30)
    assert r.status_code == 200, r.text
    assert pull_manifest(mirror, LOCAL_REPO, "v1").status_code == 404
    # by digest, a proxied image goes the same way as by tag
    multi = seeded.multi
    r = requests.delete("%s/%s@%s" % (mirror.admin, multi.repo, multi.digest), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["manifests"] == 1 + len(multi.children)
    r = requests.delete("%s/%s@%s" % (mirror.admin, multi.repo, multi.digest), timeout=30)
    assert_error(r, 404, "MANIFEST_UNKNOWN")


@pytest.mark.skipif(helpers.storage_kind() == "oss", reason="corrupts a file of the filesystem "
                    "store")
def test_verify_removes_a_corrupted_blob(mirror, upstream, seeded):
    alpine = seeded.alpine
    pull_image(mirror, alpine)
    upstream.proxy.wait_idle()
    layer = alpine.layers[0].digest
    path = os.path.join(mirror.rootdir, "docker/registry/v2/blobs/sha256", layer[7:9], layer[7:],
                        "data")
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    r = requests.post(mirror.admin + "/verify", params={"repo": alpine.repo}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["removed"] == [layer]
    assert body["checked"] == len(alpine.blobs) + 1
    assert not os.path.exists(path)
    p = requests.get(mirror.admin + "/verify", timeout=10).json()
    assert not p["running"] and p["done"] == p["total"] == len(alpine.blobs) + 1
    upstream.proxy.reset()
    pull_image(mirror, alpine)  # checks every byte
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(layer) == 1
    assert upstream.proxy.blob_gets() == 1


def test_warm_fetches_each_blob_once(mirror, upstream, seeded):
    multi = seeded.multi
    r = requests.post(mirror.admin + "/warm", json=[multi.repo + ":" + multi.tag], timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    [ref] = body["references"]
    assert "error" not in ref, ref
    assert ref["manifests"] == 1 + len(multi.children)
    assert ref["blobs"] == len(multi.blobs) and body["done"] == len(multi.blobs)
    assert body["bytes"] == sum(len(b) for b in multi.blobs.values())
    assert not body["running"] and body["errors"] == 0
    upstream.proxy.wait_idle()
    for d in multi.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d
    pull_from_cache(mirror, upstream, multi)
    assert requests.get(mirror.admin + "/warm", timeout=10).json()["done"] == len(multi.blobs)
    # the status page's data shows the same run
    status = requests.get(mirror.admin.split("/admin/")[0] + "/status.json", timeout=10).json()
    assert status["warm"]["done"] == len(multi.blobs) and not status["warm"]["running"], status
    assert status["warm"]["bytes"] == sum(len(b) for b in multi.blobs.values())
    assert status["verify"] is None
    # warm again: the manifests are checked, the blobs are cached already
    upstream.proxy.reset()
    r = requests.post(mirror.admin + "/warm", json=[multi.repo + ":" + multi.tag], timeout=120)
    assert r.status_code == 200, r.text
    [ref] = r.json()["references"]
    assert ref["cached"] == ref["blobs"] == len(multi.blobs) and ref["bytes"] == 0
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0


def test_warm_of_listed_platforms(mirror, upstream, seeded):
    idx = seeded.multi_oci
    child = idx.children[0]
    plat = "%s/%s" % (child.platform.get("os", "linux"), child.platform["architecture"])
    if child.platform.get("variant"):
        plat += "/" + child.platform["variant"]
    r = requests.post(mirror.admin + "/warm", timeout=120, json={"references": [
        {"reference": "%s:%s" % (idx.repo, idx.tag), "platforms": [plat]}]})
    assert r.status_code == 200, r.text
    upstream.proxy.wait_idle()
    fetched = {d for d in idx.blobs if upstream.proxy.blob_gets(d)}
    wanted = set()
    for c in idx.children:
        p = "%s/%s" % (c.platform.get("os", "linux"), c.platform["architecture"])
        if plat in (p, p + "/" + c.platform.get("variant", "")):
            wanted |= set(c.blobs)
    assert fetched == wanted


def test_admin_needs_a_user_with_htpasswd(make_registry, upstream, seeded, tmp_path):
    path = write_htpasswd(tmp_path / "htpasswd", [("admin", "s3cret")])
    reg = start_mirror(make_registry, upstream, extra=auth_yaml(path))
    for method, url in [("GET", reg.admin), ("POST", reg.admin + "/verify"),
                        ("POST", reg.admin + "/warm"), ("GET", reg.admin + "/warm"),
                        ("DELETE", reg.admin + "/library/alpine:3.19")]:
        r = requests.request(method, url, timeout=30, json=["library/alpine:3.19"])
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        r = requests.request(method, url, timeout=30, auth=("admin", "wrong"))
        assert r.status_code == 401
    auth = ("admin", "s3cret")
    r = requests.post(reg.admin + "/warm", json=["library/alpine:3.19"], auth=auth, timeout=60)
    assert r.status_code == 200 and r.json()["errors"] == 0, r.text
    r = requests.get(reg.admin, auth=auth, timeout=30)
    assert r.status_code == 200
    assert [i["tag"] for i in {x["name"]: x["images"] for x in r.json()["repositories"]}[
        "library/alpine"]] == ["3.19"]


BAD_REFS = [
    ("library/alpine", "TAG_INVALID", "names no tag"),
    ("Library/alpine:1", "NAME_INVALID", "repository name"),
    ("library/alpine:", "TAG_INVALID", "tag is not valid"),
    ("library/alpine:-x", "TAG_INVALID", "tag is not valid"),
    ("library/alpine@sha256:abc", "DIGEST_INVALID", "not a valid digest"),
    ("library/alpine@md5:" + "0" * 32, "DIGEST_INVALID", "algorithm"),
    (":1", "NAME_INVALID", "repository name"),
    ("a//b:1", "NAME_INVALID", "repository name"),
]


@pytest.mark.parametrize("ref,code,words", BAD_REFS, ids=[r[0] for r in BAD_REFS])
def test_bad_reference_is_a_400(mirror, ref, code, words):
    r = requests.delete("%s/%s" % (mirror.admin, ref), timeout=10)
    assert_error(r, 400, code)
    assert words in err_text(r)
    r = requests.post(mirror.admin + "/warm", json=["library/alpine:3.19", ref], timeout=10)
    assert_error(r, 400, code)
    assert ref in err_text(r)


def test_bad_requests_are_400s(mirror):
    for body in [b"not json", b"{}", b"[]", b"[1]", b'[{"reference": "a:1", "platforms": [7]}]']:
        r = requests.post(mirror.admin + "/warm", data=body, timeout=10)
        assert r.status_code == 400, (body, r.text)
        assert err_text(r)
    assert_error(requests.get(mirror.admin, params={"n": "x"}, timeout=10), 400,
                 "PAGINATION_NUMBER_INVALID")
    assert_error(requests.get(mirror.admin, params={"repo": "A"}, timeout=10), 400,
                 "NAME_INVALID")
    assert_error(requests.post(mirror.admin + "/verify", params={"repo": "a b"}, timeout=10), 400,
                 "NAME_INVALID")
    assert requests.put(mirror.admin, timeout=10).status_code == 405


# ---------------------------------------------------------------------------
# regmirror cache

def cli(reg, *args, timeout=60):
    return subprocess.run([helpers.regmirror_bin(), "cache", args[0], reg.config_path,
                           *args[1:]], capture_output=True, text=True, timeout=timeout)


def test_cli_ls_and_rm_through_the_daemon(mirror, upstream, seeded, filled):
    p = cli(mirror, "ls")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["REPOSITORY", "IMAGE", "SOURCE"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert ("library/alpine", "3.19", "proxied") in rows
    assert (LOCAL_REPO, "v1", "pushed") in rows
    p = cli(mirror, "ls", "--json")
    assert p.returncode == 0, p.stderr
    assert {r["name"] for r in json.loads(p.stdout)["repositories"]} >= {"library/alpine",
                                                                        LOCAL_REPO}
    p = cli(mirror, "rm", LOCAL_REPO + ":v1")
    assert p.returncode == 1 and "include-local" in p.stderr
    p = cli(mirror, "rm", "library/alpine:3.19")
    assert p.returncode == 0, p.stderr
    assert "library/alpine:3.19" in p.stdout
    assert images_by_repo(mirror).get("library/alpine", []) == []
    p = cli(mirror, "rm", "library/alpine")
    assert p.returncode == 1 and "names no tag" in p.stderr
    p = cli(mirror, "verify")
    assert p.returncode == 0, p.stderr
    assert "0 removed" in p.stdout


def test_cli_offline(mirror, upstream, seeded, filled):
    assert mirror.stop() in (0, -15)
    p = cli(mirror, "ls", "--offline")
    assert p.returncode == 0, p.stderr
    rows = {tuple(line.split()[:3]) for line in p.stdout.splitlines()[1:]}
    assert ("library/alpine", "3.19", "proxied") in rows
    assert ("library/multi", "1", "proxied") in rows
    assert (LOCAL_REPO, "v1", "pushed") in rows
    p = cli(mirror, "rm", "--offline", "library/multi:1")
    assert p.returncode == 0, p.stderr
    p = cli(mirror, "rm", "--offline", LOCAL_REPO + ":v1")
    assert p.returncode == 1 and "include-local" in p.stderr
    p = cli(mirror, "rm", "--offline", "--include-local", LOCAL_REPO + ":v1")
    assert p.returncode == 0, p.stderr
    p = cli(mirror, "ls", "--offline")
    rows = {tuple(line.split()[:3]) for line in p.stdout.splitlines()[1:]}
    assert rows == {("library/alpine", "3.19", "proxied")}
    stored = blob_files(mirror.rootdir)
    assert set(seeded.alpine.blobs) <= set(stored)
    assert not set(seeded.multi.blobs) & set(stored)
    p = cli(mirror, "verify", "--offline")
    assert p.returncode == 0, p.stderr
    assert "0 removed" in p.stdout
    # the daemon serves what is left; the purged image is fetched again
    mirror.start()
    pull_from_cache(mirror, upstream, seeded.alpine)
    upstream.proxy.reset()
    pull_index(mirror, seeded.multi)
    upstream.proxy.wait_idle()
    for d in seeded.multi.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d


def test_cli_warm_and_verify_draw_a_bar_on_a_terminal(mirror, upstream, seeded):
    """stderr on a terminal: the progress line is redrawn in place; the result on stdout."""
    multi = seeded.multi
    master, slave = pty.openpty()
    try:
        p = subprocess.run([helpers.regmirror_bin(), "cache", "warm", mirror.config_path,
                            "%s:%s" % (multi.repo, multi.tag)], stdout=subprocess.PIPE,
                           stderr=slave, text=True, timeout=60)
        os.close(slave)
        slave = None
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0, drawn
    assert "warmed %s:%s: %d manifests, %d blobs" % (
        multi.repo, multi.tag, 1 + len(multi.children), len(multi.blobs)) in p.stdout
    assert b"\rwarm [" in drawn and b"%d/%d blobs" % (len(multi.blobs), len(multi.blobs)) in drawn
    upstream.proxy.wait_idle()
    for d in multi.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d
    # off a terminal: plain lines only
    p = cli(mirror, "verify", "--repo", multi.repo)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "verify: %d blobs checked, 0 removed" % (
        len(multi.blobs) + 1 + len(multi.children)) in p.stdout


def test_stop_during_a_warm(mirror, upstream, seeded):
    """A listing answers while a warm reads a slow blob; SIGTERM then: the daemon exits cleanly
    and soon."""
    alpine = seeded.alpine
    upstream.proxy.throttle(64 * 1024, kinds=["blob"])
    answers = []
    t = threading.Thread(target=lambda: answers.append(_post_quietly(
        mirror.admin + "/warm", [alpine.repo + ":" + alpine.tag])))
    t.start()
    assert helpers.wait_until(
        lambda: requests.get(mirror.admin + "/warm", timeout=5).json()["bytes"] > 0, timeout=20)
    # a listing is not queued behind the warm
    t0 = time.monotonic()
    listing(mirror)
    assert time.monotonic() - t0 < 2
    assert requests.get(mirror.admin + "/warm", timeout=5).json()["running"]
    t0 = time.monotonic()
    assert mirror.stop() in (0, -15)
    assert time.monotonic() - t0 < 8
    t.join(30)
    # cut short: no answer, an error, or (while draining) the warm's report of a failed blob
    assert answers
    status, body = answers[0]
    assert status != 200 or body["errors"] > 0, body


def _post_quietly(url, body):
    try:
        r = requests.post(url, json=body, timeout=60)
        return r.status_code, r.json() if r.status_code == 200 else r.text
    except requests.RequestException:
        return None, None


def test_rm_keeps_blobs_another_repository_links(mirror, upstream, seeded):
    alpine = seeded.alpine
    pull_image(mirror, alpine)
    shared = alpine.layers[0]
    upload_blob(mirror, LOCAL_REPO, shared.data, shared.digest)
    r = requests.delete("%s/%s:%s" % (mirror.admin, alpine.repo, alpine.tag), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["blobs"] == len(alpine.blobs)  # the manifest and the others, not the shared
    stored = blob_files(mirror.rootdir)
    assert shared.digest in stored
    assert not (set(alpine.blobs) - {shared.digest}) & set(stored)
    status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (LOCAL_REPO, shared.digest))
    assert status == 200 and complete and body == shared.data


@pytest.mark.skipif(helpers.storage_kind() == "oss", reason="corrupts a file of the filesystem "
                    "store")
def test_verify_removes_a_corrupted_manifest(mirror, upstream, seeded):
    """A manifest whose bytes changed goes with its tag: after a restart (nothing in memory)
    the tag is fetched again, not served broken."""
    alpine = seeded.alpine
    pull_image(mirror, alpine)
    upstream.proxy.wait_idle()
    d = alpine.digest
    path = os.path.join(mirror.rootdir, "docker/registry/v2/blobs/sha256", d[7:9], d[7:], "data")
    with open(path, "r+b") as f:
        f.seek(3)
        f.write(b"#")
    r = requests.post(mirror.admin + "/verify", timeout=60)
    assert r.status_code == 200 and r.json()["removed"] == [d], r.text
    assert mirror.stop() in (0, -15)
    mirror.start()
    upstream.proxy.reset()
    r = pull_manifest(mirror, alpine.repo, alpine.tag)
    assert r.status_code == 200 and r.content == alpine.manifest
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest", method="GET") >= 1
    pull_from_cache(mirror, upstream, alpine)
