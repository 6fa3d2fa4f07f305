"""HTTP/1.1 framing against the real daemon: a request split into single bytes, pipelined
requests in one send, keep-alive across requests."""

import json
import re
import socket
import subprocess
import time

import pytest
import requests

from helpers import (OCI_MANIFEST, make_image, push_image, raw_connect, recv_response, sha256,
                     upload_blob)


def _get(path, extra=b""):
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: " + OCI_MANIFEST.encode() + b"\r\n" + extra + b"\r\n")


def test_request_sent_byte_by_byte(reg, repo):
    img = make_image(layer_sizes=(64,))
    push_image(reg, repo, img, "bytewise")
    req = _get("/v2/%s/manifests/bytewise" % repo)
    with raw_connect(reg) as s:
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
            if i % 16 == 0:
                time.sleep(0.002)
        status, headers, body = recv_response(s)
        assert status == 200, body[:200]
        assert body == img.manifest
        assert headers.get("docker-content-digest") == img.digest
        # the connection stays usable (keep-alive)
        s.sendall(_get("/v2/"))
        status, headers, _ = recv_response(s)
        assert status == 200
        assert headers.get("docker-distribution-api-version") == "registry/2.0"


def test_body_sent_byte_by_byte(reg, repo):
    data = b"0123456789abcdef" * 8
    with raw_connect(reg) as s:
        s.sendall(b"POST /v2/%s/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                  % repo.encode())
        status, headers, _ = recv_response(s)
        assert status == 202
        loc = headers["location"]
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        req = (b"PUT " + (loc + sep + "digest=" + sha256(data)).encode() + b" HTTP/1.1\r\n"
               b"Host: a\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: %d\r\n\r\n" % len(data) + data)
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
        status, headers, body = recv_response(s)
        assert status == 201, body
    assert reg.get("/v2/%s/blobs/%s" % (repo, sha256(data))).content == data


def test_pipelined_requests(reg, repo):
    img = make_image(layer_sizes=(64,))
    push_image(reg, repo, img, "piped")
    layer = [d for d in img.blobs if img.blobs[d] is not img.config][0]
    reqs = (_get("/v2/%s/manifests/piped" % repo)
            + _get("/v2/%s/tags/list" % repo)
            + b"HEAD /v2/%s/blobs/%s HTTP/1.1\r\nHost: a\r\n\r\n" % (repo.encode(), layer.encode())
            + _get("/v2/%s/blobs/%s" % (repo, layer), b"Connection: close\r\n"))
    with raw_connect(reg) as s:
        s.sendall(reqs)
        st1, h1, b1 = recv_response(s)
        st2, h2, b2 = recv_response(s)
        st3, h3, b3 = recv_response(s, head_request=True)
        st4, h4, b4 = recv_response(s)
    assert (st1, b1) == (200, img.manifest)
    assert st2 == 200 and json.loads(b2)["tags"] == ["piped"]
    assert st3 == 200 and b3 == b"" and h3.get("content-length") == str(len(img.blobs[layer]))
    assert st4 == 200 and b4 == img.blobs[layer]


def test_pipelined_with_error_in_between(reg, repo):
    upload_blob(reg, repo, b"exists")
    reqs = (_get("/v2/") + _get("/v2/%s/manifests/nosuch" % repo) + _get("/v2/"))
    with raw_connect(reg) as s:
        s.sendall(reqs)
        statuses = [recv_response(s)[0] for _ in range(3)]
    assert statuses == [200, 404, 200]


def test_head_has_no_body_on_keepalive(reg, repo):
    img = make_image(layer_sizes=(1000,))
    push_image(reg, repo, img, "h")
    with raw_connect(reg) as s:
        s.sendall(b"HEAD /v2/%s/manifests/h HTTP/1.1\r\nHost: a\r\nAccept: %s\r\n\r\n"
                  % (repo.encode(), OCI_MANIFEST.encode()))
        status, headers, body = recv_response(s, head_request=True)
        assert status == 200
        assert headers.get("content-length") == str(len(img.manifest))
        s.sendall(_get("/v2/"))
        status, _, body = recv_response(s)
        # a body wrongly sent after the HEAD answer would show up here as a broken status line
        assert status == 200 and body == b"{}"


def test_http10_and_connection_close(reg):
    with raw_connect(reg) as s:
        s.sendall(b"GET /v2/ HTTP/1.0\r\nHost: a\r\n\r\n")
        status, _, _ = recv_response(s)
        assert status == 200
        s.settimeout(5)
        assert s.recv(1) == b"", "HTTP/1.0 without keep-alive: server must close"


def test_expect_100_continue(reg, repo):
    data = b"x" * 5000
    with raw_connect(reg) as s:
        s.sendall(b"POST /v2/%s/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                  % repo.encode())
        status, headers, _ = recv_response(s)
        loc = headers["location"]
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        s.sendall(b"PUT " + (loc + sep + "digest=" + sha256(data)).encode() + b" HTTP/1.1\r\n"
                  b"Host: a\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(data))
        status, _, _ = recv_response(s)
        assert status == 100
        s.sendall(data)
        status, _, _ = recv_response(s)
        assert status == 201


# ---- strict framing (RFC 9112): each case whole and byte by byte ----

def _upload(repo, headers, body=b""):
    return (b"POST /v2/%s/blobs/uploads/ HTTP/1.1\r\nHost: a\r\n" % repo.encode()
            + headers + b"\r\n" + body)


def _send(reg, data, bytewise):
    with raw_connect(reg) as s:
        try:
            if bytewise:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(0.0005)
            else:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest arrived
        status, headers, body = recv_response(s)
        s.settimeout(5)
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
    return status, headers, body, closed


_DEVIATES = pytest.mark.reference_deviation(
    "distribution 2.8 (Go 1.19 net/http) trims the spaces before the colon and honours the field")

FRAMING_CASES = [
    pytest.param(lambda r: _upload(r, b"Content-Length : 4\r\n", b"abcd"), 400,
                 id="space-before-colon-cl", marks=_DEVIATES),
    pytest.param(lambda r: _upload(r, b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400,
                 id="space-before-colon-te", marks=_DEVIATES),
    pytest.param(lambda r: b"GET /v2/ HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, id="tab-before-colon"),
    pytest.param(lambda r: b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400,
                 id="space-before-colon-any", marks=_DEVIATES),
    pytest.param(lambda r: b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400,
                 id="obs-fold", marks=pytest.mark.reference_deviation(
                     "Go 1.19 net/http joins obs-fold lines")),
    pytest.param(lambda r: _upload(r, b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                                   b"0\r\n\r\n"), 400, id="cl-and-te",
                 marks=pytest.mark.reference_deviation(
                     "RFC 9112 6.3 lets a server reject it (regmirror) or drop the length (Go)")),
    pytest.param(lambda r: _upload(r, b"Content-Length: 4\r\nContent-Length: 5\r\n", b"abcd"),
                 400, id="two-lengths"),
    pytest.param(lambda r: _upload(r, b"Transfer-Encoding: gzip\r\n", b"abcd"), 400,
                 id="te-not-chunked", marks=pytest.mark.reference_deviation(
                     "Go answers 501 where RFC 9112 6.3 requires 400")),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("make,status", FRAMING_CASES)
def test_bad_framing_rejected(reg, repo, make, status, bytewise):
    got, headers, body, closed = _send(reg, make(repo), bytewise)
    assert got == status, body[:200]
    assert closed, "the connection must close after a framing error"
    # nothing was started by a request whose framing is broken
    assert reg.get("/v2/%s/tags/list" % repo).status_code == 404


@pytest.mark.regmirror_only("registry:2 answers these from Go's net/http, in plain text")
@pytest.mark.parametrize("data,status,code", [
    (b"GET /v2/ HTTP/1.1\r\nHost : a\r\n\r\n", 400, "UNSUPPORTED"),
    (b"GARBAGE\r\n\r\n", 400, "UNSUPPORTED"),
    (b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "UNSUPPORTED"),
    (b"GET /v2/ HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, "SIZE_INVALID"),
    (b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
     "UNSUPPORTED"),
    (b"GET /v2/ HTTP/2.0\r\n\r\n", 505, "UNSUPPORTED"),
], ids=["400-framing", "400-garbage", "414", "431", "501", "505"])
def test_errors_before_parse_have_registry_bodies(reg, data, status, code):
    got, headers, body, closed = _send(reg, data, False)
    assert got == status
    assert headers.get("docker-distribution-api-version") == "registry/2.0"
    assert headers.get("content-type", "").startswith("application/json")
    assert headers.get("connection") == "close"
    assert [e["code"] for e in json.loads(body)["errors"]] == [code]
    assert closed


# ---- file descriptors run out: one warning per episode, accepting again afterwards ----

@pytest.mark.regmirror_only("log lines are regmirror's")
def test_emfile_logged_once_and_recovers(make_registry):
    reg = make_registry(name="fds")
    limit = 64
    subprocess.run(["prlimit", "--pid", str(reg.proc.pid), "--nofile=%d:%d" % (limit, limit)],
                   check=True)
    held = []
    try:
        # connections until accept() fails: the rest wait in the backlog
        for _ in range(limit + 16):
            s = socket.create_connection(("127.0.0.1", reg.port), timeout=5)
            held.append(s)
        time.sleep(2.5)  # a dozen accept retries at 200 ms
        log = open(reg.log_path, errors="replace").read()
        assert log.count("http: accept:") == 1, log[-3000:]
        assert "Too many open files" in log
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(reg.url("/v2/"), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "no answer once descriptors are free"
            time.sleep(0.1)
        log = open(reg.log_path, errors="replace").read()
        assert log.count("http: accept:") == 1
        assert re.search(r"accepting connections again after \d+ ms \(\d+ retries failed\)", log)
    finally:
        for s in held:
            s.close()
