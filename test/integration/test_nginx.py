"""regmirror behind nginx (Debian's) terminating TLS, configured the way the registry:2
write-ups do it (X-Forwarded-Proto $scheme, Host $http_host, client_max_body_size 0,
proxy_request_buffering off), with htpasswd auth in regmirror: 401s pass through, Location
headers are https:// URLs of nginx, and skopeo pushes and pulls through it verifying the CA."""

import os
import shutil
import subprocess
import time

import pytest
import requests

import helpers
from helpers import (OCI_MANIFEST, make_image, read_oci_layout, sha256, with_query,
                     write_oci_layout)
from tlsutil import PASSWORD, REALM, USER, Certs, Skopeo, auth_yaml, write_htpasswd

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        client_max_body_size 0;
        chunked_transfer_encoding on;
        location /v2/ {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 300;
            proxy_request_buffering off;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, workdir, certs, upstream_port):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = helpers.free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(d=self.dir, port=self.port, crt=certs.server_crt,
                                      key=certs.server_key, upstream=upstream_port))
        self.proc = None

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    def url(self, path):
        return "https://%s%s" % (self.host, path)

    def start(self):
        log = open(os.path.join(self.dir, "stderr.log"), "ab")
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", self.conf, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited with %s:\n%s" % (self.proc.returncode,
                                                                  self.log_tail()))
            if helpers.port_is_listening(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen:\n" + self.log_tail())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self):
        return helpers.tail(os.path.join(self.dir, "error.log"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("nginx-certs"))


@pytest.fixture
def behind_nginx(make_registry, certs, tmp_path):
    if not os.access(NGINX, os.X_OK):
        pytest.skip("nginx is not installed")
    ht = write_htpasswd(tmp_path / "htpasswd", [(USER, PASSWORD)])
    reg = make_registry(name="behind-nginx", extra_yaml=auth_yaml(ht))
    ngx = Nginx(tmp_path / "nginx", certs, reg.port).start()
    yield reg, ngx
    ngx.stop()


class Front:
    """Talks to the registry through nginx, with the test CA and the credentials."""

    def __init__(self, ngx, certs):
        self.ngx = ngx
        self.s = requests.Session()
        self.s.auth = (USER, PASSWORD)
        self.ca = certs.ca
        self.base = "https://" + ngx.host

    def request(self, method, path_or_url, **kw):
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", False)
        kw.setdefault("verify", self.ca)  # per request: REQUESTS_CA_BUNDLE would win otherwise
        url = path_or_url if path_or_url.startswith("http") else self.ngx.url(path_or_url)
        return self.s.request(method, url, **kw)

    def get(self, p, **kw):
        return self.request("GET", p, **kw)

    def post(self, p, **kw):
        return self.request("POST", p, **kw)

    def put(self, p, **kw):
        return self.request("PUT", p, **kw)

    def patch(self, p, **kw):
        return self.request("PATCH", p, **kw)

    def head(self, p, **kw):
        return self.request("HEAD", p, **kw)


def test_nginx_passes_the_challenge_through(behind_nginx, certs):
    reg, ngx = behind_nginx
    r = requests.get(ngx.url("/v2/"), verify=certs.ca, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers.get("WWW-Authenticate") == 'Basic realm="%s"' % REALM
    assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0"
    f = Front(ngx, certs)
    assert f.get("/v2/").status_code == 200


def test_nginx_locations_are_https_urls_of_the_proxy(behind_nginx, certs, repo):
    reg, ngx = behind_nginx
    f = Front(ngx, certs)
    r = f.post("/v2/%s/blobs/uploads/" % repo)
    assert r.status_code == 202, r.text
    loc = r.headers["Location"]
    assert loc.startswith("https://%s/v2/%s/blobs/uploads/" % (ngx.host, repo)), loc
    # a docker-style upload: one chunked PATCH without Content-Length, then PUT ?digest=
    data = os.urandom(3 * 1024 * 1024 + 17)

    def gen():
        for i in range(0, len(data), 256 * 1024):
            yield data[i:i + 256 * 1024]

    r = f.patch(loc, data=gen(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    loc = r.headers["Location"]
    assert loc.startswith("https://%s/" % ngx.host), loc
    r = f.put(with_query(loc, digest=sha256(data)))
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith("https://%s/v2/%s/blobs/sha256:" % (ngx.host, repo))
    g = f.get("/v2/%s/blobs/%s" % (repo, sha256(data)))
    assert g.status_code == 200 and g.content == data
    # registry URLs the registry itself sees are plain: nginx's are what clients get
    assert "X-Forwarded-Proto" not in g.headers


def test_skopeo_push_pull_through_nginx(behind_nginx, certs, repo, skopeo, tmp_path):
    reg, ngx = behind_nginx
    sk = Skopeo(skopeo, tmp_path / "skopeo")
    sk.login(ngx.host, USER, PASSWORD, "--cert-dir", certs.certdir)
    img = make_image(layer_sizes=(500 * 1024, 4 * 1024 * 1024), real_layers=True)
    src = str(tmp_path / "src")
    write_oci_layout(src, [("v1", img)])
    dest = "docker://%s/%s:v1" % (ngx.host, repo)
    sk.run("copy", "--dest-cert-dir", certs.certdir, "oci:%s:v1" % src, dest)
    # what nginx stored through is what regmirror serves directly
    d = reg.get("/v2/%s/manifests/v1" % repo, headers={"Accept": OCI_MANIFEST},
                auth=(USER, PASSWORD))
    assert d.status_code == 200 and d.content == img.manifest
    out = str(tmp_path / "out")
    sk.run("copy", "--src-cert-dir", certs.certdir, dest, "oci:%s:v1" % out)
    _, blobs = read_oci_layout(out)
    assert blobs[img.digest] == img.manifest
    for dg, data in img.blobs.items():
        assert blobs[dg] == data
    # without the CA skopeo refuses nginx's certificate
    p = sk.run("inspect", "--raw", dest, check=False)
    assert p.returncode != 0 and b"certificate" in p.stderr.lower(), p.stderr
