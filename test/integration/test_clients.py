"""Real clients pulling docker.io images through the mirror (pull-through cache, issue 3).

skopeo, podman, dockerd (+ docker) and containerd (+ ctr) are each told that docker.io has a
mirror at 127.0.0.1:PORT, and every one of them runs in a network namespace that has only
loopback, together with the mirror under test and the test upstream, so a client that falls back
to registry-1.docker.io fails instead of reaching the internet, and a pull that succeeds went
through the mirror.

Wiring (module scope, this file only):
  client_ns    makes NS = rmcli-<pid>-<random> (lo up) and moves pytest's main thread into it
               with setns(); everything this module starts afterwards (the upstream's token
               server / counting proxy threads, docker-registry, the mirror, the tap, the
               clients) lives in NS. At module teardown the thread goes back to its original
               namespace and NS is deleted, so other modules (and the session-scoped upstream
               they share) are untouched. Clients are additionally started with
               `nsenter --net=/run/netns/NS` (no /sys remount, which dockerd needs).
  ns_upstream  a module-private upstream (upstream.start_upstream) started inside NS; the
               `upstream` and `seeded` fixtures are overridden here to use it.
  mirror       per test, a fresh (cold) mirror: the registry under test (REGMIRROR_BIN ->
               regmirror, REGISTRY_UNDER_TEST=docker-registry -> distribution 2.8) with
               upstream.proxy_yaml("alice"): remoteurl = the counting proxy, and the account
               that may read private/secret. A TapProxy in front of it records what each client
               sends (byte-transparent); clients are pointed at the tap.

Upstream traffic is read from the counting proxy. distribution 2.8 in proxy mode fetches every
cold blob twice from upstream (once to serve the client, once more in its background
`storeLocal`), so "exactly one upstream GET per blob" is asserted for regmirror only. "A second
pull of a cached image causes no upstream blob GET, and at most one HEAD of the tag" holds for
both (2.8 does exactly one HEAD) and is asserted for both.

Run with -rA to see, per test, the requests each client sent to the mirror and the upstream
traffic they caused.
"""

import json
import os
import shutil
import time

import pytest

import clients
import helpers
import upstream as upstream_mod
from clients import DaemonStartError, NetNS, TapProxy

# the module's own upstream: the big image is not pulled by clients here, keep it small
BIG_SIZE = 2 * 1024 * 1024


# ---------------------------------------------------------------------------
# fixtures

def _target_skip_reason():
    kind = helpers.target_kind()
    binary = helpers.binary_for(kind)
    if kind == "regmirror" and not binary:
        return "REGMIRROR_BIN is not set (or set REGISTRY_UNDER_TEST=docker-registry)"
    if not binary or not os.access(binary, os.X_OK):
        return "registry binary %r is not executable" % binary
    if not os.access(helpers.binary_for("docker-registry") or "", os.X_OK):
        return "the test upstream needs docker-registry"
    return None


@pytest.fixture(scope="module")
def client_ns():
    reason = _target_skip_reason() or clients.netns_usable()
    if reason:
        pytest.skip(reason)
    NetNS.cleanup_stale()
    ns = NetNS().create()
    try:
        ns.enter()
        try:
            yield ns
        finally:
            ns.leave()
    finally:
        ns.delete()


@pytest.fixture(scope="module")
def ns_upstream(client_ns, tmp_path_factory):
    assert client_ns.inside(), "the upstream must start inside %s" % client_ns.name
    up = upstream_mod.start_upstream(tmp_path_factory.mktemp("clients-upstream"),
                                     big_size=BIG_SIZE)
    yield up
    up.stop()


@pytest.fixture
def upstream(ns_upstream):
    """This module's upstream (in the namespace), reset around each test. Named `upstream` so
    that conftest_upstream's failure report (docker-registry log, proxy requests) covers it."""
    up = ns_upstream
    up.reset()
    if not up.alive():
        pytest.fail("the test upstream is down; docker-registry log tail:\n"
                    + up.registry.log_tail(), pytrace=False)
    yield up
    up.reset()


@pytest.fixture(scope="module")
def seeded(ns_upstream):
    return ns_upstream.seed


class Mirror:
    """The registry under test in proxy mode plus the tap clients talk to."""

    def __init__(self, registry, tap, up):
        self.registry = registry
        self.tap = tap
        self.up = up

    @property
    def host(self):
        return self.tap.host

    @property
    def url(self):
        return self.tap.url

    @property
    def kind(self):
        return self.registry.kind

    def diagnostics(self):
        return ("--- mirror (%s) log tail\n%s\n--- requests the client sent to the mirror\n%s\n"
                "--- upstream (counting proxy) summary\n%s" % (
                    self.registry.kind, self.registry.log_tail(4000), self.tap.summary(),
                    json.dumps(self.up.proxy.summary(), indent=1)))


@pytest.fixture
def mirror(client_ns, upstream, tmp_path, _started):
    assert client_ns.inside()
    reg = helpers.Registry(helpers.target_kind(), tmp_path / "mirror",
                           extra_yaml=upstream.proxy_yaml("alice"))
    _started.append(reg)
    try:
        reg.start()
        tap = TapProxy(reg.port).start()
        m = Mirror(reg, tap, upstream)
        try:
            yield m
        finally:
            # shown with -rA: what the clients sent, what reached the upstream (since the last
            # reset in the test)
            print("requests the clients sent to the mirror (%s):\n%s\nupstream:\n%s" % (
                reg.kind, tap.summary(200), json.dumps(upstream.proxy.summary(), indent=1)))
            tap.stop()
    finally:
        reg.stop()
        _started.remove(reg)


@pytest.fixture
def skopeo_client(client_ns, mirror):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    c = clients.Skopeo(client_ns, mirror, mirror.diagnostics)
    yield c
    c.close()


@pytest.fixture
def podman_client(client_ns, mirror):
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    c = clients.Podman(client_ns, mirror, mirror.diagnostics)
    yield c
    c.close()


# dockerd / containerd that cannot run on this machine are detected once per session
_DAEMON_BROKEN = {}


def _start_daemon(cls, what, binaries, client_ns, mirror):
    for b in binaries:
        if not shutil.which(b):
            pytest.skip("%s is not installed" % b)
    if what in _DAEMON_BROKEN:
        pytest.skip(_DAEMON_BROKEN[what])
    d = cls(client_ns, mirror, mirror.diagnostics)
    try:
        d.start()
    except DaemonStartError as e:
        d.close()
        _DAEMON_BROKEN[what] = "%s cannot run on this machine: %s" % (what, e.reason())
        pytest.skip(_DAEMON_BROKEN[what])
    return d


@pytest.fixture
def dockerd(client_ns, mirror):
    d = _start_daemon(clients.Dockerd, "dockerd", ("dockerd", "docker", "containerd"),
                      client_ns, mirror)
    yield d
    d.close()


@pytest.fixture
def containerd(client_ns, mirror):
    d = _start_daemon(clients.Containerd, "containerd", ("containerd", "ctr"), client_ns,
                      mirror)
    yield d
    d.close()


# ---------------------------------------------------------------------------
# helpers

def settle(up, quiet=0.5, timeout=20.0):
    """Waits until the upstream has seen no new request for `quiet` seconds and none is in
    flight (distribution 2.8 keeps fetching blobs in the background after the client is done)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        up.proxy.wait_idle(max(0.1, deadline - time.monotonic()))
        n = len(up.proxy.records())
        if n == last:
            return
        last = n
        time.sleep(quiet)
    raise AssertionError("upstream traffic did not settle within %ss:\n%s"
                         % (timeout, json.dumps(up.proxy.summary(), indent=1)))


def upstream_blob_gets(up):
    """{digest: number of upstream blob GETs past auth}."""
    out = {}
    for r in up.proxy.records(method="GET", kind="blob", status=lambda s: s != 401):
        out[r["ref"]] = out.get(r["ref"], 0) + 1
    return out


def check_cold_fetch(mirror, up, wanted):
    """After a cold pull: every wanted blob was fetched from upstream (once, for regmirror) and
    no other blob was."""
    settle(up)
    gets = upstream_blob_gets(up)
    extra = set(gets) - set(wanted)
    assert not extra, "the mirror fetched blobs nobody asked for: %s\n%s" % (
        sorted(extra), mirror.diagnostics())
    missing = set(wanted) - set(gets)
    assert not missing, "blobs the client got but the upstream never served: %s\n%s" % (
        sorted(missing), mirror.diagnostics())
    if mirror.kind == "regmirror":
        twice = {d: n for d, n in gets.items() if n != 1}
        assert not twice, "one upstream GET per cold blob expected, got %s\n%s" % (
            twice, mirror.diagnostics())
    return gets


def check_tag_recheck(mirror, up, repo, tag):
    """A pull of a cached image by tag costs the upstream at most one HEAD of that tag (none
    inside a freshness window), never a manifest GET (distribution 2.8 does exactly one HEAD)."""
    mans = up.proxy.records(kind="manifest", status=lambda s: s != 401)
    assert [(r["method"], r["repo"], r["ref"]) for r in mans] in (
        [], [("HEAD", repo, tag)]), mirror.diagnostics()


def blobs_of(img):
    return set(img.blobs)


def mirror_blob_gets(mirror):
    return [r for r in mirror.tap.records(method="GET") if "/blobs/" in r["path"]]


def oci_layout(path):
    """(manifest digest named in index.json, set of blob digests present) of an OCI layout."""
    with open(os.path.join(path, "index.json")) as f:
        index = json.load(f)
    assert len(index["manifests"]) == 1, index
    blobs = set()
    bdir = os.path.join(path, "blobs", "sha256")
    for name in os.listdir(bdir):
        with open(os.path.join(bdir, name), "rb") as f:
            data = f.read()
        assert helpers.sha256(data) == "sha256:" + name, "corrupt blob %s in %s" % (name, path)
        blobs.add("sha256:" + name)
    return index["manifests"][0]["digest"], blobs


# ---------------------------------------------------------------------------
# the namespace itself

def test_namespace_has_only_loopback(client_ns, mirror, upstream):
    assert client_ns.links() == ["lo"]
    assert not [r for r in client_ns.routes() if r.startswith("default")], client_ns.routes()
    assert client_ns.inside()
    # no way out: an outside address is unreachable from here (and from the clients)
    r = clients.run(client_ns.wrap(["python3", "-c",
                                    "import socket; socket.create_connection(('1.1.1.1', 443),"
                                    " timeout=3)"]), timeout=20, check=False)
    assert r.rc != 0 and "unreachable" in r.err.lower(), r.describe()
    # the mirror and the upstream answer here
    assert helpers.port_is_listening(mirror.tap.port)
    assert helpers.port_is_listening(upstream.proxy.port)


def test_mirror_answers_tls_hello_on_plain_port_promptly(mirror):
    """skopeo and podman (containers/image) with `insecure = true` open the mirror's plain HTTP
    port with a TLS ClientHello first and fall back to http:// only after that fails; a mirror
    that waits for more bytes instead of answering makes them hang."""
    import socket
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", mirror.registry.port), timeout=10) as s:
        try:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                pytest.fail("the plain HTTP port completed a TLS handshake")
        except socket.timeout:
            pytest.fail("no answer to a TLS ClientHello within 10 s (clients would hang)")
        except (ssl.SSLError, ConnectionError, OSError):
            pass
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------------
# skopeo

def test_skopeo_inspect_raw_and_copy(skopeo_client, mirror, upstream, seeded):
    img = seeded.alpine
    raw = skopeo_client.inspect_raw("docker://docker.io/library/alpine:3.19")
    assert raw.encode() == img.manifest, "manifest bytes differ from the seeded ones"
    dest = os.path.join(skopeo_client.dir, "oci")
    skopeo_client.copy("docker://docker.io/library/alpine:3.19", "oci:%s:3.19" % dest,
                       extra=["--preserve-digests"])
    digest, blobs = oci_layout(dest)
    assert digest == img.digest
    assert blobs == blobs_of(img) | {img.digest}
    check_cold_fetch(mirror, upstream, blobs_of(img))
    # what skopeo asked the mirror for
    recs = mirror.tap.records()
    assert all(r["path"].startswith("/v2/") for r in recs), mirror.tap.summary()
    assert {r["path"] for r in mirror_blob_gets(mirror)} == {
        "/v2/library/alpine/blobs/" + d for d in blobs_of(img)}


def test_skopeo_second_copy_causes_no_upstream_blob_get(skopeo_client, mirror, upstream,
                                                        seeded):
    img = seeded.alpine
    ref = "docker://docker.io/library/alpine:3.19"
    skopeo_client.copy(ref, "oci:%s:a" % os.path.join(skopeo_client.dir, "first"),
                       extra=["--preserve-digests"])
    check_cold_fetch(mirror, upstream, blobs_of(img))
    upstream.proxy.reset()
    mirror.tap.reset()
    dest = os.path.join(skopeo_client.dir, "second")
    skopeo_client.copy(ref, "oci:%s:a" % dest, extra=["--preserve-digests"])
    settle(upstream)
    digest, blobs = oci_layout(dest)
    assert digest == img.digest and blobs == blobs_of(img) | {img.digest}
    # the client did fetch every blob again, from the mirror ...
    assert len(mirror_blob_gets(mirror)) == len(blobs_of(img)), mirror.tap.summary()
    # ... and the mirror served them from its cache
    assert upstream_blob_gets(upstream) == {}, mirror.diagnostics()
    check_tag_recheck(mirror, upstream, "library/alpine", "3.19")


@pytest.mark.parametrize("image,arch,variant", [
    ("multi", "arm64", None),
    ("multi", "arm", "v7"),
    ("multi-oci", "arm", "v7"),
], ids=["multi-arm64", "multi-arm-v7", "multi-oci-arm-v7"])
def test_skopeo_copy_non_default_platform(skopeo_client, mirror, upstream, seeded, image, arch,
                                          variant):
    index = seeded["library/%s:1" % image]
    child = index.child(arch, variant)
    dest = os.path.join(skopeo_client.dir, "oci")
    skopeo_client.copy("docker://docker.io/library/%s:1" % image, "oci:%s:1" % dest,
                       arch=arch, variant=variant, extra=["--preserve-digests"])
    digest, blobs = oci_layout(dest)
    assert digest == child.digest, "got %s, the %s%s child is %s" % (
        digest, arch, variant or "", child.digest)
    assert blobs == blobs_of(child) | {child.digest}
    # only the chosen platform's blobs left the upstream
    check_cold_fetch(mirror, upstream, blobs_of(child))


def test_skopeo_private_image_with_mirror_credentials(skopeo_client, mirror, upstream, seeded):
    img = seeded.secret
    dest = os.path.join(skopeo_client.dir, "oci")
    skopeo_client.copy("docker://docker.io/private/secret:1", "oci:%s:1" % dest,
                       extra=["--preserve-digests"])
    digest, blobs = oci_layout(dest)
    assert digest == img.digest and blobs == blobs_of(img) | {img.digest}
    # the client sent no credentials; the mirror used its own (alice) upstream
    sent_auth = [r for r in mirror.tap.records() if TapProxy.header_lines(r, "authorization")]
    assert not sent_auth, mirror.tap.summary()
    check_cold_fetch(mirror, upstream, blobs_of(img))
    log = upstream.token.stats()["log"]
    assert any(e["user"] == "alice" and e["status"] == 200
               and any(a.get("name") == "private/secret" for a in e["granted"]) for e in log), \
        json.dumps(log, indent=1)[:3000]


# ---------------------------------------------------------------------------
# podman

def test_podman_pull(podman_client, mirror, upstream, seeded):
    img = seeded.alpine
    podman_client.pull("docker.io/library/alpine:3.19")
    info = podman_client.image_inspect("docker.io/library/alpine:3.19")
    assert info["Digest"] == img.digest, info.get("Digest")
    assert "sha256:" + info["Id"] == img.config.digest
    assert "docker.io/library/alpine@" + img.digest in info["RepoDigests"]
    check_cold_fetch(mirror, upstream, blobs_of(img))


def test_podman_pull_non_default_platform(podman_client, mirror, upstream, seeded):
    child = seeded.multi.child("arm64")
    podman_client.pull("docker.io/library/multi:1", arch="arm64")
    info = podman_client.image_inspect("docker.io/library/multi:1")
    assert "sha256:" + info["Id"] == child.config.digest
    assert info["Architecture"] == "arm64"
    check_cold_fetch(mirror, upstream, blobs_of(child))


# ---------------------------------------------------------------------------
# dockerd

def test_docker_pull_and_pull_again_from_cache(dockerd, mirror, upstream, seeded):
    img = seeded.alpine
    dockerd.pull("alpine:3.19")
    info = dockerd.image_inspect("alpine:3.19")
    assert info["RepoDigests"] == ["alpine@" + img.digest]
    assert info["Id"] == img.config.digest
    check_cold_fetch(mirror, upstream, blobs_of(img))
    # dockerd asks for the tag with HEAD, then GETs the manifest by digest
    mans = [r for r in mirror.tap.records() if "/manifests/" in r["path"]]
    assert [(r["method"], r["path"].rsplit("/", 1)[1]) for r in mans] == [
        ("HEAD", "3.19"), ("GET", img.digest)], mirror.tap.summary()

    dockerd.rmi("alpine:3.19")
    upstream.proxy.reset()
    mirror.tap.reset()
    dockerd.pull("alpine:3.19")
    settle(upstream)
    assert dockerd.image_inspect("alpine:3.19")["RepoDigests"] == ["alpine@" + img.digest]
    assert len(mirror_blob_gets(mirror)) == len(blobs_of(img)), mirror.tap.summary()
    assert upstream_blob_gets(upstream) == {}, mirror.diagnostics()
    check_tag_recheck(mirror, upstream, "library/alpine", "3.19")


def test_docker_pull_non_default_platform(dockerd, mirror, upstream, seeded):
    index = seeded.multi
    child = index.child("arm64")
    dockerd.pull("multi:1", platform="linux/arm64")
    info = dockerd.image_inspect("multi:1")
    assert info["RepoDigests"] == ["multi@" + index.digest]
    assert info["Id"] == child.config.digest
    assert info["Architecture"] == "arm64"
    check_cold_fetch(mirror, upstream, blobs_of(child))


# ---------------------------------------------------------------------------
# containerd

def test_ctr_pull(containerd, mirror, upstream, seeded):
    img = seeded.alpine
    containerd.pull("docker.io/library/alpine:3.19")
    imgs = containerd.images()
    assert imgs["docker.io/library/alpine:3.19"]["digest"] == img.digest, imgs
    assert blobs_of(img) | {img.digest} <= containerd.content()
    check_cold_fetch(mirror, upstream, blobs_of(img))
    recs = mirror.tap.records()
    # containerd names the upstream registry in every mirror request and never asks /v2/ first
    assert recs and all("ns=docker.io" in r["query"].split("&") for r in recs), \
        mirror.tap.summary()
    assert (recs[0]["method"], recs[0]["path"]) == (
        "HEAD", "/v2/library/alpine/manifests/3.19"), mirror.tap.summary()


def test_ctr_pull_non_default_platform(containerd, mirror, upstream, seeded):
    index = seeded.multi
    child = index.child("arm64")
    containerd.pull("docker.io/library/multi:1", platform="linux/arm64")
    imgs = containerd.images()
    assert imgs["docker.io/library/multi:1"]["digest"] == index.digest, imgs
    content = containerd.content()
    assert blobs_of(child) | {child.digest, index.digest} <= content
    others = set()
    for c in index.children:
        if c is not child:
            others |= blobs_of(c) | {c.digest}
    assert not (others & content), "other platforms fetched: %s" % sorted(others & content)
    check_cold_fetch(mirror, upstream, blobs_of(child))
