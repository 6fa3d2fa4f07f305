"""Webhook notifications (config notifications.endpoints): registry:2's event envelope for
push, pull, delete and mount, proxied pulls included; retries while an endpoint is down; a
bounded queue that drops (and logs a count) when it stays down; ignore filters.

The receiver is a ThreadingHTTPServer on 127.0.0.1 inside the test."""

import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import helpers
from helpers import make_image, push_image, sha256, upload_blob

EVENTS_MT = "application/vnd.docker.distribution.events.v1+json"

pytestmark = pytest.mark.regmirror_only("webhook tests drive regmirror's own logs and queue")


class Receiver:
    """Collects POSTed envelopes. status: what it answers (200 by default)."""

    def __init__(self, port=0):
        self.posts = []  # (path, headers dict, envelope)
        self.attempts = 0
        self.status = 200
        self.lock = threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with recv.lock:
                    recv.attempts += 1
                    status = recv.status
                    if status < 300:
                        recv.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/events"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def events(self, path=None):
        with self.lock:
            return [e for p, _, env in self.posts if path is None or p == path
                    for e in env["events"]]

    def wait_for(self, pred, timeout=20.0, path=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = self.events(path)
            if pred(evs):
                return evs
            time.sleep(0.05)
        return self.events(path)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def endpoint_yaml(name, url, extra=""):
    return ("    - name: %s\n      url: %s\n      timeout: 2s\n      threshold: 2\n"
            "      backoff: 200ms\n      headers:\n        X-Test-Token: [s3cret]\n%s"
            % (name, url, extra))


def notifications_yaml(*endpoints):
    return "notifications:\n  endpoints:\n" + "".join(endpoints)


def find(events, action, repo=None, digest=None, tag=None):
    out = []
    for e in events:
        t = e["target"]
        if e["action"] != action or (repo and t.get("repository") != repo):
            continue
        if digest and t.get("digest") != digest:
            continue
        if tag and t.get("tag") != tag:
            continue
        out.append(e)
    return out


def wait_log(reg, pattern, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(reg.log_path, errors="replace") as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        time.sleep(0.1)
    return None


def test_push_pull_delete_mount_events(make_registry, receiver, repo):
    reg = make_registry(extra_yaml=notifications_yaml(endpoint_yaml("hook", receiver.url())))
    img = make_image()
    push_image(reg, repo, img, ref="v1")
    config_digest = sha256(img.config)
    layer = [d for d in img.blobs if d != config_digest][0]
    # pulls: manifest by tag and by digest, a blob; a HEAD is not a pull
    assert reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": img.media_type}).ok
    assert reg.head("/v2/%s/manifests/v1" % repo, headers={"Accept": img.media_type}).ok
    assert reg.get("/v2/%s/blobs/%s" % (repo, layer)).content == img.blobs[layer]
    assert reg.head("/v2/%s/blobs/%s" % (repo, layer)).ok
    # mount into another repository, then deletes
    other = repo + "-other"
    r = reg.request("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (other, layer, repo))
    assert r.status_code == 201
    assert reg.request("DELETE", "/v2/%s/manifests/%s" % (repo, img.digest)).status_code == 202
    assert reg.request("DELETE", "/v2/%s/blobs/%s" % (other, layer)).status_code == 202

    def complete(evs):
        return (len(find(evs, "push")) == len(img.blobs) + 1 and len(find(evs, "pull")) == 2
                and find(evs, "mount") and len(find(evs, "delete")) == 2)

    evs = receiver.wait_for(complete)
    assert complete(evs), json.dumps(evs, indent=1)

    # blob pushes
    for d, data in img.blobs.items():
        (e,) = find(evs, "push", repo, digest=d)
        t = e["target"]
        assert t["mediaType"] == "application/octet-stream"
        assert t["size"] == len(data) and t["length"] == len(data)
        assert t["url"] == reg.url("/v2/%s/blobs/%s" % (repo, d))
    # manifest push by tag
    (e,) = find(evs, "push", repo, digest=img.digest)
    t = e["target"]
    assert t["mediaType"] == img.media_type and t["tag"] == "v1"
    assert t["size"] == len(img.manifest)
    assert t["url"] == reg.url("/v2/%s/manifests/%s" % (repo, img.digest))
    assert e["request"]["method"] == "PUT"
    assert e["request"]["host"] == reg.host
    assert e["request"]["addr"].startswith("127.0.0.1")
    assert e["request"]["useragent"].startswith("python-requests")
    # pulls: GET only
    (m,) = find(evs, "pull", repo, digest=img.digest)
    assert m["target"]["tag"] == "v1" and m["request"]["method"] == "GET"
    (b,) = find(evs, "pull", repo, digest=layer)
    assert b["target"]["size"] == len(img.blobs[layer])
    (mt,) = find(evs, "mount", other, digest=layer)
    assert mt["target"]["fromRepository"] == repo
    assert find(evs, "delete", repo, digest=img.digest)
    assert find(evs, "delete", other, digest=layer)
    assert "mediaType" not in find(evs, "delete", repo)[0]["target"]
    # the envelope
    ids = set()
    for path, headers, env in receiver.posts:
        assert path == "/events"
        assert headers["Content-Type"] == EVENTS_MT
        assert headers["X-Test-Token"] == "s3cret"
        for e in env["events"]:
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", e["timestamp"])
            assert e["source"]["instanceID"] == evs[0]["source"]["instanceID"]
            assert e["source"]["addr"].endswith(":%d" % reg.port)
            ids.add(e["id"])
    assert len(ids) == len(evs), "event ids are unique"


def test_include_references(make_registry, receiver, repo):
    """notifications.events.includereferences: manifest push and pull events list the config
    and layers of an image and the manifests of an index, as registry:2's
    distribution.Descriptor (mediaType, size, digest, annotations, platform); blob and delete
    events and a registry without the option carry none."""
    reg = make_registry(extra_yaml=notifications_yaml(endpoint_yaml("hook", receiver.url()))
                        + "  events:\n    includereferences: true\n")
    img = make_image(docker=True)
    push_image(reg, repo, img, ref="v1")
    arm = make_image(arch="arm64")
    push_image(reg, repo, arm)
    amd = make_image()
    push_image(reg, repo, amd)
    mt = helpers.OCI_INDEX
    body = helpers.pretty_json({"schemaVersion": 2, "mediaType": mt, "manifests": [
        amd.desc(platform={"architecture": "amd64", "os": "linux"},
                 annotations={"org.example.note": "first"}),
        arm.desc(platform={"architecture": "arm64", "os": "linux", "variant": "v8"})]})
    helpers.put_manifest_ok(reg, repo, "multi", body, mt)
    assert reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": img.media_type}).ok
    assert reg.get("/v2/%s/manifests/multi" % repo, headers={"Accept": mt}).ok
    assert reg.request("DELETE", "/v2/%s/manifests/%s" % (repo, img.digest)).status_code == 202
    idx = sha256(body)

    def complete(evs):
        return (len(find(evs, "push", repo, digest=img.digest)) == 1
                and len(find(evs, "push", repo, digest=idx)) == 1
                and len(find(evs, "pull", repo)) == 2 and find(evs, "delete", repo))

    evs = receiver.wait_for(complete)
    assert complete(evs), json.dumps(evs, indent=1)
    m = json.loads(img.manifest)
    want = [{"mediaType": d["mediaType"], "size": d["size"], "digest": d["digest"]}
            for d in [m["config"]] + m["layers"]]
    for action in ("push", "pull"):
        (e,) = find(evs, action, repo, digest=img.digest)
        assert e["target"]["references"] == want, json.dumps(e, indent=1)
    want = json.loads(body)["manifests"]
    assert want[0]["annotations"] == {"org.example.note": "first"}
    assert want[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    for action in ("push", "pull"):
        (e,) = find(evs, action, repo, digest=idx)
        assert e["target"]["references"] == want, json.dumps(e, indent=1)
    for e in find(evs, "push", repo):
        if e["target"]["mediaType"] == "application/octet-stream":
            assert "references" not in e["target"]
    assert "references" not in find(evs, "delete", repo)[0]["target"]

    # without the option: no references
    plain = Receiver()
    try:
        reg2 = make_registry(extra_yaml=notifications_yaml(endpoint_yaml("hook", plain.url())))
        push_image(reg2, repo, img, ref="v1")
        evs = plain.wait_for(lambda evs: find(evs, "push", repo, digest=img.digest))
        (e,) = find(evs, "push", repo, digest=img.digest)
        assert "references" not in e["target"]
    finally:
        plain.stop()


def test_tag_delete_event(make_registry, receiver, repo):
    reg = make_registry(extra_yaml=notifications_yaml(endpoint_yaml("hook", receiver.url())))
    img = make_image()
    push_image(reg, repo, img, ref="gone")
    assert reg.request("DELETE", "/v2/%s/manifests/gone" % repo).status_code == 202
    evs = receiver.wait_for(lambda evs: find(evs, "delete"))
    (e,) = find(evs, "delete", repo)
    assert e["target"]["tag"] == "gone" and "digest" not in e["target"]


def test_proxied_pulls_emit_pull_events(make_registry, upstream, seeded):
    rcv = Receiver()
    try:
        reg = make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice")
                            + notifications_yaml(endpoint_yaml("hook", rcv.url())))
        img = seeded.alpine
        for round_ in (1, 2):  # cold (fetched upstream), then warm (from the cache)
            r = reg.get("/v2/%s/manifests/%s" % (img.repo, img.tag),
                        headers={"Accept": img.media_type})
            assert r.status_code == 200 and r.content == img.manifest
            for d, data in img.blobs.items():
                status, _, body = raw_get(reg, "/v2/%s/blobs/%s" % (img.repo, d))
                assert status == 200 and body == data

            def done(evs, n=round_):
                return (len(find(evs, "pull", img.repo, digest=img.digest)) == n
                        and all(len(find(evs, "pull", img.repo, digest=d)) == n
                                for d in img.blobs))

            evs = rcv.wait_for(done)
            assert done(evs), json.dumps(evs, indent=1)
        for d, data in img.blobs.items():
            for e in find(evs, "pull", img.repo, digest=d):
                assert e["target"]["size"] == len(data)
                assert e["target"]["mediaType"] == "application/octet-stream"
        (e,) = find(evs, "pull", img.repo, digest=img.digest)[:1]
        assert e["target"]["tag"] == img.tag
        assert not find(evs, "push"), "a proxied fetch is a pull, not a push"
    finally:
        rcv.stop()


def raw_get(reg, path):
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_endpoint_down_then_up_is_retried(make_registry, repo):
    port = helpers.free_port()  # nothing listens there yet: connection refused
    reg = make_registry(extra_yaml=notifications_yaml(
        endpoint_yaml("late", "http://127.0.0.1:%d/events" % port)))
    img = make_image()
    push_image(reg, repo, img, ref="v1")
    assert wait_log(reg, r"endpoint late is down"), reg.log_tail()
    time.sleep(0.5)
    rcv = Receiver(port)
    try:
        rcv.status = 503  # up, but failing: still retried
        deadline = time.monotonic() + 10
        while rcv.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rcv.attempts >= 2 and not rcv.events()
        rcv.status = 200
        n = len(img.blobs) + 1
        evs = rcv.wait_for(lambda evs: len(find(evs, "push")) == n)
        assert len(find(evs, "push")) == n, evs
        assert len({e["id"] for e in evs}) == len(evs) == n, "each event delivered once"
        assert wait_log(reg, r"endpoint late is back"), reg.log_tail()
    finally:
        rcv.stop()


def test_endpoint_down_for_long_drops_oldest_with_a_count(make_registry, repo):
    port = helpers.free_port()
    reg = make_registry(extra_yaml=notifications_yaml(
        endpoint_yaml("gone", "http://127.0.0.1:%d/events" % port)))
    data = b"small blob for pulls"
    d = upload_blob(reg, repo, data)
    total = 1 + 1200  # the push and the pulls
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=30)
    try:
        for _ in range(1200):
            conn.request("GET", "/v2/%s/blobs/%s" % (repo, d))
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == data
    finally:
        conn.close()
    assert wait_log(reg, r"queue of endpoint gone is full \(1024 events\)"), reg.log_tail()
    m = wait_log(reg, r"endpoint gone is down and its queue is full: dropped \d+ events "
                      r"\((\d+) in total\)")
    assert m, reg.log_tail()
    assert reg.alive()
    # Back up: the bounded queue (plus the batch that was in flight) is delivered.
    rcv = Receiver(port)
    try:
        evs = rcv.wait_for(lambda evs: len(evs) >= 1024, timeout=30)
        time.sleep(0.5)
        evs = rcv.events()
        assert 1024 <= len(evs) <= 1024 + 32
        logged = int(re.findall(r"\((\d+) in total\)", open(reg.log_path).read())[-1])
        assert len(evs) + logged == total
        # The newest events survived: the last pull is there.
        assert evs[-1]["action"] == "pull"
    finally:
        rcv.stop()


def test_ignore_filters(make_registry, receiver, repo):
    reg = make_registry(extra_yaml=notifications_yaml(
        endpoint_yaml("nopull", receiver.url("/a"), "      ignore:\n        actions: [pull]\n"),
        endpoint_yaml("noblobs", receiver.url("/b"),
                      "      ignore:\n        mediatypes: [application/octet-stream]\n"),
        endpoint_yaml("nooci", receiver.url("/c"),
                      "      ignoredmediatypes: [application/vnd.oci.image.manifest.v1+json]\n"),
        endpoint_yaml("off", receiver.url("/d"), "      disabled: true\n")))
    img = make_image()
    push_image(reg, repo, img, ref="v1")
    layer = list(img.blobs)[0]
    assert reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": img.media_type}).ok
    assert reg.get("/v2/%s/blobs/%s" % (repo, layer)).ok
    n_blobs = len(img.blobs)
    a = receiver.wait_for(lambda evs: len(evs) >= n_blobs + 1, path="/a")
    b = receiver.wait_for(lambda evs: len(evs) >= 2, path="/b")
    c = receiver.wait_for(lambda evs: len(evs) >= n_blobs + 1, path="/c")
    time.sleep(0.5)  # anything filtered wrongly would have arrived by now
    a, b, c = receiver.events("/a"), receiver.events("/b"), receiver.events("/c")
    assert sorted(e["action"] for e in a) == ["push"] * (n_blobs + 1)
    assert [(e["action"], e["target"]["mediaType"]) for e in b] == [
        ("push", img.media_type), ("pull", img.media_type)]
    assert all(e["target"]["mediaType"] == "application/octet-stream" for e in c)
    assert len(c) == n_blobs + 1
    assert receiver.events("/d") == []
