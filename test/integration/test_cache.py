"""storage.cache.blobdescriptor: the in-memory cache and Redis (a real redis-server). The cache
is never the truth: with Redis killed, restarted or flushed mid-loop every answer stays right."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from helpers import free_port, make_image, push_image, unique_repo

pytestmark = pytest.mark.regmirror_only("regmirror's own cache wiring is what is tested")

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class Redis:
    def __init__(self, workdir):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def command(self, *args):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        try:
            s.sendall(("*%d\r\n" % len(args) + "".join(
                "$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
            return s.recv(65536)
        finally:
            s.close()


@pytest.fixture
def redis(tmp_path):
    if not os.access(REDIS, os.X_OK):
        pytest.skip("redis-server is not installed")
    r = Redis(tmp_path / "redis")
    r.start()
    yield r
    r.kill()


def storage_cache_yaml(kind):
    return "  cache:\n    blobdescriptor: %s\n" % kind


def heads_right(reg, repo, blobs, missing):
    """HEAD every blob and a missing one; returns the number of wrong answers."""
    wrong = 0
    for d, data in blobs.items():
        r = reg.session.head(reg.url("/v2/%s/blobs/%s" % (repo, d)), timeout=10)
        if r.status_code != 200 or int(r.headers["Content-Length"]) != len(data):
            wrong += 1
    r = reg.session.head(reg.url("/v2/%s/blobs/%s" % (repo, missing)), timeout=10)
    if r.status_code != 404:
        wrong += 1
    return wrong


def test_inmemory_cache(make_registry):
    reg = make_registry(name="inmem", storage_yaml=storage_cache_yaml("inmemory"))
    repo = unique_repo("cache")
    img = make_image()
    push_image(reg, repo, img, "t")
    missing = "sha256:" + "1" * 64
    for _ in range(3):
        assert heads_right(reg, repo, img.blobs, missing) == 0
    # A deleted (unlinked) blob is forgotten by the cache at once.
    layer = [d for d in img.blobs if img.blobs[d] is not img.config][0]
    assert reg.delete("/v2/%s/blobs/%s" % (repo, layer)).status_code == 202
    assert reg.session.head(reg.url("/v2/%s/blobs/%s" % (repo, layer)), timeout=10
                            ).status_code == 404


def test_redis_killed_restarted_flushed(make_registry, redis):
    reg = make_registry(name="redis", storage_yaml=storage_cache_yaml("redis"),
                        extra_yaml="redis:\n  addr: 127.0.0.1:%d\n  readtimeout: 200ms\n"
                                   "  dialtimeout: 200ms\n" % redis.port)
    repo = unique_repo("cache")
    img = make_image(layer_sizes=(1024, 2048, 4096))
    push_image(reg, repo, img, "t")
    missing = "sha256:" + "2" * 64
    wrong = rounds = 0
    for phase in ("up", "killed", "restarted", "flushed"):
        if phase == "killed":
            redis.kill()
        elif phase == "restarted":
            redis.start()
        elif phase == "flushed":
            redis.command("FLUSHALL")
        deadline = time.time() + 1.5
        while time.time() < deadline:
            wrong += heads_right(reg, repo, img.blobs, missing)
            rounds += 1
    assert rounds > 20
    assert wrong == 0
    # The cache really is in use: registry:2's key layout holds the pushed blobs.
    keys = redis.command("KEYS", "blobs::*")
    assert any(d.encode() in keys for d in img.blobs)
