"""Blob uploads on the OSS driver, against the OSS emulator (test/oss/emulator.py).

regmirror serves with storage.oss and the smallest chunksize the config takes (5 MiB), so that
uploads of a few MB already go out as multipart uploads of several parts. Bodies reach the
storage through worker threads (offload.h) from a bounded buffer; these tests check what a
client sees (Range, Location, Docker-Upload-UUID, errors) and what lands in the bucket: the
blob object holds exactly the bytes pushed, sessions survive a wrong digest, a storage error
and a client that goes away mid-body, a cancelled session leaves nothing behind, and memory
does not grow with the size of a streamed body.
"""

import concurrent.futures
import hashlib
import os
import re
import socket
import subprocess
import time

import pytest
import requests

import helpers
from helpers import abs_location, assert_error, sha256, with_query

E = helpers.import_emulator()

pytestmark = pytest.mark.regmirror_only("serving from OSS storage")

AK, SK = "UPTESTAK", "up-secret-Zr7wN2"
BUCKET = "upbkt"
REGION = "cn-hangzhou"
PREFIX = "registry/up"
CHUNK = 5 * 1024 * 1024  # storage.oss.chunksize: the config's minimum
MB = 1024 * 1024


class OSSRegistry(helpers.Registry):
    """regmirror serving from the emulator's bucket."""

    def __init__(self, workdir, emu):
        super().__init__("regmirror", workdir)
        self.emu = emu

    def start(self, timeout=20.0):
        self.port = helpers.free_port()
        with open(self.config_path, "w") as f:
            f.write("version: 0.1\n"
                    "log:\n"
                    "  level: info\n"
                    "storage:\n"
                    "%s"
                    "  delete:\n"
                    "    enabled: true\n"
                    "  redirect:\n"
                    "    disable: true\n"
                    "http:\n"
                    # a shutdown waits this long for the uploads in flight (test_shutdown_*)
                    "  draintimeout: 1s\n"
                    "  addr: 127.0.0.1:%d\n" % (helpers.oss_driver_yaml(
                        AK, SK, REGION, "localhost:%d" % self.emu.port, BUCKET, PREFIX,
                        "    chunksize: %d\n" % CHUNK), self.port))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        # ASan keeps freed memory in quarantine (256 MB): small, RSS says what is in use.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", self.config_path], stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.workdir)
        logf.close()
        self._wait_ready(timeout)
        return self


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    e = E.Emulator(str(tmp_path_factory.mktemp("oss")), ak=AK, sk=SK, buckets=[BUCKET],
                   region=REGION).start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def reg(emu, tmp_path_factory):
    r = OSSRegistry(tmp_path_factory.mktemp("regmirror-oss"), emu)
    r.start()
    yield r
    rc = r.stop()
    log = r.log_tail(20000)
    assert rc == 0, "regmirror exited with %s:\n%s" % (rc, log)
    assert "Sanitizer" not in log, log


@pytest.fixture(autouse=True)
def no_faults(emu):
    yield
    emu.clear_faults()


def blob_key(digest):
    algo, hexd = digest.split(":")
    return "%s/docker/registry/v2/blobs/%s/%s/%s/data" % (PREFIX, algo, hexd[:2], hexd)


def assert_stored(emu, reg, repo, data, digest):
    """The blob object holds data, and the repository serves the blob's size."""
    assert emu.get_bytes(BUCKET, blob_key(digest)) == data
    r = reg.head("/v2/%s/blobs/%s" % (repo, digest))
    assert r.status_code == 200, r.text
    assert r.headers.get("Docker-Content-Digest") == digest
    assert int(r.headers["Content-Length"]) == len(data)
    # no multipart upload is left behind (an append writer that wrote nothing starts none)
    assert [u for u in emu.uploads(BUCKET) if "/%s/_uploads/" % repo in u[0]] == []


def upload_keys(emu, repo, uuid):
    return [k for k in emu.keys(BUCKET) if "/_uploads/%s/" % uuid in k and repo in k]


def status(reg, loc):
    r = reg.get(loc)
    assert r.status_code == 204, r.text
    return r


def assert_session(resp, reg, loc, size):
    assert resp.headers.get("Range") == "0-%d" % (size - 1 if size else 0)
    assert resp.headers.get("Docker-Upload-UUID") == loc.rstrip("/").split("/")[-1].split("?")[0]
    assert abs_location(reg, resp).split("?")[0] == loc.split("?")[0]


def session_size(resp):
    first, last = resp.headers["Range"].split("-")
    assert first == "0"
    return int(last) + 1 if last != "0" else 0


def patch(reg, loc, piece, off, **kw):
    return reg.patch(loc, data=piece, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": "%d-%d" % (off, off + len(piece) - 1)}, **kw)


def test_chunked_upload_in_several_patches(reg, emu):
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(12 * MB + 12345)
    digest = helpers.upload_blob_chunked(reg, repo, data, chunk=3 * MB, final_in_put=True)
    assert digest == sha256(data)
    assert_stored(emu, reg, repo, data, digest)
    # A second repository holding the same bytes keeps the one blob object.
    repo2 = helpers.unique_repo("up-oss")
    assert helpers.upload_blob_chunked(reg, repo2, data, chunk=5 * MB) == digest
    assert_stored(emu, reg, repo2, data, digest)


def test_chunk_sizes_around_the_buffer(reg, emu):
    """PATCHes of odd sizes, some below and some above the 1 MiB gathering buffer."""
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(7 * MB + 3)
    loc, r = helpers.start_upload(reg, repo)
    off = 0
    for size in (1, MB - 1, MB + 1, 17, 2 * MB + 5, 0):
        piece = data[off:off + size]
        if not piece:
            break
        r = patch(reg, loc, piece, off)
        assert r.status_code == 202, r.text
        off += len(piece)
        assert_session(r, reg, loc, off)
        assert_session(status(reg, loc), reg, loc, off)
        loc = abs_location(reg, r)
    r = reg.put(with_query(loc, digest=sha256(data)), data=data[off:],
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert_stored(emu, reg, repo, data, sha256(data))


def test_monolithic_uploads(reg, emu):
    repo = helpers.unique_repo("up-oss")
    # POST ?digest= with the body.
    data = os.urandom(7 * MB + 1)
    digest = sha256(data)
    r = reg.post("/v2/%s/blobs/uploads/?digest=%s" % (repo, digest), data=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert abs_location(reg, r).endswith("/v2/%s/blobs/%s" % (repo, digest))
    assert_stored(emu, reg, repo, data, digest)
    # POST, then one PUT ?digest= with the body; and a small one that fits one PutObject.
    for size in (3 * MB, 1000):
        data = os.urandom(size)
        digest = helpers.upload_blob(reg, repo, data)
        assert_stored(emu, reg, repo, data, digest)
    # An empty blob.
    digest = helpers.upload_blob(reg, repo, b"")
    assert_stored(emu, reg, repo, b"", digest)


def test_mount_and_fallback(reg, emu):
    src, dst = helpers.unique_repo("up-oss"), helpers.unique_repo("up-oss")
    data = os.urandom(200 * 1024)
    digest = helpers.upload_blob(reg, src, data)
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s" % (dst, digest, src))
    assert r.status_code == 201, r.text
    assert abs_location(reg, r).endswith("/v2/%s/blobs/%s" % (dst, digest))
    assert_stored(emu, reg, dst, data, digest)
    # Nothing to mount: a new session instead.
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s" % (dst, sha256(b"nope"), src))
    assert r.status_code == 202, r.text
    assert r.headers.get("Docker-Upload-UUID")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_streamed_single_patch(reg, emu):
    """One 50 MB PATCH with Content-Length, one 80 MB chunked PATCH: bounded memory."""
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(50 * MB)
    loc, _ = helpers.start_upload(reg, repo)
    r = reg.patch(loc, data=data, headers={"Content-Type": "application/octet-stream"},
                  timeout=300)
    assert r.status_code == 202, r.text
    assert_session(r, reg, abs_location(reg, r), len(data))
    r = reg.put(with_query(abs_location(reg, r), digest=sha256(data)), timeout=120)
    assert r.status_code == 201, r.text
    assert_stored(emu, reg, repo, data, sha256(data))
    del data

    # A chunked body of 80 MB made of one repeated 1 MiB piece (the test holds 1 MiB).
    piece = os.urandom(MB)
    n = 80
    h = hashlib.sha256()
    for _ in range(n):
        h.update(piece)
    digest = "sha256:" + h.hexdigest()
    loc, _ = helpers.start_upload(reg, repo)
    before = rss_kb(reg.proc.pid)
    peak = [before]

    def body():
        for i in range(n):
            if i % 8 == 0:
                peak[0] = max(peak[0], rss_kb(reg.proc.pid))
            yield piece

    r = reg.patch(loc, data=body(), headers={"Content-Type": "application/octet-stream"},
                  timeout=300)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-%d" % (n * MB - 1)
    r = reg.put(with_query(abs_location(reg, r), digest=digest), timeout=120)
    assert r.status_code == 201, r.text
    key = blob_key(digest)
    assert emu.head(BUCKET, key)["size"] == n * MB
    assert sha256(emu.get_bytes(BUCKET, key)) == digest
    # The writer's part buffer, two gathering buffers and allocator slack; not the body.
    grown = (peak[0] - before) // 1024
    assert grown < 40, "RSS grew by %d MiB during an %d MiB upload" % (grown, n)


def test_wrong_digest_keeps_the_session(reg, emu):
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(6 * MB + 7)
    loc, _ = helpers.start_upload(reg, repo)
    r = patch(reg, loc, data[:4 * MB], 0)
    assert r.status_code == 202, r.text
    loc = abs_location(reg, r)
    r = reg.put(with_query(loc, digest=sha256(b"something else")), data=data[4 * MB:],
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": "%d-%d" % (4 * MB, len(data) - 1)})
    assert_error(r, 400, "DIGEST_INVALID")
    # The session holds everything sent, and the right digest then commits it.
    assert_session(status(reg, loc), reg, loc, len(data))
    r = reg.put(with_query(loc, digest=sha256(data)))
    assert r.status_code == 201, r.text
    assert_stored(emu, reg, repo, data, sha256(data))
    assert upload_keys(emu, repo, loc.split("/")[-1].split("?")[0]) == []


def test_content_range_checks(reg, emu):
    repo = helpers.unique_repo("up-oss")
    loc, _ = helpers.start_upload(reg, repo)
    r = patch(reg, loc, b"x" * 1000, 0)
    assert r.status_code == 202
    r = patch(reg, loc, b"y" * 10, 5)  # not where the session ends
    assert r.status_code == 416, r.text
    assert r.headers.get("Range") == "0-999"
    assert_session(status(reg, loc), reg, loc, 1000)


def test_cancel(reg, emu):
    repo = helpers.unique_repo("up-oss")
    loc, r = helpers.start_upload(reg, repo)
    uuid = r.headers["Docker-Upload-UUID"]
    r = patch(reg, loc, os.urandom(6 * MB), 0)
    assert r.status_code == 202, r.text
    assert upload_keys(emu, repo, uuid)
    r = reg.delete(loc)
    assert r.status_code == 204, r.text
    assert upload_keys(emu, repo, uuid) == []
    assert_error(reg.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(reg.delete(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(patch(reg, loc, b"abc", 0), 404, "BLOB_UPLOAD_UNKNOWN")


def test_storage_error_keeps_the_session(reg, emu):
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(14 * MB)
    loc, _ = helpers.start_upload(reg, repo)
    r = patch(reg, loc, data[:2 * MB], 0)
    assert r.status_code == 202
    loc = abs_location(reg, r)
    # Every part upload fails (not retryable): the PATCH fails, the session keeps 2 MB.
    emu.add_fault("UploadPart", count=1000, status=403, code="AccessDenied")
    r = patch(reg, loc, data[2 * MB:12 * MB], 2 * MB)
    assert r.status_code >= 400, r.text
    assert "errors" in r.json()
    emu.clear_faults()
    assert_session(status(reg, loc), reg, loc, 2 * MB)
    r = patch(reg, loc, data[2 * MB:], 2 * MB)
    assert r.status_code == 202, r.text
    r = reg.put(with_query(abs_location(reg, r), digest=sha256(data)))
    assert r.status_code == 201, r.text
    assert_stored(emu, reg, repo, data, sha256(data))


def test_client_goes_away_mid_body(reg, emu):
    repo = helpers.unique_repo("up-oss")
    data = os.urandom(24 * MB)
    loc, _ = helpers.start_upload(reg, repo)
    path = loc[len(reg.base):]
    # Slow storage, so the body is paused with writes in flight when the client leaves.
    emu.add_fault("UploadPart", count=2, action="delay", delay=1.0)
    s = socket.create_connection(("127.0.0.1", reg.port))
    s.sendall(("PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
               "Content-Length: %d\r\n\r\n" % (path, reg.host, len(data))).encode())
    s.sendall(data[:13 * MB])
    s.close()
    # The server closes the writer once the write in flight is done: the session then holds
    # a prefix of what was sent, and stays usable.
    deadline = time.monotonic() + 30
    size, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = session_size(status(reg, loc))
        if now != size:
            size, since = now, time.monotonic()
        elif size > 0 and time.monotonic() - since > 2:
            break
        time.sleep(0.2)
    assert 0 < size <= 13 * MB
    r = patch(reg, loc, data[size:], size)
    assert r.status_code == 202, r.text
    r = reg.put(with_query(abs_location(reg, r), digest=sha256(data)))
    assert r.status_code == 201, r.text
    assert_stored(emu, reg, repo, data, sha256(data))
    assert reg.alive()


def test_concurrent_uploads(reg, emu):
    repo = helpers.unique_repo("up-oss")
    blobs = [os.urandom(3 * MB + i) for i in range(6)]

    def push(data):
        s = requests.Session()
        r = s.post(reg.url("/v2/%s/blobs/uploads/" % repo))
        assert r.status_code == 202
        loc = abs_location(reg, r)
        r = s.patch(loc, data=data[:MB + 10], headers={"Content-Range": "0-%d" % (MB + 9)})
        assert r.status_code == 202, r.text
        r = s.put(with_query(abs_location(reg, r), digest=sha256(data)), data=data[MB + 10:])
        assert r.status_code == 201, r.text
        s.close()
        return sha256(data)

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        digests = list(ex.map(push, blobs))
    for data, digest in zip(blobs, digests):
        assert_stored(emu, reg, repo, data, digest)


@pytest.mark.parametrize("client", ["waiting", "gone"])
def test_shutdown_mid_upload(tmp_path, client):
    """SIGTERM while body writes are in flight: the writer is closed, nothing leaks, exit 0."""
    e = E.Emulator(str(tmp_path / "oss"), ak=AK, sk=SK, buckets=[BUCKET], region=REGION).start()
    r = OSSRegistry(tmp_path / "regmirror", e).start()
    try:
        loc, _ = helpers.start_upload(r, helpers.unique_repo("up-oss"))
        e.add_fault("UploadPart", count=5, action="delay", delay=2.0)
        s = socket.create_connection(("127.0.0.1", r.port))
        s.sendall(("PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
            loc[len(r.base):], r.host, 24 * MB)).encode())
        s.sendall(os.urandom(13 * MB))
        if client == "gone":
            s.close()
        time.sleep(0.5)
        rc = r.stop()
        s.close()
        log = r.log_tail(20000)
        assert rc == 0, "regmirror exited with %s:\n%s" % (rc, log)
        assert "Sanitizer" not in log, log
    finally:
        r.stop()
        e.stop()
