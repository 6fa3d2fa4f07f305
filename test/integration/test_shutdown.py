"""Graceful shutdown (http.draintimeout): on SIGTERM the listener closes at once, idle
keep-alive connections are closed, requests in flight (a blob GET from the store, a pull-through
fetch, an upload PATCH) may finish within the drain time and are cut after it; the exit code is
0 either way, and a second SIGTERM stops at once."""

import hashlib
import signal
import socket
import ssl
import subprocess
import time

import pytest

import helpers
from helpers import raw_connect, recv_response, sha256, start_upload, upload_blob

pytestmark = pytest.mark.regmirror_only("registry:2 drains on SIGTERM only with a draintimeout "
                                        "and exits 1 when the drain time runs out")

BLOB_SIZE = 50 * 1024 * 1024
MB = 1024 * 1024


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A storage root holding one 50 MB blob: (rootdir, repo, digest, data)."""
    if not helpers.regmirror_bin():
        pytest.skip("REGMIRROR_BIN is not set")
    work = tmp_path_factory.mktemp("shutdown-store")
    reg = helpers.Registry("regmirror", work / "seed", rootdir=work / "root")
    reg.start()
    try:
        data = helpers.random_bytes(BLOB_SIZE)
        repo = helpers.unique_repo("drain")
        digest = upload_blob(reg, repo, data)
    finally:
        assert reg.stop() == 0, reg.log_tail()
    return str(work / "root"), repo, digest, data


def draining(make_registry, stored, drain, extra=""):
    return make_registry(rootdir=stored[0], extra_yaml="  draintimeout: %s\n" % drain + extra)


def sigterm(reg):
    reg.proc.send_signal(signal.SIGTERM)
    return time.monotonic()


def wait_exit(reg, timeout):
    """The exit code, waiting at most timeout seconds (None when still running)."""
    try:
        return reg.proc.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        return None


def refused(reg, timeout=2.0):
    """Whether new connections are refused within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", reg.port), timeout=1):
                pass
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def closed_by_server(sock, timeout=3.0):
    """Whether the server closes sock (EOF or reset) within timeout, reading and dropping."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except socket.timeout:
        return False
    return True


def connect(reg, rcvbuf=None, tls=None):
    """A connection to reg, over TLS when tls is an ssl.SSLContext."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", reg.port))
    return tls.wrap_socket(s, server_hostname="localhost") if tls else s


def blob_get(reg, repo, digest, rcvbuf=None, tls=None):
    """A connection with a GET of the blob sent and its response head read:
    (socket, headers, body bytes already read)."""
    s = connect(reg, rcvbuf, tls)
    s.sendall(("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               % (repo, digest)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "closed before the response head"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("iso-8859-1").split("\r\n")
    assert lines[0].split(" ")[1] == "200", lines[0]
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return s, headers, body


def read_body(sock, have, total, rate=None, timeout=10.0):
    """Reads until total body bytes (have: what came with the head), at most rate bytes a
    second. Returns (sha256 digest, bytes read, whether the server closed first)."""
    h = hashlib.sha256(have)
    n = len(have)
    t0 = time.monotonic()
    sock.settimeout(timeout)
    while n < total:
        if rate and n > rate * (time.monotonic() - t0):
            time.sleep(0.01)
            continue
        try:
            chunk = sock.recv(min(256 * 1024, total - n))
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return "sha256:" + h.hexdigest(), n, True
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n, False


def idle_keepalive(reg):
    """A connection that has had one answer and is kept open."""
    s = raw_connect(reg)
    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, _ = recv_response(s)
    assert status == 200 and headers.get("connection") != "close"
    return s


def test_slow_blob_get_finishes_and_new_connections_are_refused(make_registry, stored):
    """A 50 MB blob read at ~20 MB/s that started before SIGTERM completes with the right
    bytes; meanwhile new connections are refused and an idle keep-alive connection is closed.
    The process exits 0 once the blob has left, well within the drain time."""
    _, repo, digest, _ = stored
    drain = 8.0
    reg = draining(make_registry, stored, "8s")
    idle = idle_keepalive(reg)
    s, headers, have = blob_get(reg, repo, digest, rcvbuf=256 * 1024)
    assert int(headers["content-length"]) == BLOB_SIZE
    t0 = sigterm(reg)
    assert refused(reg), "a new connection was accepted after SIGTERM"
    assert closed_by_server(idle), "the idle keep-alive connection stayed open"
    got, n, cut = read_body(s, have, BLOB_SIZE, rate=20 * MB)
    assert not cut and n == BLOB_SIZE and got == digest
    assert closed_by_server(s), "the connection stayed open after its answer"
    s.close()
    rc = wait_exit(reg, drain + 1 - (time.monotonic() - t0))
    took = time.monotonic() - t0
    assert rc == 0, "exit %s after %.1f s; log tail:\n%s" % (rc, took, reg.log_tail())
    assert took < drain, "exit took %.1f s, the blob had left long before" % took
    assert "shutdown: every connection has closed" in reg.log_tail()


def test_answer_finished_while_draining_says_connection_close(make_registry, stored):
    """A request whose head was still arriving at SIGTERM is answered, with Connection: close,
    and its connection closed."""
    reg = draining(make_registry, stored, "5s")
    s = raw_connect(reg)
    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    time.sleep(0.2)
    t0 = sigterm(reg)
    assert refused(reg)
    s.sendall(b"\r\n")
    status, headers, _ = recv_response(s)
    assert status == 200
    assert headers.get("connection") == "close"
    assert closed_by_server(s)
    s.close()
    assert wait_exit(reg, 6) == 0, reg.log_tail()
    assert time.monotonic() - t0 < 5


def test_upload_patch_in_flight_finishes(make_registry, stored):
    """A PATCH whose body is half sent at SIGTERM gets its 202 (Connection: close) once the
    rest has arrived."""
    data = stored[3]
    reg = draining(make_registry, stored, "6s")
    loc, _ = start_upload(reg, helpers.unique_repo("drain-up"))
    path = loc.split(reg.base, 1)[1]
    body = data[:8 * MB]
    s = raw_connect(reg)
    s.sendall(("PATCH %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
               "Content-Length: %d\r\n\r\n" % (path, len(body))).encode())
    s.sendall(body[:MB])
    time.sleep(0.2)
    t0 = sigterm(reg)
    assert refused(reg)
    s.sendall(body[MB:])
    status, headers, _ = recv_response(s, timeout=10)
    assert status == 202, status
    assert headers.get("range") == "0-%d" % (len(body) - 1)
    assert headers.get("connection") == "close"
    assert closed_by_server(s)
    s.close()
    assert wait_exit(reg, 7) == 0, reg.log_tail()
    assert time.monotonic() - t0 < 6


def test_request_running_at_drain_end_is_cut(make_registry, stored):
    """A blob GET whose client stops reading is cut when the drain time is over; the exit
    code is still 0, within the drain time + 1 s."""
    _, repo, digest, _ = stored
    drain = 2.0
    reg = draining(make_registry, stored, "2s")
    s, headers, have = blob_get(reg, repo, digest, rcvbuf=64 * 1024)
    t0 = sigterm(reg)
    assert refused(reg)
    rc = wait_exit(reg, drain + 1)
    took = time.monotonic() - t0
    assert rc == 0, "exit %s after %.1f s; log tail:\n%s" % (rc, took, reg.log_tail())
    assert drain - 0.2 < took < drain + 1, "exit after %.1f s" % took
    _, n, cut = read_body(s, have, BLOB_SIZE)
    assert cut and n < BLOB_SIZE, "the body was not cut (%d bytes)" % n
    s.close()
    assert "drain time (http.draintimeout) is over" in reg.log_tail()


def test_second_sigterm_stops_at_once(make_registry, stored):
    _, repo, digest, _ = stored
    reg = draining(make_registry, stored, "30s")
    s, _, have = blob_get(reg, repo, digest, rcvbuf=64 * 1024)
    sigterm(reg)
    assert refused(reg)
    assert wait_exit(reg, 0.5) is None, "exited with a request in flight"
    t0 = sigterm(reg)
    rc = wait_exit(reg, 1.5)
    assert rc == 0, "exit %s; log tail:\n%s" % (rc, reg.log_tail())
    assert time.monotonic() - t0 < 1.5
    _, n, cut = read_body(s, have, BLOB_SIZE)
    assert cut and n < BLOB_SIZE
    s.close()


def test_draintimeout_zero_stops_at_once(make_registry, stored):
    """draintimeout: 0 (registry:2's default) keeps no request waiting."""
    _, repo, digest, _ = stored
    reg = draining(make_registry, stored, "0s")
    s, _, have = blob_get(reg, repo, digest, rcvbuf=64 * 1024)
    t0 = sigterm(reg)
    rc = wait_exit(reg, 1.5)
    assert rc == 0, "exit %s; log tail:\n%s" % (rc, reg.log_tail())
    assert time.monotonic() - t0 < 1.5
    _, n, cut = read_body(s, have, BLOB_SIZE)
    assert cut and n < BLOB_SIZE
    s.close()


def test_pull_through_fetch_in_flight_finishes(make_registry, upstream, seeded):
    """An uncached 50 MB layer streaming from a throttled upstream when SIGTERM comes reaches
    the client whole, and the mirror exits 0 afterwards."""
    img = seeded.big
    layer = img.layers[0]
    mirror = make_registry(name="mirror", extra_yaml="  draintimeout: 8s\n"
                           + upstream.proxy_yaml(username="alice"))
    assert helpers.pull_manifest(mirror, img.repo, img.tag).status_code == 200
    upstream.proxy.throttle(25 * MB)  # about 2 s for the layer
    s, headers, have = blob_get(mirror, img.repo, layer.digest)
    assert int(headers["content-length"]) == layer.size
    got, n, cut = read_body(s, have, MB)
    t0 = sigterm(mirror)
    assert refused(mirror)
    h = hashlib.sha256(layer.data[:n])
    assert "sha256:" + h.hexdigest() == got
    rest, m, cut = read_body(s, b"", layer.size - n)
    assert not cut and n + m == layer.size
    assert sha256(layer.data[n:]) == rest
    s.close()
    rc = wait_exit(mirror, 8 + 1 - (time.monotonic() - t0))
    assert rc == 0, "exit %s; log tail:\n%s" % (rc, mirror.log_tail())
    assert time.monotonic() - t0 < 8


def test_tls_connections_drain_too(make_registry, stored, tmp_path):
    """Over TLS: a blob GET in flight completes, an idle keep-alive connection and a
    connection still in its handshake are closed, new connections are refused."""
    from tlsutil import Certs, TLSRegistry, tls_env
    _, repo, digest, _ = stored
    certs = Certs(tmp_path / "certs")
    reg = TLSRegistry("regmirror", tmp_path / "tlsreg", certs, rootdir=stored[0],
                      extra_yaml="  draintimeout: 8s\n", env=tls_env(certs))
    try:
        reg.start()
        ctx = ssl.create_default_context(cafile=certs.ca)
        idle = connect(reg, tls=ctx)
        idle.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        handshaking = connect(reg)
        s, headers, have = blob_get(reg, repo, digest, rcvbuf=256 * 1024, tls=ctx)
        assert int(headers["content-length"]) == BLOB_SIZE
        t0 = sigterm(reg)
        assert refused(reg)
        assert closed_by_server(idle), "the idle TLS connection stayed open"
        assert closed_by_server(handshaking), "the connection in its handshake stayed open"
        got, n, cut = read_body(s, have, BLOB_SIZE, rate=25 * MB)
        assert not cut and n == BLOB_SIZE and got == digest
        for c in (s, idle, handshaking):
            c.close()
        rc = wait_exit(reg, 9 - (time.monotonic() - t0))
        assert rc == 0, "exit %s; log tail:\n%s" % (rc, reg.log_tail())
        assert time.monotonic() - t0 < 8
    finally:
        reg.stop()
