"""The shipped forms of regmirror: the container image (Dockerfile, `make image`) and the
Debian package (debian/, `make deb`), built and used as their users do.

Image: `make image` builds into a private dockerd in the root network namespace without a
bridge (shipping.BuildDaemon; its data root is cached, so the base image and the build stage's
apt layer are made once). Nothing is pulled: scripts/image.sh makes debian:bookworm-slim with
debootstrap when the daemon lacks it. The image is moved with `docker save | docker load` into
a second private dockerd inside a loopback-only network namespace (with a bridge of its own
there, for -p), which runs it as the registry:2 guides do: -v config.yml, -v data, -p,
-e REGISTRY_..., TLS certificates under /certs. A third dockerd in that namespace pulls
through it with --registry-mirror from the test upstream (conftest_upstream's upstream,
started inside the namespace as in test_clients.py).

Package: `make deb`, then dpkg-deb -c, lintian, install on this machine (policy-rc.d keeps the
service from starting), systemd-analyze verify of the units, the installed binary serving the
packaged config as the regmirror user, and purge.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import ssl
import urllib.error
import urllib.request

import pytest
import yaml

import clients
import helpers
import shipping
import tlsutil
import upstream as upstream_mod
from clients import NetNS

IMAGE_LIMIT = 60 * 1000 * 1000      # bytes of `docker save | gzip`
BUILD_TIMEOUT = 1500                # a first build: debootstrap, apt in the build stage
STOP_LIMIT = 10.0                   # docker stop sends SIGTERM, then SIGKILL after 10 s
UID = 10001                         # the image's regmirror user

# registry:2's own config file (distribution's cmd/registry/config-example.yml), which the
# guides mount at /etc/docker/registry/config.yml
REGISTRY2_CONFIG = """version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def _need(*tools):
    if os.geteuid() != 0:
        pytest.skip("needs root (private dockerd, network namespaces)")
    for t in tools:
        if not shutil.which(t):
            pytest.skip("%s is not installed" % t)


# ---------------------------------------------------------------------------
# the image

@pytest.fixture(scope="module")
def image(tmp_path_factory, summary_line):
    """`make image` into the build daemon, then `docker save` to a tarball; yields
    {"tar", "version", "gz_bytes", "config"}."""
    _need("dockerd", "containerd", "debootstrap", "git")
    d = shipping.BuildDaemon()
    try:
        d.start()
    except clients.DaemonStartError as e:
        d.close()
        pytest.skip("dockerd cannot run here: %s" % e.reason())
    try:
        t0 = time.monotonic()
        r = subprocess.run(["make", "--no-print-directory", "image"], cwd=shipping.ROOT,
                           env=shipping.make_env(d.env), capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT)
        secs = time.monotonic() - t0
        assert r.returncode == 0, "make image failed:\n%s\n%s\n--- dockerd\n%s" % (
            r.stdout[-6000:], r.stderr[-6000:], d.log())
        version = shipping.version()
        ids = {t: d.docker("image", "inspect", "--format", "{{.Id}}", t).stdout.strip()
               for t in ("regmirror:latest", "regmirror:" + version)}
        assert len(set(ids.values())) == 1, ids
        out = tmp_path_factory.mktemp("image") / "regmirror.tar"
        d.docker("save", "-o", str(out), "regmirror:latest", timeout=300)
        gz = _gzip_size(out)
        cfg = json.loads(d.docker("image", "inspect", "regmirror:latest").stdout)[0]["Config"]
        d.prune()
        summary_line("image regmirror:%s: built in %.0f s, `docker save | gzip` %.1f MB"
                     % (version, secs, gz / 1e6))
        yield {"tar": str(out), "version": version, "gz_bytes": gz, "config": cfg}
    finally:
        d.close()


def _gzip_size(path):
    """Bytes of the tarball gzipped (default level, as `docker save | gzip`)."""
    r = subprocess.run("gzip -c %s | wc -c" % subprocess.list2cmdline([str(path)]), shell=True,
                       capture_output=True, text=True, timeout=300, check=True)
    return int(r.stdout)


def test_image_size_and_contract(image):
    assert image["gz_bytes"] < IMAGE_LIMIT, image["gz_bytes"]
    cfg = image["config"]
    assert cfg["Entrypoint"] == ["docker-entrypoint"]
    assert cfg["Cmd"] == ["serve"]
    assert "5000/tcp" in cfg["ExposedPorts"]
    assert "/var/lib/registry" in cfg["Volumes"]
    assert "docker-healthcheck" in cfg["Healthcheck"]["Test"]
    with tarfile.open(image["tar"]) as t:
        names = t.getnames()
    assert "manifest.json" in names


@pytest.fixture(scope="module")
def ship_ns():
    _need("ip", "nsenter", "dockerd", "containerd")
    reason = clients.netns_usable()
    if reason:
        pytest.skip(reason)
    NetNS.cleanup_stale(prefix="rmship")
    ns = NetNS(prefix="rmship").create()
    try:
        ns.enter()
        try:
            yield ns
        finally:
            ns.leave()
    finally:
        ns.delete()


@pytest.fixture(scope="module")
def runner(ship_ns, image):
    """A dockerd inside the namespace with the image loaded; its default bridge (and the
    iptables rules for -p) exist only in the namespace, which has no way out."""
    d = shipping.Daemon(None, ns=ship_ns, prefix="rmsr-")
    d.data_root = os.path.join(d.dir, "data")
    try:
        d.start()
    except clients.DaemonStartError as e:
        d.close()
        pytest.skip("dockerd cannot run in a network namespace here: %s" % e.reason())
    try:
        d.docker("load", "-i", image["tar"], timeout=300)
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def ship_upstream(ship_ns, tmp_path_factory):
    if not os.access(helpers.binary_for("docker-registry") or "", os.X_OK):
        pytest.skip("the test upstream needs docker-registry")
    assert ship_ns.inside()
    up = upstream_mod.start_upstream(tmp_path_factory.mktemp("ship-upstream"),
                                     big_size=1024 * 1024)
    yield up
    up.stop()


@pytest.fixture
def upstream(ship_upstream):
    """This module's upstream, reset around each test (named so that conftest_upstream's
    failure report covers it)."""
    ship_upstream.reset()
    yield ship_upstream
    ship_upstream.reset()


def _state(d, name):
    return json.loads(d.docker("inspect", name).stdout)[0]["State"]


def _wait_healthy(d, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _state(d, name)
        if not st["Running"]:
            raise AssertionError("%s exited %s:\n%s" % (name, st["ExitCode"],
                                                        _logs(d, name)))
        if st.get("Health", {}).get("Status") == "healthy":
            return
        time.sleep(0.5)
    raise AssertionError("%s not healthy in %ss: %s\n%s" % (name, timeout, _state(d, name),
                                                            _logs(d, name)))


def _logs(d, name):
    r = d.docker("logs", "--tail", "60", name, check=False)
    return r.stdout + r.stderr


def _stop(d, name):
    """docker stop (SIGTERM): the exit code and how long it took."""
    t0 = time.monotonic()
    d.docker("stop", name, timeout=60)
    secs = time.monotonic() - t0
    return _state(d, name)["ExitCode"], secs


def _make_image(d, tmp_path, ref):
    """A one-layer image made locally (`docker import` of a tarball: nothing to pull)."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hello from %s\n" % ref)
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(str(root), arcname=".")
    d.docker("import", str(tar), ref)
    return d.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def _uids_of(path):
    return {os.stat(os.path.join(dp, n)).st_uid for dp, dns, fns in os.walk(path)
            for n in dns + fns}


def test_guide_run_tls_push_pull_stop_restart(runner, tmp_path):
    """docker run as the registry:2 guides: config and data mounted, certificates under
    /certs, REGISTRY_HTTP_TLS_* from the environment, -p; push, pull, stop, start, pull."""
    certs = tlsutil.Certs(tmp_path / "certs")
    os.makedirs(tmp_path / "certs-mount")
    shutil.copy(os.path.join(certs.dir, "server.crt"), tmp_path / "certs-mount" / "domain.crt")
    shutil.copy(os.path.join(certs.dir, "server.key"), tmp_path / "certs-mount" / "domain.key")
    os.chmod(tmp_path / "certs-mount" / "domain.key", 0o644)
    cfg = tmp_path / "config.yml"
    cfg.write_text(REGISTRY2_CONFIG)
    data = tmp_path / "data"            # as docker makes a missing bind source: root's
    data.mkdir()
    run = ["run", "-d", "-p", "5443:5000", "--restart=always", "--name", "registry",
           "-v", "%s:/etc/docker/registry/config.yml" % cfg,
           "-v", "%s:/var/lib/registry" % data,
           "-v", "%s:/certs" % (tmp_path / "certs-mount"),
           "-e", "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/domain.crt",
           "-e", "REGISTRY_HTTP_TLS_KEY=/certs/domain.key",
           "-e", "REGISTRY_STORAGE_DELETE_ENABLED=true",
           "--health-interval", "1s", "regmirror:latest"]
    print("docker " + " ".join(run))
    runner.docker(*run)
    _wait_healthy(runner, "registry")
    top = runner.docker("top", "registry", "-o", "pid,uid,args").stdout
    assert "regmirror serve /etc/docker/registry/config.yml" in top, top
    assert all(l.split()[1] == str(UID) for l in top.splitlines()[1:] if l.strip()), top

    # TLS on the published port (from inside the namespace, where -p listens)
    ctx = ssl.create_default_context(cafile=os.path.join(certs.dir, "ca.crt"))
    with urllib.request.urlopen("https://127.0.0.1:5443/v2/", context=ctx, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"

    ref = "127.0.0.1:5443/demo/hello:1"
    img_id = _make_image(runner, tmp_path, ref)
    runner.docker("push", ref)
    runner.docker("rmi", ref)
    runner.docker("pull", ref)
    assert runner.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == img_id
    assert _uids_of(data) == {UID}, "the storage root is not the regmirror user's"

    code, secs = _stop(runner, "registry")
    assert code == 0, _logs(runner, "registry")
    assert secs < STOP_LIMIT, secs
    assert "shutting down" in _logs(runner, "registry")

    # the other verbs through the same entrypoint, on the same data
    gc = runner.docker("run", "--rm", "-v", "%s:/etc/docker/registry/config.yml" % cfg,
                       "-v", "%s:/var/lib/registry" % data, "regmirror:latest",
                       "garbage-collect", "--dry-run")
    assert "1 repositories" in gc.stdout + gc.stderr, gc.stdout + gc.stderr

    runner.docker("start", "registry")
    _wait_healthy(runner, "registry")
    runner.docker("rmi", ref)
    runner.docker("pull", ref)
    assert runner.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == img_id
    code, secs = _stop(runner, "registry")
    assert code == 0 and secs < STOP_LIMIT, (code, secs)
    runner.docker("rm", "registry")


class _Mirror:
    def __init__(self, port):
        self.url = "http://127.0.0.1:%d" % port


def test_default_config_offline_names_upstream(runner):
    """No mounted config: the image's default, a Docker Hub mirror. Here Docker Hub is out of
    reach: an uncached pull is a 503 that names it, pushes are refused, /healthz is ok."""
    port = 5600
    runner.docker("run", "-d", "--network", "host", "--name", "hub",
                  "-e", "REGISTRY_HTTP_ADDR=127.0.0.1:%d" % port, "--health-interval", "1s",
                  "regmirror:latest")
    try:
        _wait_healthy(runner, "hub")
        base = "http://127.0.0.1:%d" % port
        r = helpers_request("GET", base + "/v2/library/alpine/manifests/3.19")
        assert r[0] == 503, r
        body = json.loads(r[1])
        assert body["errors"][0]["code"] == "UNAVAILABLE"
        assert "registry-1.docker.io" in body["errors"][0]["detail"], body
        r = helpers_request("POST", base + "/v2/demo/blobs/uploads/")
        assert r[0] == 405, r
        code, secs = _stop(runner, "hub")
        assert code == 0 and secs < STOP_LIMIT, (code, secs)
    finally:
        runner.docker("rm", "-f", "hub", check=False)


def helpers_request(method, url):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_mirror_for_dockerd_restart_serves_cache(runner, upstream, ship_ns, tmp_path):
    """The image as a Docker Hub style mirror of the test upstream (REGISTRY_PROXY_* on the
    default config), a dockerd with --registry-mirror pulling through it; stopped, started on
    the same data with the upstream gone, the image is pulled again from the cache."""
    img = upstream.seed.alpine
    port = 5601
    data = tmp_path / "mirror-data"
    data.mkdir()
    run = ["run", "-d", "--network", "host", "--name", "mirror",
           "-v", "%s:/var/lib/registry" % data,
           "-e", "REGISTRY_HTTP_ADDR=127.0.0.1:%d" % port,
           "-e", "REGISTRY_PROXY_REMOTEURL=%s" % upstream.url,
           "-e", "REGISTRY_PROXY_USERNAME=alice",
           "-e", "REGISTRY_PROXY_PASSWORD=%s" % upstream.users["alice"],
           "--health-interval", "1s", "regmirror:latest"]
    runner.docker(*run)
    client = None
    try:
        _wait_healthy(runner, "mirror")
        client = clients.Dockerd(ship_ns, _Mirror(port), lambda: _logs(runner, "mirror"))
        try:
            client.start()
        except clients.DaemonStartError as e:
            pytest.skip("dockerd cannot run in a network namespace here: %s" % e.reason())
        client.pull("alpine:3.19")
        assert client.image_inspect("alpine:3.19")["RepoDigests"] == ["alpine@" + img.digest]
        assert upstream.proxy.blob_gets(), "the pull did not go through the mirror"

        code, secs = _stop(runner, "mirror")
        assert code == 0 and secs < STOP_LIMIT, (code, secs, _logs(runner, "mirror"))
        upstream.proxy.down()
        runner.docker("start", "mirror")
        _wait_healthy(runner, "mirror")
        client.rmi("alpine:3.19")
        client.pull("alpine:3.19")
        assert client.image_inspect("alpine:3.19")["RepoDigests"] == ["alpine@" + img.digest]
        code, secs = _stop(runner, "mirror")
        assert code == 0 and secs < STOP_LIMIT, (code, secs)
    finally:
        upstream.proxy.up()
        if client:
            client.close()
        runner.docker("rm", "-f", "mirror", check=False)


# ---------------------------------------------------------------------------
# the Debian package

@pytest.fixture(scope="module")
def deb(summary_line):
    _need("dpkg-buildpackage", "dh", "lintian", "systemd-analyze")
    t0 = time.monotonic()
    r = subprocess.run(["make", "--no-print-directory", "deb"], cwd=shipping.ROOT,
                       env=shipping.make_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, "make deb failed:\n%s\n%s" % (r.stdout[-6000:], r.stderr[-6000:])
    out = os.path.join(shipping.ROOT, "build", "deb")
    debs = [f for f in os.listdir(out) if f.startswith("regmirror_") and f.endswith(".deb")]
    assert len(debs) == 1, os.listdir(out)
    summary_line("package %s built in %.0f s" % (debs[0], time.monotonic() - t0))
    return {"deb": os.path.join(out, debs[0]),
            "changes": os.path.join(out, debs[0][:-4] + ".changes")}


def test_deb_contents_and_lintian(deb):
    listing = subprocess.run(["dpkg-deb", "-c", deb["deb"]], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    for path in ("./usr/bin/regmirror", "./etc/regmirror/config.yml",
                 "./lib/systemd/system/regmirror.service",
                 "./lib/systemd/system/regmirror-gc.service",
                 "./lib/systemd/system/regmirror-gc.timer",
                 "./usr/share/man/man1/regmirror.1.gz", "./var/lib/regmirror/"):
        assert path in listing, listing
    ctl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb["deb"]], capture_output=True,
                         check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(ctl)) as t:
        assert t.extractfile("./conffiles").read().decode().split() == [
            "/etc/regmirror/config.yml"]
    r = subprocess.run(["lintian", deb["changes"]], capture_output=True, text=True,
                       timeout=300)
    print("lintian:\n" + r.stdout + r.stderr)
    assert not [l for l in r.stdout.splitlines() if l.startswith("E:")], r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def _installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg], capture_output=True,
                       text=True, timeout=30)
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


def test_deb_install_verify_serve_purge(deb, tmp_path):
    if _installed("regmirror"):
        pytest.skip("a regmirror package is installed on this machine already")
    if not os.path.exists("/usr/sbin/policy-rc.d"):
        pytest.skip("no policy-rc.d: installing would start the service")
    user_before = subprocess.run(["getent", "passwd", "regmirror"], capture_output=True,
                                 timeout=30).returncode == 0
    try:
        r = subprocess.run(["dpkg", "-i", deb["deb"]], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        pw = subprocess.run(["getent", "passwd", "regmirror"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
        assert pw.split(":")[5] == "/var/lib/regmirror"
        st = os.stat("/var/lib/regmirror")
        assert st.st_uid == int(pw.split(":")[2])
        units = ["/lib/systemd/system/regmirror.service",
                 "/lib/systemd/system/regmirror-gc.service",
                 "/lib/systemd/system/regmirror-gc.timer"]
        r = subprocess.run(["systemd-analyze", "verify"] + units, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
            r.stdout + r.stderr)
        unit = open(units[0]).read()
        for line in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/regmirror",
                     "NoNewPrivileges=true", "ExecReload=/bin/kill -HUP $MAINPID",
                     "User=regmirror"):
            assert line in unit, unit
        assert not os.path.exists("/etc/systemd/system/timers.target.wants/regmirror-gc.timer")

        # the installed binary, as the unit runs it, on the packaged config (on another port)
        port = helpers.free_port()
        log = tmp_path / "serve.log"
        env = dict(os.environ, REGISTRY_HTTP_ADDR="127.0.0.1:%d" % port)
        with open(log, "wb") as lf:
            p = subprocess.Popen(["setpriv", "--reuid=regmirror", "--regid=regmirror",
                                  "--init-groups", "/usr/bin/regmirror", "serve",
                                  "/etc/regmirror/config.yml"], stdout=lf,
                                 stderr=subprocess.STDOUT, env=env)
        try:
            _wait_port(port)
            assert helpers_request("GET", "http://127.0.0.1:%d/healthz" % port)[0] == 200
            assert helpers_request("POST",
                                   "http://127.0.0.1:%d/v2/x/blobs/uploads/" % port)[0] == 405
            p.send_signal(1)          # ExecReload
            time.sleep(0.5)
            assert p.poll() is None, log.read_text()
            p.terminate()
            assert p.wait(timeout=STOP_LIMIT) == 0, log.read_text()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        text = log.read_text()
        assert "pulling through from https://registry-1.docker.io" in text, text
        assert "reload: applying the log settings" in text, text
        assert os.path.exists("/var/lib/regmirror/regmirror.lock")
    finally:
        r = subprocess.run(["dpkg", "--purge", "regmirror"], capture_output=True, text=True,
                           timeout=300)
        if not user_before:
            subprocess.run(["deluser", "--system", "regmirror"], capture_output=True,
                           timeout=60)
            subprocess.run(["delgroup", "--system", "regmirror"], capture_output=True,
                           timeout=60)
            shutil.rmtree("/var/lib/regmirror", ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not os.path.exists("/usr/bin/regmirror")
    assert not os.path.exists("/etc/regmirror/config.yml")


def _wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("nothing listens on %d" % port)


# ---------------------------------------------------------------------------
# the compose example

def test_compose_example_config():
    """docker-compose.yml's regmirror service: the image's default config with the service's
    environment is valid and uses the redis service."""
    with open(os.path.join(shipping.ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    svc = compose["services"]["registry"]
    assert svc["image"] == "regmirror:latest"
    assert "5000:5000" in svc["ports"]
    assert any(v.endswith(":/var/lib/registry") for v in svc["volumes"])
    assert "redis" in compose["services"]
    env = dict(os.environ, **{k: str(v) for k, v in svc["environment"].items()})
    r = subprocess.run([helpers.regmirror_bin(), "check-config"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blobdescriptor: redis" in r.stdout, r.stdout
    assert "addr: redis:6379" in r.stdout, r.stdout
    assert "remoteurl: https://registry-1.docker.io" in r.stdout, r.stdout
