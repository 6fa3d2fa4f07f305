"""Cluster: three regmirror nodes on one store (a shared filesystem root, or one OSS prefix in
the OSS pass), one redis-server and nginx in front (cluster.py), each node with its own
cluster.advertise. A cold blob costs the upstream one GET whichever nodes its clients ask; the
nodes that do not hold the fetch lease read the holder's spool. Without Redis each node
fetches on its own, never wrongly."""

import concurrent.futures
import time

import pytest
import requests

from helpers import (blob_files, blob_get, herd_get, make_image, pull_manifest, push_image, storage_kind,
                     wait_until)

pytestmark = pytest.mark.regmirror_only("cross-node fetch leases are regmirror's own")


@pytest.fixture
def nodes(make_cluster):
    """Three nodes on one store (OSS in the OSS pass, else a shared root), Redis, nginx."""
    return make_cluster(storage=storage_kind()).nodes


def herd_over(nodes, repo, digest, per_node):
    """per_node concurrent GETs on every node at once: every (status, length, sha256)."""
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        parts = list(pool.map(lambda n: herd_get(n, repo, digest, per_node), nodes))
    return [r for part in parts for r in part]


def test_herd_over_three_nodes_costs_one_upstream_get(nodes, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.reset()
    upstream.proxy.throttle(20 * 1024 * 1024)  # every node's clients arrive while it runs
    results = herd_over(nodes, img.repo, layer.digest, 10)
    upstream.proxy.wait_idle()
    assert len(results) == 30
    for status, n, got in results:
        assert (status, n, got) == (200, layer.size, layer.digest)
    assert upstream.proxy.blob_gets(layer.digest) == 1
    # Every node serves it from the store afterwards, with no upstream GET.
    upstream.proxy.reset()
    for n in nodes:
        assert blob_get(n, img.repo, layer.digest) == (200, layer.size, layer.digest)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0


def test_herd_through_nginx_one_get_one_storage_write(make_cluster, upstream, seeded):
    c = make_cluster(storage=storage_kind())
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.reset()
    upstream.proxy.throttle(20 * 1024 * 1024)
    results = herd_get(c.front, img.repo, layer.digest, 30)
    upstream.proxy.wait_idle()
    for status, n, got in results:
        assert (status, n, got) == (200, layer.size, layer.digest)
    assert upstream.proxy.blob_gets(layer.digest) == 1
    c.settle()
    if c.storage == "oss":
        assert c.blob_writes(layer.digest) == 1


def test_holder_killed_mid_fetch(nodes, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    size = layer.size
    upstream.proxy.reset()
    upstream.proxy.throttle(8 * 1024 * 1024, count=1)  # the first fetch is slow, later ones not
    holder, others = nodes[0], nodes[1:]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(blob_get, holder, img.repo, layer.digest)
        wait_until(lambda: upstream.proxy.bytes(method="GET", kind="blob") > 0, timeout=20)
        late = [pool.submit(blob_get, n, img.repo, layer.digest) for n in others for _ in (0, 1)]
        wait_until(lambda: upstream.proxy.bytes(method="GET", kind="blob") > size * 0.3,
                   timeout=30, every=0.02)
        holder.kill()
        cut = [f.result() for f in [first] + late]
    for status, n, got in cut:
        # A cut response is short (the client retries), never complete and wrong.
        assert n < size or got == layer.digest, (status, n, got)
    # The others take over: their clients now get the whole blob.
    for node in others:
        assert blob_get(node, img.repo, layer.digest) == (200, size, layer.digest)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(layer.digest) <= 2
    holder.start()
    assert blob_get(holder, img.repo, layer.digest) == (200, size, layer.digest)


def test_redis_killed_during_a_herd(make_cluster, upstream, seeded):
    # The herd started with leases; Redis dies while it runs: every client still gets the
    # right bytes (nodes may fetch on their own), and pulls after it work without Redis.
    c = make_cluster(storage=storage_kind())
    nodes = c.nodes
    img = seeded.big
    layer = img.layers[0]
    upstream.proxy.reset()
    upstream.proxy.throttle(20 * 1024 * 1024)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        herd = pool.submit(herd_over, nodes, img.repo, layer.digest, 4)
        wait_until(lambda: upstream.proxy.bytes(method="GET", kind="blob") > layer.size * 0.2,
                   timeout=30, every=0.02)
        c.redis.kill()
        results = herd.result()
    for status, n, got in results:
        assert (status, n, got) == (200, layer.size, layer.digest)
    upstream.proxy.wait_idle()
    assert 1 <= upstream.proxy.blob_gets(layer.digest) <= 3
    for node in nodes:
        assert blob_get(node, img.repo, layer.digest) == (200, layer.size, layer.digest)
    assert time.monotonic() - started < 60


def test_eviction_under_pulls_on_every_node(make_cluster, upstream, seeded):
    # maxsize below what the pulls bring: the one evicting node keeps the store under it
    # while every node pulls, and no pull fails (what is in flight anywhere stays).
    c = make_cluster(storage=storage_kind(), proxy_extra="  maxsize: 20MB\n")
    imgs = [seeded.alpine, seeded.big]
    upstream.proxy.throttle(30 * 1024 * 1024)
    deadline = time.monotonic() + 20
    rounds = 0
    while time.monotonic() < deadline:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            asked = [(node, img) for node in c.nodes for img in imgs]
            jobs = [pool.submit(blob_get, node, img.repo, img.layers[0].digest)
                    for node, img in asked]
            for (_, img), f in zip(asked, jobs):
                status, n, got = f.result()
                assert status == 200 and got == img.layers[0].digest, (img.repo, status, n)
        rounds += 1
    assert rounds >= 2
    # The 50 MB layer alone passes maxsize: once nothing pulls it, a pass removes it.
    big = seeded.big.layers[0].digest

    def evicted():
        c.settle()
        return big not in blob_files(c.nodes[0].rootdir)
    wait_until(evicted, timeout=60, every=1.0)
    # maxsize is the cluster's total: what all nodes brought in is under it after the pass.
    held = blob_files(c.nodes[0].rootdir)
    assert sum(held.values()) <= 20 * 1000 * 1000, held


def test_peer_endpoint_refuses_strangers(nodes, seeded):
    layer = seeded.big.layers[0]
    url = nodes[0].url("/_regmirror/spool/" + layer.digest)
    r = requests.get(url, timeout=10)
    assert r.status_code == 401, r.text
    r = requests.get(url, headers={"X-Regmirror-Peer": "%d.%s" % (time.time(), "0" * 64)},
                     timeout=10)
    assert r.status_code == 401, r.text
    r = requests.get(nodes[0].url("/_regmirror/spool/sha256:nothex"), timeout=10)
    assert r.status_code == 400, r.text


def test_tag_pushed_on_one_node_is_seen_by_the_others_at_once(make_cluster, seeded):
    # tagfreshness lets each node answer a fresh tag from memory; a push on one node makes
    # the others forget it (the events channel), so the very next pull sees the new tag.
    nodes = make_cluster(storage=storage_kind(),
                         proxy_extra="  tagfreshness: 1h\n  push: true\n  shadow: true\n").nodes
    img = seeded.alpine
    for node in nodes:
        for _ in range(2):
            assert pull_manifest(node, img.repo, img.tag).content == img.manifest
    local = make_image()
    push_image(nodes[0], img.repo, local, img.tag)
    for node in nodes[1:]:
        assert pull_manifest(node, img.repo, img.tag).content == local.manifest
    r = nodes[1].delete("/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status_code == 202, r.text
    for node in (nodes[0], nodes[2]):
        assert pull_manifest(node, img.repo, img.tag).content == img.manifest


def test_one_node_evicts_for_the_cluster(make_cluster):
    nodes = make_cluster(storage=storage_kind(), proxy_extra="  maxsize: 1GB\n").nodes

    def leaders():
        return [n for n in nodes if n.alive() and
                "this node runs the eviction" in n.log_tail(200000).split(
                    "this node leaves the eviction")[-1]]
    wait_until(lambda: len(leaders()) == 1, timeout=15)
    time.sleep(3)  # the others keep waiting while it lives
    assert len(leaders()) == 1
    first = leaders()[0]
    first.kill()
    # Its key expires; another node takes the eviction over.
    wait_until(lambda: len([n for n in leaders() if n is not first]) == 1, timeout=20)


def test_tag_recheck_across_nodes_costs_one_head(make_cluster, upstream, seeded):
    # Every node has the tag cached; with tagfreshness 0 each pull re-checks it. Pulls on
    # all nodes at once share one upstream HEAD: one node asks, the others wait for it and
    # answer from the store.
    nodes = make_cluster(storage=storage_kind(), proxy_extra="").nodes
    img = seeded.alpine
    for node in nodes:
        assert pull_manifest(node, img.repo, img.tag).content == img.manifest
    upstream.proxy.wait_idle()
    time.sleep(1.2)  # past the second in which a check stands for the others
    upstream.proxy.reset()
    upstream.proxy.stall(1.0, count=1, method="HEAD", kinds=["manifest"])
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda n: pull_manifest(n, img.repo, img.tag).content,
                            nodes + nodes))
    assert got == [img.manifest] * 6
    upstream.proxy.wait_idle()
    # (a node's first upstream request may be a 401 challenge: not counted)
    assert upstream.proxy.count(kind="manifest", method="HEAD",
                                status=lambda st: st != 401) == 1, upstream.proxy.summary()
    assert upstream.proxy.count(kind="manifest", method="GET") == 0
