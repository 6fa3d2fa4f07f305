"""The pull-through tests' upstream, tested by itself: token server, docker-registry with token
auth, the counting proxy and its faults, and the seeded images. No regmirror involved; when one
of these fails, the pull-through results mean nothing."""

import gzip
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from datetime import datetime

import pytest
import requests
from cryptography import x509

import helpers
import tokenserver
import upstream as U
from helpers import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG,
                     OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256)


HERE = os.path.dirname(os.path.abspath(__file__))


def token_for(up, scope, user=None, password=None):
    return up.get_token(scope, user, password)


def get(up, path, token=None, headers=None, method="GET", **kw):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    kw.setdefault("timeout", 30)
    kw.setdefault("allow_redirects", False)
    return requests.request(method, up.url + path, headers=h, **kw)


def manifest_path(img):
    return "/v2/%s/manifests/%s" % (img.repo, img.tag or img.digest)


# ---------------------------------------------------------------------------
# token auth, by hand

def test_base_answers_bearer_challenge(upstream):
    r = get(upstream, "/v2/")
    assert r.status_code == 401
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    ch = U.parse_bearer_challenge(r.headers["WWW-Authenticate"])
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert ch["realm"] == upstream.token.realm  # passed through the proxy untouched
    assert ch["service"] == "test-upstream"
    assert "scope" not in ch


def test_token_flow_by_hand_anonymous_library_pull(upstream, seeded):
    img = seeded.alpine
    r = get(upstream, manifest_path(img), headers={"Accept": U.ALL_ACCEPT})
    assert r.status_code == 401
    ch = U.parse_bearer_challenge(r.headers["WWW-Authenticate"])
    assert ch["scope"] == "repository:library/alpine:pull"

    t = requests.get(ch["realm"], params={"service": ch["service"], "scope": ch["scope"]},
                     timeout=10)
    assert t.status_code == 200, t.text
    body = t.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    issued = datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((datetime.utcnow() - issued).total_seconds()) < 10
    header, claims = tokenserver.decode_jwt(body["token"])
    assert header["alg"] == "RS256" and header["kid"] == upstream.token.kid
    assert claims["iss"] == "test-issuer" and claims["aud"] == "test-upstream"
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "library/alpine",
                                 "actions": ["pull"]}]
    for k in ("exp", "nbf", "iat", "jti"):
        assert k in claims

    r = get(upstream, manifest_path(img), token=body["token"], headers={"Accept": U.ALL_ACCEPT})
    assert r.status_code == 200, r.text
    assert r.content == img.manifest
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert upstream.token.stats()["by_user"] == {"anonymous": 1}


def test_kid_is_libtrust_id_of_the_bundle_certificate(upstream):
    with open(upstream.token.bundle_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    kid = tokenserver.libtrust_key_id(cert.public_key())
    assert kid == upstream.token.kid
    parts = kid.split(":")
    assert len(parts) == 12 and all(len(p) == 4 for p in parts)


def test_private_repo_needs_alice(upstream, seeded):
    img = seeded.secret
    anon = token_for(upstream, "repository:private/secret:pull")
    assert tokenserver.decode_jwt(anon)[1]["access"] == []
    r = get(upstream, manifest_path(img), token=anon)
    assert r.status_code == 401
    ch = U.parse_bearer_challenge(r.headers["WWW-Authenticate"])
    assert ch["error"] == "insufficient_scope"
    assert ch["scope"] == "repository:private/secret:pull"

    bad = requests.get(upstream.realm, params={"service": "test-upstream",
                                               "scope": "repository:private/secret:pull"},
                       auth=("alice", "not-wonderland"), timeout=10)
    assert bad.status_code == 401
    assert "incorrect" in bad.json()["details"]

    tok = token_for(upstream, "repository:private/secret:pull", "alice", "wonderland")
    r = get(upstream, manifest_path(img), token=tok, headers={"Accept": U.ALL_ACCEPT})
    assert r.status_code == 200 and r.content == img.manifest
    # alice still pulls public images
    assert get(upstream, manifest_path(seeded.alpine), headers={"Accept": U.ALL_ACCEPT},
               token=token_for(upstream, "repository:library/alpine:pull", "alice")
               ).status_code == 200
    st = upstream.token.stats()
    assert st["by_user"] == {"anonymous": 1, "alice": 3}
    assert st["failures"] == 1 and st["issued"] == 3


def test_denied_actions_are_left_out(upstream):
    tok = token_for(upstream, ["repository:library/alpine:pull,push",
                               "repository:private/secret:pull", "registry:catalog:*",
                               "repository:other/thing:pull"])
    access = tokenserver.decode_jwt(tok)[1]["access"]
    assert access == [{"type": "repository", "name": "library/alpine", "actions": ["pull"]},
                      {"type": "repository", "name": "other/thing", "actions": ["pull"]}]
    tok = token_for(upstream, ["repository:library/alpine:pull,push", "registry:catalog:*"],
                    "pusher")
    access = tokenserver.decode_jwt(tok)[1]["access"]
    assert {"type": "registry", "name": "catalog", "actions": ["*"]} in access
    assert {"type": "repository", "name": "library/alpine", "actions": ["pull", "push"]} in access


def test_oauth2_post_password_and_refresh_grant(upstream, seeded):
    form = {"grant_type": "password", "username": "alice", "password": "wonderland",
            "client_id": "containerd-client", "service": "test-upstream",
            "scope": "repository:private/secret:pull repository:library/alpine:pull",
            "access_type": "offline"}
    r = requests.post(upstream.realm, data=form, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["access_token"] and body["refresh_token"] and body["expires_in"] == 300
    access = tokenserver.decode_jwt(body["access_token"])[1]["access"]
    assert [a["name"] for a in access] == ["private/secret", "library/alpine"]
    assert get(upstream, manifest_path(seeded.secret), token=body["access_token"]
               ).status_code == 200

    r = requests.post(upstream.realm, data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"],
        "client_id": "containerd-client", "service": "test-upstream",
        "scope": "repository:private/secret:pull"}, timeout=10)
    assert r.status_code == 200, r.text
    assert tokenserver.decode_jwt(r.json()["access_token"])[1]["sub"] == "alice"

    r = requests.post(upstream.realm, data=dict(form, password="nope"), timeout=10)
    assert r.status_code == 401
    r = requests.post(upstream.realm, data={"grant_type": "refresh_token",
                                            "refresh_token": "bogus",
                                            "service": "test-upstream"}, timeout=10)
    assert r.status_code == 401
    st = upstream.token.stats()
    assert st["by_method"] == {"POST": 4} and st["failures"] == 2
    assert st["log"][0]["client_id"] == "containerd-client"
    assert st["log"][0]["grant_type"] == "password"


def test_token_expires_after_its_lifetime(upstream, seeded):
    upstream.token.configure(lifetime=2)
    body = requests.get(upstream.realm, params={"service": "test-upstream",
                                                "scope": "repository:library/alpine:pull"},
                        timeout=10).json()
    assert body["expires_in"] == 2
    t0 = time.monotonic()
    path = manifest_path(seeded.alpine)
    assert get(upstream, path, token=body["token"]).status_code == 200
    while True:
        r = get(upstream, path, token=body["token"])
        if r.status_code != 200:
            break
        assert time.monotonic() - t0 < 4, "the upstream still takes a 2 s token after 4 s"
        time.sleep(0.1)
    assert r.status_code == 401
    assert U.parse_bearer_challenge(r.headers["WWW-Authenticate"])["error"] == "invalid_token"
    assert time.monotonic() - t0 >= 0.9


def test_expires_in_omission_and_down_mode(upstream):
    upstream.token.configure(omit_expires_in=True)
    body = requests.get(upstream.realm, params={"service": "test-upstream"}, timeout=10).json()
    assert "expires_in" not in body and body["token"]

    # the HTTP control endpoint does the same as configure()
    r = requests.get(upstream.token.url + "/control", params={"down": "1"}, timeout=10)
    assert r.json()["down"] is True
    r = requests.get(upstream.realm, params={"service": "test-upstream",
                                             "scope": "repository:library/alpine:pull"},
                     timeout=10)
    assert r.status_code == 503
    requests.get(upstream.token.url + "/control", params={"down": "0"}, timeout=10)
    st = requests.get(upstream.token.url + "/stats", timeout=10).json()
    assert st["requests"] == 2 and st["failures"] == 1 and st["by_status"] == {"200": 1,
                                                                             "503": 1}


def test_token_server_stopped_and_restarted(upstream):
    ts = upstream.token
    port = ts.port
    ts.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(ts.realm, timeout=2)
    ts.start()
    assert ts.port == port
    assert requests.get(ts.realm, params={"service": "test-upstream"}, timeout=5
                        ).status_code == 200
    ts.stop()  # left stopped: the fixture starts it again for the next test


def test_forged_tokens_are_rejected(upstream, seeded):
    path = manifest_path(seeded.alpine)
    access = [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]
    ts = upstream.token
    assert get(upstream, path, token=ts.make_token("x", access)).status_code == 200
    other = tokenserver.generate_key()
    for tok in (ts.make_token("x", access, key=other),
                ts.make_token("x", access, audience="someone-else"),
                ts.make_token("x", access, issuer="evil"),
                ts.make_token("x", access, now=time.time() - 600)):
        r = get(upstream, path, token=tok)
        assert r.status_code == 401, tokenserver.decode_jwt(tok)


def test_es256_token_server_is_accepted(tmp_path):
    up = U.start_upstream(tmp_path / "es", alg="ES256", seed=False)
    try:
        tok = up.get_token("repository:library/none:pull")
        assert tokenserver.decode_jwt(tok)[0]["alg"] == "ES256"
        r = requests.get(up.url + "/v2/", headers={"Authorization": "Bearer " + tok}, timeout=10)
        assert r.status_code == 200
    finally:
        up.stop()


def test_standalone_tokenserver_command(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": {"bob": {"password": "builder",
                                                   "grants": [["team/*", ["pull", "push"]]]}},
                                 "private": ["team/*"]}))
    port = helpers.free_port()
    key = tmp_path / "k.pem"
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "tokenserver.py"), "--port",
                          str(port), "--key", str(key), "--issuer", "iss2", "--service", "svc2",
                          "--users", str(users), "--lifetime", "7"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not helpers.port_is_listening(port):
            assert p.poll() is None, p.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = "http://127.0.0.1:%d/token" % port
        r = requests.get(url, params={"service": "svc2", "scope": "repository:team/a:push"},
                         auth=("bob", "builder"), timeout=10)
        body = r.json()
        assert body["expires_in"] == 7
        header, claims = tokenserver.decode_jwt(body["token"])
        assert claims["iss"] == "iss2" and claims["aud"] == "svc2" and claims["sub"] == "bob"
        assert claims["access"] == [{"type": "repository", "name": "team/a",
                                     "actions": ["push"]}]
        anon = requests.get(url, params={"service": "svc2", "scope": "repository:team/a:pull"},
                            timeout=10).json()
        assert tokenserver.decode_jwt(anon["token"])[1]["access"] == []
        assert key.exists() and (tmp_path / "k.bundle.pem").exists()
        with open(tmp_path / "k.bundle.pem", "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        assert tokenserver.libtrust_key_id(cert.public_key()) == header["kid"]
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()


# ---------------------------------------------------------------------------
# the seeded images

def _tar_members(gz):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(gz))) as tf:
        return {("/" + m.name.lstrip("/")): m for m in tf.getmembers()}


def _check_image(client, img, media_type, config_type, layer_type, arch):
    r = client.get_manifest(img.repo, img.digest)
    assert r.status_code == 200, r.text
    assert r.content == img.manifest and r.headers["Content-Type"] == media_type
    m = json.loads(img.manifest)
    assert m["mediaType"] == media_type and m["config"]["mediaType"] == config_type
    cfg = json.loads(img.config.data)
    assert cfg["architecture"] == arch and cfg["os"] == "linux"
    assert cfg["rootfs"]["diff_ids"] == [l.diff_id for l in img.layers]
    assert len(cfg["history"]) == len(img.layers)
    for l, d in zip(img.layers, m["layers"]):
        assert d == {"mediaType": layer_type, "digest": l.digest, "size": l.size}
        assert sha256(gzip.decompress(l.data)) == l.diff_id
        b = client.get_blob(img.repo, l.digest)
        assert b.status_code == 200 and sha256(b.content) == l.digest
        assert set(l.files) <= set(_tar_members(l.data))
    b = client.get_blob(img.repo, img.config.digest)
    assert b.status_code == 200 and b.content == img.config.data


def test_seeded_images(upstream, seeded):
    c = upstream.client("pusher", direct=True)
    try:
        alpine = seeded["library/alpine:3.19"]
        assert alpine.ref == "library/alpine:3.19" and len(alpine.layers) == 3
        for l in alpine.layers:
            assert 200 * 1024 < l.size < 600 * 1024
            assert len(gzip.decompress(l.data)) < l.size * 1.1  # incompressible content
        assert "/bin/hello" in _tar_members(alpine.layers[0].data)
        assert _tar_members(alpine.layers[0].data)["/bin/hello"].mode == 0o755
        _check_image(c, alpine, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, "amd64")

        for idx, mt, it, ct, lt in ((seeded.multi, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_CONFIG,
                                     DOCKER_LAYER),
                                    (seeded.multi_oci, OCI_INDEX, OCI_MANIFEST, OCI_CONFIG,
                                     OCI_LAYER)):
            r = c.get_manifest(idx.repo, idx.tag)
            assert r.status_code == 200 and r.content == idx.manifest
            assert r.headers["Content-Type"] == mt
            body = json.loads(idx.manifest)
            assert [(d["platform"]["architecture"], d["platform"].get("variant"))
                    for d in body["manifests"]] == [("amd64", None), ("arm64", "v8"),
                                                   ("arm", "v7")]
            assert len({ch.digest for ch in idx.children}) == 3
            assert idx.child("arm", "v7").platform == {"architecture": "arm", "os": "linux",
                                                       "variant": "v7"}
            for ch in idx.children:
                _check_image(c, ch, it, ct, lt, ch.platform["architecture"])
                assert json.loads(ch.config.data).get("variant") == ch.platform.get("variant")

        big = seeded.big
        assert len(big.layers) == 1 and big.layers[0].size > 50 * 1024 * 1024
        h = c.get_blob(big.repo, big.layers[0].digest, method="HEAD")
        assert h.status_code == 200 and int(h.headers["Content-Length"]) == big.layers[0].size

        secret = seeded.secret
        assert secret.repo == "private/secret"
        _check_image(c, secret, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, "amd64")
        # the JSON summary a test can log or compare
        json.dumps(seeded.to_dict())
        assert set(seeded.all_blobs()) >= set(alpine.blobs) | set(big.blobs)
    finally:
        c.close()
    # the direct client is not counted
    assert upstream.proxy.count() == 0
    anon = upstream.client()
    assert anon.get_manifest("private/secret", "1").status_code == 401
    anon.close()


# ---------------------------------------------------------------------------
# counting

def test_counting_an_image_pull(upstream, seeded):
    img = seeded.alpine
    p = upstream.proxy
    tok = token_for(upstream, "repository:library/alpine:pull")
    h = get(upstream, manifest_path(img), token=tok, method="HEAD",
            headers={"Accept": U.ALL_ACCEPT})
    assert h.status_code == 200 and h.headers["Docker-Content-Digest"] == img.digest
    assert int(h.headers["Content-Length"]) == img.size
    get(upstream, "/v2/library/alpine/manifests/" + img.digest, token=tok,
        headers={"Accept": U.ALL_ACCEPT})
    for d in img.blobs:
        r = get(upstream, "/v2/library/alpine/blobs/" + d, token=tok)
        assert r.status_code == 200 and sha256(r.content) == d
    assert p.wait_idle()
    assert p.count(method="HEAD", kind="manifest") == 1
    assert p.count(method="HEAD", kind="manifest", ref="3.19", repo="library/alpine") == 1
    assert p.count(method="GET", kind="manifest", ref=img.digest) == 1
    assert p.blob_gets() == 4
    for l in img.layers:
        assert p.blob_gets(l.digest) == 1
        assert p.bytes(kind="blob", ref=l.digest) == l.size
    assert p.bytes(kind="blob") == sum(len(b) for b in img.blobs.values())
    assert p.bytes(method="HEAD") == 0
    assert all(r["auth"] and r["done"] and r["status"] == 200 for r in p.records())
    assert p.summary()["GET blob"] == {"count": 4, "bytes": p.bytes(kind="blob"),
                                       "status": {"200": 4}}

    # a challenge is a request but not a blob fetch
    assert get(upstream, "/v2/library/alpine/blobs/" + img.layers[0].digest).status_code == 401
    assert p.count(kind="blob", method="GET") == 5 and p.blob_gets() == 4
    assert p.records(status=401)[0]["auth"] is False
    st = requests.get(upstream.url + "/__stats", timeout=10).json()
    assert len(st["requests"]) == 7 and st["summary"]["HEAD manifest"]["count"] == 1
    assert p.count() == 7, "control requests must not be counted"
    requests.post(upstream.url + "/__reset", timeout=10)
    assert p.count() == 0


def test_counting_a_big_blob_streams(upstream, seeded):
    layer = seeded.big.layers[0]
    tok = token_for(upstream, "repository:library/big:pull")
    r = get(upstream, "/v2/library/big/blobs/" + layer.digest, token=tok, stream=True)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == layer.size
    first = r.raw.read(1024 * 1024)
    # a streaming proxy has sent far less than the blob before the client read more
    time.sleep(0.2)
    rec = upstream.proxy.records(kind="blob")[0]
    assert not rec["done"] and rec["bytes"] < layer.size
    rest = r.raw.read()
    assert sha256(first + rest) == layer.digest
    r.close()
    assert upstream.proxy.wait_idle()
    assert upstream.proxy.bytes(kind="blob") == layer.size


def test_chunked_push_through_the_proxy(upstream):
    """Request bodies stream through too (docker push sends one chunked PATCH)."""
    c = upstream.client("pusher")
    repo = "it/push-" + os.urandom(4).hex()
    data = os.urandom(700 * 1024)
    scope = "repository:%s:pull,push" % repo
    r = c.request("POST", "/v2/%s/blobs/uploads/" % repo, scope=scope, data=b"")
    assert r.status_code == 202
    loc = r.headers["Location"]
    assert loc.startswith(upstream.url) or loc.startswith("/")  # Host went through as sent
    r = c.request("PATCH", loc, scope=scope,
                  data=(data[i:i + 100000] for i in range(0, len(data), 100000)),
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    r = c.request("PUT", helpers.with_query(requests.compat.urljoin(upstream.url, r.headers[
        "Location"]), digest=sha256(data)), scope=scope, data=b"")
    assert r.status_code == 201, r.text
    assert c.get_blob(repo, sha256(data)).content == data
    assert upstream.proxy.records(method="PATCH")[0]["req_bytes"] == len(data)
    c.close()


# ---------------------------------------------------------------------------
# faults

def _blob_url(up, img, layer=0):
    return up.url + "/v2/%s/blobs/%s" % (img.repo, img.layers[layer].digest)


def test_fault_fail_500_next_n(upstream, seeded):
    tok = token_for(upstream, "repository:library/alpine:pull")
    upstream.proxy.fail(500, count=2, kinds="manifest")
    path = manifest_path(seeded.alpine)
    r1, r2, r3 = (get(upstream, path, token=tok) for _ in range(3))
    assert (r1.status_code, r2.status_code, r3.status_code) == (500, 500, 200)
    assert helpers.error_codes(r1) == ["UNKNOWN"]
    assert r1.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # blobs were not affected, and the failed requests never reached docker-registry
    assert get(upstream, "/v2/library/alpine/blobs/" + seeded.alpine.config.digest,
               token=tok).status_code == 200
    recs = upstream.proxy.records(kind="manifest")
    assert [r["faults"] for r in recs] == [["fail"], ["fail"], []]


def test_fault_429_with_hub_headers_by_pattern(upstream, seeded):
    tok = token_for(upstream, "repository:library/big:pull")
    upstream.proxy.fail(429, count=None, path=r"/library/big/", retry_after=7)
    r = get(upstream, manifest_path(seeded.big), token=tok)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.headers["ratelimit-limit"] == "100;w=21600"
    assert r.headers["ratelimit-remaining"] == "0;w=21600"
    assert helpers.error_codes(r) == ["TOOMANYREQUESTS"]
    assert get(upstream, manifest_path(seeded.big), token=tok, method="HEAD").status_code == 429
    # other repositories are served
    tok2 = token_for(upstream, "repository:library/alpine:pull")
    assert get(upstream, manifest_path(seeded.alpine), token=tok2).status_code == 200
    upstream.proxy.clear_faults()
    assert get(upstream, manifest_path(seeded.big), token=tok).status_code == 200


def test_fault_cut_after_n_bytes(upstream, seeded):
    img = seeded.alpine
    layer = img.layers[1]
    tok = token_for(upstream, "repository:library/alpine:pull")
    upstream.proxy.cut_after(100000)
    conn = http.client.HTTPConnection("127.0.0.1", upstream.proxy.port, timeout=10)
    conn.request("GET", "/v2/library/alpine/blobs/" + layer.digest,
                 headers={"Authorization": "Bearer " + tok})
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == layer.size
    with pytest.raises(http.client.IncompleteRead) as ei:
        resp.read()
    assert len(ei.value.partial) == 100000
    assert ei.value.partial == layer.data[:100000]
    conn.close()
    assert upstream.proxy.wait_idle()
    rec = upstream.proxy.records(kind="blob")[0]
    assert rec["bytes"] == 100000 and rec["faults"] == ["cut"]
    # count=1: the next GET is whole
    r = get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok)
    assert r.content == layer.data


def test_fault_corrupt_flips_one_byte(upstream, seeded):
    layer = seeded.alpine.layers[0]
    tok = token_for(upstream, "repository:library/alpine:pull")
    upstream.proxy.corrupt(offset=12345)
    r = get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok)
    assert r.status_code == 200 and len(r.content) == layer.size
    assert sha256(r.content) != layer.digest
    diff = [i for i in range(layer.size) if r.content[i] != layer.data[i]]
    assert diff == [12345]
    assert get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok
               ).content == layer.data


def test_fault_throttle(upstream, seeded):
    layer = seeded.alpine.layers[2]  # ~250 KB
    tok = token_for(upstream, "repository:library/alpine:pull")
    upstream.proxy.throttle(500 * 1024)
    t0 = time.monotonic()
    r = get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok)
    took = time.monotonic() - t0
    assert r.content == layer.data
    assert took >= layer.size / (500 * 1024) * 0.8, took
    assert took < 5


def test_fault_stall_and_drop(upstream, seeded):
    tok = token_for(upstream, "repository:library/alpine:pull")
    upstream.proxy.stall(0.3, drop=True, kinds="manifest")
    t0 = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        get(upstream, manifest_path(seeded.alpine), token=tok)
    assert time.monotonic() - t0 >= 0.3
    assert get(upstream, manifest_path(seeded.alpine), token=tok).status_code == 200


def test_fault_down_refuses_connections(upstream, seeded):
    p = upstream.proxy
    port = p.port
    s = socket.create_connection(("127.0.0.1", port))  # an open keep-alive connection
    p.down()
    assert not helpers.port_is_listening(port)
    s.settimeout(2)
    try:
        assert s.recv(10) == b""  # cut (FIN or RST)
    except ConnectionResetError:
        pass
    s.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(upstream.url + "/v2/", timeout=2)
    p.up()
    assert p.port == port and requests.get(upstream.url + "/v2/", timeout=5).status_code == 401

    # timed, through the HTTP control endpoint
    requests.post(upstream.url + "/__down", params={"seconds": "0.5"}, timeout=5)
    deadline = time.monotonic() + 2
    while helpers.port_is_listening(port):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    deadline = time.monotonic() + 3
    while not helpers.port_is_listening(port):
        assert time.monotonic() < deadline, "proxy did not come back up"
        time.sleep(0.05)


def test_fault_rules_over_http(upstream, seeded):
    tok = token_for(upstream, "repository:library/alpine:pull")
    r = requests.post(upstream.url + "/__fault", json={"kind": "fail", "status": 503,
                                                       "count": 1, "method": "HEAD"}, timeout=5)
    assert r.status_code == 200 and r.json()["status"] == 503
    assert get(upstream, manifest_path(seeded.alpine), token=tok).status_code == 200
    assert get(upstream, manifest_path(seeded.alpine), token=tok,
               method="HEAD").status_code == 503
    requests.post(upstream.url + "/__fault", json={"kind": "corrupt", "count": None},
                  timeout=5)
    assert requests.get(upstream.url + "/__stats", timeout=5).json()["faults"][-1][
        "kind"] == "corrupt"
    requests.post(upstream.url + "/__fault", params={"clear": "1"}, timeout=5)
    d = seeded.alpine.layers[0]
    assert sha256(get(upstream, "/v2/library/alpine/blobs/" + d.digest, token=tok).content
                  ) == d.digest


def test_hub_style_redirect_to_cdn(upstream, seeded):
    p = upstream.proxy
    p.redirect_blobs()
    layer = seeded.alpine.layers[0]
    tok = token_for(upstream, "repository:library/alpine:pull")
    r = get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok)
    assert r.status_code == 307
    loc = r.headers["Location"]
    assert loc.startswith(p.cdn_url + "/cdn/") and not loc.startswith(upstream.url)
    c = requests.get(loc, timeout=10)  # no Authorization: the CDN URL is signed
    assert c.status_code == 200 and c.content == layer.data
    part = requests.get(loc, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == layer.data[10:20]
    assert requests.get(p.cdn_url + "/cdn/bogus", timeout=10).status_code == 403
    # requests follows the redirect and drops Authorization for the other host
    f = requests.get(upstream.url + "/v2/library/alpine/blobs/" + layer.digest,
                     headers={"Authorization": "Bearer " + tok}, timeout=10)
    assert f.status_code == 200 and f.content == layer.data
    assert p.wait_idle()
    cdn = p.records(host="cdn")
    assert [r["status"] for r in cdn] == [200, 206, 403, 200]
    assert not any(r["auth"] for r in cdn)
    assert p.count(host="registry", kind="blob", status=307) == 2
    assert p.blob_gets(layer.digest, host="cdn", status=200) == 2
    # body faults apply on the CDN too
    p.cut_after(1000, host="cdn")
    loc = get(upstream, "/v2/library/alpine/blobs/" + layer.digest, token=tok
              ).headers["Location"]
    assert len(requests.get(loc, timeout=10).content) == 1000
    # manifests are not redirected
    assert get(upstream, manifest_path(seeded.alpine), token=tok).status_code == 200


def test_hub_ratelimit_headers_on_manifest_gets(upstream, seeded):
    upstream.proxy.hub_ratelimit(100, 50)
    tok = token_for(upstream, "repository:library/alpine:pull")
    r = get(upstream, manifest_path(seeded.alpine), token=tok)
    assert r.headers["ratelimit-limit"] == "100;w=21600"
    assert r.headers["ratelimit-remaining"] == "49;w=21600"
    assert "ratelimit-limit" not in get(upstream, manifest_path(seeded.alpine), token=tok,
                                        method="HEAD").headers


def test_client_helper_does_the_token_dance(upstream, seeded):
    c = upstream.client("alice")
    r = c.get_manifest("private/secret", "1")
    assert r.status_code == 200 and r.content == seeded.secret.manifest
    # the cached token is reused: one 401 + one 200 on the upstream, one token request
    c.get_manifest("private/secret", seeded.secret.digest)
    assert [r["status"] for r in upstream.proxy.records()] == [401, 200, 200]
    assert upstream.token.stats()["by_user"] == {"alice": 1}
    c.close()


# ---------------------------------------------------------------------------
# a real client against the upstream

def test_skopeo_pulls_from_the_upstream(upstream, seeded, tmp_path):
    skopeo = helpers.which("skopeo")
    if not skopeo:
        pytest.skip("skopeo is not installed")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    regconf = tmp_path / "registries.conf"
    regconf.write_text("")
    env = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path),
               REGISTRY_AUTH_FILE=str(tmp_path / "auth.json"))

    def sk(*args):
        return subprocess.run([skopeo, "--policy", str(policy), "--registries-conf",
                               str(regconf)] + list(args), capture_output=True, env=env,
                              timeout=120)

    src = "docker://%s/" % upstream.host
    p = sk("copy", "--src-tls-verify=false", src + "library/alpine:3.19",
           "dir:" + str(tmp_path / "alpine"))
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "alpine" / "manifest.json").read_bytes() == seeded.alpine.manifest
    p = sk("copy", "--src-tls-verify=false", "--override-arch", "arm", "--override-variant",
           "v7", src + "library/multi-oci:1", "dir:" + str(tmp_path / "arm"))
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "arm" / "manifest.json").read_bytes() == \
        seeded.multi_oci.child("arm", "v7").manifest
    p = sk("copy", "--src-tls-verify=false", src + "private/secret:1",
           "dir:" + str(tmp_path / "nope"))
    assert p.returncode != 0
    p = sk("copy", "--src-tls-verify=false", "--src-creds", "alice:wonderland",
           src + "private/secret:1", "dir:" + str(tmp_path / "secret"))
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "secret" / "manifest.json").read_bytes() == seeded.secret.manifest
    assert upstream.proxy.blob_gets() == 4 + 2 + 2
    users = upstream.token.stats()["by_user"]
    assert users.get("alice", 0) >= 1 and users.get("anonymous", 0) >= 2
