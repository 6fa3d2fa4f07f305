"""Pull-through hardening: what the mirror does with malformed or hostile upstream input
(?ns=, sizes it cannot read, token realms on other hosts) and with space it cannot use."""

import http.client
import os
import subprocess
import threading

import pytest
import requests

import helpers
import tokenserver
from helpers import assert_error

pytestmark = pytest.mark.regmirror_only("pull-through hardening is regmirror's behaviour")


@pytest.fixture
def mirror(make_registry, upstream):
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(
        username="alice",
        extra="  remotes:\n    - host: ghcr.example\n      remoteurl: %s\n" % upstream.url))


@pytest.mark.parametrize("ns", ["%00", "a" * 5000, "not/a/host", "a..b", "host:99999",
                                "ghcr.example%00"])
def test_malformed_ns_is_refused(mirror, upstream, seeded, ns):
    """A malformed ?ns= is 400 NAME_INVALID (an unknown host is 404 NAME_UNKNOWN); neither
    is served from the main upstream."""
    img = seeded.alpine
    d = next(iter(img.blobs))
    upstream.proxy.reset()
    for path in ("/v2/%s/manifests/%s" % (img.repo, img.tag), "/v2/%s/blobs/%s" % (img.repo, d)):
        for method in ("GET", "HEAD"):
            r = mirror.request(method, path + "?ns=" + ns)
            assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
            if method == "GET":
                assert_error(r, 400, "NAME_INVALID")
            r = mirror.request(method, path + "?ns=unknown.example")
            assert r.status_code == 404, (method, path, r.status_code)
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest") + upstream.proxy.count(kind="blob") == 0
    # Well-formed ones still work.
    for ns in ("docker.io", "ghcr.example"):
        r = mirror.get("/v2/%s/manifests/%s?ns=%s" % (img.repo, img.tag, ns),
                       headers={"Accept": img.media_type})
        assert r.status_code == 200 and r.content == img.manifest, (ns, r.status_code)


@pytest.mark.parametrize("value,status", [
    # Read by libcurl, refused by the mirror: 502.
    ("12abc", 502), ("9223372036854775808", 502), ("99999999999999999999999", 502),
    # Refused by libcurl as a malformed reply: a broken transfer, retried, then 503.
    ("abc", 503), ("-1", 503), ("", 503),
])
def test_unreadable_blob_size_is_refused(mirror, upstream, seeded, value, status):
    """A blob HEAD or GET whose upstream Content-Length cannot be read (not a number,
    negative, above INT64_MAX) gets an error with an OCI body, never an invented size;
    nothing is stored and a clean fetch afterwards works."""
    img = seeded.alpine
    d, data = next(iter(img.blobs.items()))
    path = "/v2/%s/blobs/%s" % (img.repo, d)
    upstream.proxy.bad_length(value, method="HEAD", count=None)
    r = mirror.head(path)
    assert r.status_code == status, (r.status_code, dict(r.headers))
    assert r.headers.get("Content-Length") != "0"
    upstream.proxy.bad_length(value, method="GET", count=None)
    r = mirror.get(path)
    assert_error(r, status, "UNKNOWN" if status == 502 else "UNAVAILABLE")
    upstream.proxy.clear_faults()
    r = mirror.head(path)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
    r = mirror.get(path)
    assert r.status_code == 200 and r.content == data


def _token_upstream(tmp_path, upstream, host, name):
    """A token server on `host` and a docker-registry over the test upstream's storage whose
    challenge names that server as realm."""
    ts = tokenserver.TokenServer(str(tmp_path / name), host=host, key_path=upstream.token.key_path,
                                 bundle_path=str(tmp_path / (name + ".bundle.pem")),
                                 issuer=upstream.issuer, service=upstream.service).start()
    yaml = ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n"
            "    rootcertbundle: %s\n") % (ts.realm, upstream.service, upstream.issuer,
                                          ts.bundle_path)
    reg = helpers.Registry("docker-registry", str(tmp_path / (name + "-registry")),
                           rootdir=upstream.registry.fs_root, extra_yaml=yaml)
    reg.start()
    return ts, reg


def test_credentials_never_go_to_a_foreign_realm(make_registry, upstream, seeded, tmp_path):
    """An upstream whose challenge names a token realm on another host (127.0.0.2 for an
    upstream on 127.0.0.1) gets anonymous token requests there: the realm never sees an
    Authorization header, public pulls work, private ones do not; a warning names the realm
    host, never the account. The legit realm (same address) still gets the account."""
    foreign, evil = _token_upstream(tmp_path, upstream, "127.0.0.2", "foreign")
    try:
        yaml = "proxy:\n  remoteurl: %s\n  username: alice\n  password: %s\n" % (
            evil.base, upstream.users["alice"])
        mirror = make_registry(name="foreign-realm", extra_yaml=yaml)
        img = seeded.alpine
        r = mirror.get("/v2/%s/manifests/%s" % (img.repo, img.tag),
                       headers={"Accept": img.media_type})
        assert r.status_code == 200 and r.content == img.manifest, r.text[:200]
        for d, data in img.blobs.items():
            assert mirror.get("/v2/%s/blobs/%s" % (img.repo, d)).content == data
        secret = seeded.secret
        r = mirror.get("/v2/%s/manifests/%s" % (secret.repo, secret.tag),
                       headers={"Accept": secret.media_type})
        assert r.status_code == 404, r.text[:200]
        log = foreign.stats()["log"]
        assert log, "the foreign realm was never asked"
        assert not any(e["authorization"] for e in log), log
        assert all(e["user"] is None for e in log), log
        text = open(mirror.log_path).read()
        warned = [l for l in text.splitlines() if "token realm 127.0.0.2" in l]
        assert len(warned) == 1 and "does not qualify" in warned[0], text[-3000:]
        assert upstream.users["alice"] not in text
    finally:
        evil.stop()
        foreign.stop()
    # The legit realm (the upstream's own address, another port) gets the account.
    mirror = make_registry(name="legit-realm", extra_yaml=upstream.proxy_yaml(username="alice"))
    secret = seeded.secret
    r = mirror.get("/v2/%s/manifests/%s" % (secret.repo, secret.tag),
                   headers={"Accept": secret.media_type})
    assert r.status_code == 200 and r.content == secret.manifest
    log = upstream.token.stats()["log"]
    assert log and all(e["authorization"] and e["user"] == "alice" for e in log), log
    assert "if on the address 127.0.0.1 itself" in open(mirror.log_path).read()


def test_check_config_names_the_credentials_rule(tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                   "proxy:\n  remoteurl: https://registry-1.docker.io\n  username: u\n"
                   "  password: secretpw\n  remotes:\n    - host: ghcr.io\n"
                   "      remoteurl: https://ghcr.io\n      username: g\n      password: p2\n"
                   % (tmp_path / "root"))
    out = subprocess.run([helpers.regmirror_bin(), "check-config", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert ("# proxy: the account of https://registry-1.docker.io goes to the realm named by "
            "the upstream's challenge, if on docker.io (https)") in out.stdout, out.stdout
    assert ("# proxy: the account of https://ghcr.io goes to the realm named by the upstream's "
            "challenge, if on ghcr.io (https)") in out.stdout
    assert "secretpw" not in out.stdout


def _uploads(root):
    """Every upload session directory under a filesystem registry root."""
    out = []
    for dirpath, dirnames, _ in os.walk(os.path.join(root, "docker/registry/v2/repositories")):
        if os.path.basename(dirpath) == "_uploads":
            out += [os.path.join(dirpath, d) for d in dirnames]
    return out


@pytest.mark.skipif(helpers.storage_kind() == "oss", reason="the OSS spool is proxy.spooldir, "
                    "cleared at every start")
def test_killed_pull_through_leaves_no_spool(make_registry, upstream, seeded):
    """kill -9 during a slow pull-through: the restart removes the spool nobody can resume
    (and only that: a client's upload session stays resumable), and the re-pull works."""
    mirror = make_registry(name="killed", extra_yaml=upstream.proxy_yaml(extra="  push: true\n"))
    img = seeded.alpine
    d, data = max(img.blobs.items(), key=lambda kv: len(kv[1]))
    r = mirror.post("/v2/%s/blobs/uploads/" % img.repo, data=b"")
    assert r.status_code == 202
    client_session = [p for p in _uploads(mirror.rootdir)]
    assert len(client_session) == 1
    upstream.proxy.throttle(len(data) // 10)

    def pull():
        try:
            requests.get(mirror.url("/v2/%s/blobs/%s" % (img.repo, d)), timeout=60)
        except requests.RequestException:
            pass

    t = threading.Thread(target=pull, daemon=True)
    t.start()

    def spooling():
        return [p for p in _uploads(mirror.rootdir) if p not in client_session and
                os.path.exists(os.path.join(p, "data")) and
                os.path.getsize(os.path.join(p, "data")) > 0]

    assert helpers.wait_until(spooling, 20), "no spool appeared"
    spool = spooling()[0]
    mirror.proc.kill()
    mirror.proc.wait(10)
    mirror.proc = None
    t.join(30)
    upstream.proxy.clear_faults()
    assert os.path.isdir(spool)  # what a kill -9 leaves
    mirror.start()
    assert not os.path.exists(spool)
    assert _uploads(mirror.rootdir) == client_session
    assert os.listdir(os.path.join(mirror.rootdir, "regmirror-spools")) != []  # the new instance
    assert "removed 1 pull-through spool(s) left by 1 stopped instance(s)" in open(
        mirror.log_path).read()
    r = mirror.get("/v2/%s/blobs/%s" % (img.repo, d))
    assert r.status_code == 200 and r.content == data
    assert _uploads(mirror.rootdir) == client_session
    # A clean stop leaves no record behind.
    mirror.stop()
    assert os.listdir(os.path.join(mirror.rootdir, "regmirror-spools")) == []


@pytest.fixture
def small_root(tmp_path):
    """An 8 MiB tmpfs to serve from (needs root); skipped where it cannot be mounted."""
    root = tmp_path / "small-root"
    root.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + r.stderr.strip())
    yield str(root)
    subprocess.run(["umount", "-l", str(root)], capture_output=True)


def _send(reg, method, path, body, headers=None):
    """Sends body in pieces, tolerating the server answering (and closing) early; returns
    (status, body) or (0, b"") when no answer could be read."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    try:
        conn.putrequest(method, path)
        for k, v in dict({"Content-Type": "application/octet-stream",
                          "Content-Length": str(len(body))}, **(headers or {})).items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            for i in range(0, len(body), 256 * 1024):
                conn.send(body[i:i + 256 * 1024])
        except OSError:
            pass
        try:
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
    finally:
        conn.close()


def _upload_bytes(root):
    return sum(os.path.getsize(os.path.join(p, "data")) for p in _uploads(root)
               if os.path.exists(os.path.join(p, "data")))


@pytest.mark.skipif(helpers.storage_kind() == "oss", reason="a full local disk is the "
                    "filesystem driver's case")
def test_full_disk_upload_frees_what_it_wrote(make_registry, small_root):
    """A PUT or PATCH that fails with ENOSPC frees what it wrote and answers 503 UNAVAILABLE
    with an OCI body; the session is back where it was, so a smaller POST+PUT (or the next
    PATCH) succeeds at once, not after uploadpurging."""
    reg = make_registry(name="full", rootdir=small_root)
    repo = "full/app"
    big = os.urandom(12 * 1024 * 1024)
    for mode in ("PUT", "PATCH"):
        loc, _ = helpers.start_upload(reg, repo)
        path = loc[loc.index("/v2/"):]
        if mode == "PUT":
            target = helpers.with_query(path, digest=helpers.sha256(big))
        else:
            target = path
        status, body = _send(reg, mode, target, big)
        assert status in (503, 0), (mode, status, body[:300])  # 0: the answer was lost
        if status:
            assert b'"UNAVAILABLE"' in body, body
        assert helpers.wait_until(lambda: _upload_bytes(reg.rootdir) == 0, 10), \
            (mode, _upload_bytes(reg.rootdir))
        if mode == "PATCH":
            # The same session goes on from where it was.
            small = os.urandom(512 * 1024)
            r = reg.patch(loc, data=small, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 202, r.text
            assert r.headers["Range"] == "0-%d" % (len(small) - 1)
            r = reg.put(helpers.with_query(helpers.abs_location(reg, r),
                                           digest=helpers.sha256(small)), data=b"")
            assert r.status_code == 201, r.text
        small = os.urandom(1024 * 1024)
        loc, _ = helpers.start_upload(reg, repo)
        r = reg.put(helpers.with_query(loc, digest=helpers.sha256(small)), data=small,
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, (mode, r.status_code, r.text[:300])
        assert reg.get("/v2/%s/blobs/%s" % (repo, helpers.sha256(small))).content == small
