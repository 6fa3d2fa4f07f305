"""The cluster harness itself (cluster.py): nginx spreads requests over every node, each node
can be killed and restarted on its config and port, Redis can be killed and comes back, and a
pull through the cluster is counted at the upstream."""

import collections

from helpers import pull_image, raw_get, sha256


def test_round_robin_reaches_every_node(cluster):
    seen = collections.Counter()
    for _ in range(3 * len(cluster.nodes)):
        r = cluster.front.get("/v2/")
        assert r.status_code in (200, 401), r.text
        seen[cluster.node_of(r)] += 1
    assert None not in seen
    assert sorted(seen.values()) == [3] * len(cluster.nodes)
    for node in cluster.nodes:
        assert node.get("/v2/").status_code in (200, 401)


def test_kill_restart_node_and_redis(cluster):
    node = cluster.nodes[1]
    port = node.port
    assert node.restart(kill=True) == -9
    assert node.port == port and node.get("/v2/").status_code in (200, 401)
    node.kill()
    cluster.redis.kill()
    # nginx passes over the dead node; the others answer without Redis
    for _ in range(4):
        r = cluster.front.get("/v2/")
        assert r.status_code in (200, 401) and cluster.node_of(r) is not node
    cluster.reset()
    assert cluster.alive() and cluster.redis.command("PING").startswith(b"+PONG")


def test_pull_through_the_cluster_is_counted(cluster, seeded):
    if not cluster.proxy:
        return
    img = seeded.alpine
    pull_image(cluster.front, img)
    layer = max(img.blobs, key=lambda d: len(img.blobs[d]))
    assert 1 <= cluster.upstream.proxy.blob_gets(layer) <= len(cluster.nodes)
    cluster.settle()
    for node in cluster.nodes:
        status, _, body, complete = raw_get(node, "/v2/%s/blobs/%s" % (img.repo, layer))
        assert status == 200 and complete and sha256(body) == layer
