"""Online maintenance of a running regmirror: proxy.ttl and proxy.maxsize eviction of proxied
content (never local content, never a blob a kept image shares, never what a pull is using),
and storage.maintenance.uploadpurging."""

import concurrent.futures
import os
import re
import threading
import time

import pytest

from helpers import (get_manifest, local_image_sharing, pull_problems, push_image, start_upload,
                     unique_repo, wait_until)

pytestmark = pytest.mark.regmirror_only("eviction of proxied content is regmirror's")

V2 = "docker/registry/v2"


def blob_on_disk(reg, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.exists(os.path.join(reg.rootdir, V2, "blobs", algo, hexd[:2], hexd, "data"))


def revision_on_disk(reg, repo, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.exists(os.path.join(reg.rootdir, V2, "repositories", repo,
                                       "_manifests/revisions", algo, hexd, "link"))


def test_ttl_evicts_proxied_content_only(make_registry, upstream, seeded):
    mirror = make_registry(name="ttl",
                           extra_yaml=upstream.proxy_yaml(extra="  ttl: 2s\n  push: true\n"))
    alpine = seeded.alpine
    assert pull_problems(mirror, alpine, alpine.repo) == []
    shared = alpine.layers[0]
    local_repo = unique_repo("local")
    local = local_image_sharing(shared.data)
    push_image(mirror, local_repo, local, "v1")
    assert wait_until(lambda: not revision_on_disk(mirror, alpine.repo, alpine.digest), 20), \
        mirror.log_tail()
    assert wait_until(lambda: not blob_on_disk(mirror, alpine.layers[1].digest), 20)
    assert not blob_on_disk(mirror, alpine.config.digest)
    assert not blob_on_disk(mirror, alpine.digest)
    # the local image and the layer it shares with the evicted one stay
    assert blob_on_disk(mirror, shared.digest)
    g = get_manifest(mirror, local_repo, "v1")
    assert g.status_code == 200 and g.content == local.manifest
    for d, data in local.blobs.items():
        assert mirror.get("/v2/%s/blobs/%s" % (local_repo, d)).content == data
    # and the evicted image comes back from the upstream
    upstream.proxy.reset()
    assert pull_problems(mirror, alpine, alpine.repo) == []
    assert upstream.proxy.count(kind="blob", method="GET") >= 1


def test_maxsize_evicts_least_recently_pulled(make_registry, upstream, seeded):
    alpine, multi = seeded.alpine, seeded.multi_oci
    alpine_bytes = sum(len(b) for b in alpine.blobs.values()) + len(alpine.manifest)
    bound = alpine_bytes + 8 * 1024
    mirror = make_registry(name="size", extra_yaml=upstream.proxy_yaml(
        extra="  ttl: 0s\n  maxsize: %d\n" % bound))
    assert pull_problems(mirror, multi, multi.repo) == []
    time.sleep(1.1)  # pull records have one-second resolution
    assert pull_problems(mirror, alpine, alpine.repo) == []
    child = multi.children[0]
    assert wait_until(lambda: not revision_on_disk(mirror, multi.repo, multi.digest), 20), \
        mirror.log_tail()
    assert wait_until(lambda: not blob_on_disk(mirror, child.layers[0].digest), 20)
    # the most recently pulled image fits under the bound and stays whole
    for d in alpine.blobs:
        assert blob_on_disk(mirror, d), d
    assert revision_on_disk(mirror, alpine.repo, alpine.digest)
    assert "evicting" in mirror.log_tail(20000)


def test_pulls_during_eviction_never_fail(make_registry, upstream, seeded):
    mirror = make_registry(name="busy", extra_yaml=upstream.proxy_yaml(extra="  ttl: 1s\n"))
    images = [seeded.alpine, seeded.multi, seeded.multi_oci]
    stop = time.monotonic() + 8
    lock = threading.Lock()
    counts = {"pulls": 0, "failed": 0}
    problems = []

    def worker(i):
        while time.monotonic() < stop:
            img = images[i % len(images)]
            p = pull_problems(mirror, img, img.repo)
            with lock:
                counts["pulls"] += 1
                if p:
                    counts["failed"] += 1
                    problems.extend(p)
            i += 1

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(worker, range(4)))
    with open(mirror.log_path, errors="replace") as f:
        log = f.read()
    evicted = sum(int(n) for n in re.findall(r"pass done: (\d+) items evicted", log))
    refetched = upstream.proxy.count(kind="blob", method="GET")
    distinct = len({d for img in images for d in
                    (img.children[0] if img.is_index else img).blobs})
    print("\npulls %d, failed %d, items evicted %d, upstream blob GETs %d for %d blobs"
          % (counts["pulls"], counts["failed"], evicted, refetched, distinct))
    assert counts["failed"] == 0, problems[:10]
    assert counts["pulls"] >= 12
    assert evicted > 0 and refetched > distinct, log[-3000:]


@pytest.mark.parametrize("dryrun", [False, True], ids=["purge", "dryrun"])
def test_upload_purging(make_registry, dryrun):
    reg = make_registry(name="purge", storage_yaml=(
        "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 1s\n"
        "      interval: 1s\n      dryrun: %s\n" % ("true" if dryrun else "false")))
    repo = unique_repo("purge")
    loc, _ = start_upload(reg, repo)
    uid = loc.split("?")[0].rstrip("/").split("/")[-1]
    updir = os.path.join(reg.rootdir, V2, "repositories", repo, "_uploads", uid)
    assert os.path.isdir(updir)
    if dryrun:
        assert wait_until(lambda: "would remove upload %s" % uid in reg.log_tail(), timeout=8)
        assert os.path.isdir(updir)
    else:
        assert wait_until(lambda: not os.path.isdir(updir), timeout=8), reg.log_tail()
        assert reg.get(loc).status_code == 404
