"""TLS and client-auth helpers for test_auth_tls.py and test_nginx.py: a throw-away CA with a
server certificate for 127.0.0.1/localhost and a client certificate (python3-cryptography),
a Registry served over HTTPS, htpasswd files, and a skopeo runner with its own auth file."""

import datetime
import json
import os
import ssl
import subprocess
import time

import pytest
import requests

from helpers import Registry, tail

USER = "alice"
PASSWORD = "s3cret-Pa55:with colon"
REALM = "Registry Realm"


class Certs:
    """Files: ca.crt, server.crt/.key (SAN IP:127.0.0.1, DNS:localhost), client.crt/.key,
    other-ca.crt (a CA that signed nothing here), and certdir/ca.crt for skopeo --cert-dir."""

    def __init__(self, d):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        import ipaddress

        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def key():
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(k, path):
            with open(path, "wb") as f:
                f.write(k.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption()))

        def write_cert(c, path):
            with open(path, "wb") as f:
                f.write(c.public_bytes(serialization.Encoding.PEM))

        def make_ca(cn):
            k = key()
            c = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                 .public_key(k.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(hours=1))
                 .not_valid_after(now + datetime.timedelta(days=2))
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
                 .sign(k, hashes.SHA256()))
            return k, c

        def leaf(ca_key, ca_cert, cn, server):
            k = key()
            b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                 .public_key(k.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(hours=1))
                 .not_valid_after(now + datetime.timedelta(days=2))
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                critical=True))
            if server:
                b = b.add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost")]), critical=False)
                b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                    critical=False)
            else:
                b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                    critical=False)
            return k, b.sign(ca_key, hashes.SHA256())

        ca_key, ca_cert = make_ca("regmirror test CA")
        skey, scert = leaf(ca_key, ca_cert, "localhost", True)
        ckey, ccert = leaf(ca_key, ca_cert, "test client", False)
        _, other = make_ca("some other CA")
        self.ca = os.path.join(self.dir, "ca.crt")
        self.other_ca = os.path.join(self.dir, "other-ca.crt")
        self.server_crt = os.path.join(self.dir, "server.crt")
        self.server_key = os.path.join(self.dir, "server.key")
        self.client_crt = os.path.join(self.dir, "client.crt")
        self.client_key = os.path.join(self.dir, "client.key")
        write_cert(ca_cert, self.ca)
        write_cert(other, self.other_ca)
        write_cert(scert, self.server_crt)
        write_key(skey, self.server_key)
        write_cert(ccert, self.client_crt)
        write_key(ckey, self.client_key)
        self.certdir = os.path.join(self.dir, "certdir")
        os.makedirs(self.certdir, exist_ok=True)
        with open(self.ca, "rb") as src, open(os.path.join(self.certdir, "ca.crt"), "wb") as dst:
            dst.write(src.read())


def htpasswd_line(user, password, cost=5):
    """One bcrypt line made by Apache's htpasswd, as users make them."""
    out = subprocess.run(["htpasswd", "-nbB", "-C", str(cost), user, password],
                         capture_output=True, check=True, timeout=60).stdout.decode()
    return out.strip() + "\n"


def write_htpasswd(path, entries, cost=5):
    """entries: [(user, password)]. Returns path."""
    with open(path, "w") as f:
        f.write("# made by the regmirror tests\n")
        for user, password in entries:
            f.write(htpasswd_line(user, password, cost))
    return str(path)


def auth_yaml(path, realm=REALM):
    return "auth:\n  htpasswd:\n    realm: %s\n    path: %s\n" % (realm, path)


def tls_env(certs, **more):
    """REGISTRY_HTTP_TLS_* as in the common docker run examples, plus more (KEY=value)."""
    env = {"REGISTRY_HTTP_TLS_CERTIFICATE": certs.server_crt,
           "REGISTRY_HTTP_TLS_KEY": certs.server_key}
    env.update(more)
    return env


class TLSRegistry(Registry):
    """A Registry whose http.tls is set (through the environment): https:// URLs, the test CA
    trusted by its session, optionally a client certificate."""

    def __init__(self, kind, workdir, certs, client_cert=False, **kw):
        super().__init__(kind, workdir, **kw)
        self.certs = certs
        self.session.verify = certs.ca
        self.client_cert = (certs.client_crt, certs.client_key) if client_cert else None
        if self.client_cert:
            self.session.cert = self.client_cert

    @property
    def base(self):
        return "https://127.0.0.1:%d" % self.port

    def request(self, method, path_or_url, **kw):
        # per request: REQUESTS_CA_BUNDLE in the environment would override session.verify
        kw.setdefault("verify", self.certs.ca)
        if self.client_cert:
            kw.setdefault("cert", self.client_cert)
        return super().request(method, path_or_url, **kw)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s during start-up; log tail:\n%s" % (
                    self.kind, self.proc.returncode, tail(self.log_path)))
            try:
                r = requests.get(self.url("/v2/"), timeout=1, verify=self.certs.ca,
                                 cert=self.client_cert)
                if r.status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("%s did not answer GET /v2/ over TLS within %ss; log tail:\n%s" % (
            self.kind, timeout, tail(self.log_path)))


def tls_probe(port, maximum=None, minimum=None, ciphers=None, cafile=None, cert=None):
    """A bare TLS handshake to 127.0.0.1:port. Returns (version, cipher) or raises ssl.SSLError
    / OSError."""
    import socket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    if maximum:
        ctx.maximum_version = maximum
    if minimum:
        ctx.minimum_version = minimum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = s.recv(200)
            if not data.startswith(b"HTTP/1.1 "):
                raise ssl.SSLError("no HTTP answer: %r" % data[:50])
            return s.version(), s.cipher()[0]


class Skopeo:
    """skopeo with a private policy, registries.conf and auth file (REGISTRY_AUTH_FILE)."""

    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = str(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        self.policy = os.path.join(self.tmp, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.regconf = os.path.join(self.tmp, "registries.conf")
        with open(self.regconf, "w") as f:
            f.write("")
        self.authfile = os.path.join(self.tmp, "auth.json")
        self.env = dict(os.environ)
        self.env["REGISTRY_AUTH_FILE"] = self.authfile
        self.env["HOME"] = self.tmp
        self.env["TMPDIR"] = self.tmp

    def run(self, *args, check=True, global_opts=True):
        cmd = [self.binary]
        if global_opts:
            cmd += ["--policy", self.policy, "--registries-conf", self.regconf]
        cmd += list(args)
        p = subprocess.run(cmd, capture_output=True, env=self.env, timeout=180)
        if check and p.returncode != 0:
            pytest.fail("%s\nexit %d\nstdout: %s\nstderr: %s" % (
                " ".join(cmd), p.returncode, p.stdout.decode(errors="replace")[-2000:],
                p.stderr.decode(errors="replace")[-4000:]))
        return p

    def login(self, host, user, password, *opts, check=True):
        """skopeo login, the password on stdin; opts e.g. "--tls-verify=false"."""
        cmd = [self.binary, "--registries-conf", self.regconf, "login", "--authfile",
               self.authfile, "-u", user, "--password-stdin"] + list(opts) + [host]
        p = subprocess.run(cmd, capture_output=True, env=self.env, timeout=120,
                           input=password.encode())
        if check and p.returncode != 0:
            pytest.fail("%s\nexit %d\nstderr: %s" % (" ".join(cmd), p.returncode,
                                                      p.stderr.decode(errors="replace")[-4000:]))
        return p


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)
