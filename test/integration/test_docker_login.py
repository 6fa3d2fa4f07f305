"""`docker login` / push / pull / logout against the registry under test with htpasswd auth over
TLS, verified by dockerd against a test CA (issue 6).

Everything runs in a network namespace that has only loopback (clients.NetNS):

  - 192.0.2.1/32 (TEST-NET-1) is added to the namespace's lo and the registry listens there with
    a server certificate for IP:192.0.2.1 signed by a CA made here. Not 127.0.0.1: dockerd
    always counts 127.0.0.0/8 as an insecure registry (it cannot be configured away), and for an
    insecure registry it neither reads certs.d nor verifies the certificate, so the CA would not
    be tested at all.
  - dockerd trusts a registry CA only from /etc/docker/certs.d/<host:port>/ca.crt (no flag
    changes that for a root daemon). The private dockerd therefore runs in its own mount
    namespace (`unshare --mount --propagation private`) in which a temporary directory is
    bind-mounted over /etc/docker; the host's /etc/docker is never written (dockerd's key.json
    lands in the temporary directory too), and the bind mount disappears with the daemon.
  - The docker CLI keeps its config (the stored credentials) in DOCKER_CONFIG, a temporary
    directory.

The test: login without the CA fails on the certificate; with ca.crt in certs.d a wrong password
fails and the right one succeeds (stored in config.json); a tiny image written here as a
docker-archive is `docker load`ed, tagged, pushed, removed, pulled back with the same image ID;
after logout a pull fails with an authentication error.
"""

import base64
import datetime
import hashlib
import io
import ipaddress
import json
import os
import platform
import shutil
import socket
import subprocess
import tarfile
import time

import pytest
import requests

import clients
import helpers
from clients import DaemonStartError, NetNS
from tlsutil import PASSWORD, USER, auth_yaml, write_htpasswd

REG_IP = "192.0.2.1"
OP_TIMEOUT = 60.0


# ---------------------------------------------------------------------------
# pieces

def make_ca_and_server_cert(d, ip):
    """ca.crt, server.crt/.key (SAN IP:ip) in d. Returns (ca, crt, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def base(subject, issuer, pub):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(pub).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (base(name("docker login test CA"), name("docker login test CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    crt = (base(name(ip), ca.subject, key.public_key())
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                          critical=False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(d, n) for n in ("ca.crt", "server.crt", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(crt.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return paths


def docker_archive(path, tag):
    """A docker-archive (`docker save` layout) with one small layer. Returns the image ID
    (sha256 of the config, which docker keeps as the ID on load and on pull)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        data = b"hello from the docker login test %s\n" % os.urandom(8).hex().encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tf.addfile(info, io.BytesIO(data))
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "created": "2024-01-01T00:00:00Z",
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test_docker_login"}],
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    cfg_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": cfg_hex + ".json", "RepoTags": [tag],
                            "Layers": [diff_id[7:] + "/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in ((diff_id[7:] + "/layer.tar", layer), (cfg_hex + ".json", config),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    return "sha256:" + cfg_hex


class PrivateEtcDockerd(clients.Dockerd):
    """clients.Dockerd without a registry mirror, in its own mount namespace where
    self.etc_docker is bind-mounted over /etc/docker (certs.d lives there)."""

    def __init__(self, ns, diagnostics=None):
        super().__init__(ns, None, diagnostics)
        self.etc_docker = os.path.join(self.dir, "etc-docker")
        os.makedirs(os.path.join(self.etc_docker, "certs.d"))

    def argv(self):
        daemon = [self.dockerd_bin, "--config-file", os.path.join(self.dir, "daemon.json"),
                  "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false",
                  "--ip-forward=false", "--ip-masq=false", "--bridge=none",
                  "--data-root", os.path.join(self.dir, "data"),
                  "--exec-root", os.path.join(self.dir, "exec"),
                  "-H", "unix://" + self.sock,
                  "--pidfile", os.path.join(self.dir, "dockerd.pid"),
                  "--debug"]
        return (["unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", 'mount --bind "$1" /etc/docker && shift && exec "$@"', "sh",
                 self.etc_docker] + daemon)

    def trust_ca(self, hostport, ca):
        d = os.path.join(self.etc_docker, "certs.d", hostport)
        os.makedirs(d, exist_ok=True)
        shutil.copy(ca, os.path.join(d, "ca.crt"))

    def login(self, host, user, password, check=True):
        """docker login with the password on stdin."""
        argv = self.ns.wrap([self.docker_bin, "-H", "unix://" + self.sock, "login", host,
                             "-u", user, "--password-stdin"])
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, input=password, capture_output=True, text=True,
                               env=self.env, timeout=OP_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            raise clients.ClientError("docker login timed out after %ss\n%s" % (
                OP_TIMEOUT, self._diag())) from e
        res = clients.Result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
        self.results.append(res)
        if check and res.rc != 0:
            raise clients.ClientError("docker login failed\n" + res.describe() + "\n"
                                      + self._diag())
        return res

    def stored_auths(self):
        try:
            with open(os.path.join(self.cli_config, "config.json")) as f:
                return json.load(f).get("auths", {})
        except FileNotFoundError:
            return {}


def _skip_reason():
    kind = helpers.target_kind()
    binary = helpers.binary_for(kind)
    if kind == "regmirror" and not binary:
        return "REGMIRROR_BIN is not set (or set REGISTRY_UNDER_TEST=docker-registry)"
    if not binary or not os.access(binary, os.X_OK):
        return "registry binary %r is not executable" % binary
    reason = clients.netns_usable()
    if reason:
        return reason
    for b in ("dockerd", "docker", "containerd", "htpasswd", "unshare", "mount"):
        if not shutil.which(b):
            return "%s is not installed" % b
    if not os.path.isdir("/etc/docker"):
        return "/etc/docker does not exist: nothing to bind-mount a private certs.d over"
    return None


def _free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------
# fixture: namespace + TLS/htpasswd registry + private dockerd

class Env:
    pass


@pytest.fixture
def env(tmp_path, _started):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    NetNS.cleanup_stale()
    e = Env()
    ns = NetNS().create()
    reg = dockerd = rc = None
    entered = False
    try:
        subprocess.run(ns.wrap(["ip", "addr", "add", REG_IP + "/32", "dev", "lo"]),
                       check=True, timeout=20, capture_output=True)
        ns.enter()
        entered = True
        e.ns = ns
        os.makedirs(tmp_path / "certs")
        e.ca, crt, key = make_ca_and_server_cert(str(tmp_path / "certs"), REG_IP)
        htpasswd = write_htpasswd(tmp_path / "htpasswd", [(USER, PASSWORD)])

        kind = helpers.target_kind()
        reg = helpers.Registry(kind, tmp_path / "registry",
                               env={"REGISTRY_HTTP_TLS_CERTIFICATE": crt,
                                    "REGISTRY_HTTP_TLS_KEY": key})
        _started.append(reg)
        _start_registry(reg, e.ca, auth_yaml(htpasswd))
        e.reg = reg
        e.host = "%s:%d" % (REG_IP, reg.port)

        def diagnostics():
            return "--- %s log tail\n%s" % (reg.kind, reg.log_tail(5000))

        dockerd = PrivateEtcDockerd(ns, diagnostics)
        try:
            dockerd.start()
        except DaemonStartError as err:
            pytest.skip("dockerd cannot run on this machine: %s" % err.reason())
        e.dockerd = dockerd
        e.tmp = tmp_path
        yield e
    finally:
        if dockerd is not None:
            # shown with -rA / -s: what each client command answered
            for res in dockerd.results:
                print("$ %s -> exit %s (%.1fs)\n%s%s" % (
                    " ".join(res.argv[3:]), res.rc, res.secs, res.out[:400], res.err[-400:]))
        if dockerd is not None:
            dockerd.close()
        if reg is not None:
            rc = reg.stop()
            if reg in _started:
                _started.remove(reg)
        if entered:
            ns.leave()
        ns.delete()
    assert rc in (0, -15, None), "registry exited with %s on SIGTERM:\n%s" % (rc, reg.log_tail())


def _start_registry(reg, ca, extra_yaml, timeout=20.0):
    """helpers.Registry.start() listens on 127.0.0.1 and probes plain HTTP; here the registry
    listens on REG_IP with TLS."""
    reg.port = _free_port(REG_IP)
    with open(reg.config_path, "w") as f:
        f.write(helpers.render_config(reg.rootdir, "%s:%d" % (REG_IP, reg.port),
                                      extra_yaml=extra_yaml))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REGISTRY_") or k == "REGISTRY_UNDER_TEST"}
    env.update(reg.env)
    env.setdefault("OTEL_TRACES_EXPORTER", "none")
    with open(reg.log_path, "ab") as logf:
        reg.proc = subprocess.Popen([reg.binary, "serve", reg.config_path], stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=reg.workdir)
    url = "https://%s:%d/v2/" % (REG_IP, reg.port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reg.proc.poll() is not None:
            raise RuntimeError("%s exited with %s during start-up:\n%s" % (
                reg.kind, reg.proc.returncode, reg.log_tail()))
        try:
            r = requests.get(url, timeout=1, verify=ca)
            if r.status_code == 401:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError("%s did not answer %s within %ss:\n%s" % (reg.kind, url, timeout,
                                                                 reg.log_tail()))


# ---------------------------------------------------------------------------
# the test

def test_docker_login_push_pull_logout_over_tls(env):
    d, host = env.dockerd, env.host
    ref = host + "/demo:1"

    # without the CA in certs.d dockerd refuses the certificate (so the CA below is what
    # makes the next logins work, not a skipped verification)
    r = d.login(host, USER, PASSWORD, check=False)
    assert r.rc != 0, r.describe()
    assert "x509" in r.err or "certificate" in r.err, r.describe()
    assert d.stored_auths() == {}

    d.trust_ca(host, env.ca)

    r = d.login(host, USER, "wrong-" + PASSWORD, check=False)
    assert r.rc != 0, r.describe()
    assert "unauthorized" in r.err.lower() or "401" in r.err, r.describe()
    assert host not in d.stored_auths()
    log = env.reg.log_tail(20000)
    assert PASSWORD not in log
    if not env.reg.is_reference:
        assert "failed login" in log and "user=%s" % USER in log, log

    r = d.login(host, USER, PASSWORD)
    assert "Login Succeeded" in r.out, r.describe()
    stored = d.stored_auths().get(host, {}).get("auth", "")
    assert base64.b64decode(stored).decode() == "%s:%s" % (USER, PASSWORD), d.stored_auths()

    archive = str(env.tmp / "demo.tar")
    image_id = docker_archive(archive, "dltest:1")
    d.docker("load", "-i", archive)
    assert d.image_inspect("dltest:1")["Id"] == image_id
    d.docker("tag", "dltest:1", ref)
    push = d.docker("push", ref)
    assert "digest: sha256:" in push.out, push.describe()

    d.docker("rmi", ref, "dltest:1")
    assert d.docker("image", "ls", "-q", "--no-trunc", check=False).out.strip() == ""

    pull = d.docker("pull", ref)
    assert "Downloaded newer image" in pull.out, pull.describe()
    info = d.image_inspect(ref)
    assert info["Id"] == image_id, (info["Id"], image_id)
    assert any(rd.startswith(host + "/demo@sha256:") for rd in info.get("RepoDigests", [])), info

    r = d.docker("logout", host)
    assert host not in d.stored_auths(), d.stored_auths()
    d.docker("rmi", ref)
    r = d.docker("pull", ref, check=False)
    assert r.rc != 0, r.describe()
    err = r.err.lower()
    assert "no basic auth credentials" in err or "unauthorized" in err, r.describe()
