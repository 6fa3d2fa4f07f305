"""Helpers for test_ship.py: private dockerd daemons that build and run the container image,
and the cache that keeps what does not change between runs.

    cache_dir()     ${XDG_CACHE_HOME:-~/.cache}/regmirror, shared with scripts/image.sh: the
                    debian:bookworm-slim tarball it makes, and the build daemon's data root
                    (the base image and the build stage's apt layer stay cached there).
    Daemon          a private dockerd: its own data root, exec root and socket, started in the
                    root network namespace or (ns=) inside a NetNS with nsenter.
    BuildDaemon     the daemon `make image` builds into: root namespace, --bridge=none
                    --iptables=false (its builds use --network host and reach only what the
                    host reaches: the Debian archive), data root in the cache, one at a time
                    (flock), and any daemon a killed run left on that data root is stopped by
                    the pid it wrote.
"""

import fcntl
import os
import signal
import subprocess
import time

import clients

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
START_TIMEOUT = 60.0


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(base, "regmirror")
    os.makedirs(d, exist_ok=True)
    return d


def docker_bin():
    # the Debian client matches the Debian daemon (see clients.Dockerd)
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"


def make_env(base=None):
    """The environment for a `make` the tests run: without the variables of a make that runs
    the tests (MAKEFLAGS would carry its B= and jobserver), so the output is where the test
    looks (build/ of the tree)."""
    env = dict(base if base is not None else os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "B"):
        env.pop(k, None)
    return env


def version():
    """The version `make image` tags with (the Makefile's VERSION)."""
    r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "dev"


class Daemon:
    def __init__(self, data_root, ns=None, extra=(), prefix="rmsh-"):
        self.dir = clients.short_tempdir(prefix)
        self.data_root = data_root
        self.ns = ns
        self.extra = list(extra)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.host = "unix://" + self.sock
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.pidfile = os.path.join(self.dir, "dockerd.pid")
        self.proc = None
        self.env = dict(os.environ, DOCKER_HOST=self.host,
                        DOCKER_CONFIG=os.path.join(self.dir, "cli"))
        os.makedirs(self.env["DOCKER_CONFIG"])

    def argv(self):
        argv = ["dockerd", "--data-root", self.data_root,
                "--exec-root", os.path.join(self.dir, "exec"), "-H", self.host,
                "--pidfile", self.pidfile, "--config-file", self._daemon_json()] + self.extra
        return self.ns.wrap(argv) if self.ns else argv

    def _daemon_json(self):
        p = os.path.join(self.dir, "daemon.json")
        with open(p, "w") as f:
            f.write("{}\n")
        return p

    def start(self):
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise clients.DaemonStartError("dockerd", self.proc.returncode, self.log_path)
            if os.path.exists(self.sock) and self.docker("version", check=False,
                                                         timeout=10).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise clients.DaemonStartError("dockerd", "did not answer in %ss" % START_TIMEOUT,
                                       self.log_path)

    def docker(self, *args, check=True, timeout=120, **kw):
        r = subprocess.run([docker_bin()] + list(args), env=self.env, capture_output=True,
                           text=kw.pop("text", True), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError("docker %s: exit %d\n%s\n%s\n--- dockerd log\n%s" % (
                " ".join(args), r.returncode, r.stdout, r.stderr,
                clients.log_tail(self.log_path)))
        return r

    def log(self):
        return clients.log_tail(self.log_path, 6000)

    def stop(self):
        if self.proc is not None:
            for cid in self.docker("ps", "-aq", check=False, timeout=30).stdout.split():
                self.docker("rm", "-f", cid, check=False, timeout=60)
            clients.stop_process(self.proc, timeout=30)
            self.proc = None
        clients._umount_below(self.dir)

    def close(self):
        self.stop()
        clients.rmtree(self.dir)


class BuildDaemon(Daemon):
    def __init__(self):
        self.cache = cache_dir()
        super().__init__(os.path.join(self.cache, "build-dockerd"),
                         extra=["--bridge=none", "--iptables=false", "--ip6tables=false",
                                "--ip-forward=false", "--ip-masq=false"])
        self._lock = None
        self._owner = os.path.join(self.cache, "build-dockerd.pid")

    def start(self):
        self._lock = open(os.path.join(self.cache, "build-dockerd.lock"), "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._stop_leftover()
        super().start()
        with open(self._owner, "w") as f:
            f.write("%d\n" % self.proc.pid)
        return self

    def _stop_leftover(self):
        """A daemon a killed run left on this data root: we hold the lock, so nothing else
        uses it; stop it by the pid that run wrote, if that pid is still a dockerd on it."""
        try:
            pid = int(open(self._owner).read())
            cmd = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
        except (OSError, ValueError):
            return
        if os.path.basename(cmd[0]) == b"dockerd" and self.data_root.encode() in cmd:
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                if not os.path.exists("/proc/%d" % pid):
                    break
                time.sleep(0.2)

    def prune(self):
        """Keeps the cache from growing with every version built: older regmirror tags go, and
        dangling images not used for a day (the build stage's apt layer stays while newer
        builds sit on it)."""
        keep = {"regmirror:latest", "regmirror:%s" % version()}
        tags = self.docker("image", "ls", "regmirror", "--format",
                           "{{.Repository}}:{{.Tag}}").stdout.split()
        for t in tags:
            if t not in keep:
                self.docker("rmi", t, check=False)
        self.docker("image", "prune", "-f", "--filter", "until=24h", check=False, timeout=300)

    def stop(self):
        super().stop()
        try:
            os.unlink(self._owner)
        except OSError:
            pass
        if self._lock:
            self._lock.close()
            self._lock = None
