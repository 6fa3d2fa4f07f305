"""Pull-through memory is bounded by the configuration, not by what clients ask.

- 2000 clients each GET a different uncached blob at once: every one gets its bytes, the
  daemon's VmHWM stays under 128 MiB, and its RSS comes back to within 16 MiB of the idle
  figure once the burst is over (proxy.maxfetches queues what is beyond the cap; per-fetch
  buffers start small; memory is handed back after a burst).
- 100 clients each GET a different uncached ~4 MB manifest at once: VmHWM under 128 MiB
  (manifest bodies beyond a small size share a fixed budget).
- proxy.maxfetches: 2 with a stalled upstream: a third distinct fetch waits in the queue
  (regmirror_upstream_fetch_queue_depth 1), a client of the same blob joins the running
  fetch without a slot, a queued client that goes away leaves the queue, and a wait longer
  than proxy.fetchqueuetimeout is answered 503 UNAVAILABLE with Retry-After.

The release build is measured (REGMIRROR_RELEASE_BIN, as test_oss_stream.py): ASan's shadow
memory and quarantine would make RSS say little about the daemon's buffers. The blob test
pulls from docker-registry directly (direct_url), so the Python counting proxy does not set
the pace; the manifest test from a small upstream of its own (ManifestUpstream).
"""

import concurrent.futures
import json
import multiprocessing
import os
import re
import resource
import selectors
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import helpers
from helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256, wait_until

pytestmark = pytest.mark.regmirror_only("proxy.maxfetches and the daemon's memory are "
                                        "regmirror's")

MIB = 1 << 20
# one warms the mirror up (token, connection), the other 2000 are fetched at once
BLOBS = 2001
BLOB_SIZE = 128 * 1024
HWM_BOUND = 128 * MIB
# "Back near idle": RSS after the burst within this much of the RSS before it.
RSS_SLACK = 16 * MIB
MANIFESTS = 100
MANIFEST_PAD = 4 * 1000 * 1000


def raise_nofile():
    """Enough descriptors for 2000 client sockets here and 2000 connections in the daemon,
    which inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def status_of(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def debug_yaml(port):
    # render_config ends inside the http: section, so the debug keys go right after it
    return ("  debug:\n    addr: 127.0.0.1:%d\n"
            "    prometheus:\n      enabled: true\n      path: /metrics\n" % port)


def scrape(debug):
    r = requests.get(debug + "/metrics", timeout=10)
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def store_many(upstream, repo, blobs):
    """Puts {digest: bytes} into docker-registry's filesystem store as a push would leave them
    (blob data and the repository's layer link): 2000 pushes through its API take longer
    than the test itself. One blob is pushed through the API, so the repository exists."""
    root = os.path.join(upstream.registry.fs_root, "docker", "registry", "v2")
    items = list(blobs.items())
    c = upstream.client("pusher", direct=True)
    try:
        c.push_blob(repo, items[0][1], items[0][0])
    finally:
        c.close()
    for d, data in items[1:]:
        hexd = d.split(":", 1)[1]
        store_file(root, "blobs/sha256/%s/%s/data" % (hexd[:2], hexd), data)
        store_file(root, "repositories/%s/_layers/sha256/%s/link" % (repo, hexd), d.encode())


def store_file(root, rel, data):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def parallel_get(port, paths, timeout=120.0):
    """GETs every path at once, one connection each, from one thread (selectors): returns
    [(status, headers, body)] in the order of paths (status 0: no answer). At most 500
    connections are being opened at a time, so the listen backlog never overflows."""
    sel = selectors.DefaultSelector()
    conns = []
    results = [None] * len(paths)
    deadline = time.monotonic() + timeout

    class Conn:
        __slots__ = ("i", "sock", "out", "buf", "head", "length")

    def opened(i, path):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        c = Conn()
        c.i, c.sock, c.buf, c.head, c.length = i, s, bytearray(), None, None
        c.out = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                 % (path, port)).encode()
        sel.register(s, selectors.EVENT_WRITE, c)
        conns.append(c)

    def finish(c):
        sel.unregister(c.sock)
        c.sock.close()
        if c.head is None:
            results[c.i] = (0, {}, bytes(c.buf))
        else:
            results[c.i] = (c.head[0], c.head[1], bytes(c.buf))

    pending = list(enumerate(paths))
    pending.reverse()
    live = 0
    while (pending or live) and time.monotonic() < deadline:
        while pending and live < 500:
            opened(*pending.pop())
            live += 1
        for key, ev in sel.select(timeout=1.0):
            c = key.data
            if ev & selectors.EVENT_WRITE:
                try:
                    n = c.sock.send(c.out)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    finish(c)
                    live -= 1
                    continue
                c.out = c.out[n:]
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                c.buf += data
                if c.head is None and b"\r\n\r\n" in c.buf:
                    raw, _, rest = bytes(c.buf).partition(b"\r\n\r\n")
                    lines = raw.decode("latin-1").split("\r\n")
                    hdrs = {}
                    for line in lines[1:]:
                        k, _, v = line.partition(":")
                        hdrs[k.strip().lower()] = v.strip()
                    c.head = (int(lines[0].split()[1]), hdrs)
                    c.length = int(hdrs["content-length"]) if "content-length" in hdrs else None
                    c.buf = bytearray(rest)
                if c.head is None or c.length is None or len(c.buf) < c.length:
                    continue
            finish(c)
            live -= 1
    for c in conns:
        if results[c.i] is None:
            finish(c)
    return results


@pytest.fixture(scope="module")
def many_blobs(upstream_server):
    repo = "memory/blobs"
    blobs = {}
    for _ in range(BLOBS):
        data = os.urandom(BLOB_SIZE)
        blobs[sha256(data)] = data
    store_many(upstream_server, repo, blobs)
    return repo, blobs


def big_manifests(n):
    """n distinct OCI image manifests of about 4 MB each: a valid manifest padded with a
    large annotation. {digest: body}."""
    cfg = sha256(b"{}")
    out = {}
    for i in range(n):
        m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
             "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": 2},
             "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b"%d" % i), "size": 1}],
             "annotations": {"org.regmirror.pad": "%06d-%s" % (i, os.urandom(8).hex())
                             + "x" * MANIFEST_PAD}}
        body = json.dumps(m).encode()
        out[sha256(body)] = body
    return out


class ManifestUpstream:
    """A registry that serves only the given manifests, by digest, without auth: docker-registry
    takes about half a second per 4 MB manifest, which would make the test about the
    upstream's speed."""

    def __init__(self, manifests):
        store = manifests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                m = re.match(r"^/v2/.+/manifests/(sha256:[0-9a-f]{64})$", self.path)
                body = store.get(m.group(1)) if m else (b"{}" if self.path == "/v2/" else None)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", OCI_MANIFEST if m else "application/json")
                self.send_header("Content-Length", str(len(body)))
                if m:
                    self.send_header("Docker-Content-Digest", m.group(1))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_HEAD = do_GET

        # Its own process: sharing this one's interpreter lock would slow the clients, and
        # responses the clients have not read yet are memory of the mirror too.
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % httpd.server_address[1]
        self.proc = multiprocessing.get_context("fork").Process(target=httpd.serve_forever,
                                                                daemon=True)
        self.proc.start()
        httpd.server_close()

    def stop(self):
        self.proc.terminate()
        self.proc.join(10)


def warm_up(reg, repo, digest):
    """One pull before the idle figure: threads, pools and the token are set up."""
    st, _, body = parallel_get(reg.port, ["/v2/%s/blobs/%s" % (repo, digest)])[0]
    assert st == 200


def test_2000_cold_blob_fetches_bounded_memory(make_registry, upstream, many_blobs,
                                               summary_line):
    raise_nofile()
    repo, blobs = many_blobs
    digests = list(blobs)
    reg = make_registry(name="mem2000", binary=helpers.release_bin(),
                        extra_yaml="proxy:\n  remoteurl: %s\n" % upstream.direct_url)
    warm_up(reg, repo, digests[0])
    pid = reg.proc.pid
    idle = status_of(pid)["VmRSS"]

    t0 = time.monotonic()
    results = parallel_get(reg.port, ["/v2/%s/blobs/%s" % (repo, d) for d in digests[1:]])
    took = time.monotonic() - t0
    hwm = status_of(pid)["VmHWM"]
    bad = [(d, st, len(body)) for d, (st, _, body) in zip(digests[1:], results)
           if st != 200 or sha256(body) != d]
    after = wait_until(lambda: (lambda r: r if r < idle + RSS_SLACK else None)(
        status_of(pid)["VmRSS"]), timeout=10) or status_of(pid)["VmRSS"]
    line = ("fetch memory: %d concurrent cold blob GETs (%d KiB) in %.1f s; VmRSS idle %.1f "
            "MiB, VmHWM %.1f MiB, VmRSS after %.1f MiB; %d failed" % (
                len(results), BLOB_SIZE // 1024, took, idle / MIB, hwm / MIB, after / MIB,
                len(bad)))
    summary_line(line)
    print(line)
    assert not bad, bad[:5]
    assert hwm < HWM_BOUND, line
    assert after < idle + RSS_SLACK, line


def test_100_big_manifest_fetches_bounded_memory(make_registry, summary_line):
    raise_nofile()
    repo = "memory/manifests"
    mans = list(big_manifests(MANIFESTS + 1).items())
    up = ManifestUpstream(dict(mans))
    try:
        reg = make_registry(name="memman", binary=helpers.release_bin(),
                            extra_yaml="proxy:\n  remoteurl: %s\n" % up.url)
        d0, b0 = mans[0]
        st, _, body = parallel_get(reg.port, ["/v2/%s/manifests/%s" % (repo, d0)])[0]
        assert st == 200 and body == b0
        pid = reg.proc.pid
        idle = status_of(pid)["VmRSS"]

        t0 = time.monotonic()
        results = parallel_get(reg.port, ["/v2/%s/manifests/%s" % (repo, d) for d, _ in mans[1:]])
        took = time.monotonic() - t0
    finally:
        up.stop()
    hwm = status_of(pid)["VmHWM"]
    bad = [(d, st, len(body)) for (d, want), (st, _, body) in zip(mans[1:], results)
           if st != 200 or body != want]
    after = wait_until(lambda: (lambda r: r if r < idle + RSS_SLACK else None)(
        status_of(pid)["VmRSS"]), timeout=10) or status_of(pid)["VmRSS"]
    line = ("fetch memory: %d concurrent cold manifest GETs (%.1f MB each) in %.1f s; VmRSS "
            "idle %.1f MiB, VmHWM %.1f MiB, VmRSS after %.1f MiB; %d failed" % (
                len(results), len(b0) / 1e6, took, idle / MIB, hwm / MIB, after / MIB,
                len(bad)))
    summary_line(line)
    print(line)
    assert not bad, bad[:5]
    assert hwm < HWM_BOUND, line


def queue_metrics(debug):
    m = scrape(debug)
    return {k: m.get("regmirror_upstream_fetch" + k, -1)
            for k in ("_queue_depth", "es_queued_total", "_queue_timeouts_total", "es_active")}


def test_fetch_cap_queues_and_times_out(make_registry, upstream, seeded):
    port = helpers.free_port()
    reg = make_registry(name="cap", extra_yaml=debug_yaml(port) + upstream.proxy_yaml(
        extra="  maxfetches: 2\n  fetchqueuetimeout: 1500ms\n"))
    debug = "http://127.0.0.1:%d" % port
    img = seeded.alpine
    blobs = list(img.blobs.items())
    assert len(blobs) >= 4
    # Every blob GET waits 3 s at the upstream: the two fetches hold their slots that long.
    upstream.proxy.stall(3, count=None, method="GET", kinds=("blob",))

    def get(d):
        return reg.session.get(reg.url("/v2/%s/blobs/%s" % (img.repo, d)), timeout=60)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = [pool.submit(get, d) for d, _ in blobs[:2]]
        assert wait_until(lambda: queue_metrics(debug)["es_active"] == 2), queue_metrics(debug)
        # The same blob as a running fetch joins it: no slot, no queue.
        joined = pool.submit(get, blobs[0][0])
        time.sleep(0.2)
        assert queue_metrics(debug)["_queue_depth"] == 0
        # A third distinct blob waits.
        t0 = time.monotonic()
        third = pool.submit(get, blobs[2][0])
        assert wait_until(lambda: queue_metrics(debug)["_queue_depth"] == 1), \
            queue_metrics(debug)
        # A queued client that goes away leaves the queue (and its blob is never fetched).
        s = socket.create_connection(("127.0.0.1", reg.port))
        s.sendall(("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n"
                   % (img.repo, blobs[3][0])).encode())
        assert wait_until(lambda: queue_metrics(debug)["_queue_depth"] == 2), \
            queue_metrics(debug)
        s.close()
        assert wait_until(lambda: queue_metrics(debug)["_queue_depth"] == 1), \
            queue_metrics(debug)

        r = third.result()
        waited = time.monotonic() - t0
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert int(r.headers["Retry-After"]) > 0
        assert 1.0 < waited < 3.0, waited
        for f in first + [joined]:
            assert f.result().status_code == 200
        assert first[0].result().content == blobs[0][1]
        assert joined.result().content == blobs[0][1]
        assert first[1].result().content == blobs[1][1]

    m = queue_metrics(debug)
    assert m["_queue_depth"] == 0
    assert m["es_queued_total"] == 2
    assert m["_queue_timeouts_total"] == 1
    upstream.proxy.wait_idle()
    assert upstream.proxy.blob_gets(blobs[3][0]) == 0
    assert upstream.proxy.blob_gets(blobs[2][0]) == 0
    # Once the slots are free, the timed-out blob is fetched normally.
    upstream.proxy.clear_faults()
    r = get(blobs[2][0])
    assert r.status_code == 200 and r.content == blobs[2][1]
