"""The cluster harness: N registry nodes on one storage, one redis-server, nginx round robin in
front, every node pulling from the counting upstream (conftest_upstream.py).

Storage is one bucket of the OSS emulator (every node rooted at the same key prefix) or one
shared filesystem root. Every node has the same `http.secret`, a `redis` section (with
`storage.cache.blobdescriptor: redis`), `proxy.remoteurl` at the counting upstream and its own
`proxy.spooldir`; `cluster.advertise` is each node's own URL (regmirror).
nginx: `proxy_buffering off`, `proxy_request_buffering off`, `client_max_body_size 0`, one
worker, so requests go to the nodes in turn (1, 2, 3, 1, ...) and every answer says which node
gave it (`X-Cluster-Node: 127.0.0.1:<port>`, see Cluster.node_of).

Fixtures (registered from conftest.py with `pytest_plugins`, as conftest_upstream.py):
  cluster_oss_store (session)  the OSS emulator: the session's (REGMIRROR_TEST_STORAGE=oss) or
                               one started for the clusters
  make_cluster      (function) factory: make_cluster(storage="oss"|"fs", n=3, ...) -> Cluster,
                               stopped at the end of the test
  cluster           (module, parametrized "oss" and "fs") one 3-node cluster per storage for
                               the module; before each test every node and Redis are running
                               again (a test may kill them) and the upstream counters are reset
  cluster_oss, cluster_fs      the same on one storage only

With REGISTRY_UNDER_TEST=docker-registry the nodes are registry:2 replicas on one filesystem
root (the reference; OSS clusters are skipped, and the nodes have no proxy section by default,
since registry:2's proxy refuses pushes).
"""

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests

import helpers

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
SECRET = "cluster-http-secret-7d1e0b9a4c"
NODE_HEADER = "X-Cluster-Node"

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream nodes {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        chunked_transfer_encoding on;
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            add_header {header} $upstream_addr always;
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------
# redis-server

class RedisServer:
    """One redis-server on 127.0.0.1:port, no persistence; start() again reuses the port."""

    def __init__(self, workdir):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = helpers.free_port()
        self.proc = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        log = open(os.path.join(self.workdir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s:\n%s" % (
                    self.proc.returncode, helpers.tail(os.path.join(self.workdir, "redis.log"))))
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a crash."""
        if self.proc:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    stop = kill

    def command(self, *args):
        """One command; the raw RESP answer (a single recv: keep answers small)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        try:
            s.sendall(("*%d\r\n" % len(args) + "".join(
                "$%d\r\n%s\r\n" % (len(str(a).encode()), a) for a in args)).encode())
            return s.recv(1 << 20)
        finally:
            s.close()


# ---------------------------------------------------------------------------
# nginx round robin

class RoundRobin:
    """nginx in front of the nodes' ports (plain HTTP)."""

    def __init__(self, workdir, ports):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = helpers.free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        # max_fails=0: a node that was down takes requests again as soon as it is back
        servers = "\n".join("        server 127.0.0.1:%d max_fails=0;" % p for p in ports)
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(d=self.dir, port=self.port, servers=servers,
                                      header=NODE_HEADER))
        self.proc = None

    def start(self, timeout=15.0):
        log = open(os.path.join(self.dir, "stderr.log"), "ab")
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", self.conf, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
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


class Front:
    """The cluster's address (nginx) with helpers.Registry's HTTP shorthands, so the helpers
    that take a registry (upload_blob, raw_get, http_request, ...) work through it."""

    kind = "nginx"

    def __init__(self, lb):
        self.lb = lb
        self.port = lb.port
        self.session = requests.Session()

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def base(self):
        return "http://" + self.host

    def url(self, path):
        return self.base + path

    def request(self, method, path_or_url, **kw):
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", False)
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        return self.session.request(method, url, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


# ---------------------------------------------------------------------------
# nodes

class Node(helpers.Registry):
    """One node: a helpers.Registry on a port fixed for its life, so that nginx finds it again
    after restart(); its config is written once and kept (the same config on every start)."""

    def __init__(self, cluster, index, port, workdir, **kw):
        super().__init__(cluster.kind, workdir, rootdir=cluster.fs_root, storage=cluster.storage,
                         **kw)
        self.cluster = cluster
        self.index = index
        self.port = port
        self.proc = None

    def __repr__(self):
        return "<node %d %s %s>" % (self.index, self.kind, self.host)

    def render(self):
        c = self.cluster
        addr = "127.0.0.1:%d" % self.port
        storage_yaml = "  cache:\n    blobdescriptor: redis\n"
        if self.storage == "oss":
            storage_yaml = "  redirect:\n    disable: true\n" + storage_yaml
            text = helpers.render_config(None, addr, True, "", storage_yaml,
                                         driver_yaml=helpers.oss_store().driver_yaml(c.prefix))
        else:
            text = helpers.render_config(c.fs_root, addr, True, "", storage_yaml)
        head = "http:\n  addr: %s\n" % addr
        assert head in text
        text = text.replace(head, head + "  secret: %s\n" % SECRET)
        text += ("redis:\n  addr: %s\n  dialtimeout: 200ms\n  readtimeout: 500ms\n"
                 "  writetimeout: 500ms\n" % c.redis.addr)
        if c.proxy:
            text += "proxy:\n  remoteurl: %s\n" % c.upstream.url
            if self.kind == "regmirror":
                os.makedirs(self.spooldir, exist_ok=True)
                text += "  spooldir: %s\n" % self.spooldir
            text += c.proxy_extra
        if c.advertise:
            text += "cluster:\n  advertise: %s\n" % self.base
        text += c.node_yaml(self) if callable(c.node_yaml) else c.node_yaml
        return text

    def launch(self):
        """Starts the process on the kept config; returns at once (see wait_ready)."""
        if self.alive():
            raise RuntimeError("%r is already running" % self)
        if not os.path.exists(self.config_path):
            with open(self.config_path, "w") as f:
                f.write(self.render())
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("REGISTRY_") and k != "REGISTRY_UNDER_TEST":
                del env[k]
        env.update(self.env)
        env.setdefault("OTEL_TRACES_EXPORTER", "none")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", self.config_path], stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     cwd=self.workdir)
        logf.close()
        return self

    def wait_ready(self, timeout=20.0):
        self._wait_ready(timeout)
        return self

    def start(self, timeout=20.0):
        return self.launch().wait_ready(timeout)

    def kill(self):
        """kill -9: no shutdown, spool and upload state left as they are."""
        self.session.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, kill=False, timeout=20.0):
        """Stops (SIGTERM, or SIGKILL with kill=True) and starts again on the same config and
        port. Returns the exit status of the stopped process."""
        if kill:
            self.kill()
            rc = -9
        else:
            rc = self.stop()
        self.start(timeout)
        return rc


# ---------------------------------------------------------------------------
# the cluster

class Cluster:
    """N nodes, Redis and nginx; see the module's docstring.

    url(path) / base     nginx, the cluster's address; `front` talks to it like a Registry
    nodes                the Nodes (helpers.Registry: .base, .url(), .get(), ...; .stop(),
                         .kill(), .start(), .restart(kill=False))
    redis                RedisServer (.kill(), .start() on the same port, .command())
    upstream             upstream.Upstream: .proxy.blob_gets(digest), .proxy.count(...), faults
    storage_requests()   OSS emulator requests since the last reset (None on the filesystem)
    blob_writes(digest)  storage writes of that blob's data since the last reset (OSS only)
    """

    def __init__(self, workdir, upstream, storage="oss", n=3, kind=None, proxy=None,
                 proxy_extra="  push: true\n", node_yaml="", advertise=None, env=None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.kind = kind or helpers.target_kind()
        self.storage = storage
        self.upstream = upstream
        self.proxy = (self.kind == "regmirror") if proxy is None else proxy
        self.proxy_extra = proxy_extra
        self.node_yaml = node_yaml
        self.fs_root = os.path.join(self.workdir, "root")
        if storage == "oss":
            self.prefix = helpers.oss_store().prefix_for(self.fs_root)
        else:
            self.prefix = None
            os.makedirs(self.fs_root, exist_ok=True)
        self.advertise = self.kind == "regmirror" if advertise is None else advertise
        self.redis = RedisServer(os.path.join(self.workdir, "redis"))
        ports = []
        while len(ports) < n:
            p = helpers.free_port()
            if p not in ports:
                ports.append(p)
        self.nodes = [Node(self, i, p, os.path.join(self.workdir, "node%d" % i), env=env)
                      for i, p in enumerate(ports)]
        self.lb = RoundRobin(os.path.join(self.workdir, "nginx"), ports)
        self.front = Front(self.lb)
        self._mark = time.time()

    def start(self):
        try:
            self.redis.start()
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready()
            self.lb.start()
        except Exception:
            self.stop()
            raise
        self.reset()
        return self

    def stop(self):
        """Stops everything; returns {node index: exit status} of the nodes that were running
        (SIGTERM: 0 or -15 is a clean shutdown)."""
        self.front.session.close()
        self.lb.stop()
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            running = [n for n in self.nodes if n.alive()]
            rcs = dict(zip([n.index for n in running], pool.map(lambda n: n.stop(), running)))
        self.redis.kill()
        return rcs

    # -- addresses --------------------------------------------------------
    @property
    def base(self):
        return self.front.base

    @property
    def host(self):
        return self.front.host

    def url(self, path):
        return self.front.url(path)

    def node_of(self, resp):
        """The Node that gave a response received through nginx (requests or http.client
        response), None when nginx answered by itself."""
        addr = resp.headers.get(NODE_HEADER, "")
        # after a failed try nginx lists every node it tried: the last one answered
        addr = addr.split(",")[-1].strip()
        for node in self.nodes:
            if addr == node.host:
                return node
        return None

    # -- state between tests ----------------------------------------------
    def reset(self):
        """Redis and every node running again (same ports, same configs), nginx up, the
        counters' start moved to now."""
        if not self.redis.alive():
            self.redis.start()
        dead = [n for n in self.nodes if not n.alive()]
        for node in dead:
            node.launch()
        for node in dead:
            node.wait_ready()
        if self.lb.proc is None or self.lb.proc.poll() is not None:
            self.lb.start()
        self._mark = time.time()

    def settle(self, timeout=15.0):
        """Waits until no node's spool holds a file (on OSS a fetched blob is stored after the
        answer)."""
        for node in self.nodes:
            node.settle(timeout)

    def alive(self):
        return all(n.alive() for n in self.nodes) and self.redis.alive()

    def log_tails(self, nbytes=3000):
        out = ["%r log tail:\n%s" % (n, n.log_tail(nbytes)) for n in self.nodes]
        out.append("nginx error log tail:\n" + self.lb.log_tail())
        return "\n".join(out)

    # -- storage counters (OSS emulator) ----------------------------------
    def storage_requests(self, op=None):
        """The emulator's records of requests under this cluster's prefix since the last
        reset ({"method", "path", "op", "status", ...}); None on the filesystem."""
        if self.storage != "oss":
            return None
        pre = "/%s/" % self.prefix
        out = []
        for rec in helpers.oss_store().emu.requests():
            if rec.get("time", 0) < self._mark or pre not in rec.get("path", ""):
                continue
            if op is None or rec.get("op") == op:
                out.append(rec)
        return out

    def blob_writes(self, digest):
        """How many writes created the blob's data object since the last reset (PutObject,
        CompleteMultipartUpload or CopyObject to .../blobs/<algo>/<xx>/<hex>/data)."""
        reqs = self.storage_requests()
        if reqs is None:
            return None
        algo, hexd = digest.split(":", 1)
        key = "/blobs/%s/%s/%s/data" % (algo, hexd[:2], hexd)
        return sum(1 for r in reqs
                   if r.get("op") in ("PutObject", "CompleteMultipartUpload", "CopyObject")
                   and r.get("path", "").split("?")[0].endswith(key) and r.get("status") == 200)


# ---------------------------------------------------------------------------
# fixtures

def _skip_reason(kind, storage):
    if kind == "regmirror" and not helpers.regmirror_bin():
        return "REGMIRROR_BIN is not set"
    if not os.access(helpers.binary_for(kind) or "", os.X_OK):
        return "%s is not installed" % kind
    if kind == "docker-registry" and storage == "oss":
        return "registry:2 does not run on the OSS emulator (the reference is the filesystem)"
    for prog in (NGINX, REDIS):
        if not os.access(prog, os.X_OK):
            return "%s is not installed" % prog
    return None


@pytest.fixture(scope="session")
def cluster_oss_store(_oss_session, tmp_path_factory):
    """The OSS emulator clusters store on: the session's, or one of their own."""
    if _oss_session is not None:
        yield _oss_session
        return
    st = helpers.OssStore(tmp_path_factory.mktemp("cluster-oss-emulator"))
    helpers.set_oss_store(st)
    yield st
    helpers.set_oss_store(None)
    st.stop()


def _start(workdir, upstream, storage, _started, **kw):
    kind = kw.get("kind") or helpers.target_kind()
    why = _skip_reason(kind, storage)
    if why:
        pytest.skip(why)
    c = Cluster(workdir, upstream, storage=storage, **kw)
    _started.extend(c.nodes)  # their log tails go into a failing test's report
    return c.start()


def _finish(c, _started):
    rcs = c.stop()
    for node in c.nodes:
        if node in _started:
            _started.remove(node)
    bad = {i: rc for i, rc in rcs.items() if rc not in (0, -15, None)}
    if bad:
        pytest.fail("cluster nodes exited with %s on SIGTERM:\n%s" % (bad, c.log_tails()),
                    pytrace=False)


@pytest.fixture
def make_cluster(request, upstream, tmp_path, _started):
    """make_cluster(storage="oss"|"fs", n=3, proxy_extra=..., node_yaml=str or fn(node), ...):
    a started Cluster, stopped at the end of the test."""
    made = []

    def factory(storage="oss", **kw):
        if storage == "oss":
            request.getfixturevalue("cluster_oss_store")
        c = _start(tmp_path / ("cluster%d-%s" % (len(made), storage)), upstream, storage,
                   _started, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        _finish(c, _started)


def _module_cluster(request, storage, upstream_server, tmp_path_factory, _started):
    if storage == "oss":
        request.getfixturevalue("cluster_oss_store")
    c = _start(tmp_path_factory.mktemp("cluster-" + storage), upstream_server, storage,
               _started)
    yield c
    _finish(c, _started)


def _per_test(c, upstream):
    """Before a test: every part running again and the counters reset (the upstream fixture
    resets the upstream's)."""
    c.reset()
    yield c


@pytest.fixture(scope="module", params=["oss", "fs"])
def _cluster_module(request, upstream_server, tmp_path_factory, _started):
    yield from _module_cluster(request, request.param, upstream_server, tmp_path_factory,
                               _started)


@pytest.fixture(scope="module")
def _cluster_oss_module(request, upstream_server, tmp_path_factory, _started):
    yield from _module_cluster(request, "oss", upstream_server, tmp_path_factory, _started)


@pytest.fixture(scope="module")
def _cluster_fs_module(request, upstream_server, tmp_path_factory, _started):
    yield from _module_cluster(request, "fs", upstream_server, tmp_path_factory, _started)


@pytest.fixture
def cluster(_cluster_module, upstream):
    """A 3-node cluster, once on OSS and once on a shared filesystem root (module-scoped)."""
    yield from _per_test(_cluster_module, upstream)


@pytest.fixture
def cluster_oss(_cluster_oss_module, upstream):
    yield from _per_test(_cluster_oss_module, upstream)


@pytest.fixture
def cluster_fs(_cluster_fs_module, upstream):
    yield from _per_test(_cluster_fs_module, upstream)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a cluster gets nginx's error log tail in its report (the nodes'
    log tails come through conftest's `_started`)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("setup", "call", "teardown") or not rep.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Cluster):
            rep.sections.append(("cluster nginx error log (%s) tail" % value.lb.dir,
                                 value.lb.log_tail()))
