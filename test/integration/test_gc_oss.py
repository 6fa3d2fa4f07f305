"""`regmirror garbage-collect` on the OSS driver, against the OSS emulator (test/oss/emulator.py,
which verifies every signature).

One store is written by Debian's `docker-registry` (filesystem driver): shared layers, a deleted
manifest, a moved tag, an index, a referrer (test_gc.populate). Each test uploads it, file by
file through the emulator's API, under a root directory of a bucket, and keeps a filesystem copy.
Our garbage-collect then runs on both, with the same flags: the dry runs print the same lines and
change nothing, the real runs leave the same objects in the bucket as files in the copy (so the
same kept blobs), every kept blob still hashes to its digest, and every request the driver made
was signed and verified. Without --force the command refuses on OSS (the driver has no instance
lock to tell whether a writable regmirror runs; see gc.h); `serve` then answers from the
same bucket.
"""

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import time
import urllib.parse

import pytest

import helpers
from helpers import blob_set, need_reference, populate, run_gc, write_config

E = helpers.import_emulator()

pytestmark = pytest.mark.regmirror_only("garbage-collect is a command of the regmirror binary")

AK, SK = "GCTESTAK", "gc-secret-Hk3vQ8"
BUCKET = "gcbkt"
REGION = "cn-hangzhou"
PREFIX = "registry/store"  # storage.oss.rootdirectory (given as /registry/store/)
BLOB_RE = re.compile(r"^docker/registry/v2/blobs/(sha256|sha384|sha512)/[0-9a-f]{2}/([0-9a-f]+)/data$")


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """A data directory written by docker-registry, and what populate() says must survive."""
    need_reference()
    work = tmp_path_factory.mktemp("gc-oss-populate")
    reg = helpers.Registry("docker-registry", work, rootdir=work / "root")
    try:
        reg.start()
        info = populate(reg)
    finally:
        rc = reg.stop()
    assert rc in (0, -15)
    return work / "root", info


@pytest.fixture
def emu(tmp_path):
    e = E.Emulator(str(tmp_path / "oss"), ak=AK, sk=SK, buckets=[BUCKET], region=REGION).start()
    yield e
    e.stop()


def put_tree(emu, root):
    """Uploads every file under root to BUCKET under PREFIX with V4-signed PutObjects."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        for dirpath, _, files in os.walk(root):
            for fn in files:
                path = os.path.join(dirpath, fn)
                key = PREFIX + "/" + os.path.relpath(path, root)
                with open(path, "rb") as f:
                    body = f.read()
                dt = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                headers = {"x-oss-date": dt, "x-oss-content-sha256": hashlib.sha256(body)
                           .hexdigest(), "content-type": "application/octet-stream"}
                creq = E.v4_canonical_request("PUT", BUCKET, key, [], headers, [])
                scope = "%s/%s/oss/aliyun_v4_request" % (dt[:8], REGION)
                sig = E.v4_signature(SK, dt[:8], REGION, "oss",
                                     E.v4_string_to_sign(dt, scope, creq))
                headers["authorization"] = "OSS4-HMAC-SHA256 Credential=%s/%s,Signature=%s" % (
                    AK, scope, sig)
                headers["host"] = "%s.localhost:%d" % (BUCKET, emu.port)
                headers["content-length"] = str(len(body))
                conn.request("PUT", "/" + urllib.parse.quote(key, safe="/~"), body, headers)
                r = conn.getresponse()
                assert r.status == 200, (key, r.status, r.read().decode())
                r.read()
    finally:
        conn.close()


def oss_config(path, emu, root=PREFIX):
    with open(path, "w") as f:
        f.write("version: 0.1\n"
                "log:\n"
                "  level: info\n"
                "storage:\n"
                "%s"
                "  delete:\n"
                "    enabled: true\n"
                "http:\n"
                "  addr: 127.0.0.1:%d\n" % (helpers.oss_driver_yaml(
                    AK, SK, REGION, "localhost:%d" % emu.port, BUCKET, root),
                    helpers.free_port()))
    return path


def bucket_files(emu):
    """{path under PREFIX: bytes' sha256} of every object in the store."""
    out = {}
    for k in emu.keys(BUCKET):
        assert k.startswith(PREFIX + "/"), k
        out[k[len(PREFIX) + 1:]] = hashlib.sha256(emu.get_bytes(BUCKET, k)).hexdigest()
    return out


def dir_files(root):
    """The same for a filesystem store (regmirror.lock is not part of the store)."""
    snap = helpers.snapshot(str(root))
    files = {os.path.normpath(k): v for k, v in snap.items() if v != "dir"}
    files.pop("regmirror.lock", None)
    return files


def bucket_blobs(emu):
    """digest -> size of every blob in the bucket, as test_gc.blob_set for a directory."""
    out = {}
    for k in emu.keys(BUCKET):
        m = BLOB_RE.match(k[len(PREFIX) + 1:])
        if m:
            out["%s:%s" % m.groups()] = emu.head(BUCKET, k)["size"]
    return out


def assert_all_signed(emu):
    """Every request since the last reset was V4-signed and verified."""
    stats = emu.stats_dict()
    assert set(stats["auth"]) == {"v4-header"}, stats
    for code in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId",
                 "RequestTimeTooSkewed"):
        assert code not in stats["errors"], stats
    assert "403" not in stats["statuses"], stats
    return stats


def sorted_lines(out):
    return sorted(l for l in out.splitlines() if l.strip())


def gc_ok(config, *flags):
    r = run_gc(config, *flags)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:], r.stdout[-2000:])
    return r


@pytest.mark.parametrize("untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_gc_on_oss_keeps_what_filesystem_gc_keeps(reference_store, emu, tmp_path, untagged):
    root, info = reference_store
    fs = tmp_path / "fs"
    shutil.copytree(root, fs)
    put_tree(emu, root)
    assert bucket_files(emu) == dir_files(root)
    flags = ["--delete-untagged"] if untagged else []
    oss_cfg = oss_config(str(tmp_path / "oss.yml"), emu)
    fs_cfg = write_config(str(tmp_path / "fs.yml"), fs)

    emu.reset_stats()
    before = bucket_files(emu)
    size_before = sum(bucket_blobs(emu).values())
    dry = gc_ok(oss_cfg, "--dry-run", "--force", *flags)
    assert bucket_files(emu) == before, "a dry run changed the bucket"
    stats = assert_all_signed(emu)
    assert not ({"DeleteObject", "DeleteMultipleObjects", "PutObject", "CopyObject"}
                & set(stats["ops"])), stats["ops"]
    fs_dry = gc_ok(fs_cfg, "--dry-run", *flags)
    assert sorted_lines(dry.stdout) == sorted_lines(fs_dry.stdout)
    m = re.search(r"would delete (\d+) manifests and (\d+) blobs, freeing (\d+) bytes", dry.stdout)
    assert m and int(m.group(2)) > 0, dry.stdout

    emu.reset_stats()
    real = gc_ok(oss_cfg, "--force", *flags)
    stats = assert_all_signed(emu)
    fs_real = gc_ok(fs_cfg, *flags)
    assert sorted_lines(real.stdout) == sorted_lines(fs_real.stdout)
    assert "deleted %s manifests and %s blobs, freed %s bytes" % m.groups() in real.stdout

    # The same store remains on both sides: every object, so the same kept blobs.
    kept = bucket_blobs(emu)
    assert kept == blob_set(str(fs))
    assert bucket_files(emu) == dir_files(fs)
    assert size_before - sum(kept.values()) == int(m.group(3))
    for k, h in bucket_files(emu).items():
        bm = BLOB_RE.match(k)
        if bm:
            assert "%s:%s" % bm.groups() == "sha256:" + h, k  # bytes still hash to the digest
    # What must survive did, what must go went.
    keep = [info["app1"], info["app2"], info["app3b"], info["other_img"], info["sig"]] + \
        info["kids"]
    for img in keep:
        assert img.digest in kept and set(img.blobs) <= set(kept), img.digest
    assert info["gone"].digest not in kept
    assert (info["app3"].digest in kept) != untagged
    print("\n--- OSS dry run (%s) ---\n%s--- OSS real run ---\n%s%s" % (
        "delete-untagged" if untagged else "all revisions", dry.stdout, real.stdout,
        "blob bytes in the bucket before %d, after %d; requests %s\n" % (
            size_before, sum(kept.values()), stats["ops"])))

    emu.reset_stats()
    again = gc_ok(oss_cfg, "--dry-run", "--force", *flags)
    assert "would delete 0 manifests and 0 blobs" in again.stdout
    assert_all_signed(emu)


def test_gc_on_oss_refuses_without_force(reference_store, emu, tmp_path):
    root, _ = reference_store
    put_tree(emu, root)
    before = bucket_files(emu)
    cfg = oss_config(str(tmp_path / "oss.yml"), emu)
    emu.reset_stats()
    r = run_gc(cfg, "--delete-untagged")
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "refusing to run: the oss storage has no instance lock" in r.stderr, r.stderr
    assert "--force" in r.stderr and "storage.maintenance.readonly" in r.stderr, r.stderr
    assert bucket_files(emu) == before
    assert emu.stats_dict()["total"] == 0  # refused before touching the bucket
    # A dry run deletes nothing, so it goes on (with a warning) as on the filesystem.
    dry = run_gc(cfg, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "warning" in dry.stderr and "would delete" in dry.stdout
    assert bucket_files(emu) == before
    assert_all_signed(emu)
    # serve takes the same bucket, and answers from what the store holds.
    port = int(re.search(r"addr: 127\.0\.0\.1:(\d+)", open(cfg).read()).group(1))
    p = subprocess.Popen([helpers.regmirror_bin(), "serve", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not helpers.port_is_listening(port):
            assert p.poll() is None and time.time() < deadline, "serve did not start"
            time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/v2/_catalog")
        resp = c.getresponse()
        assert resp.status == 200 and b"repositories" in resp.read()
        c.close()
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    s = subprocess.CompletedProcess([], 0, "", err)
    assert SK not in s.stderr + r.stderr + dry.stderr + dry.stdout
