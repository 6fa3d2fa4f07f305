"""Redis Sentinel: a 3-node cluster (cluster.py) whose Redis is a master and a replica watched by
three redis-sentinel processes. Node 0 names them with `redis.sentinel`, the others with
distribution 3's `redis.addrs` + `redis.mastername`. The master is killed with SIGKILL, the
sentinels promote the replica, and within seconds the nodes use it: a herd on a cold blob costs
one upstream GET again (the fetch leases live on the new master), the blob-descriptor cache
writes its keys there, and no pull fails meanwhile (Redis is never the truth)."""

import concurrent.futures
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

import cluster
from helpers import blob_get, free_port, herd_get, tail, wait_until

pytestmark = pytest.mark.regmirror_only("Sentinel support is regmirror's own")

SENTINEL = shutil.which("redis-sentinel")
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
MASTER_NAME = "mymaster"

SENTINEL_CONF = """port {port}
bind 127.0.0.1
daemonize no
dir {dir}
sentinel monitor {name} 127.0.0.1 {master} 2
sentinel down-after-milliseconds {name} 1000
sentinel failover-timeout {name} 3000
sentinel parallel-syncs {name} 1
"""


def cli(port, *args):
    """redis-cli's answer, one line per element."""
    out = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port)] + [str(a) for a in args],
                         capture_output=True, timeout=5, check=False).stdout.decode()
    return out.splitlines()


class Proc:
    """A redis-server or redis-sentinel on 127.0.0.1:port, answering PING once started."""

    def __init__(self, workdir, argv_fn):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        self.argv_fn = argv_fn
        self.proc = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def log(self):
        return os.path.join(self.workdir, "log")

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv_fn(self), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or cli(self.port, "PING") == ["PONG"],
                   timeout=10)
        assert self.proc.poll() is None, tail(self.log)
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)
        self.proc = None


def server_argv(replica_of=None):
    def argv(p):
        a = [cluster.REDIS, "--port", str(p.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", p.workdir]
        if replica_of:
            a += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        return a
    return argv


def sentinel_argv(master):
    def argv(p):
        conf = os.path.join(p.workdir, "sentinel.conf")  # the sentinel rewrites it
        with open(conf, "w") as f:
            f.write(SENTINEL_CONF.format(port=p.port, dir=p.workdir, name=MASTER_NAME,
                                         master=master.port))
        return [SENTINEL, conf]
    return argv


def master_info(sentinel):
    lines = cli(sentinel.port, "SENTINEL", "master", MASTER_NAME)
    return dict(zip(lines[0::2], lines[1::2]))


def named_master(sentinel):
    lines = cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
    return int(lines[1]) if len(lines) == 2 else None


@pytest.fixture
def redis_ha(tmp_path):
    """A master, its replica and three sentinels that all know each other and the replica."""
    if not SENTINEL:
        pytest.skip("redis-sentinel is not installed")
    procs = []
    try:
        master = Proc(tmp_path / "master", server_argv())
        procs.append(master.start())
        replica = Proc(tmp_path / "replica", server_argv(replica_of=master))
        procs.append(replica.start())
        wait_until(lambda: "master_link_status:up" in cli(replica.port, "INFO", "replication"),
                   timeout=10)
        sentinels = [Proc(tmp_path / ("sentinel%d" % i), sentinel_argv(master))
                     for i in range(3)]
        for s in sentinels:
            procs.append(s.start())
        # a failover needs the quorum to see one another, and a known replica to promote
        wait_until(lambda: all(master_info(s).get("num-other-sentinels") == "2" and
                               master_info(s).get("num-slaves") == "1" for s in sentinels),
                   timeout=20, every=0.2)
        yield master, replica, sentinels
    finally:
        for p in reversed(procs):
            p.kill()


def node_yaml(sentinels):
    addrs = ", ".join(s.addr for s in sentinels)
    timeouts = "  dialtimeout: 200ms\n  readtimeout: 500ms\n  writetimeout: 500ms\n"

    def render(node):
        # replaces the harness's redis section (a later duplicate key wins)
        if node.index == 0:
            return ("redis:\n  sentinel:\n    mastername: %s\n    addrs: [%s]\n" %
                    (MASTER_NAME, addrs)) + timeouts
        return "redis:\n  mastername: %s\n  addrs: [%s]\n" % (MASTER_NAME, addrs) + timeouts
    return render


def herd(nodes, repo, layer, per_node=4):
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        parts = list(pool.map(lambda n: herd_get(n, repo, layer.digest, per_node), nodes))
    results = [r for part in parts for r in part]
    assert results == [(200, layer.size, layer.digest)] * (per_node * len(nodes))


def subscribers(port):
    """Connections subscribed to a channel, the sentinels' own left out: one events link per
    node."""
    return sum(1 for line in cli(port, "CLIENT", "LIST")
               if "cmd=subscribe" in line and "name=sentinel-" not in line)


def test_failover_is_followed(redis_ha, make_cluster, upstream, seeded):
    master, replica, sentinels = redis_ha
    c = make_cluster(storage="fs", node_yaml=node_yaml(sentinels))
    nodes = c.nodes
    img = seeded.alpine
    before, after = img.layers[1], img.layers[2]
    wait_until(lambda: subscribers(master.port) == 3, timeout=10)

    upstream.proxy.reset()
    upstream.proxy.throttle(150 * 1024)  # the herd's later clients arrive while it runs
    herd(nodes, img.repo, before)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(before.digest) == 1
    wait_until(lambda: cli(master.port, "EXISTS", "blobs::" + before.digest) == ["1"],
               timeout=10)

    # Pulls go on through the failover: every one succeeds.
    stop = threading.Event()
    pulls = []

    def pull_loop():
        while not stop.is_set():
            for n in nodes:
                pulls.append(blob_get(n, img.repo, before.digest))
            time.sleep(0.05)

    puller = threading.Thread(target=pull_loop)
    puller.start()
    try:
        killed = time.monotonic()
        master.kill()
        wait_until(lambda: all(named_master(s) == replica.port for s in sentinels),
                   timeout=20, every=0.1)
        promoted = time.monotonic() - killed
        wait_until(lambda: subscribers(replica.port) == 3, timeout=10, every=0.1)
        followed = time.monotonic() - killed
    finally:
        stop.set()
        puller.join()
    assert pulls and all(p == (200, before.size, before.digest) for p in pulls), [
        p for p in pulls if p != (200, before.size, before.digest)][:5]
    assert followed - promoted < 5, (promoted, followed)
    assert cli(replica.port, "ROLE")[0] == "master"

    # The leases are on the new master: one upstream GET for a herd on a cold blob.
    upstream.proxy.reset()
    upstream.proxy.throttle(100 * 1024)
    herd(nodes, img.repo, after)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(after.digest) == 1
    # The cache writes its keys there too.
    wait_until(lambda: cli(replica.port, "EXISTS", "blobs::" + after.digest) == ["1"],
               timeout=10)
    assert cli(replica.port, "GET", "regmirror:lease:" + after.digest) == ["stored"]
    for n in nodes:
        assert "the sentinels name 127.0.0.1:%d the master" % replica.port in n.log_tail(20000)
    print("sentinel failover: promoted after %.1fs, every node on the new master after %.1fs, "
          "%d pulls meanwhile, all good" % (promoted, followed, len(pulls)))
