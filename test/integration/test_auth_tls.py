"""Client auth (auth.htpasswd) and TLS (http.tls): 401s with a Basic challenge on every /v2/
route, logins and pushes/pulls with skopeo, a self-signed CA that skopeo verifies, the
REGISTRY_HTTP_TLS_* / REGISTRY_AUTH_* overrides of the usual `docker run -e` examples,
minimumtls, cipher suites, client certificates, bounded memory for downloads over TLS, and the
start-up errors for unusable files."""

import base64
import os
import ssl
import subprocess
import time

import pytest
import requests

import helpers
from helpers import (API_VERSION_HEADER, OCI_MANIFEST, error_codes, make_image, push_image,
                     read_oci_layout, upload_blob, write_oci_layout)
from tlsutil import (PASSWORD, REALM, USER, Certs, Skopeo, TLSRegistry, auth_yaml, rss_kb,
                     tls_env, tls_probe, write_htpasswd)

DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def htpasswd(tmp_path):
    return write_htpasswd(tmp_path / "htpasswd", [(USER, PASSWORD), ("bob", "bobs-password")])


@pytest.fixture
def authreg(make_registry, htpasswd):
    """A plain-HTTP registry with htpasswd auth; its session carries no credentials."""
    return make_registry(name="authreg", extra_yaml=auth_yaml(htpasswd))


@pytest.fixture
def make_tls_registry(tmp_path, _started):
    regs = []

    def factory(certs, name="tlsreg", client_cert=False, **kw):
        kind = helpers.target_kind()
        if kind == "regmirror" and not helpers.regmirror_bin():
            pytest.skip("REGMIRROR_BIN is not set")
        r = TLSRegistry(kind, tmp_path / name, certs, client_cert=client_cert, **kw)
        regs.append(r)
        _started.append(r)
        r.start()
        return r

    yield factory
    for r in regs:
        rc = r.stop()
        if r in _started:
            _started.remove(r)
        assert rc in (0, -15, None), "registry exited with %s:\n%s" % (rc, r.log_tail())


@pytest.fixture
def skopeo_cli(skopeo, tmp_path):
    return Skopeo(skopeo, tmp_path / "skopeo")


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def every_route(repo):
    """(method, path) for each /v2/ route and method a client may use."""
    up = "/v2/%s/blobs/uploads/" % repo
    return [
        ("GET", "/v2/"), ("HEAD", "/v2/"),
        ("GET", "/v2/_catalog"),
        ("GET", "/v2/%s/tags/list" % repo),
        ("GET", "/v2/%s/manifests/latest" % repo), ("HEAD", "/v2/%s/manifests/latest" % repo),
        ("PUT", "/v2/%s/manifests/latest" % repo), ("DELETE", "/v2/%s/manifests/%s" % (repo, DIGEST)),
        ("GET", "/v2/%s/blobs/%s" % (repo, DIGEST)), ("HEAD", "/v2/%s/blobs/%s" % (repo, DIGEST)),
        ("DELETE", "/v2/%s/blobs/%s" % (repo, DIGEST)),
        ("POST", up), ("GET", up + "some-upload-id"), ("PATCH", up + "some-upload-id"),
        ("PUT", up + "some-upload-id?digest=" + DIGEST), ("DELETE", up + "some-upload-id"),
        ("GET", "/v2/%s/blobs/sha256:zz" % repo),
    ]


# regmirror checks credentials before routing, so without them nothing is learnt from a path;
# distribution 2.8 answers these 404 (no referrers API, no route matched) before auth
AUTH_BEFORE_ROUTING = ["/v2", "/v2/%s/referrers/" + DIGEST, "/v2/NOT_A_NAME/tags/list",
                       "/v2/no/such/route"]


def every_route_for(reg, repo):
    routes = every_route(repo)
    extra = [("GET", p % repo if "%s" in p else p) for p in AUTH_BEFORE_ROUTING]
    return routes if reg.is_reference else routes + extra


def assert_unauthorized(r, method):
    assert r.status_code == 401, "%s %s: %d %s" % (method, r.url, r.status_code, r.text[:300])
    assert r.headers.get("WWW-Authenticate") == 'Basic realm="%s"' % REALM, r.headers
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"
    if method != "HEAD":
        assert error_codes(r) == ["UNAUTHORIZED"], r.text


# ---------------------------------------------------------------------------
# htpasswd

def test_every_route_needs_credentials(authreg, repo):
    bad = [None, basic(USER, "wrong"), basic("mallory", PASSWORD), basic(USER, ""),
           "Basic !!!not-base64", "Bearer sometoken", basic(USER, PASSWORD)[:-2]]
    wrong = []
    for method, path in every_route_for(authreg, repo):
        for h in bad:
            headers = {"Authorization": h} if h else {}
            body = b"x" * 10 if method in ("PUT", "PATCH") else None
            r = authreg.request(method, path, headers=headers, data=body)
            try:
                assert_unauthorized(r, method)
            except AssertionError as e:
                wrong.append("%s %s with %r: %s" % (method, path, h, str(e).splitlines()[0]))
    assert not wrong, "\n".join(wrong[:30])
    # nothing was created by any of those
    ok = {"Authorization": basic(USER, PASSWORD)}
    assert authreg.get("/v2/_catalog", headers=ok).json()["repositories"] == []


def test_right_credentials_work(authreg, repo):
    authreg.session.auth = (USER, PASSWORD)
    r = authreg.get("/v2/")
    assert r.status_code == 200 and API_VERSION_HEADER in r.headers
    img = make_image()
    push_image(authreg, repo, img, ref="v1")
    r = authreg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == img.manifest
    assert authreg.get("/v2/%s/tags/list" % repo).json()["tags"] == ["v1"]
    # the other user of the file, and the scheme in lower case
    r = authreg.get("/v2/_catalog", auth=None,
                    headers={"Authorization": basic("bob", "bobs-password").replace("Basic",
                                                                                    "basic")})
    assert r.status_code == 200 and repo in r.json()["repositories"]


@pytest.mark.regmirror_only("log text")
def test_failed_logins_are_logged_without_the_password(authreg):
    secret = "Very-Secret-Guess-%d" % os.getpid()
    r = authreg.get("/v2/", headers={"Authorization": basic(USER, secret)})
    assert r.status_code == 401
    r = authreg.get("/v2/", headers={"Authorization": basic("nobody", secret)})
    assert r.status_code == 401
    time.sleep(0.2)
    log = authreg.log_tail(20000)
    assert "failed login" in log and "user=alice" in log and "user=nobody" in log, log
    assert secret not in log
    assert PASSWORD not in log
    with open(authreg.config_path) as f:
        htpath = f.read().split("path: ")[1].split()[0]
    for line in open(htpath):
        if ":" in line:
            assert line.split(":", 1)[1].strip() not in log, "a hash leaked into the log"


@pytest.mark.regmirror_only("a cache of verified credentials")
def test_verified_credentials_are_cached(make_registry, tmp_path):
    # bcrypt cost 12 is ~0.2-0.3 s per check: 40 requests would take 10 s without the cache
    path = write_htpasswd(tmp_path / "htpasswd-slow", [(USER, PASSWORD)], cost=12)
    reg = make_registry(name="slowauth", extra_yaml=auth_yaml(path))
    t0 = time.monotonic()
    r = reg.get("/v2/", auth=(USER, PASSWORD))
    first = time.monotonic() - t0
    assert r.status_code == 200
    t0 = time.monotonic()
    for _ in range(40):
        assert reg.get("/v2/", auth=(USER, PASSWORD)).status_code == 200
    rest = time.monotonic() - t0
    assert rest < max(3.0, 10 * first), "40 cached checks took %.2fs (first %.2fs)" % (rest, first)
    # a wrong password is still checked every time
    assert reg.get("/v2/", auth=(USER, PASSWORD + "x")).status_code == 401


@pytest.mark.regmirror_only("registry:2 2.8 reads the file once")
def test_htpasswd_file_is_reloaded_when_it_changes(authreg, htpasswd):
    assert authreg.get("/v2/", auth=("carol", "carols-pw")).status_code == 401
    assert authreg.get("/v2/", auth=(USER, PASSWORD)).status_code == 200
    time.sleep(1.1)
    write_htpasswd(htpasswd + ".new", [("carol", "carols-pw")])
    os.rename(htpasswd + ".new", htpasswd)
    time.sleep(1.1)
    assert authreg.get("/v2/", auth=("carol", "carols-pw")).status_code == 200
    assert authreg.get("/v2/", auth=(USER, PASSWORD)).status_code == 401
    # a broken file keeps the users loaded before
    time.sleep(1.1)
    with open(htpasswd, "a") as f:
        f.write("dave:$apr1$abc$def\n")
    time.sleep(1.1)
    assert authreg.get("/v2/", auth=("carol", "carols-pw")).status_code == 200
    assert "keeping the 1 users loaded before" in authreg.log_tail()


def test_skopeo_login_push_pull_plain_http(authreg, repo, skopeo_cli, tmp_path):
    sk = skopeo_cli
    p = sk.login(authreg.host, USER, "wrong", "--tls-verify=false", check=False)
    assert p.returncode != 0
    sk.login(authreg.host, USER, PASSWORD, "--tls-verify=false")
    img = make_image(layer_sizes=(200 * 1024, 1024 * 1024), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("v1", img)])
    dest = "docker://%s/%s:v1" % (authreg.host, repo)
    # without credentials the push is refused
    p = sk.run("copy", "--dest-tls-verify=false", "--dest-creds=mallory:x", "oci:%s:v1" % src,
               dest, check=False)
    assert p.returncode != 0 and b"unauthorized" in p.stderr.lower(), p.stderr
    # explicit credentials, then the ones stored by login
    sk.run("copy", "--dest-tls-verify=false", "--dest-creds=%s:%s" % (USER, PASSWORD),
           "oci:%s:v1" % src, dest)
    out = str(tmp_path / "out")
    sk.run("copy", "--src-tls-verify=false", dest, "oci:%s:v1" % out)
    _, blobs = read_oci_layout(out)
    assert blobs[img.digest] == img.manifest
    for d, data in img.blobs.items():
        assert blobs[d] == data


# ---------------------------------------------------------------------------
# TLS

def test_tls_with_self_signed_ca_skopeo_verifies(make_tls_registry, certs, htpasswd, repo,
                                                 skopeo_cli, tmp_path):
    """The USER-CONFIGS example: htpasswd + TLS entirely from REGISTRY_* variables."""
    env = tls_env(certs, REGISTRY_AUTH="htpasswd", REGISTRY_AUTH_HTPASSWD_REALM=REALM,
                  REGISTRY_AUTH_HTPASSWD_PATH=htpasswd)
    reg = make_tls_registry(certs, env=env)
    r = reg.get("/v2/")
    assert_unauthorized(r, "GET")
    r = reg.get("/v2/_catalog", auth=(USER, PASSWORD))
    assert r.status_code == 200
    # Location headers of an HTTPS registry are https:// URLs
    r = reg.post("/v2/%s/blobs/uploads/" % repo, auth=(USER, PASSWORD))
    assert r.status_code == 202
    assert r.headers["Location"].startswith("https://127.0.0.1:%d/v2/" % reg.port), r.headers
    # plain HTTP to the TLS port gets no answer
    with pytest.raises(requests.RequestException):
        requests.get("http://127.0.0.1:%d/v2/" % reg.port, timeout=5).raise_for_status()

    sk = skopeo_cli
    # an unknown CA is refused by skopeo
    p = sk.login(reg.host, USER, PASSWORD, check=False)
    assert p.returncode != 0 and b"certificate" in p.stderr.lower(), p.stderr
    sk.login(reg.host, USER, PASSWORD, "--cert-dir", certs.certdir)
    img = make_image(layer_sizes=(300 * 1024, 2 * 1024 * 1024), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("v1", img)])
    dest = "docker://%s/%s:v1" % (reg.host, repo)
    sk.run("copy", "--dest-cert-dir", certs.certdir, "oci:%s:v1" % src, dest)
    raw = sk.run("inspect", "--raw", "--cert-dir", certs.certdir, dest).stdout
    assert raw == img.manifest
    out = str(tmp_path / "out")
    sk.run("copy", "--src-cert-dir", certs.certdir, "--src-creds=%s:%s" % (USER, PASSWORD),
           dest, "oci:%s:v1" % out)
    _, blobs = read_oci_layout(out)
    for d, data in img.blobs.items():
        assert blobs[d] == data


def test_tls_keep_alive(make_tls_registry, certs):
    reg = make_tls_registry(certs, env=tls_env(certs))
    s = requests.Session()
    s.verify = certs.ca
    for _ in range(20):
        r = s.get(reg.url("/v2/"), timeout=10, verify=certs.ca)
        assert r.status_code == 200
    # one TLS connection served all of them
    assert len(s.adapters["https://"].poolmanager.pools) == 1
    pool = list(s.adapters["https://"].poolmanager.pools._container.values())[0]
    assert pool.num_connections == 1


@pytest.mark.regmirror_only("memory use of the process under test")
def test_large_blob_over_tls_keeps_rss_small(make_tls_registry, certs, repo):
    # ASan's quarantine keeps every freed buffer for a while, which looks like growth with the
    # bytes sent; a small one leaves what the server really holds.
    asan = os.environ.get("ASAN_OPTIONS", "")
    asan = (asan + ":" if asan else "") + "quarantine_size_mb=1"
    reg = make_tls_registry(certs, env=tls_env(certs, ASAN_OPTIONS=asan))
    data = os.urandom(20 * 1024 * 1024)
    digest = upload_blob(reg, repo, data)
    pid = reg.proc.pid
    url = reg.url("/v2/%s/blobs/%s" % (repo, digest))
    # a warm-up download, so allocator caches are as big as they get without the file
    small = reg.get("/v2/%s/blobs/%s" % (repo, digest), headers={"Range": "bytes=0-1023"})
    assert small.status_code == 206 and small.content == data[:1024]
    base = rss_kb(pid)
    peak = base
    got = bytearray()
    with requests.get(url, stream=True, verify=certs.ca, timeout=60) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(data)
        for chunk in r.iter_content(256 * 1024):
            got += chunk
            peak = max(peak, rss_kb(pid))
            time.sleep(0.002)  # a reader slower than the disk: the server must wait, not buffer
    assert bytes(got) == data
    grew = (peak - base) / 1024.0
    assert grew < 8, "RSS grew by %.1f MB while sending a 20 MB blob over TLS" % grew
    # a range in the middle too
    r = reg.get("/v2/%s/blobs/%s" % (repo, digest), headers={"Range": "bytes=5000000-15000000"})
    assert r.status_code == 206 and r.content == data[5000000:15000001]
    # and a HEAD sends no body
    r = reg.head("/v2/%s/blobs/%s" % (repo, digest))
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)


def test_tls_client_going_away_mid_download(make_tls_registry, certs, repo):
    reg = make_tls_registry(certs, env=tls_env(certs))
    data = os.urandom(8 * 1024 * 1024)
    digest = upload_blob(reg, repo, data)
    for _ in range(5):
        with requests.get(reg.url("/v2/%s/blobs/%s" % (repo, digest)), stream=True,
                          verify=certs.ca, timeout=30) as r:
            next(r.iter_content(64 * 1024))
    assert reg.get("/v2/%s/blobs/%s" % (repo, digest)).content == data
    assert reg.alive()


@pytest.mark.regmirror_only("log text")
def test_minimumtls_refuses_older_versions(make_tls_registry, certs):
    reg = make_tls_registry(certs, env=tls_env(certs, REGISTRY_HTTP_TLS_MINIMUMTLS="tls1.3"))
    version, _ = tls_probe(reg.port, cafile=certs.ca)
    assert version == "TLSv1.3"
    with pytest.raises((ssl.SSLError, OSError)):
        tls_probe(reg.port, cafile=certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    time.sleep(0.2)
    assert "tls: handshake failed" in reg.log_tail()
    assert reg.get("/v2/").status_code == 200


def test_default_minimum_is_tls12(make_tls_registry, certs):
    reg = make_tls_registry(certs, env=tls_env(certs))
    version, _ = tls_probe(reg.port, cafile=certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"


def test_ciphersuites_are_honoured(make_tls_registry, certs):
    env = tls_env(certs, REGISTRY_HTTP_TLS_CIPHERSUITES="[TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]",
                  REGISTRY_HTTP_TLS_MINIMUMTLS="tls1.2")
    reg = make_tls_registry(certs, env=env)
    version, cipher = tls_probe(reg.port, cafile=certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    assert (version, cipher) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    with pytest.raises((ssl.SSLError, OSError)):
        tls_probe(reg.port, cafile=certs.ca, maximum=ssl.TLSVersion.TLSv1_2,
                  ciphers="ECDHE-RSA-AES256-GCM-SHA384")


def test_client_certificates_with_clientcas(make_tls_registry, certs):
    env = tls_env(certs, REGISTRY_HTTP_TLS_CLIENTCAS="[%s]" % certs.ca)
    reg = make_tls_registry(certs, env=env, client_cert=True)
    assert reg.get("/v2/").status_code == 200
    with pytest.raises(requests.RequestException):
        requests.get(reg.url("/v2/"), verify=certs.ca, timeout=10).raise_for_status()


# ---------------------------------------------------------------------------
# start-up errors

def _serve_expecting_failure(tmp_path, extra_yaml, env=None):
    binary = helpers.regmirror_bin()
    if not binary:
        pytest.skip("REGMIRROR_BIN is not set")
    cfg = tmp_path / "config.yml"
    cfg.write_text(helpers.render_config(str(tmp_path / "root"), "127.0.0.1:%d" %
                                         helpers.free_port(), True, extra_yaml))
    e = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    e.update(env or {})
    p = subprocess.run([binary, "serve", str(cfg)], capture_output=True, timeout=30, env=e)
    return p.returncode, p.stderr.decode(errors="replace") + p.stdout.decode(errors="replace")


@pytest.mark.regmirror_only("registry:2 creates a missing htpasswd file")
def test_missing_htpasswd_is_a_startup_error(tmp_path):
    missing = str(tmp_path / "nope" / "htpasswd")
    rc, out = _serve_expecting_failure(tmp_path, auth_yaml(missing))
    assert rc == 1, out
    assert "auth.htpasswd.path" in out and missing in out and "No such file" in out, out


@pytest.mark.regmirror_only("start-up check of the file")
def test_unreadable_htpasswd_is_a_startup_error(tmp_path):
    if os.geteuid() == 0:
        d = tmp_path / "dir-not-file"
        d.mkdir()
        rc, out = _serve_expecting_failure(tmp_path, auth_yaml(str(d)))
    else:
        f = tmp_path / "htpasswd"
        f.write_text("")
        f.chmod(0)
        rc, out = _serve_expecting_failure(tmp_path, auth_yaml(str(f)))
    assert rc == 1 and "auth.htpasswd.path" in out, out


@pytest.mark.regmirror_only("start-up check of the file")
@pytest.mark.parametrize("line,what", [
    ("eve:$apr1$Qd3D5yB1$mBRoHHNz4hxn0kkYxW3PH1", "apr1 MD5"),
    ("eve:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
    ("eve:plaintextpassword", "plain-text"),
    ("no-colon-here", "expected user:hash"),
    ("eve:$2y$05$tooshort", "malformed bcrypt"),
])
def test_unsupported_htpasswd_entries_are_startup_errors(tmp_path, line, what):
    f = tmp_path / "htpasswd"
    good = write_htpasswd(tmp_path / "good", [(USER, PASSWORD)])
    f.write_text(open(good).read() + line + "\n")
    rc, out = _serve_expecting_failure(tmp_path, auth_yaml(str(f)))
    assert rc == 1, out
    assert "line 3" in out and what in out, out
    hashpart = line.split(":", 1)[1] if ":" in line else None
    if hashpart:
        assert hashpart not in out, "the hash was printed"


@pytest.mark.regmirror_only("start-up check of the files")
def test_bad_tls_files_are_startup_errors(tmp_path, certs):
    rc, out = _serve_expecting_failure(
        tmp_path, "", env={"REGISTRY_HTTP_TLS_CERTIFICATE": str(tmp_path / "missing.crt"),
                           "REGISTRY_HTTP_TLS_KEY": certs.server_key})
    assert rc == 1 and "http.tls.certificate" in out and "missing.crt" in out, out
    rc, out = _serve_expecting_failure(
        tmp_path, "", env={"REGISTRY_HTTP_TLS_CERTIFICATE": certs.server_crt,
                           "REGISTRY_HTTP_TLS_KEY": certs.client_key})
    assert rc == 1 and "http.tls.key" in out and "does not match" in out, out
    rc, out = _serve_expecting_failure(
        tmp_path, "", env={"REGISTRY_HTTP_TLS_CERTIFICATE": certs.server_crt,
                           "REGISTRY_HTTP_TLS_KEY": certs.server_key,
                           "REGISTRY_HTTP_TLS_CLIENTCAS": "[%s]" % (tmp_path / "none.crt")})
    assert rc == 1 and "http.tls.clientcas" in out, out
