"""HTTP/1.1 framing against the real daemon: a request split into single bytes, pipelined
requests in one send, keep-alive across requests."""

import json
import time

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
