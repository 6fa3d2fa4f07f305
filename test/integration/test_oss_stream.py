"""Blobs on OSS go through regmirror as streams, and the redirect path hands out URLs that work.

- A big blob (REGMIRROR_STREAM_BYTES, default 1 GiB), generated on the fly, is pushed in one
  streamed PATCH and read back with a GET that the registry serves itself
  (storage.redirect.disable: true, so the bytes come from OSS through the driver's ranged
  reads). The daemon's VmRSS is sampled from /proc during both transfers: its growth must stay
  under REGMIRROR_STREAM_RSS_MIB (default 128 MiB). The figures show in the terminal summary.
  The release build is measured (REGMIRROR_RELEASE_BIN, else REGMIRROR_BIN with asan -> release):
  ASan's quarantine and shadow memory would make RSS say little about the daemon's buffering.
- With redirects on (registry:2's default for cloud drivers) a blob GET answers 307 to a
  presigned emulator URL that serves the blob, whole or by range. The presigned host is
  '<bucket>.localhost', which only libcurl resolves; with the bucket behind a custom domain
  the clients can reach (127.0.0.1, see the skopeo test) skopeo pulls through the redirects.

Both need REGMIRROR_TEST_STORAGE=oss (the session's emulator).
"""

import hashlib
import http.client
import os
import threading
import time
import urllib.parse

import pytest
import requests

import helpers
from helpers import (make_image, read_oci_layout, sha256, start_upload, upload_blob,
                     with_query, write_oci_layout)

pytestmark = [pytest.mark.regmirror_only("regmirror's OSS driver"),
              pytest.mark.oss_only("blobs stored on OSS")]

MIB = 1 << 20
CHUNK = 4 * MIB


def stream_size():
    return int(os.environ.get("REGMIRROR_STREAM_BYTES", str(1 << 30)))


class Payload:
    """size pseudo-random bytes in CHUNK pieces, never all in memory: a 4 MiB random pool,
    rotated by a different offset for every chunk."""

    def __init__(self, size, seed=0x5EED):
        import random
        self.size = size
        self.pool = random.Random(seed).randbytes(CHUNK)

    def chunks(self):
        left, i = self.size, 0
        while left > 0:
            off = (i * 7919 * 4099) % CHUNK
            piece = self.pool[off:] + self.pool[:off]
            n = min(left, CHUNK)
            yield piece[:n]
            left -= n
            i += 1


class RssSampler:
    """Samples VmRSS (and reads VmHWM) of a process from /proc every `every` seconds."""

    def __init__(self, pid, every=0.02):
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = None

    def status(self):
        out = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
        return out

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = self.status()["VmRSS"]
            except (OSError, KeyError):
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = self.status()["VmRSS"]
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.status()["VmRSS"])


def push_streamed(reg, repo, payload):
    """POST, one PATCH streaming the whole payload (Content-Length, no buffering), PUT ?digest.
    Returns the digest."""
    loc, _ = start_upload(reg, repo)
    u = urllib.parse.urlsplit(loc)
    h = hashlib.sha256()
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=600)
    try:
        conn.putrequest("PATCH", u.path + ("?" + u.query if u.query else ""))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(payload.size))
        conn.putheader("Content-Range", "0-%d" % (payload.size - 1))
        conn.endheaders()
        for piece in payload.chunks():
            h.update(piece)
            conn.send(piece)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 202, (r.status, body[:500])
        loc = urllib.parse.urljoin(reg.base + "/", r.getheader("Location"))
        assert r.getheader("Range") == "0-%d" % (payload.size - 1)
    finally:
        conn.close()
    digest = "sha256:" + h.hexdigest()
    r = reg.put(with_query(loc, digest=digest), data=b"", timeout=600)
    assert r.status_code == 201, (r.status_code, r.text[:500])
    return digest


def get_streamed(reg, repo, digest):
    """GET the blob, hashing it as it comes. Returns (status, Content-Length, bytes, sha256)."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=600)
    try:
        conn.request("GET", "/v2/%s/blobs/%s" % (repo, digest))
        r = conn.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            piece = r.read(CHUNK)
            if not piece:
                break
            h.update(piece)
            n += len(piece)
        return r.status, r.getheader("Content-Length"), n, "sha256:" + h.hexdigest()
    finally:
        conn.close()


def test_big_blob_streams_through_with_bounded_memory(make_registry, oss_store, summary_line,
                                                      tmp_path):
    size = stream_size()
    bound = int(os.environ.get("REGMIRROR_STREAM_RSS_MIB", "128")) * MIB
    binary = helpers.release_bin()
    reg = make_registry(name="stream", binary=binary)
    repo = helpers.unique_repo("stream")
    # Warm up (threads, connection pools, TLS-free curl handles) before the baseline.
    small = os.urandom(64 * 1024)
    d = upload_blob(reg, repo, small)
    assert reg.get("/v2/%s/blobs/%s" % (repo, d)).content == small
    pid = reg.proc.pid
    base = RssSampler(pid).status()

    payload = Payload(size)
    t0 = time.monotonic()
    with RssSampler(pid) as up:
        digest = push_streamed(reg, repo, payload)
    t_up = time.monotonic() - t0
    key = "%s/docker/registry/v2/blobs/sha256/%s/%s/data" % (reg.oss_prefix, digest[7:9],
                                                              digest[7:])
    assert oss_store.size(key) == size

    t0 = time.monotonic()
    with RssSampler(pid) as down:
        status, length, n, got = get_streamed(reg, repo, digest)
    t_down = time.monotonic() - t0
    assert status == 200
    assert length == str(size) and n == size
    assert got == digest
    hwm = RssSampler(pid).status()["VmHWM"]

    growth_up = up.peak - base["VmRSS"]
    growth_down = down.peak - base["VmRSS"]
    line = ("OSS stream (%s, %s): %d MiB blob; push %.1f s (%.0f MiB/s), GET %.1f s "
            "(%.0f MiB/s); VmRSS before %.1f MiB, peak during push %.1f MiB (+%.1f), during "
            "GET %.1f MiB (+%.1f); VmHWM %.1f MiB; %d+%d samples; bound +%d MiB" % (
                os.path.basename(os.path.dirname(binary)) or binary, helpers.storage_kind(),
                size // MIB, t_up, size / MIB / t_up, t_down, size / MIB / t_down,
                base["VmRSS"] / MIB, up.peak / MIB, growth_up / MIB, down.peak / MIB,
                growth_down / MIB, hwm / MIB, up.samples, down.samples, bound // MIB))
    summary_line(line)
    with open(tmp_path / "rss.txt", "w") as f:
        f.write(line + "\n")
    print(line)
    assert growth_up < bound, line
    assert growth_down < bound, line


def follow_presigned(location, headers=None):
    """GET a presigned emulator URL. Its host is '<bucket>.localhost:<port>', which libcurl
    resolves to loopback by itself but glibc (and Go) do not: connect to 127.0.0.1 and send
    that Host."""
    u = urllib.parse.urlsplit(location)
    hdrs = dict(headers or {})
    hdrs["Host"] = u.netloc
    url = "http://127.0.0.1:%d%s?%s" % (u.port, u.path, u.query)
    return requests.get(url, headers=hdrs, timeout=30, allow_redirects=False)


def test_blob_get_redirects_to_a_presigned_url(make_registry, oss_store):
    reg = make_registry(name="redirect", redirect=True)
    repo = helpers.unique_repo("redirect")
    data = os.urandom(300 * 1024 + 17)
    digest = upload_blob(reg, repo, data)

    r = reg.get("/v2/%s/blobs/%s" % (repo, digest))
    assert r.status_code == 307, (r.status_code, r.text[:300])
    loc = r.headers["Location"]
    u = urllib.parse.urlsplit(loc)
    assert u.scheme == "http"
    assert u.hostname == "%s.localhost" % oss_store.BUCKET and u.port == oss_store.port, loc
    assert u.path.endswith("/docker/registry/v2/blobs/sha256/%s/%s/data"
                           % (digest[7:9], digest[7:])), loc
    q = urllib.parse.parse_qs(u.query)
    assert "x-oss-signature" in q or "Signature" in q, loc
    assert oss_store.SK not in loc

    whole = follow_presigned(loc)
    assert whole.status_code == 200, whole.text[:300]
    assert sha256(whole.content) == digest
    part = follow_presigned(loc, {"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]

    # The signature covers the object: another key with the same query is refused.
    other = loc.replace(digest[7:], "0" * 64).replace("/%s/" % digest[7:9], "/00/")
    assert follow_presigned(other).status_code == 403

    # HEAD: the registry's own answer or the same redirect; an unknown blob: the registry's 404.
    h = reg.head("/v2/%s/blobs/%s" % (repo, digest))
    assert h.status_code in (200, 307), h.status_code
    if h.status_code == 200:
        assert h.headers.get("Content-Length") == str(len(data))
    missing = reg.get("/v2/%s/blobs/sha256:%s" % (repo, "1" * 64))
    assert missing.status_code == 404
    # The stored bytes are the pushed ones.
    assert reg.files.read("docker/registry/v2/blobs/sha256/%s/%s/data"
                          % (digest[7:9], digest[7:])) == data


def test_skopeo_pulls_through_presigned_redirects(make_registry, oss_store, sk, tmp_path):
    """A bucket whose custom domain is 127.0.0.1 (the emulator routes that Host to it; the
    driver takes an endpoint starting with '<bucket>.' as the bucket's own domain): presigned
    URLs then point where every client can connect, and skopeo pulls through the 307s."""
    bucket, domain = "127", "127.0.0.1"
    emu = oss_store.emu
    emu.store.create_bucket(bucket)
    emu.cnames[domain] = bucket
    try:
        reg = make_registry(name="redirect-cname", redirect=True, driver_yaml=oss_store.driver_yaml(
            "cname-root", endpoint="%s:%d" % (domain, emu.port), bucket=bucket))
        repo = helpers.unique_repo("redirect")
        img = make_image(layer_sizes=(300 * 1024, 1024 * 1024), real_layers=True)
        src = str(tmp_path / "src")
        write_oci_layout(src, [("v1", img)])
        dest = "docker://%s/%s:v1" % (reg.host, repo)
        sk("copy", "--dest-tls-verify=false", "oci:%s:v1" % src, dest)

        for d, data in img.blobs.items():
            r = reg.get("/v2/%s/blobs/%s" % (repo, d))
            assert r.status_code == 307, (r.status_code, r.text[:300])
            assert urllib.parse.urlsplit(r.headers["Location"]).netloc == "%s:%d" % (
                domain, emu.port)
        emu.reset_stats()
        out = str(tmp_path / "out")
        sk("copy", "--src-tls-verify=false", dest, "oci:%s:v1" % out)
        idx, blobs = read_oci_layout(out)
        assert idx["manifests"][0]["digest"] == img.digest
        for d, data in img.blobs.items():
            assert blobs[d] == data
        stats = emu.stats_dict()
        assert stats["ops"].get("GetObject", 0) >= len(img.blobs), stats["ops"]
        assert "403" not in stats["statuses"], stats
    finally:
        emu.cnames.pop(domain, None)
