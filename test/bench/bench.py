#!/usr/bin/python3
"""regmirror's benchmark harness (`make bench`): regmirror against registry:2 and nginx, on
loopback, every figure a median of BENCH_RUNS runs (default 3) and a ratio to a reference
measured in the same run.

    token server + docker-registry (token auth)  <-  counting proxy  <-  regmirror (proxy mode)
      (test/integration/upstream.py)                  (upstream       <-  registry:2 (proxy mode)
                                                       requests, bytes)
    nginx (sendfile) serving regmirror's own blob file (and a small file) from its storage

Scenarios (README.md, "Benchmarks", explains each figure):
  cold    pull of a 4 x 64 MB incompressible image (manifest + every blob, digests checked)
          through a cold mirror vs straight from the upstream; again with the upstream's
          blob GETs at BENCH_COLD_RATE_MB (100) MB/s each, a WAN link (0: skipped)
  warm    blob GET throughput, 1 / 8 / 32 concurrent streams, vs nginx on the same file, with
          each server's CPU per GB; one stream again with server and client pinned to two cores
  rate    c=64 (wrk for GET, bget for HEAD): manifest GET by tag (regmirror with a large tagfreshness, and with 0s, where
          every GET asks the upstream), manifest HEAD by tag, manifest GET by digest, blob HEAD,
          a 64 KB Range GET of a cached blob; vs registry:2 and nginx serving a small file
  herd    32 clients GET one cold 100 MB blob at once vs one client alone, the upstream's
          blob GETs throttled to BENCH_HERD_RATE_MB (25) MB/s, a WAN link
  rss     peak RSS during warm and herd, idle, and under 256 concurrent streams
  cluster 3 regmirror nodes on one filesystem root with one redis-server, nginx round robin
          in front (test/integration/cluster.py); 32 clients through nginx on one cold
          100 MB blob, the upstream at BENCH_HERD_RATE_MB: upstream GETs, median time to first
          byte of the clients on the lease holder and on the other nodes, last client done vs
          one client alone; the same with 3 registry:2 replicas on one root

Correctness is asserted (digests, upstream fetch counts, status codes, Range bytes); timings
never are. Exit status 1 when a correctness check failed.

Environment: REGMIRROR_BIN (default build/release/regmirror), BENCH_OUT (default build/bench:
results.json, bget, logs), BENCH_RUNS (3), BENCH_WRK_SECONDS (2), BENCH_KEEP=1 keeps the
work directory (about 2 GB), BENCH_ONLY=NAME[,NAME] runs only those scenarios (cold, warm,
rates, herd, streams, cluster; warm, rates and streams serve what the cold pull stored, so
they run it too).
"""

import concurrent.futures
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "integration"))

import requests  # noqa: E402
from http.server import ThreadingHTTPServer  # noqa: E402

import cluster as C  # noqa: E402
import helpers  # noqa: E402
import upstream as U  # noqa: E402
from helpers import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, sha256  # noqa: E402

MB = 1024 * 1024
RUNS = max(1, int(os.environ.get("BENCH_RUNS", "3")))
WRK_SECONDS = max(1, int(os.environ.get("BENCH_WRK_SECONDS", "2")))
OUT = os.path.abspath(os.environ.get("BENCH_OUT") or os.path.join(ROOT, "build", "bench"))
WORK = os.path.join(OUT, "work")
REGMIRROR_BIN = os.path.abspath(os.environ.get("REGMIRROR_BIN")
                                or os.path.join(ROOT, "build", "release", "regmirror"))
REGISTRY_BIN = os.environ.get("DOCKER_REGISTRY_BIN", helpers.REFERENCE_BIN)
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
WRK_BIN = shutil.which("wrk") or "/usr/bin/wrk"
BGET = os.path.join(OUT, "bget")

BIG_LAYERS, BIG_LAYER_SIZE = 4, 64 * MB
HERD_SIZE, HERD_CLIENTS = 100 * MB, 32
# The upstream's blob GETs run at this rate in the herd (bytes/s; 0: loopback speed): a WAN
# link, so that the herd measures how well the clients ride one download rather than how fast
# loopback carries 32 x 100 MB to clients that hash every byte.
HERD_RATE = int(float(os.environ.get("BENCH_HERD_RATE_MB", "25")) * MB)
# (concurrent streams, GETs of the 64 MB blob, rounds): a round moves by 10-20 % with where
# the scheduler puts servers and clients on the cores, so these get more than RUNS
WARM_ROUNDS = max(RUNS, 7)
WARM_STREAMS = ((1, 32, WARM_ROUNDS), (8, 32, WARM_ROUNDS), (32, 32, WARM_ROUNDS))
# The upstream's blob GETs in the second cold pull (bytes/s per connection; 0: none): a WAN
# link, where the upstream and not the machine's CPU sets the pace.
COLD_RATE = int(float(os.environ.get("BENCH_COLD_RATE_MB", "100")) * MB)
MANY_STREAMS = 256
RANGE = (1 * MB, 1 * MB + 64 * 1024 - 1)
PULL_CONCURRENCY = 3  # dockerd's max-concurrent-downloads

SCENARIOS = ("cold", "warm", "rates", "herd", "streams", "cluster")
ONLY = {x.strip() for x in os.environ.get("BENCH_ONLY", "").split(",") if x.strip()}
CLUSTER_NODES = 3
# Without buffering nginx relays each answer through one proxy_buffer_size buffer, 4 KiB by
# default: 32 x 100 MB then take 4-5 times as long through nginx as from the nodes, whatever
# the nodes are. 256 KiB puts nginx's relay near the nodes' own pace.
CLUSTER_NGINX_BUFFER = "256k"

failures = []


def _quiet_handle_error(self, request, client_address, _orig=ThreadingHTTPServer.handle_error):
    """The counting proxy's server prints a traceback when a mirror stopped between runs
    resets a kept-alive connection; that is expected here."""
    if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
        return
    _orig(self, request, client_address)


ThreadingHTTPServer.handle_error = _quiet_handle_error


def fail(msg):
    failures.append(msg)
    print("CHECK FAILED: " + msg, flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def log(msg):
    print(msg, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------
# processes and their memory

def proc_status(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy():
    """CPU seconds the whole machine has spent neither idle nor waiting for I/O."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def settle(proxy, quiet=0.5, timeout=10.0):
    """Waits until the upstream has seen no new request for `quiet` seconds: registry:2 goes
    on asking the upstream for requests whose clients are gone, which must not be counted
    against the next server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proxy.wait_idle()
        n = proxy.count()
        time.sleep(quiet)
        if proxy.count() == n:
            return


def cpu_delta(after, before):
    return after - before if after is not None and before is not None else None


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass


class PeakRss:
    """Peak RSS of some processes over a `with` block: VmHWM reset at entry and read at exit,
    and VmRSS sampled every 10 ms in case the reset is not supported."""

    def __init__(self, servers):
        self.servers = servers
        self.peak = {}
        self._stop = threading.Event()

    def __enter__(self):
        for s in self.servers:
            reset_peak(s.rss_pid)
            self.peak[s.name] = proc_status(s.rss_pid, "VmRSS") or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            for s in self.servers:
                self.peak[s.name] = max(self.peak[s.name], proc_status(s.rss_pid, "VmRSS") or 0)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for s in self.servers:
            self.peak[s.name] = max(self.peak[s.name], proc_status(s.rss_pid, "VmHWM") or 0)
        return False


def wait_http(url, proc, log_path, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s):\n%s" % (url, proc.returncode,
                                                        helpers.tail(log_path)))
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError("%s not ready within %ss:\n%s" % (url, timeout, helpers.tail(log_path)))


class Server:
    """One server process on 127.0.0.1 (a mirror, or nginx). rss_pid is the process that
    serves (nginx: its single worker)."""

    def __init__(self, name, workdir):
        self.name = name
        self.workdir = workdir
        self.proc = None
        self.port = None
        self.rss_pid = None
        self.log_path = os.path.join(workdir, "server.log")

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def _spawn(self, argv, ready_path="/v2/"):
        os.makedirs(self.workdir, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["OTEL_TRACES_EXPORTER"] = "none"
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        wait_http(self.base + ready_path, self.proc, self.log_path)
        self.rss_pid = self.proc.pid

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Mirror(Server):
    """regmirror or docker-registry with a proxy section pulling from the test upstream."""

    def __init__(self, name, binary, workdir, up, tagfreshness=None):
        super().__init__(name, workdir)
        self.binary = binary
        self.up = up
        self.tagfreshness = tagfreshness
        self.rootdir = os.path.join(workdir, "root")

    def start(self, fresh=False):
        if fresh and os.path.isdir(self.rootdir):
            shutil.rmtree(self.rootdir)
        os.makedirs(self.rootdir, exist_ok=True)
        self.port = helpers.free_port()
        extra = "  tagfreshness: %s\n" % self.tagfreshness if self.tagfreshness else ""
        cfg = ("version: 0.1\n"
               "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
               "storage:\n  filesystem:\n    rootdirectory: %s\n"
               "  cache:\n    blobdescriptor: inmemory\n"
               "http:\n  addr: 127.0.0.1:%d\n"
               "%s") % (self.rootdir, self.port, self.up.proxy_yaml(username="alice",
                                                                      extra=extra))
        path = os.path.join(self.workdir, "config.yml")
        with open(path, "w") as f:
            f.write(cfg)
        self._spawn([self.binary, "serve", path])
        return self

    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.rootdir, "docker/registry/v2/blobs", algo, hexd[:2], hexd,
                            "data")


class Nginx(Server):
    """nginx, one worker (regmirror serves from one thread), sendfile on, no access log:
    /data is `blob` (root = its directory), /small is `small`."""

    def __init__(self, workdir, blob, small):
        super().__init__("nginx", workdir)
        self.blob = blob
        self.small = small

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        tmp = os.path.join(self.workdir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        self.port = helpers.free_port()
        temps = "".join("  %s_temp_path %s;\n" % (k, tmp) for k in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        cfg = ("daemon off;\nmaster_process on;\nworker_processes 1;\n%s"
               "pid %s/nginx.pid;\nerror_log %s warn;\n"
               "events { worker_connections 4096; }\n"
               "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
               "  keepalive_requests 1000000;\n  default_type application/octet-stream;\n%s"
               "  server {\n    listen 127.0.0.1:%d;\n    root %s;\n"
               "    location = /small { alias %s; }\n  }\n}\n") % (
                   "user root;\n" if os.geteuid() == 0 else "", self.workdir, self.log_path,
                   temps, self.port, os.path.dirname(self.blob), self.small)
        path = os.path.join(self.workdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(cfg)
        self._spawn([NGINX_BIN, "-c", path, "-p", self.workdir], ready_path="/small")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                self.rss_pid = kids[0]
                return self
            time.sleep(0.05)
        raise RuntimeError("nginx started no worker")


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------------
# clients

def build_bget():
    src = os.path.join(HERE, "bget.c")
    if os.path.exists(BGET) and os.path.getmtime(BGET) >= os.path.getmtime(src):
        return
    os.makedirs(OUT, exist_ok=True)
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", BGET, src, "-lcrypto"],
                   check=True)


def pin(pid, cpus):
    """Puts every thread of pid on cpus (a set of CPU numbers)."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def bget(url, conns=1, n=1, digest=None, headers=(), head=False, timeout=300, cpus=None,
         record=None):
    """Runs bget (on cpus, when given); returns its JSON (wall, bytes, errors,
    requests[...]; with record, each request's value of that response header)."""
    argv = [BGET, "-c", str(conns), "-n", str(n), "-t", str(timeout)]
    for h in headers:
        argv += ["-H", h]
    if record:
        argv += ["-r", record]
    if digest:
        argv += ["-e", digest]
    if head:
        argv.append("-I")
    argv.append(url)
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout + 30,
                       preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"wall": None, "bytes": 0, "errors": n, "requests": [],
                "stderr": p.stderr.decode(errors="replace")}


WRK_LUA = """
wrk.method = "%(method)s"
%(headers)s
done = function(s, lat, req)
  io.write(string.format("WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"bytes\\": %%d, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"mean_us\\": %%.1f}\\n",
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, lat:percentile(50), lat:percentile(99), lat.mean))
end
"""


def wrk(url, method="GET", headers=None, seconds=WRK_SECONDS, conns=64):
    """wrk -t2 -c64; returns {rate, p50_ms, p99_ms, non2xx, errors, requests, tool}."""
    lua = WRK_LUA % {"method": method, "headers": "\n".join(
        'wrk.headers["%s"] = "%s"' % (k, v) for k, v in (headers or {}).items())}
    script = os.path.join(OUT, "wrk-%d.lua" % threading.get_ident())
    with open(script, "w") as f:
        f.write(lua)
    p = subprocess.run([WRK_BIN, "-t2", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s",
                        "-s", script, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=seconds + 60)
    out = p.stdout.decode(errors="replace")
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if not m:
        return {"rate": None, "error": out[-2000:], "tool": "wrk"}
    d = json.loads(m.group(1))
    return {"rate": d["requests"] / (d["duration_us"] / 1e6), "p50_ms": d["p50_us"] / 1000.0,
            "p99_ms": d["p99_us"] / 1000.0, "requests": d["requests"],
            "non2xx": d["status"],
            "errors": d["connect"] + d["read"] + d["write"] + d["timeout"], "tool": "wrk"}


def hammer(url, method="GET", headers=None, seconds=WRK_SECONDS, conns=64):
    """Request rate and latency at c=64: wrk for GET; bget for HEAD, because wrk 4.1 waits for
    the body that a HEAD answer's Content-Length announces and never completes a request."""
    if method == "GET":
        return wrk(url, method, headers, seconds, conns)
    argv = [BGET, "-q", "-c", str(conns), "-d", str(seconds), "-t", str(seconds + 30), "-I"]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    p = subprocess.run(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=seconds + 60)
    try:
        d = json.loads(p.stdout)
    except ValueError:
        return {"rate": None, "error": p.stdout.decode(errors="replace")[-2000:],
                "tool": "bget"}
    return {"rate": d["rate"], "p50_ms": d["p50"] * 1000, "p99_ms": d["p99"] * 1000,
            "requests": d["requests"], "non2xx": d["non2xx"],
            "errors": d["failed"] + d["timed_out"], "tool": "bget"}


ACCEPT = ", ".join([U.OCI_INDEX, U.DOCKER_LIST, U.OCI_MANIFEST, DOCKER_MANIFEST])


def pull(base, img, client=None):
    """Pulls img the way dockerd does (HEAD by tag, GET by digest, blobs PULL_CONCURRENCY at a
    time) with every digest checked. client: a RegistryClient for a token-auth registry, else
    anonymous. Returns (seconds, problems)."""
    problems = []
    t0 = time.monotonic()
    scope = "repository:%s:pull" % img.repo
    mpath = "/v2/%s/manifests/" % img.repo
    if client:
        r = client.request("HEAD", mpath + img.tag, scope=scope, headers={"Accept": ACCEPT})
    else:
        r = requests.head(base + mpath + img.tag, headers={"Accept": ACCEPT}, timeout=60)
    if r.status_code != 200 or r.headers.get("Docker-Content-Digest") != img.digest:
        return None, ["HEAD %s:%s: %d %s" % (img.repo, img.tag, r.status_code,
                                             r.headers.get("Docker-Content-Digest"))]
    if client:
        r = client.request("GET", mpath + img.digest, scope=scope, headers={"Accept": ACCEPT})
    else:
        r = requests.get(base + mpath + img.digest, headers={"Accept": ACCEPT}, timeout=60)
    if r.status_code != 200 or sha256(r.content) != img.digest:
        return None, ["GET manifest %s: %d" % (img.digest, r.status_code)]
    m = json.loads(r.content)
    hdrs = []
    if client:
        hdrs = ["Authorization: Bearer " + client._cached(scope)]
    descs = [m["config"]] + m["layers"]

    def one(d):
        res = bget("%s/v2/%s/blobs/%s" % (base, img.repo, d["digest"]), digest=d["digest"],
                   headers=hdrs)
        if res["errors"] or res["bytes"] != d["size"]:
            return "blob %s: %s" % (d["digest"], json.dumps(res)[:300])
        return None

    with concurrent.futures.ThreadPoolExecutor(PULL_CONCURRENCY) as pool:
        problems += [p for p in pool.map(one, descs) if p]
    return time.monotonic() - t0, problems


# ---------------------------------------------------------------------------
# images

def make_image(layer_sizes, label):
    """A schema2 image of incompressible layers (the bytes are what matters here)."""
    layers = [U.Blob(os.urandom(n), DOCKER_LAYER) for n in layer_sizes]
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Labels": {"bench": label}},
           "rootfs": {"type": "layers", "diff_ids": [l.digest for l in layers]}}
    config = U.Blob(json.dumps(cfg).encode(), DOCKER_CONFIG)
    m = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
         "layers": [l.descriptor() for l in layers]}
    return U.SeededImage((json.dumps(m, indent=3) + "\n").encode(), DOCKER_MANIFEST, config,
                         layers)


def push_blob(up, repo, data):
    c = up.client("pusher", direct=True)
    try:
        return c.push_blob(repo, data)
    finally:
        c.close()


# ---------------------------------------------------------------------------
# the scenarios

class Bench:
    def __init__(self):
        self.up = None
        self.rm = self.rm0 = self.r2 = self.ngx = None
        self.clusters = []
        self.results = {"runs": RUNS, "scenarios": {}}
        self.small = self.big = None

    def servers(self):
        return [s for s in (self.rm, self.r2, self.ngx, self.rm0) if s]

    def stop(self):
        for s in self.servers():
            s.stop()
        for c in self.clusters:
            c.stop()
        if self.up:
            self.up.stop()

    def idle_rss(self, when):
        out = {}
        for s in (self.rm, self.r2, self.ngx):
            if s and s.alive():
                out[s.name] = proc_status(s.rss_pid, "VmRSS")
        self.results.setdefault("idle_rss", {})[when] = out

    # -- set-up --------------------------------------------------------------------------
    def setup(self):
        if os.path.isdir(WORK):
            shutil.rmtree(WORK)
        os.makedirs(WORK)
        log("upstream: token server, docker-registry, counting proxy")
        self.up = U.Upstream(os.path.join(WORK, "upstream"))
        self.up.start(seed=False)
        t = time.monotonic()
        self.small = make_image([4 * 1024, 32 * 1024], "small")
        self.up.push("bench/small", self.small, ["1"])
        self.big = make_image([BIG_LAYER_SIZE] * BIG_LAYERS, "big")
        self.up.push("bench/big", self.big, ["1"])
        self.up.reset()
        log("seeded bench/small:1 and bench/big:1 (%d x %d MB) in %.1fs" % (
            BIG_LAYERS, BIG_LAYER_SIZE // MB, time.monotonic() - t))
        self.rm = Mirror("regmirror", REGMIRROR_BIN, os.path.join(WORK, "regmirror"), self.up,
                         tagfreshness="1h")
        self.r2 = Mirror("registry:2", REGISTRY_BIN, os.path.join(WORK, "registry2"), self.up)

    # -- 1. cold pull ----------------------------------------------------------------------
    def cold_pull(self):
        log("\n== cold pull of bench/big:1 (%d x %d MB)" % (BIG_LAYERS, BIG_LAYER_SIZE // MB))
        self.results["scenarios"]["cold_pull"] = self._cold_pulls(0, (self.rm, self.r2))
        for m in (self.rm, self.r2):
            check(os.path.exists(m.blob_path(self.big.layers[0].digest)) or m is self.r2,
                  "regmirror did not store %s" % self.big.layers[0].digest)
        if COLD_RATE:
            log("\n== cold pull, the upstream's blob GETs at %d MB/s each (a WAN link)" % (
                COLD_RATE // MB))
            self.results["scenarios"]["cold_pull_wan"] = self._cold_pulls(COLD_RATE,
                                                                           (self.rm,))

    def _cold_pulls(self, rate, mirrors):
        """RUNS pulls of the big image straight from the upstream and through each of
        mirrors, freshly started on an empty store; rate: bytes/s of each upstream blob GET
        (0: loopback speed)."""
        times = {"direct": []}
        times.update({m.name: [] for m in mirrors})
        upstream = {m.name: [] for m in mirrors}
        # CPU seconds during each pull: the whole machine's, and the mirror's own
        busy = {k: [] for k in times}
        own = {m.name: [] for m in mirrors}
        for run in range(RUNS):
            for m in mirrors:
                m.stop()
                m.start(fresh=True)
            if run == 0 and not rate:
                self.idle_rss("start")
            self.up.proxy.clear_faults()
            if rate:
                self.up.proxy.throttle(rate)
            c = self.up.client("alice")
            try:
                b0 = machine_busy()
                t, probs = pull(self.up.url, self.big, client=c)
                busy["direct"].append(machine_busy() - b0)
            finally:
                c.close()
            for p in probs:
                fail("cold pull direct: " + p)
            times["direct"].append(t)
            for m in mirrors:
                self.up.proxy.wait_idle()
                self.up.proxy.reset()
                b0, c0 = machine_busy(), proc_cpu(m.proc.pid)
                t, probs = pull(m.base, self.big)
                busy[m.name].append(machine_busy() - b0)
                own[m.name].append(cpu_delta(proc_cpu(m.proc.pid), c0))
                self.up.proxy.wait_idle()
                gets = {d: self.up.proxy.blob_gets(d) for d in self.big.blobs}
                upstream[m.name].append({"blob_gets": sum(gets.values()),
                                         "bytes": self.up.proxy.bytes(kind="blob",
                                                                      method="GET")})
                if m is self.rm:
                    for p in probs:
                        fail("cold pull via regmirror: " + p)
                    for d, n in gets.items():
                        check(n == 1, "cold pull via regmirror: %d upstream GETs of %s" % (n, d))
                elif probs:
                    log("  (registry:2: %s)" % "; ".join(probs))
                times[m.name].append(t if not probs else None)
            log("  run %d: " % (run + 1) + ", ".join(
                "%s %s" % (k, "%.2fs" % v[-1] if v[-1] else "failed") for k, v in times.items()))
        self.up.proxy.clear_faults()
        return {"bytes": sum(len(b) for b in self.big.blobs.values()), "upstream_rate": rate,
                "seconds": times, "upstream": upstream,
                "median": {k: median(v) for k, v in times.items()},
                "cpu_seconds": {"machine": busy, "mirror": own,
                                "median": {"machine": {k: median(v) for k, v in busy.items()},
                                           "mirror": {k: median(v) for k, v in own.items()}}}}

    # -- 2. warm GET -------------------------------------------------------------------------
    def start_nginx(self):
        blob = self.rm.blob_path(self.big.layers[0].digest)
        small = self.rm.blob_path(self.small.digest)
        if not os.path.exists(small):  # the manifest is stored as a blob once pulled
            requests.get(self.rm.base + "/v2/bench/small/manifests/1",
                         headers={"Accept": ACCEPT}, timeout=30)
        self.ngx = Nginx(os.path.join(WORK, "nginx"), blob, small).start()

    def blob_url(self, srv, digest=None, repo="bench/big"):
        if srv is self.ngx:
            return srv.base + "/data"
        return "%s/v2/%s/blobs/%s" % (srv.base, repo, digest or self.big.layers[0].digest)

    def warm_get(self):
        layer = self.big.layers[0]
        log("\n== warm blob GET of a %d MB blob" % (layer.size // MB))
        targets = (self.rm, self.ngx, self.r2)
        for s in targets:
            res = bget(self.blob_url(s), digest=layer.digest)
            ok = not res["errors"] and res["bytes"] == layer.size
            if s is self.r2:
                if not ok:
                    log("  (registry:2 warm GET failed: %s)" % json.dumps(res)[:300])
            else:
                check(ok, "warm GET from %s: %s" % (s.name, json.dumps(res)[:300]))
        out = {}
        with PeakRss(targets) as peak:
            for streams, n, rounds in WARM_STREAMS:
                rates = {s.name: [] for s in targets}
                # the server's own CPU seconds per GB sent: steadier than the rate, which
                # also depends on where the scheduler puts server and client
                cpu = {s.name: [] for s in targets}
                for run in range(rounds):
                    for s in targets:
                        c0 = proc_cpu(s.rss_pid)
                        res = bget(self.blob_url(s), conns=streams, n=n)
                        used = cpu_delta(proc_cpu(s.rss_pid), c0)
                        ok = not res["errors"] and res["bytes"] == n * layer.size
                        if s is not self.r2:
                            check(ok, "warm GET x%d from %s: %d errors" % (streams, s.name,
                                                                           res["errors"]))
                        rates[s.name].append(res["bytes"] / res["wall"] / MB if ok else None)
                        cpu[s.name].append(used / (res["bytes"] / 1e9)
                                           if ok and used is not None else None)
                med = {k: median(v) for k, v in rates.items()}
                out[str(streams)] = {"MBps": rates, "median": med, "cpu_s_per_GB": cpu,
                                     "cpu_median": {k: median(v) for k, v in cpu.items()}}
                log("  %2d streams: " % streams + ", ".join(
                    "%s %s MB/s" % (k, "%.0f" % v if v else "-") for k, v in med.items()))
        self.results["scenarios"]["warm_get"] = {"blob_bytes": layer.size, "streams": out,
                                                 "peak_rss": peak.peak,
                                                 "pinned": self.warm_get_pinned()}

    def warm_get_pinned(self):
        """One stream again with the server on one core and the client on another, for
        regmirror and nginx (both serve from one thread): the rate without the scheduler's
        placement in it. No target; None on a single core."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        layer = self.big.layers[0]
        n, rounds = WARM_STREAMS[0][1], WARM_STREAMS[0][2]
        server_cpu, client_cpu = {cpus[0]}, {cpus[1]}
        targets = (self.rm, self.ngx)
        rates = {s.name: [] for s in targets}
        try:
            for s in targets:
                pin(s.rss_pid, server_cpu)
            for run in range(rounds):
                for s in targets:
                    res = bget(self.blob_url(s), n=n, cpus=client_cpu)
                    ok = not res["errors"] and res["bytes"] == n * layer.size
                    check(ok, "pinned warm GET from %s: %d errors" % (s.name, res["errors"]))
                    rates[s.name].append(res["bytes"] / res["wall"] / MB if ok else None)
        finally:
            for s in targets:
                pin(s.rss_pid, set(cpus))
        med = {k: median(v) for k, v in rates.items()}
        log("   1 stream, server on CPU %d, client on CPU %d: " % (cpus[0], cpus[1]) + ", ".join(
            "%s %s MB/s" % (k, "%.0f" % v if v else "-") for k, v in med.items()))
        return {"server_cpu": cpus[0], "client_cpu": cpus[1], "MBps": rates, "median": med}

    # -- 3 and 6. request rates, Range ---------------------------------------------------------
    def rate_checks(self):
        """Correctness of what wrk hammers, once per server."""
        s, layer = self.small, self.small.layers[0]
        for srv in (self.rm, self.rm0):
            r = requests.get(srv.base + "/v2/bench/small/manifests/1",
                             headers={"Accept": ACCEPT}, timeout=30)
            check(r.status_code == 200 and r.content == s.manifest
                  and r.headers.get("Docker-Content-Digest") == s.digest,
                  "%s manifest GET by tag: %d" % (srv.name, r.status_code))
            r = requests.head(srv.base + "/v2/bench/small/manifests/1",
                              headers={"Accept": ACCEPT}, timeout=30)
            check(r.status_code == 200 and r.headers.get("Docker-Content-Digest") == s.digest
                  and r.headers.get("Content-Length") == str(len(s.manifest)),
                  "%s manifest HEAD by tag: %d" % (srv.name, r.status_code))
        r = requests.head(self.blob_url(self.rm, layer.digest, "bench/small"), timeout=30)
        check(r.status_code == 200 and r.headers.get("Content-Length") == str(layer.size)
              and r.headers.get("Docker-Content-Digest") == layer.digest,
              "regmirror blob HEAD: %d %s" % (r.status_code, dict(r.headers)))
        big = self.big.layers[0]
        for lo, hi in (RANGE, (0, 0), (big.size - 100, big.size - 1), (big.size - 5, None),
                       (None, 100)):
            spec = "bytes=%s-%s" % ("" if lo is None else lo, "" if hi is None else hi)
            want = big.data[lo:(hi + 1 if hi is not None else None)] if lo is not None else \
                big.data[-hi:]
            for srv in (self.rm, self.ngx):
                r = requests.get(self.blob_url(srv), headers={"Range": spec}, timeout=30)
                check(r.status_code == 206 and r.content == want,
                      "%s Range %s: %d, %d bytes" % (srv.name, spec, r.status_code,
                                                     len(r.content)))
                if srv is self.rm:
                    first = lo if lo is not None else big.size - hi
                    check(r.headers.get("Content-Range") == "bytes %d-%d/%d" % (
                        first, first + len(want) - 1, big.size),
                        "regmirror Range %s: Content-Range %s" % (
                            spec, r.headers.get("Content-Range")))
        r = requests.get(self.blob_url(self.rm), headers={"Range": "bytes=%d-" % big.size},
                         timeout=30)
        check(r.status_code == 416, "regmirror unsatisfiable Range: %d" % r.status_code)

    def rates(self):
        log("\n== request rate and latency, c=64, %d s (GET: wrk -t2; HEAD: bget)" % WRK_SECONDS)
        s = self.small
        mpath = "/v2/bench/small/manifests/"
        blob = "/v2/bench/small/blobs/" + s.layers[0].digest
        acc = {"Accept": ACCEPT}
        rng = {"Range": "bytes=%d-%d" % RANGE}
        big0 = "/v2/bench/big/blobs/" + self.big.layers[0].digest
        cases = [
            ("manifest GET by tag", [(self.rm, mpath + "1", "GET", acc),
                                     (self.rm0, mpath + "1", "GET", acc),
                                     (self.r2, mpath + "1", "GET", acc),
                                     (self.ngx, "/small", "GET", {})]),
            ("manifest HEAD by tag", [(self.rm, mpath + "1", "HEAD", acc),
                                      (self.rm0, mpath + "1", "HEAD", acc),
                                      (self.r2, mpath + "1", "HEAD", acc),
                                      (self.ngx, "/small", "HEAD", {})]),
            ("manifest GET by digest", [(self.rm, mpath + s.digest, "GET", acc),
                                        (self.r2, mpath + s.digest, "GET", acc),
                                        (self.ngx, "/small", "GET", {})]),
            ("blob HEAD", [(self.rm, blob, "HEAD", {}), (self.r2, blob, "HEAD", {}),
                           (self.ngx, "/small", "HEAD", {})]),
            ("Range GET 64 KB of a cached blob", [(self.rm, big0, "GET", rng),
                                                  (self.r2, big0, "GET", rng),
                                                  (self.ngx, "/data", "GET", rng)]),
        ]
        out = {}
        for name, targets in cases:
            runs = {}
            for run in range(RUNS):
                for srv, path, method, hdrs in targets:
                    self.up.proxy.wait_idle()
                    self.up.proxy.reset()
                    c0 = proc_cpu(srv.rss_pid)
                    res = hammer(srv.base + path, method, hdrs)
                    cpu = cpu_delta(proc_cpu(srv.rss_pid), c0)
                    res["cpu_us_per_request"] = (cpu / res["requests"] * 1e6
                                                 if cpu is not None and res.get("requests")
                                                 else None)
                    self.up.proxy.wait_idle()
                    res["upstream_requests"] = self.up.proxy.count()
                    # requests for an image: a registry's bare "GET /v2/" challenge ping
                    # (registry:2 sends them on its own) says nothing about the cache
                    image_requests = self.up.proxy.records(repo=bool)
                    seen = ["%s %s %s" % (r["method"], r["path"], r["status"])
                            for r in image_requests[:3]]
                    if srv is self.r2:
                        settle(self.up.proxy)
                    runs.setdefault(srv.name, []).append(res)
                    if srv is not self.r2:
                        check(res.get("rate") and not res["non2xx"] and not res["errors"],
                              "wrk %s on %s: %s" % (name, srv.name, json.dumps(res)[:400]))
                    if srv is self.rm:
                        check(not image_requests,
                              "%s on regmirror (tagfreshness 1h): %d upstream requests (%s)" % (
                                  name, len(image_requests), "; ".join(seen)))
            med = {}
            for k, rs in runs.items():
                med[k] = {"rate": median([r.get("rate") for r in rs]),
                          "p99_ms": median([r.get("p99_ms") for r in rs]),
                          "p50_ms": median([r.get("p50_ms") for r in rs]),
                          "cpu_us_per_request": median([r.get("cpu_us_per_request")
                                                        for r in rs]),
                          "upstream_per_request": median([
                              r["upstream_requests"] / r["requests"] if r.get("requests")
                              else None for r in rs])}
            out[name] = {"runs": runs, "median": med}
            log("  %-34s " % name + ", ".join(
                "%s %s/s p99 %s ms cpu %s us/req" % (
                    k, "%.0f" % v["rate"] if v["rate"] else "-",
                    "%.2f" % v["p99_ms"] if v["p99_ms"] else "-",
                    "%.1f" % v["cpu_us_per_request"] if v["cpu_us_per_request"] else "-")
                for k, v in med.items()))
        self.results["scenarios"]["rates"] = out

    # -- 4. herd -------------------------------------------------------------------------------
    def herd(self):
        log("\n== herd: %d clients GET one cold %d MB blob (upstream at %s)" % (
            HERD_CLIENTS, HERD_SIZE // MB,
            "%d MB/s" % (HERD_RATE // MB) if HERD_RATE else "loopback speed"))
        repo = "bench/herd"
        for m in (self.rm, self.r2):
            if not m.alive():
                m.start(fresh=True)
        data = {m.name: {"lone_s": [], "last_s": [], "ttfb_median_s": [], "upstream_gets": [],
                         "upstream_bytes": [], "lone_upstream_gets": []}
                for m in (self.rm, self.r2)}
        with PeakRss((self.rm, self.r2)) as peak:
            for run in range(RUNS):
                lone = os.urandom(HERD_SIZE)
                herd = os.urandom(HERD_SIZE)
                dl, dh = push_blob(self.up, repo, lone), push_blob(self.up, repo, herd)
                del lone, herd
                for m in (self.rm, self.r2):
                    d = data[m.name]
                    self.up.proxy.wait_idle()
                    self.up.proxy.reset()
                    self.up.proxy.clear_faults()
                    if HERD_RATE:
                        self.up.proxy.throttle(HERD_RATE)
                    res = bget("%s/v2/%s/blobs/%s" % (m.base, repo, dl), digest=dl)
                    self.up.proxy.wait_idle()
                    ok = not res["errors"] and res["bytes"] == HERD_SIZE
                    d["lone_s"].append(res["wall"] if ok else None)
                    d["lone_upstream_gets"].append(self.up.proxy.blob_gets(dl))
                    self.up.proxy.reset()
                    res = bget("%s/v2/%s/blobs/%s" % (m.base, repo, dh), conns=HERD_CLIENTS,
                               n=HERD_CLIENTS, digest=dh)
                    self.up.proxy.wait_idle(60)
                    gets = self.up.proxy.blob_gets(dh)
                    okh = (not res["errors"] and len(res["requests"]) == HERD_CLIENTS
                           and res["bytes"] == HERD_CLIENTS * HERD_SIZE)
                    d["upstream_gets"].append(gets)
                    d["upstream_bytes"].append(self.up.proxy.bytes(kind="blob", method="GET",
                                                                   ref=dh))
                    d["last_s"].append(max(r["time"] for r in res["requests"]) if okh else None)
                    d["ttfb_median_s"].append(median([r["ttfb"] for r in res["requests"]])
                                              if okh else None)
                    if m is self.rm:
                        check(ok, "herd lone client via regmirror: %s" % json.dumps(res)[:300])
                        check(okh, "herd via regmirror: %d errors, %d bytes" % (res["errors"],
                                                                                res["bytes"]))
                        check(gets == 1, "herd via regmirror: %d upstream GETs" % gets)
                    log("  run %d %-10s lone %s s, herd last %s s, median TTFB %s s, "
                        "upstream GETs %d (%d MB)" % (
                            run + 1, m.name, fmt(d["lone_s"][-1], 2), fmt(d["last_s"][-1], 2),
                            fmt(d["ttfb_median_s"][-1], 3), gets,
                            d["upstream_bytes"][-1] // MB))
                self.up.proxy.clear_faults()
        self.results["scenarios"]["herd"] = {
            "clients": HERD_CLIENTS, "blob_bytes": HERD_SIZE, "upstream_rate": HERD_RATE,
            "runs": data,
            "median": {k: {f: median(v) for f, v in d.items()} for k, d in data.items()},
            "peak_rss": peak.peak}

    # -- 5. many streams ----------------------------------------------------------------------
    def many_streams(self):
        layer = self.big.layers[0]
        log("\n== %d concurrent streams of the %d MB blob" % (MANY_STREAMS, layer.size // MB))
        targets = (self.rm, self.ngx, self.r2)
        peaks = {s.name: [] for s in targets}
        rates = {s.name: [] for s in targets}
        for run in range(RUNS):
            for s in targets:
                with PeakRss([s]) as peak:
                    res = bget(self.blob_url(s), conns=MANY_STREAMS, n=MANY_STREAMS)
                ok = not res["errors"] and res["bytes"] == MANY_STREAMS * layer.size
                if s is not self.r2:
                    check(ok, "%d streams from %s: %d errors" % (MANY_STREAMS, s.name,
                                                                res["errors"]))
                peaks[s.name].append(peak.peak[s.name])
                rates[s.name].append(res["bytes"] / res["wall"] / MB if ok else None)
        self.results["scenarios"]["many_streams"] = {
            "streams": MANY_STREAMS, "peak_rss": peaks, "MBps": rates,
            "median": {k: {"peak_rss": median(peaks[k]), "MBps": median(rates[k])}
                       for k in peaks}}
        log("  " + ", ".join("%s peak RSS %.1f MB, %s MB/s" % (
            k, median(peaks[k]) / MB, fmt(median(rates[k]), 0)) for k in peaks))

    # -- 6. cluster ----------------------------------------------------------------------------
    def start_cluster(self, kind, binary):
        """3 nodes of kind on one filesystem root, redis-server and nginx round robin
        (cluster.py, with CLUSTER_NGINX_BUFFER), pulling from the upstream as alice; a
        regmirror node has its own debug listener with /metrics, where its fetch leases are
        counted."""
        c = C.Cluster(os.path.join(WORK, "cluster-" + kind), self.up, storage="fs",
                      n=CLUSTER_NODES, kind=kind, proxy=True,
                      proxy_extra="  username: alice\n  password: %s\n" % self.up.users["alice"])
        # none of the ports the cluster has picked but not bound yet
        taken = {c.redis.port, c.lb.port} | {node.port for node in c.nodes}
        for node in c.nodes:
            node.binary = binary
            if kind == "regmirror":
                node.debug_port = helpers.free_port()
                while node.debug_port in taken:
                    node.debug_port = helpers.free_port()
                taken.add(node.debug_port)
                node.env = {"REGISTRY_HTTP_DEBUG_ADDR": "127.0.0.1:%d" % node.debug_port,
                            "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
                            "REGISTRY_LOG_LEVEL": "warn"}
        with open(c.lb.conf) as f:
            conf = f.read()
        with open(c.lb.conf, "w") as f:
            f.write(conf.replace("proxy_buffering off;", "proxy_buffering off;\n" + (
                "            proxy_buffer_size %s;\n            proxy_buffers 4 %s;\n"
                "            proxy_busy_buffers_size %s;" % ((CLUSTER_NGINX_BUFFER,) * 3))))
        self.clusters.append(c)
        return c.start()

    @staticmethod
    def leases_taken(node):
        """regmirror_cluster_leases_taken_total of a regmirror node, None if unreadable."""
        try:
            r = requests.get("http://127.0.0.1:%d/metrics" % node.debug_port, timeout=5)
        except requests.RequestException:
            return None
        m = re.search(r"^regmirror_cluster_leases_taken_total (\d+)", r.text, re.M)
        return int(m.group(1)) if m else None

    def cluster(self):
        log("\n== cluster: %d nodes on one root + redis + nginx round robin, %d clients GET one "
            "cold %d MB blob (upstream at %s)" % (
                CLUSTER_NODES, HERD_CLIENTS, HERD_SIZE // MB,
                "%d MB/s" % (HERD_RATE // MB) if HERD_RATE else "loopback speed"))
        repo = "bench/cluster"
        ours = self.start_cluster("regmirror", REGMIRROR_BIN)
        ref = self.start_cluster("docker-registry", REGISTRY_BIN)
        names = {id(ours): "regmirror", id(ref): "registry:2"}
        data = {n: {"lone_s": [], "last_s": [], "ttfb_median_s": [], "upstream_gets": [],
                    "clients_per_node": [], "last_by_node": []} for n in names.values()}
        data["regmirror"].update({"ttfb_holder_s": [], "ttfb_others_s": [], "holder": []})
        for run in range(RUNS):
            lone = os.urandom(HERD_SIZE)
            herd = os.urandom(HERD_SIZE)
            dl, dh = push_blob(self.up, repo, lone), push_blob(self.up, repo, herd)
            del lone, herd
            for c in (ours, ref):
                name = names[id(c)]
                d = data[name]
                self.up.proxy.wait_idle()
                self.up.proxy.reset()
                self.up.proxy.clear_faults()
                if HERD_RATE:
                    self.up.proxy.throttle(HERD_RATE)
                res = bget("%s/v2/%s/blobs/%s" % (c.base, repo, dl), digest=dl)
                ok = not res["errors"] and res["bytes"] == HERD_SIZE
                d["lone_s"].append(res["wall"] if ok else None)
                if c is ours:
                    check(ok, "cluster lone client: %s" % json.dumps(res)[:300])
                    before = [self.leases_taken(n) for n in c.nodes]
                self.up.proxy.wait_idle(60)
                self.up.proxy.reset()
                res = bget("%s/v2/%s/blobs/%s" % (c.base, repo, dh), conns=HERD_CLIENTS,
                           n=HERD_CLIENTS, digest=dh, record=C.NODE_HEADER)
                self.up.proxy.wait_idle(60)
                gets = self.up.proxy.blob_gets(dh)
                reqs = res["requests"]
                okh = (not res["errors"] and len(reqs) == HERD_CLIENTS
                       and all(r["sha256"] == dh for r in reqs))
                d["upstream_gets"].append(gets)
                d["last_s"].append(max(r["time"] for r in reqs) if okh else None)
                d["ttfb_median_s"].append(median([r["ttfb"] for r in reqs]) if okh else None)
                # after a failed try nginx names every node it tried: the last one answered
                at = [r["header"].split(",")[-1].strip() for r in reqs]
                d["clients_per_node"].append({n.host: at.count(n.host) for n in c.nodes})
                d["last_by_node"].append({n.host: max([r["time"] for r, h in zip(reqs, at)
                                                       if h == n.host] or [0])
                                          for n in c.nodes})
                line = ""
                if c is ours:
                    check(okh, "cluster herd: %d errors, %d answers, %d with the right "
                          "sha256" % (res["errors"], len(reqs),
                                      sum(r["sha256"] == dh for r in reqs)))
                    check(gets == 1, "cluster herd: %d upstream GETs" % gets)
                    after = [self.leases_taken(n) for n in c.nodes]
                    took = [n.host for n, b, a in zip(c.nodes, before, after)
                            if a is not None and b is not None and a > b]
                    check(len(took) == 1, "cluster herd: leases taken on %s" % (took or "none"))
                    holder = took[0] if len(took) == 1 else None
                    mine = [r["ttfb"] for r, h in zip(reqs, at) if h == holder]
                    theirs = [r["ttfb"] for r, h in zip(reqs, at) if h != holder]
                    d["holder"].append(holder)
                    d["ttfb_holder_s"].append(median(mine) if okh and holder else None)
                    d["ttfb_others_s"].append(median(theirs) if okh and holder else None)
                    line = ", median TTFB holder's %d clients %s s, the others' %d %s s" % (
                        len(mine), fmt(d["ttfb_holder_s"][-1], 3), len(theirs),
                        fmt(d["ttfb_others_s"][-1], 3))
                elif not okh:
                    log("  (registry:2 replicas: %d errors, %d answers)" % (res["errors"],
                                                                            len(reqs)))
                log("  run %d %-10s lone %s s, last %s s (per node %s), median TTFB %s s%s, "
                    "upstream GETs %d, clients per node %s" % (
                        run + 1, name, fmt(d["lone_s"][-1], 2), fmt(d["last_s"][-1], 2),
                        "/".join(fmt(v, 2) for v in d["last_by_node"][-1].values()),
                        fmt(d["ttfb_median_s"][-1], 3), line, gets,
                        "/".join(str(v) for v in d["clients_per_node"][-1].values())))
                self.up.proxy.clear_faults()
                if c is ref:
                    settle(self.up.proxy)
        for c in (ours, ref):
            c.stop()
        self.clusters = []
        self.results["scenarios"]["cluster"] = {
            "nodes": CLUSTER_NODES, "clients": HERD_CLIENTS, "blob_bytes": HERD_SIZE,
            "upstream_rate": HERD_RATE, "runs": data,
            "median": {k: {f: median(v) for f, v in d.items()
                           if f not in ("clients_per_node", "last_by_node", "holder")}
                       for k, d in data.items()}}

    def run(self):
        t0 = time.monotonic()
        self.setup()
        if want("cold", "warm", "rates", "streams"):
            self.cold_pull()
            self.start_nginx()
        if want("rates"):
            self.rm0 = Mirror("regmirror tagfreshness 0s", REGMIRROR_BIN,
                              os.path.join(WORK, "regmirror-tf0"), self.up).start(fresh=True)
            for srv in (self.rm, self.rm0, self.r2):  # the small image cached everywhere
                t, probs = pull(srv.base, self.small)
                for p in probs:
                    (fail if srv is not self.r2 else log)("pull bench/small via %s: %s" % (
                        srv.name, p))
        if want("warm"):
            self.warm_get()
        if want("rates"):
            self.rate_checks()
            self.rates()
        if want("herd"):
            self.herd()
        if want("streams"):
            self.many_streams()
        if want("cluster"):
            self.cluster()
        time.sleep(1)
        self.idle_rss("end")
        self.results["seconds"] = time.monotonic() - t0


def want(*names):
    """Whether BENCH_ONLY (empty: every scenario) names any of these."""
    return not ONLY or bool(ONLY.intersection(names))


def fmt(v, digits=1):
    return "-" if v is None else "%.*f" % (digits, v)


# ---------------------------------------------------------------------------
# report

def machine():
    def out(argv):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=10)
            return p.stdout.decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_status_meminfo()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_total_mb": mem, "kernel": platform.release(),
            "regmirror": out([REGMIRROR_BIN, "version"]),
            "docker-registry": out([REGISTRY_BIN, "--version"]), "nginx": out([NGINX_BIN, "-v"]),
            "wrk": out([WRK_BIN, "-v"])}


def proc_status_meminfo():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None


def ratio(a, b):
    return a / b if a is not None and b else None


def report(res):
    """Rows: (figure, regmirror, reference, ratio, target, met)."""
    sc = res["scenarios"]
    rows = []

    def row(figure, ours, ref, r, target=None, met=None):
        rows.append({"figure": figure, "regmirror": ours, "reference": ref, "ratio": r,
                     "target": target, "met": met})

    cp = sc.get("cold_pull")
    if cp:
        m = cp["median"]
        r = ratio(m["regmirror"], m["direct"])
        row("cold pull 4x64 MB, s (ref: direct from upstream)", fmt(m["regmirror"], 2),
            fmt(m["direct"], 2), r, "<= 1.05", r is not None and r <= 1.05)
        row("cold pull, s (ref: registry:2 proxy)", fmt(m["regmirror"], 2),
            fmt(m["registry:2"], 2), ratio(m["regmirror"], m["registry:2"]))
        cpu = cp.get("cpu_seconds", {}).get("median")
        if cpu:
            mb = cpu["machine"]
            row("cold pull, machine CPU s (ref: direct)", fmt(mb["regmirror"], 2),
                fmt(mb["direct"], 2), ratio(mb["regmirror"], mb["direct"]))
            row("cold pull, the mirror's own CPU s (ref: registry:2)",
                fmt(cpu["mirror"]["regmirror"], 2), fmt(cpu["mirror"]["registry:2"], 2),
                ratio(cpu["mirror"]["regmirror"], cpu["mirror"]["registry:2"]))
    cw = sc.get("cold_pull_wan")
    if cw:
        m = cw["median"]
        row("cold pull, upstream at %d MB/s per GET, s (ref: direct)" % (
            cw["upstream_rate"] // MB), fmt(m["regmirror"], 2), fmt(m["direct"], 2),
            ratio(m["regmirror"], m["direct"]))
    wg = sc.get("warm_get")
    if wg:
        for streams, d in wg["streams"].items():
            m = d["median"]
            r = ratio(m["regmirror"], m["nginx"])
            tgt = streams in ("1", "32")
            row("warm GET %s stream%s, MB/s (ref: nginx)" % (streams, "s" if streams != "1"
                                                               else ""),
                fmt(m["regmirror"], 0), fmt(m["nginx"], 0), r, ">= 0.95" if tgt else None,
                (r is not None and r >= 0.95) if tgt else None)
            row("warm GET %s stream%s, MB/s (ref: registry:2)" % (
                streams, "s" if streams != "1" else ""), fmt(m["regmirror"], 0),
                fmt(m["registry:2"], 0), ratio(m["regmirror"], m["registry:2"]))
            c = d.get("cpu_median")
            if c:
                row("warm GET %s stream%s, server CPU s/GB (ref: nginx)" % (
                    streams, "s" if streams != "1" else ""), fmt(c["regmirror"], 3),
                    fmt(c["nginx"], 3), ratio(c["nginx"], c["regmirror"]))
            pn = wg.get("pinned")
            if streams == "1" and pn:
                m = pn["median"]
                row("warm GET 1 stream, server and client pinned to 2 cores, MB/s (ref: nginx)",
                    fmt(m["regmirror"], 0), fmt(m["nginx"], 0), ratio(m["regmirror"],
                                                                      m["nginx"]))
    rt = sc.get("rates")
    if rt:
        for name, d in rt.items():
            m = d["median"]
            ours = m["regmirror"]
            r2 = m.get("registry:2", {})
            ng = m.get("nginx", {})
            rr = ratio(ours["rate"], r2.get("rate"))
            rn = ratio(ours["rate"], ng.get("rate"))
            gated = not name.startswith("Range")
            label = name + (" (tagfreshness 1h)" if "by tag" in name else "")
            row("%s, req/s (ref: registry:2)" % label, fmt(ours["rate"], 0),
                fmt(r2.get("rate"), 0), rr, ">= 5" if gated else None,
                (rr is not None and rr >= 5) if gated else None)
            row("%s, req/s (ref: nginx small file)" % label, fmt(ours["rate"], 0),
                fmt(ng.get("rate"), 0), rn, ">= 0.8" if gated else None,
                (rn is not None and rn >= 0.8) if gated else None)
            row("%s, p99 ms (ref: registry:2 | nginx)" % label, fmt(ours["p99_ms"], 2),
                "%s | %s" % (fmt(r2.get("p99_ms"), 2), fmt(ng.get("p99_ms"), 2)), None)
            # CPU per request moves far less than the rate on a shared machine
            row("%s, server CPU us/request (ref: nginx)" % label,
                fmt(ours.get("cpu_us_per_request"), 1), fmt(ng.get("cpu_us_per_request"), 1),
                ratio(ng.get("cpu_us_per_request"), ours.get("cpu_us_per_request")))
            z = m.get("regmirror tagfreshness 0s")
            if z:
                rz = ratio(z["rate"], r2.get("rate"))
                row("%s (tagfreshness 0s: upstream HEAD per request), req/s (ref: registry:2)"
                    % name, fmt(z["rate"], 0), fmt(r2.get("rate"), 0), rz, ">= 5",
                    rz is not None and rz >= 5)
                row("%s (tagfreshness 0s), p99 ms | upstream req per request" % name,
                    fmt(z["p99_ms"], 2), fmt(z["upstream_per_request"], 3), None)
    hd = sc.get("herd")
    if hd:
        m, r2 = hd["median"]["regmirror"], hd["median"]["registry:2"]
        gets = hd["runs"]["regmirror"]["upstream_gets"]
        rate = hd.get("upstream_rate")
        row("herd 32x100 MB (upstream %s): upstream blob GETs (ref: registry:2)" % (
            "%d MB/s" % (rate // MB) if rate else "loopback"),
            "/".join(str(g) for g in gets),
            "/".join(str(g) for g in hd["runs"]["registry:2"]["upstream_gets"]), None, "== 1",
            all(g == 1 for g in gets))
        row("herd: upstream MB (ref: registry:2)", fmt(m["upstream_bytes"] / MB, 0),
            fmt(r2["upstream_bytes"] / MB if r2["upstream_bytes"] is not None else None, 0),
            None)
        r = ratio(m["last_s"], m["lone_s"])
        row("herd: last client done, s (ref: lone client)", fmt(m["last_s"], 2),
            fmt(m["lone_s"], 2), r, "<= 1.2", r is not None and r <= 1.2)
        row("herd: last client done, s (ref: registry:2)", fmt(m["last_s"], 2),
            fmt(r2["last_s"], 2), ratio(m["last_s"], r2["last_s"]))
        row("herd: median TTFB, s (ref: registry:2)", fmt(m["ttfb_median_s"], 3),
            fmt(r2["ttfb_median_s"], 3), ratio(m["ttfb_median_s"], r2["ttfb_median_s"]))
        row("herd: lone client, s (ref: registry:2)", fmt(m["lone_s"], 2), fmt(r2["lone_s"], 2),
            ratio(m["lone_s"], r2["lone_s"]))
    cl = sc.get("cluster")
    if cl:
        m, r2 = cl["median"]["regmirror"], cl["median"]["registry:2"]
        gets = cl["runs"]["regmirror"]["upstream_gets"]
        rate = cl.get("upstream_rate")
        row("cluster %d nodes + nginx, %dx%d MB (upstream %s): upstream blob GETs "
            "(ref: %d registry:2 replicas)" % (
                cl["nodes"], cl["clients"], cl["blob_bytes"] // MB,
                "%d MB/s" % (rate // MB) if rate else "loopback", cl["nodes"]),
            "/".join(str(g) for g in gets),
            "/".join(str(g) for g in cl["runs"]["registry:2"]["upstream_gets"]), None, "== 1",
            all(g == 1 for g in gets))
        r = ratio(m["ttfb_others_s"], m["ttfb_holder_s"])
        row("cluster: median TTFB of the other nodes' clients, s (ref: the holder's clients)",
            fmt(m["ttfb_others_s"], 3), fmt(m["ttfb_holder_s"], 3), r, "<= 2",
            r is not None and r <= 2)
        r = ratio(m["last_s"], m["lone_s"])
        row("cluster: last client done, s (ref: lone client)", fmt(m["last_s"], 2),
            fmt(m["lone_s"], 2), r, "<= 1.2", r is not None and r <= 1.2)
        # the herd's own spread: one node's last client, and the other nodes' against the holder's
        runs = cl["runs"]["regmirror"]
        ok = [(v, h) for v, h, last in zip(runs["last_by_node"], runs["holder"], runs["last_s"])
              if h in v and len(v) > 1 and last is not None]
        on = median([v[h] for v, h in ok])
        off = median([max(t for n, t in v.items() if n != h) for v, h in ok])
        row("cluster: last client of the other nodes, s (ref: the holder's)", fmt(off, 2),
            fmt(on, 2), ratio(off, on))
        if hd:
            row("cluster: last client done, s (ref: one node's herd above)", fmt(m["last_s"], 2),
                fmt(hd["median"]["regmirror"]["last_s"], 2),
                ratio(m["last_s"], hd["median"]["regmirror"]["last_s"]))
        row("cluster: last client done, s (ref: registry:2 replicas)", fmt(m["last_s"], 2),
            fmt(r2["last_s"], 2), ratio(m["last_s"], r2["last_s"]))
        row("cluster: median TTFB, s (ref: registry:2 replicas)", fmt(m["ttfb_median_s"], 3),
            fmt(r2["ttfb_median_s"], 3), ratio(m["ttfb_median_s"], r2["ttfb_median_s"]))
    mb = lambda v: fmt(v / MB if v else None, 1)  # noqa: E731
    idle = res.get("idle_rss", {})
    for when in ("start", "end"):
        i = idle.get(when)
        if i:
            row("idle RSS (%s), MB (ref: registry:2 | nginx worker)" % when,
                mb(i.get("regmirror")), "%s | %s" % (mb(i.get("registry:2")),
                                                     mb(i.get("nginx"))), None)
    if wg:
        p = wg["peak_rss"]
        row("peak RSS during warm GET, MB (ref: registry:2 | nginx worker)",
            mb(p.get("regmirror")), "%s | %s" % (mb(p.get("registry:2")), mb(p.get("nginx"))),
            None)
    if hd:
        p = hd["peak_rss"]
        row("peak RSS during herd, MB (ref: registry:2)", mb(p.get("regmirror")),
            mb(p.get("registry:2")), None)
    ms = sc.get("many_streams")
    if ms:
        m = ms["median"]
        pk = max(ms["peak_rss"]["regmirror"])
        row("peak RSS, 256 streams, MB (max of runs; ref: registry:2 | nginx worker)", mb(pk),
            "%s | %s" % (mb(max(ms["peak_rss"]["registry:2"])),
                         mb(max(ms["peak_rss"]["nginx"]))), None, "<= 32 MB", pk <= 32 * MB)
        row("256 streams, MB/s (ref: nginx)", fmt(m["regmirror"]["MBps"], 0),
            fmt(m["nginx"]["MBps"], 0), ratio(m["regmirror"]["MBps"], m["nginx"]["MBps"]))
    return rows


def print_table(rows):
    w0 = max(len(r["figure"]) for r in rows)
    w1 = max(9, max(len(str(r["regmirror"])) for r in rows))
    w2 = max(9, max(len(str(r["reference"])) for r in rows))
    head = "%-*s  %*s  %*s  %7s  %-9s %s" % (w0, "figure", w1, "regmirror", w2, "reference",
                                              "ratio", "target", "")
    log("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        met = "" if r["met"] is None else ("ok" if r["met"] else "MISSED")
        log("%-*s  %*s  %*s  %7s  %-9s %s" % (w0, r["figure"], w1, r["regmirror"], w2,
                                             r["reference"],
                                             "-" if r["ratio"] is None else "%.2f" % r["ratio"],
                                             r["target"] or "", met))


def main():
    for path, what in ((REGMIRROR_BIN, "regmirror (make release)"),
                       (REGISTRY_BIN, "docker-registry"), (NGINX_BIN, "nginx"),
                       (WRK_BIN, "wrk")) + (((C.REDIS, "redis-server"),)
                                            if want("cluster") else ()):
        if not os.access(path, os.X_OK):
            print("bench: %s not found at %s" % (what, path), file=sys.stderr)
            return 2
    unknown = ONLY.difference(SCENARIOS)
    if unknown:
        print("bench: BENCH_ONLY: unknown scenario %s (one of %s)" % (
            ", ".join(sorted(unknown)), ", ".join(SCENARIOS)), file=sys.stderr)
        return 2
    build_bget()
    b = Bench()
    code = 0
    try:
        b.run()
    except Exception as e:  # report what was measured, then fail
        import traceback
        traceback.print_exc()
        fail("harness error: %s: %s" % (type(e).__name__, e))
    finally:
        b.stop()
    res = b.results
    res["machine"] = machine()
    res["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        res["table"] = report(res)
        print_table(res["table"])
    except Exception as e:  # an incomplete run still writes its JSON
        fail("report: %s: %s" % (type(e).__name__, e))
    res["failures"] = failures
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "results.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    log("\nmachine: %s, %s cores, %s MB, Linux %s; %.0f s" % (
        res["machine"]["cpu"], res["machine"]["cores"], res["machine"]["mem_total_mb"],
        res["machine"]["kernel"], res.get("seconds", 0)))
    log("results: %s" % os.path.relpath(path, os.getcwd()))
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(WORK, ignore_errors=True)
    if failures:
        log("\n%d correctness check(s) failed:\n  %s" % (len(failures), "\n  ".join(failures)))
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
