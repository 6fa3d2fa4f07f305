"""The running daemon's background work on the OSS driver, against the OSS emulator
(test/oss/emulator.py): proxy.ttl eviction (proxied content goes, local content and the
blobs it shares stay, pulls racing the passes never fail), upload purging, and the storage
health check (reported, failing while the bucket answers errors, passing again after). On
OSS every storage call of these runs on a worker thread: while each OSS request takes seconds
the loop still answers at once. Each daemon must exit 0 on SIGTERM (ASan/LSan clean)."""

import concurrent.futures
import os
import random
import re
import subprocess
import threading
import time

import pytest
import requests

import helpers
from helpers import (local_image_sharing, pull_problems, push_image, start_upload, unique_repo,
                     wait_until)

E = helpers.import_emulator()

pytestmark = pytest.mark.regmirror_only("eviction, upload purging on OSS are regmirror's")

AK, SK = "MTTESTAK", "mt-secret-Pq7Lw2"
BUCKET = "mtbkt"
REGION = "cn-hangzhou"
PREFIX = "mt/root"
V2 = PREFIX + "/docker/registry/v2"


@pytest.fixture
def emu(tmp_path):
    e = E.Emulator(str(tmp_path / "oss"), ak=AK, sk=SK, buckets=[BUCKET], region=REGION).start()
    yield e
    e.clear_faults()
    e.stop()


class OssRegistry(helpers.Registry):
    """regmirror serving from the emulator's bucket under PREFIX."""

    def __init__(self, workdir, emu, extra_yaml="", storage_yaml=""):
        super().__init__("regmirror", workdir, extra_yaml=extra_yaml, storage_yaml=storage_yaml)
        self.emu = emu
        self.debug_port = helpers.free_port()
        self.debug = "http://127.0.0.1:%d" % self.debug_port

    def render(self):
        spool = os.path.join(self.workdir, "spool")
        os.makedirs(spool, exist_ok=True)
        extra = self.extra_yaml
        if re.search(r"^proxy:\n", extra, re.M) and spooldir_supported(self.binary, spool):
            extra = re.sub(r"^proxy:\n", lambda _: "proxy:\n  spooldir: %s\n" % spool, extra,
                           count=1, flags=re.M)
        return ("version: 0.1\n"
                "log:\n"
                "  level: info\n"
                "storage:\n"
                "%s"
                "  redirect:\n"
                "    disable: true\n"
                "  delete:\n"
                "    enabled: true\n"
                "%s"
                "http:\n"
                "  addr: 127.0.0.1:%d\n"
                "  debug:\n"
                "    addr: 127.0.0.1:%d\n"
                "    prometheus:\n"
                "      enabled: true\n"
                "      path: /metrics\n"
                "%s" % (helpers.oss_driver_yaml(AK, SK, REGION, "localhost:%d" % self.emu.port,
                                                BUCKET, PREFIX),
                        self.storage_yaml, self.port, self.debug_port, extra))


_spool_ok = {}


def spooldir_supported(binary, spool):
    """Whether this regmirror knows proxy.spooldir (without it the default directory is
    shared by every daemon of the run)."""
    if binary not in _spool_ok:
        cfg = os.path.join(spool, "probe.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                    "proxy:\n  remoteurl: http://127.0.0.1:1\n  spooldir: %s\n" % (spool, spool))
        p = subprocess.run([binary, "check-config", cfg], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        os.unlink(cfg)
        _spool_ok[binary] = p.returncode == 0
    return _spool_ok[binary]


@pytest.fixture
def oss_registry(tmp_path, emu):
    regs = []

    def factory(name, **kw):
        if not helpers.regmirror_bin():
            pytest.skip("REGMIRROR_BIN is not set")
        r = OssRegistry(tmp_path / name, emu, **kw)
        regs.append(r)
        r.start()
        return r

    yield factory
    for r in regs:
        if r.proc is not None:
            emu.clear_faults()
            rc = r.stop()
            assert rc == 0, "exit %s; log tail:\n%s" % (rc, r.log_tail())
            assert_clean_log(r)


def assert_clean_log(reg):
    with open(reg.log_path, errors="replace") as f:
        log = f.read()
    for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer"):
        assert bad not in log, log[-6000:]
    assert SK not in log


def stored(emu, rel):
    """Whether the object V2/rel is in the bucket."""
    return (V2 + "/" + rel) in set(emu.keys(BUCKET))


def blob_stored(emu, digest):
    algo, hexd = digest.split(":", 1)
    return stored(emu, "blobs/%s/%s/%s/data" % (algo, hexd[:2], hexd))


def revision_stored(emu, repo, digest):
    algo, hexd = digest.split(":", 1)
    return stored(emu, "repositories/%s/_manifests/revisions/%s/%s/link" % (repo, algo, hexd))


def deletes(emu):
    ops = emu.stats_dict()["ops"]
    return ops.get("DeleteObject", 0) + ops.get("DeleteMultipleObjects", 0)


def test_ttl_eviction_on_oss(oss_registry, emu, upstream, seeded):
    mirror = oss_registry("ttl", extra_yaml=upstream.proxy_yaml(extra="  ttl: 3s\n  push: true\n"))
    alpine = seeded.alpine
    assert pull_problems(mirror, alpine, alpine.repo) == []
    assert revision_stored(emu, alpine.repo, alpine.digest)
    # blobs are committed once their fetch ends, which may be just after the client has them
    assert wait_until(lambda: all(blob_stored(emu, d) for d in alpine.blobs), timeout=2)
    shared = alpine.layers[0]
    local_repo = unique_repo("local")
    local = local_image_sharing(shared.data)
    push_image(mirror, local_repo, local, "v1")
    assert wait_until(lambda: not revision_stored(emu, alpine.repo, alpine.digest), timeout=30), \
        mirror.log_tail()
    assert wait_until(lambda: not blob_stored(emu, alpine.layers[1].digest), timeout=30), \
        mirror.log_tail()
    assert not blob_stored(emu, alpine.config.digest)
    assert not blob_stored(emu, alpine.digest)
    assert wait_until(lambda: "eviction: pass done" in mirror.log_tail(20000), 20), \
        mirror.log_tail()
    # the local image and the proxied layer it shares stay
    assert blob_stored(emu, shared.digest)
    g = helpers.get_manifest(mirror, local_repo, "v1")
    assert g.status_code == 200 and g.content == local.manifest
    for d, data in local.blobs.items():
        assert mirror.get("/v2/%s/blobs/%s" % (local_repo, d)).content == data
    # the evicted image comes back from the upstream
    upstream.proxy.reset()
    assert pull_problems(mirror, alpine, alpine.repo) == []
    assert upstream.proxy.count(kind="blob", method="GET") >= 1


def test_pulls_during_eviction_on_oss(oss_registry, emu, upstream, seeded):
    mirror = oss_registry("busy", extra_yaml=upstream.proxy_yaml(extra="  ttl: 1s\n"))
    images = [seeded.alpine, seeded.multi, seeded.multi_oci]
    stop = time.monotonic() + 12
    lock = threading.Lock()
    counts = {"pulls": 0, "failed": 0}
    problems = []

    def worker(i):
        rnd = random.Random(i)
        while time.monotonic() < stop:
            img = images[i % len(images)]
            p = pull_problems(mirror, img, img.repo)
            with lock:
                counts["pulls"] += 1
                if p:
                    counts["failed"] += 1
                    problems.extend(p)
            i += 1
            # gaps longer than the ttl now and then: passes find idle images to evict while
            # other pulls of the same ones come and go
            time.sleep(rnd.uniform(0, 1.6))

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(worker, range(4)))
    with open(mirror.log_path, errors="replace") as f:
        log = f.read()
    evicted = sum(int(n) for n in re.findall(r"pass done: (\d+) items evicted", log))
    print("\npulls %d, failed %d, items evicted %d, OSS deletes %d"
          % (counts["pulls"], counts["failed"], evicted, deletes(emu)))
    assert counts["failed"] == 0, problems[:10]
    assert counts["pulls"] >= 8
    assert evicted > 0 and deletes(emu) > 0, log[-3000:]
    # quiet now: the next passes evict everything, and every pull still works afterwards
    assert wait_until(lambda: not any(revision_stored(emu, im.repo, im.digest) for im in images),
                    timeout=30), mirror.log_tail()
    assert wait_until(lambda: re.search(r"pass done: [1-9]\d* items evicted",
                                      mirror.log_tail(200000)), timeout=30), mirror.log_tail()
    for img in images:
        assert pull_problems(mirror, img, img.repo) == []


@pytest.mark.parametrize("dryrun", [False, True], ids=["purge", "dryrun"])
def test_upload_purging_on_oss(oss_registry, emu, dryrun):
    reg = oss_registry("purge", storage_yaml=(
        "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 1s\n"
        "      interval: 1s\n      dryrun: %s\n" % ("true" if dryrun else "false")))
    repo = unique_repo("purge")
    loc, _ = start_upload(reg, repo)
    uid = loc.split("?")[0].rstrip("/").split("/")[-1]
    up = "%s/repositories/%s/_uploads/%s/" % (V2, repo, uid)

    def upload_keys():
        return [k for k in emu.keys(BUCKET) if k.startswith(up)]

    assert upload_keys()
    if dryrun:
        assert wait_until(lambda: "would remove upload %s" % uid in reg.log_tail(), timeout=10)
        assert upload_keys()
    else:
        assert wait_until(lambda: not upload_keys(), timeout=10), reg.log_tail()
        assert wait_until(lambda: "removed upload %s of %s" % (uid, repo) in reg.log_tail(), 20)
        assert reg.get(loc).status_code == 404


def check_up(reg):
    r = requests.get(reg.debug + "/metrics", timeout=10)
    assert r.status_code == 200
    m = re.search(r'^regmirror_health_check_up\{check="storagedriver_oss",counts="true"\} (\d)$',
                  r.text, re.M)
    return int(m.group(1)) if m else None


def test_storage_health_check_on_oss(oss_registry, emu):
    reg = oss_registry("health", extra_yaml=(
        "health:\n  storagedriver:\n    enabled: true\n    interval: 200ms\n    threshold: 2\n"))
    assert wait_until(lambda: check_up(reg) == 1, 20), reg.log_tail()
    r = requests.get(reg.debug + "/debug/health", timeout=10)
    assert r.status_code == 200 and r.json() == {}
    assert reg.get("/healthz").text == "ok\n"
    # Every OSS request now takes 1.5 s: the probes wait on a worker, the loop answers at once.
    emu.add_fault("*", count=1000000, action="delay", delay=1.5)
    time.sleep(0.5)
    for _ in range(5):
        t0 = time.monotonic()
        r = reg.get("/healthz", timeout=5)
        took = time.monotonic() - t0
        assert r.status_code == 200 and took < 0.5, (r.status_code, took)
        time.sleep(0.2)
    emu.clear_faults()
    # The bucket answers errors: failing after threshold runs, named in both pages.
    emu.add_fault("*", count=1000000, action="error", status=403, code="AccessDenied")
    assert wait_until(lambda: reg.get("/healthz").status_code == 503, timeout=20), reg.log_tail()
    r = reg.get("/healthz")
    assert r.text.startswith("unhealthy\nstoragedriver_oss: "), r.text
    r = requests.get(reg.debug + "/debug/health", timeout=10)
    assert r.status_code == 503 and list(r.json()) == ["storagedriver_oss"], r.text
    assert check_up(reg) == 0
    emu.clear_faults()
    assert wait_until(lambda: reg.get("/healthz").status_code == 200, timeout=20), reg.log_tail()
    assert check_up(reg) == 1
    assert "health: storagedriver_oss passes again" in reg.log_tail(20000)
