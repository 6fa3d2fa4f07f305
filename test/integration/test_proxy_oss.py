"""The pull-through cache on the OSS driver, against the OSS emulator (test/oss/emulator.py).

On a remote store the proxy spools a fetched blob in a local directory (proxy.spooldir), serves
every attached client from there, and imports the verified file into the bucket off the event
loop. These tests pull through a regmirror whose store is the emulator's bucket: the first pull
fetches each blob once, the second comes from the bucket alone; concurrent clients of one cold
blob share one upstream GET; what ends up in the bucket hashes to its digest; nothing bad is
stored; the spool is left empty and stale spool content is removed at start; and the daemon
exits cleanly (ASan/LSan builds: no leak reports) with its offload jobs still in flight.
"""

import concurrent.futures
import copy
import hashlib
import os
import re
import signal
import subprocess
import time

import pytest
import requests

import helpers
from helpers import herd_get, pull_image, pull_manifest, raw_get

E = helpers.import_emulator()

pytestmark = pytest.mark.regmirror_only("the proxy's OSS spool is regmirror's behaviour")

AK, SK = "PXTESTAK", "proxy-secret-Zq7rT2"
BUCKET = "pxbkt"
REGION = "cn-hangzhou"
PREFIX = "mirror"
BLOB_RE = re.compile(r"^docker/registry/v2/blobs/sha256/[0-9a-f]{2}/([0-9a-f]+)/data$")


@pytest.fixture
def emu(tmp_path):
    e = E.Emulator(str(tmp_path / "oss"), ak=AK, sk=SK, buckets=[BUCKET], region=REGION).start()
    yield e
    e.stop()


class OssMirror:
    """A regmirror on the emulator's bucket, pulling through from the test upstream."""

    def __init__(self, workdir, emu, upstream, extra=""):
        self.workdir = str(workdir)
        self.spooldir = os.path.join(self.workdir, "spool")
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.emu = emu
        self.upstream = upstream
        self.extra = extra
        self.proc = None
        self.rc = None
        self.port = None
        self.session = requests.Session()
        os.makedirs(self.workdir, exist_ok=True)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def start(self):
        self.port = helpers.free_port()
        with open(self.config_path, "w") as f:
            f.write("version: 0.1\n"
                    "log:\n"
                    "  level: info\n"
                    "storage:\n"
                    "%s"
                    "  redirect:\n"
                    "    disable: true\n"
                    "  delete:\n"
                    "    enabled: true\n"
                    "http:\n"
                    "  addr: 127.0.0.1:%d\n" % (helpers.oss_driver_yaml(
                        AK, SK, REGION, "localhost:%d" % self.emu.port, BUCKET, PREFIX),
                        self.port))
            f.write(self.upstream.proxy_yaml(username="alice",
                                             extra="  spooldir: %s\n" % self.spooldir))
            f.write(self.extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([helpers.regmirror_bin(), "serve", self.config_path],
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if requests.get(self.url("/v2/"), timeout=1).status_code in (200, 401):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("regmirror did not start:\n" + self.log_tail())

    def stop(self):
        """SIGTERM; the exit status (the same again when called once more)."""
        self.session.close()
        if self.proc is None:
            return self.rc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.rc, self.proc = self.proc.returncode, None
        return self.rc

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n=6000):
        return self.log()[-n:]


@pytest.fixture
def oss_mirror(tmp_path, emu, upstream):
    mirrors = []

    def factory(name="mirror", extra="", prepare=None):
        m = OssMirror(tmp_path / name, emu, upstream, extra)
        if prepare:
            prepare(m)
        mirrors.append(m)
        return m.start()

    yield factory
    for m in mirrors:
        rc = m.stop()
        log = m.log()
        assert rc == 0, "exit status %r; log tail:\n%s" % (rc, log[-6000:])
        for bad in ("LeakSanitizer", "AddressSanitizer", "runtime error"):
            assert bad not in log, log[-6000:]


@pytest.fixture
def mirror(oss_mirror):
    return oss_mirror()


def bucket_blobs(emu):
    """digest -> sha256 of the bytes of every blob object in the bucket."""
    out = {}
    for k in emu.keys(BUCKET):
        m = BLOB_RE.match(k[len(PREFIX) + 1:])
        if m:
            out["sha256:" + m.group(1)] = "sha256:" + hashlib.sha256(
                emu.get_bytes(BUCKET, k)).hexdigest()
    return out


def spool_files(m):
    """Regular files left in the mirror's spool directory."""
    out = []
    for dirpath, _, files in os.walk(m.spooldir):
        out += [os.path.relpath(os.path.join(dirpath, f), m.spooldir) for f in files]
    return out


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def wait_stored(emu, digests, timeout=10.0):
    """The import runs after the clients were served: wait until every digest is an object."""
    return wait_for(lambda: set(digests) <= set(bucket_blobs(emu)), timeout)


def test_pull_through_then_from_the_bucket(mirror, emu, upstream, seeded):
    img = seeded.alpine
    pull_image(mirror, img)
    upstream.proxy.wait_idle()
    for d in img.blobs:
        assert upstream.proxy.blob_gets(d) == 1, d
    assert wait_stored(emu, img.blobs), (sorted(bucket_blobs(emu)), mirror.log_tail())
    stored = bucket_blobs(emu)
    for d in img.blobs:
        assert stored[d] == d
    # The imported spool files are gone (readers held them open while they needed them).
    assert wait_for(lambda: not spool_files(mirror)), spool_files(mirror)
    upstream.proxy.reset()
    pull_image(mirror, img)
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0
    assert upstream.proxy.count(kind="manifest", method="GET") == 0
    # A HEAD of a cached blob answers from the bucket.
    d = next(iter(img.blobs))
    r = mirror.session.head(mirror.url("/v2/%s/blobs/%s" % (img.repo, d)), timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(img.blobs[d])


def test_herd_one_upstream_fetch(mirror, emu, upstream, seeded):
    img = seeded.big
    layer = img.layers[0]
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    upstream.proxy.reset()
    upstream.proxy.throttle(40 * 1024 * 1024)  # long enough for every client to join

    results = herd_get(mirror, img.repo, layer.digest, 8)
    upstream.proxy.wait_idle()
    for status, n, d in results:
        assert status == 200 and n == layer.size and d == layer.digest
    assert upstream.proxy.blob_gets(layer.digest) == 1
    assert wait_stored(emu, [layer.digest]), mirror.log_tail()
    assert bucket_blobs(emu)[layer.digest] == layer.digest
    # Clients arriving now (import done or not) are served without another upstream fetch.
    results = herd_get(mirror, img.repo, layer.digest, 4)
    for status, n, d in results:
        assert status == 200 and n == layer.size and d == layer.digest
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(layer.digest) == 1


def test_head_uncached_blob_fetches_no_body(mirror, emu, upstream, seeded):
    layer = seeded.big.layers[0]
    r = mirror.session.head(mirror.url("/v2/%s/blobs/%s" % (seeded.big.repo, layer.digest)),
                            timeout=30)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == layer.size
    assert r.headers["Docker-Content-Digest"] == layer.digest
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(layer.digest) == 0
    assert layer.digest not in bucket_blobs(emu)


def test_blob_of_another_repository_is_linked(mirror, emu, upstream, seeded):
    """A blob stored for one repository is linked into another after an upstream HEAD."""
    img = seeded.alpine
    pull_image(mirror, img)
    assert wait_stored(emu, img.blobs)
    other = helpers.unique_repo()
    upstream.push(other, copy.copy(img), ["v"])
    upstream.proxy.reset()
    assert pull_manifest(mirror, other, "v").content == img.manifest
    for d, data in img.blobs.items():
        status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (other, d))
        assert status == 200 and complete and body == data
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets() == 0
    assert upstream.proxy.count(kind="blob", method="HEAD") == len(img.blobs)


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_bad_upstream_bytes_never_stored(mirror, emu, upstream, seeded, fault):
    img = seeded.alpine
    layer = img.layers[1]
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    if fault == "cut":
        upstream.proxy.cut_after(layer.size // 2)
    else:
        upstream.proxy.corrupt(offset=layer.size - 10)
    status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert not (status == 200 and complete and body != layer.data)
    assert not complete or status != 200
    time.sleep(0.3)
    assert layer.digest not in bucket_blobs(emu)
    assert not spool_files(mirror), spool_files(mirror)
    upstream.proxy.clear_faults()
    status, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert status == 200 and complete and body == layer.data
    assert wait_stored(emu, [layer.digest])
    assert bucket_blobs(emu)[layer.digest] == layer.digest


def test_stale_spool_removed_at_start(oss_mirror, emu, upstream, seeded):
    def plant(m):
        stale = os.path.join(m.spooldir, "docker/registry/v2/repositories/x/_uploads/u/data")
        os.makedirs(os.path.dirname(stale))
        with open(stale, "wb") as f:
            f.write(b"left over")

    m = oss_mirror(prepare=plant)
    assert spool_files(m) == []
    pull_image(m, seeded.alpine)
    assert wait_stored(emu, seeded.alpine.blobs)


def test_shutdown_while_importing(oss_mirror, emu, upstream, seeded):
    """SIGTERM right after a fetch completes, its import possibly in flight: a clean exit (the
    fixture checks the status and the sanitizer reports)."""
    m = oss_mirror()
    img = seeded.big
    assert pull_manifest(m, img.repo, img.tag).status_code == 200
    layer = img.layers[0]
    status, _, body, complete = raw_get(m, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert status == 200 and complete and sha_ok(body, layer.digest)
    assert m.stop() == 0, m.log_tail()


def sha_ok(body, digest):
    return "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_shutdown_mid_flight(oss_mirror, emu, upstream, seeded):
    """SIGTERM with lookups queued, a fetch streaming and clients attached: a clean exit."""
    m = oss_mirror()
    img = seeded.big
    assert pull_manifest(m, img.repo, img.tag).status_code == 200
    upstream.proxy.throttle(20 * 1024 * 1024)
    paths = ["/v2/%s/blobs/%s" % (img.repo, img.layers[0].digest)] * 6
    paths += ["/v2/%s/blobs/%s" % (seeded.alpine.repo, d) for d in seeded.alpine.blobs]
    paths += ["/v2/%s/manifests/%s" % (seeded.alpine.repo, seeded.alpine.tag)] * 4

    def one(path):
        try:
            return raw_get(m, path, timeout=30)[0]
        except OSError:
            return 0

    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        futures = [pool.submit(one, p) for p in paths]
        time.sleep(0.4)
        assert m.stop() == 0, m.log_tail()
        for f in futures:
            f.result()
