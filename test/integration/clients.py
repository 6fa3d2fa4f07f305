"""Real registry clients (skopeo, podman, dockerd + docker, containerd + ctr) pulling through a
mirror, all inside a network namespace that has only loopback.

    NetNS        `ip netns add` + lo up; enter()/leave() move the calling thread (setns), so
                 sockets, threads and processes it makes afterwards live in the namespace;
                 delete() removes it. Names are unique per run (prefix-PID-random); stale ones
                 of dead runs are removed by NetNS.cleanup_stale().
    TapProxy     a byte-transparent TCP relay in front of the mirror that records the request
                 heads the clients send (request line and every header line, in order, repeated
                 Accept lines kept apart). Nothing is re-encoded: the mirror sees the client's
                 bytes.
    run()        one client command with a hard timeout; on timeout its whole process group is
                 killed and ClientError carries the output so far.
    Skopeo, Podman, Dockerd, Containerd
                 one client each, in its own short temporary directory (unix sockets and podman's
                 runroot need short paths), every command started with
                 `nsenter --net=/run/netns/NS` so it lands in the namespace whatever thread
                 starts it.

See ../../../shared/CLIENTS.md for why each client is run the way it is.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

CLONE_NEWNET = 0x40000000
CLIENT_TIMEOUT = 60.0          # one client operation (pull, inspect, ...)
# once any client operation has timed out in this process (a hanging mirror), the later ones get
# this much at most, so a mirror that hangs every request fails the module in minutes, not hours
CLIENT_TIMEOUT_AFTER_HANG = 15.0
_hangs = []
DAEMON_START_TIMEOUT = 30.0    # dockerd / containerd until their socket answers
NETNS_PREFIX = "rmcli"


class ClientError(AssertionError):
    """A client command failed or timed out. The message holds the command, its exit status,
    its output and whatever diagnostics (daemon log, mirror log, requests seen) the caller
    attached."""


def _tail_text(text, n=4000):
    text = text or ""
    return text if len(text) <= n else "...\n" + text[-n:]


_NOISE = re.compile(r'loading plugin|skip loading plugin|msg="(serving|starting up|'
                    r'API listen|Loading containers|Daemon has completed|Starting up)')


def log_tail(path, n=3000):
    """The end of a daemon's log without its start-up chatter."""
    text = file_tail(path, 200000)
    lines = [l for l in text.splitlines() if not _NOISE.search(l)]
    return _tail_text("\n".join(lines), n)


def file_tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(no log: %s)" % e


def short_tempdir(prefix):
    """A directory under /tmp with a short path (unix sockets: 108 bytes, podman runroot: < 50
    characters)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def rmtree(path):
    if path and os.path.isdir(path):
        # vfs / native snapshots may hold read-only directories; we are root
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            subprocess.run(["rm", "-rf", "--one-file-system", path], timeout=60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------
# network namespaces

def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


def netns_usable():
    """None when network namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "nsenter"):
        if not shutil.which(tool):
            return "%s is not installed" % tool
    return None


class NetNS:
    def __init__(self, prefix=NETNS_PREFIX):
        self.name = "%s-%d-%s" % (prefix, os.getpid(), uuid.uuid4().hex[:8])
        self.path = os.path.join("/run/netns", self.name)
        self._orig_fd = None
        self.created = False

    def __repr__(self):
        return "NetNS(%s)" % self.name

    @staticmethod
    def cleanup_stale(prefix=NETNS_PREFIX):
        """Deletes PREFIX-PID-* namespaces whose PID no longer runs (a run that was killed),
        after killing, by PID, the processes that run left in them (its daemons, mirror and
        upstream registry: nothing else is ever started in these namespaces)."""
        try:
            names = os.listdir("/run/netns")
        except OSError:
            return []
        gone = []
        for n in names:
            m = re.match(r"^%s-(\d+)-[0-9a-f]+$" % re.escape(prefix), n)
            if not m:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and not os.path.exists("/proc/%d" % pid):
                left = subprocess.run(["ip", "netns", "pids", n], timeout=20,
                                      capture_output=True, text=True).stdout.split()
                for p in left:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ValueError, ProcessLookupError):
                        pass
                subprocess.run(["ip", "netns", "delete", n], timeout=20,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                gone.append(n)
        return gone

    def create(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=20,
                       capture_output=True)
        self.created = True
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=20, capture_output=True)
        return self

    def links(self):
        """Interface names in the namespace."""
        out = subprocess.run(["nsenter", "--net=" + self.path, "ip", "-o", "link", "show"],
                             check=True, timeout=20, capture_output=True, text=True).stdout
        return [l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if ":" in l]

    def routes(self):
        out = subprocess.run(["nsenter", "--net=" + self.path, "ip", "-4", "route", "show"],
                             check=True, timeout=20, capture_output=True, text=True).stdout
        out += subprocess.run(["nsenter", "--net=" + self.path, "ip", "-6", "route", "show"],
                              check=True, timeout=20, capture_output=True, text=True).stdout
        return [l for l in out.splitlines() if l.strip()]

    def inode(self):
        return os.stat(self.path).st_ino

    @staticmethod
    def current_inode():
        return os.stat("/proc/thread-self/ns/net").st_ino

    def inside(self):
        """True when the calling thread is in this namespace."""
        return self.current_inode() == self.inode()

    def enter(self):
        """Moves the calling thread into the namespace (remembering where it was)."""
        if self._orig_fd is None:
            self._orig_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def leave(self):
        """Moves the calling thread back to the namespace it was in before enter()."""
        if self._orig_fd is not None:
            try:
                _setns(self._orig_fd)
            finally:
                os.close(self._orig_fd)
                self._orig_fd = None

    def delete(self):
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], timeout=20,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.created = False

    def wrap(self, argv):
        """argv run in this namespace (nsenter, which unlike `ip netns exec` does not remount
        /sys: dockerd needs the host's cgroup mounts)."""
        return ["nsenter", "--net=" + self.path, "--"] + list(argv)


# ---------------------------------------------------------------------------
# running client commands

class Result:
    def __init__(self, argv, rc, out, err, secs):
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err
        self.secs = secs

    def describe(self):
        return "$ %s\nexit status %s after %.1fs\n--- stdout\n%s\n--- stderr\n%s" % (
            " ".join(self.argv), self.rc, self.secs, _tail_text(self.out, 3000),
            _tail_text(self.err, 5000))


def run(argv, timeout=CLIENT_TIMEOUT, env=None, cwd=None, check=True, diagnostics=None):
    """Runs argv (already wrapped for the namespace) in its own process group. On timeout the
    group is killed. With check, a non-zero exit or a timeout raises ClientError; its message
    ends with diagnostics() (a callable returning text) when given."""
    shortened = False
    if _hangs and timeout > CLIENT_TIMEOUT_AFTER_HANG:
        timeout = CLIENT_TIMEOUT_AFTER_HANG
        shortened = True
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd, text=True,
                            errors="replace", start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _hangs.append(argv)
        _killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    res = Result(argv, proc.returncode, out, err, time.monotonic() - t0)
    res.timed_out = timed_out
    if check and (timed_out or res.rc != 0):
        msg = ("client command timed out after %ss (process group killed)%s\n" % (
            timeout, "; shortened from %ss because an earlier client command timed out"
            % CLIENT_TIMEOUT if shortened else "")
               if timed_out else "client command failed\n") + res.describe()
        if diagnostics:
            try:
                msg += "\n" + diagnostics()
            except Exception as e:  # diagnostics must not hide the failure
                msg += "\n(diagnostics failed: %r)" % e
        raise ClientError(msg)
    return res


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_process(proc, timeout=15.0):
    """SIGTERM to the process (and then SIGKILL to its process group, which we created)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # children left in the group (containerd-shim, ...) go too
    _killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


# ---------------------------------------------------------------------------
# the tap: records what clients send, forwards bytes untouched

class TapProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, byte for byte. Request heads going to the
    target are parsed (bodies skipped by Content-Length; a chunked body stops the parsing of
    that connection) and recorded as dicts: conn, t, method, target, path, query, version,
    headers ([(name, value)] in order), user_agent. A connection that starts with a TLS
    handshake is recorded once with method "TLS" (see tls_attempts())."""

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._records = []
        self._socks = set()
        self._lsock = None
        self._thread = None
        self._nconn = 0
        self.port = None

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        self._lsock = s
        self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="tap:%d" % self.port)
        self._thread.start()
        return self

    def stop(self):
        if self._lsock is not None:
            try:
                self._lsock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._lsock.close()
            self._lsock = None
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self):
        while True:
            lsock = self._lsock
            if lsock is None:
                return
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            with self._lock:
                self._nconn += 1
                n = self._nconn
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        try:
            u = socket.create_connection(self.target, timeout=10)
            u.settimeout(None)
        except OSError:
            c.close()
            return
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.update((c, u))
        back = threading.Thread(target=self._pipe, args=(u, c, None), daemon=True)
        back.start()
        self._pipe(c, u, n)
        back.join(timeout=120)
        with self._lock:
            self._socks.discard(c)
            self._socks.discard(u)
        c.close()
        u.close()

    def _pipe(self, src, dst, conn_no):
        buf = b""
        skip = 0
        first = True
        parsing = conn_no is not None
        while True:
            try:
                data = src.recv(256 * 1024)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                try:
                    src.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if not parsing:
                continue
            if not buf and data[:1] == b"\x16" and skip == 0 and first:
                # a TLS handshake on the plain-HTTP port (containers/image tries https first)
                self._record_tls(conn_no)
                parsing = False
                continue
            first = False
            buf += data
            while parsing:
                if skip:
                    k = min(skip, len(buf))
                    buf = buf[k:]
                    skip -= k
                    if skip:
                        break
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        parsing = False
                    break
                head, buf = buf[:end].decode("latin-1"), buf[end + 4:]
                rec = self._record(conn_no, head)
                if rec is None:
                    parsing = False
                    break
                te = rec["header"]("transfer-encoding")
                if te and "chunked" in te.lower():
                    parsing = False
                    break
                try:
                    skip = int(rec["header"]("content-length") or 0)
                except ValueError:
                    parsing = False

    def _record(self, conn_no, head):
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = []
        for l in lines[1:]:
            k, sep, v = l.partition(":")
            if sep:
                headers.append((k.strip(), v.strip()))
        path, _, query = parts[1].partition("?")

        def header(name, _h=headers):
            for k, v in _h:
                if k.lower() == name:
                    return v
            return None

        rec = {"conn": conn_no, "t": time.time(), "method": parts[0], "target": parts[1],
               "path": path, "query": query, "version": parts[2], "headers": headers,
               "user_agent": header("user-agent")}
        with self._lock:
            self._records.append(rec)
        rec = dict(rec)
        rec["header"] = header
        return rec

    def _record_tls(self, conn_no):
        with self._lock:
            self._records.append({"conn": conn_no, "t": time.time(), "method": "TLS",
                                  "target": "(TLS ClientHello on the plain HTTP port)",
                                  "path": "", "query": "", "version": None, "headers": [],
                                  "user_agent": None})

    def tls_attempts(self):
        """How many connections opened with a TLS handshake instead of HTTP."""
        with self._lock:
            return sum(1 for r in self._records if r["method"] == "TLS")

    def records(self, method=None, path_re=None, include_tls=False):
        """HTTP requests seen (TLS handshake attempts too with include_tls), oldest first."""
        with self._lock:
            recs = [dict(r) for r in self._records if include_tls or r["method"] != "TLS"]
        if method:
            recs = [r for r in recs if r["method"] == method]
        if path_re:
            recs = [r for r in recs if re.search(path_re, r["path"])]
        return recs

    def reset(self):
        with self._lock:
            self._records = []

    @staticmethod
    def header_lines(rec, name):
        return [v for k, v in rec["headers"] if k.lower() == name.lower()]

    def summary(self, limit=60):
        lines = []
        for r in self.records(include_tls=True)[-limit:]:
            acc = self.header_lines(r, "accept")
            lines.append("#%d %s %s%s%s%s" % (
                r["conn"], r["method"], r["target"],
                "  UA=%s" % r["user_agent"] if r["user_agent"] else "",
                "  Accept x%d: %s" % (len(acc), " | ".join(acc)) if acc else "",
                "  (Authorization)" if self.header_lines(r, "authorization") else ""))
        return "\n".join(lines) or "(no requests reached the mirror)"


# ---------------------------------------------------------------------------
# clients

def registries_conf(path, mirror_host, prefix="docker.io", location="registry-1.docker.io"):
    """registries.conf (v2) sending `prefix` to the mirror first (insecure: plain HTTP)."""
    with open(path, "w") as f:
        f.write('unqualified-search-registries = []\n\n'
                '[[registry]]\nprefix = "%s"\nlocation = "%s"\n\n'
                '[[registry.mirror]]\nlocation = "%s"\ninsecure = true\n'
                % (prefix, location, mirror_host))
    return path


class _Client:
    """Common parts: the namespace, a short work directory, diagnostics for failures."""

    def __init__(self, ns, mirror=None, diagnostics=None, prefix="rmc-"):
        self.ns = ns
        self.mirror = mirror                  # object with .host / .url of what clients use
        self.diagnostics = diagnostics        # callable -> text (mirror log, tap summary)
        self.dir = short_tempdir(prefix)
        self.results = []

    def _diag(self):
        return self.diagnostics() if self.diagnostics else ""

    def _run(self, argv, timeout=CLIENT_TIMEOUT, env=None, check=True):
        res = run(self.ns.wrap(argv), timeout=timeout, env=env, check=check,
                  diagnostics=self._diag)
        self.results.append(res)
        return res

    def close(self):
        rmtree(self.dir)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REGISTRY_", "DOCKER_", "CONTAINERS_", "CONTAINERD_",
                                "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                "NO_PROXY", "no_proxy"))}
    env.update(extra)
    return env


class Skopeo(_Client):
    def __init__(self, ns, mirror, diagnostics=None, binary=None):
        super().__init__(ns, mirror, diagnostics, "rmsk-")
        self.binary = binary or shutil.which("skopeo")
        self.conf = registries_conf(os.path.join(self.dir, "registries.conf"), mirror.host)
        self.authfile = os.path.join(self.dir, "auth.json")
        with open(self.authfile, "w") as f:
            f.write('{"auths": {}}\n')
        self.env = _clean_env(REGISTRY_AUTH_FILE=self.authfile)

    def _global(self, arch=None, variant=None):
        g = [self.binary, "--registries-conf", self.conf]
        if arch:
            g += ["--override-arch", arch]
        if variant:
            g += ["--override-variant", variant]
        return g

    def copy(self, src, dest, arch=None, variant=None, extra=()):
        return self._run(self._global(arch, variant) + ["copy", "--authfile", self.authfile]
                         + list(extra) + [src, dest], env=self.env)

    def inspect_raw(self, ref, arch=None, variant=None):
        return self._run(self._global(arch, variant)
                         + ["inspect", "--authfile", self.authfile, "--no-tags", "--raw", ref],
                         env=self.env).out

    def inspect(self, ref, arch=None, variant=None):
        return json.loads(self._run(self._global(arch, variant)
                                    + ["inspect", "--authfile", self.authfile, "--no-tags",
                                       ref], env=self.env).out)


class Podman(_Client):
    """podman as root on a private store (vfs), runroot under 50 characters."""

    def __init__(self, ns, mirror, diagnostics=None, binary=None):
        super().__init__(ns, mirror, diagnostics, "rmpd-")
        self.binary = binary or shutil.which("podman")
        self.root = os.path.join(self.dir, "root")
        self.runroot = os.path.join(self.dir, "run")
        self.tmpdir = os.path.join(self.dir, "tmp")
        assert len(self.runroot) < 50, self.runroot
        for d in (self.root, self.runroot, self.tmpdir):
            os.makedirs(d)
        self.conf = registries_conf(os.path.join(self.dir, "registries.conf"), mirror.host)
        self.authfile = os.path.join(self.dir, "auth.json")
        with open(self.authfile, "w") as f:
            f.write('{"auths": {}}\n')
        storage_conf = os.path.join(self.dir, "storage.conf")
        with open(storage_conf, "w") as f:
            f.write('[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n'
                    % (self.runroot, self.root))
        self.env = _clean_env(CONTAINERS_REGISTRIES_CONF=self.conf,
                              REGISTRY_AUTH_FILE=self.authfile,
                              CONTAINERS_STORAGE_CONF=storage_conf,
                              XDG_RUNTIME_DIR=self.runroot)

    def podman(self, *args, timeout=CLIENT_TIMEOUT, check=True):
        return self._run([self.binary, "--root", self.root, "--runroot", self.runroot,
                          "--storage-driver", "vfs", "--tmpdir", self.tmpdir,
                          "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
                         + list(args), timeout=timeout, env=self.env, check=check)

    def pull(self, ref, arch=None, variant=None):
        extra = []
        if arch:
            extra += ["--arch", arch]
        if variant:
            extra += ["--variant", variant]
        return self.podman("pull", *extra, ref)

    def image_inspect(self, ref):
        return json.loads(self.podman("image", "inspect", ref).out)[0]

    def close(self):
        # the store holds vfs copies; podman itself removes nothing we need
        super().close()


class Dockerd(_Client):
    """A private dockerd in the namespace with --registry-mirror, on vfs, no iptables/bridge.
    start() raises DaemonStartError (with the log's last error) when it cannot run here."""

    def __init__(self, ns, mirror, diagnostics=None, dockerd=None, docker=None):
        super().__init__(ns, mirror, diagnostics, "rmdk-")
        self.dockerd_bin = dockerd or shutil.which("dockerd")
        # the Debian client matches the Debian daemon; a newer CLI elsewhere in PATH negotiates
        # the API version down, but keep the pair that CLIENTS.md describes
        self.docker_bin = docker or ("/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK)
                                     else shutil.which("docker"))
        self.sock = os.path.join(self.dir, "docker.sock")
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.proc = None
        self.cli_config = os.path.join(self.dir, "cli")
        os.makedirs(self.cli_config)
        with open(os.path.join(self.dir, "daemon.json"), "w") as f:
            f.write("{}\n")
        self.env = _clean_env(DOCKER_CONFIG=self.cli_config)

    def argv(self):
        return [self.dockerd_bin, "--config-file", os.path.join(self.dir, "daemon.json"),
                "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false",
                "--ip-forward=false", "--ip-masq=false", "--bridge=none",
                "--registry-mirror", self.mirror.url,
                "--data-root", os.path.join(self.dir, "data"),
                "--exec-root", os.path.join(self.dir, "exec"),
                "-H", "unix://" + self.sock,
                "--pidfile", os.path.join(self.dir, "dockerd.pid"),
                "--debug"]

    def start(self, timeout=DAEMON_START_TIMEOUT):
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.ns.wrap(self.argv()), stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonStartError("dockerd", self.proc.returncode, self.log_path)
            if os.path.exists(self.sock):
                r = run([self.docker_bin, "-H", "unix://" + self.sock, "version", "--format",
                         "{{.Server.Version}}"], timeout=10, env=self.env, check=False)
                if r.rc == 0:
                    self.version = r.out.strip()
                    return self
            time.sleep(0.2)
        self.stop()
        raise DaemonStartError("dockerd", "did not answer within %ss" % timeout, self.log_path)

    def docker(self, *args, timeout=CLIENT_TIMEOUT, check=True):
        return self._run([self.docker_bin, "-H", "unix://" + self.sock] + list(args),
                         timeout=timeout, env=self.env, check=check)

    def _diag(self):
        return ("--- dockerd log tail (%s)\n%s\n" % (self.log_path, log_tail(self.log_path))
                + super()._diag())

    def pull(self, ref, platform=None):
        return self.docker("pull", *(["--platform", platform] if platform else []), ref)

    def image_inspect(self, ref):
        return json.loads(self.docker("image", "inspect", ref).out)[0]

    def rmi(self, ref):
        return self.docker("rmi", ref)

    def log(self):
        return file_tail(self.log_path, 1 << 20)

    def stop(self):
        rc = stop_process(self.proc, timeout=20)
        self.proc = None
        # dockerd mounts nothing with vfs, but its managed containerd may leave a mount of the
        # exec root's netns files; unmount whatever is below our directory before removal
        _umount_below(self.dir)
        return rc

    def close(self):
        self.stop()
        super().close()


class Containerd(_Client):
    """A private containerd (own root, state, sockets), driven with ctr; the mirror is in
    hosts/docker.io/hosts.toml."""

    def __init__(self, ns, mirror, diagnostics=None, containerd=None, ctr=None):
        super().__init__(ns, mirror, diagnostics, "rmct-")
        self.containerd_bin = containerd or shutil.which("containerd")
        self.ctr_bin = ctr or shutil.which("ctr")
        self.sock = os.path.join(self.dir, "c.sock")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.config = os.path.join(self.dir, "config.toml")
        self.hosts_dir = os.path.join(self.dir, "hosts")
        self.proc = None
        with open(self.config, "w") as f:
            f.write('version = 2\n'
                    'root = "%s"\n'
                    'state = "%s"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri", '
                    '"io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", '
                    '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", '
                    '"io.containerd.snapshotter.v1.devmapper", '
                    '"io.containerd.tracing.processor.v1.otlp"]\n'
                    '[grpc]\n  address = "%s"\n'
                    '[ttrpc]\n  address = "%s.ttrpc"\n'
                    '[debug]\n  level = "debug"\n'
                    '[metrics]\n  address = ""\n'
                    % (os.path.join(self.dir, "root"), os.path.join(self.dir, "state"),
                       self.sock, self.sock))
        self.write_hosts(mirror)
        self.env = _clean_env()

    def write_hosts(self, mirror, registry="docker.io"):
        d = os.path.join(self.hosts_dir, registry)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write('server = "https://registry-1.docker.io"\n\n'
                    '[host."%s"]\n  capabilities = ["pull", "resolve"]\n' % mirror.url)

    def start(self, timeout=DAEMON_START_TIMEOUT):
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.ns.wrap([self.containerd_bin, "--config", self.config]),
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonStartError("containerd", self.proc.returncode, self.log_path)
            if os.path.exists(self.sock):
                r = run([self.ctr_bin, "--address", self.sock, "version"], timeout=10,
                        env=self.env, check=False)
                if r.rc == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise DaemonStartError("containerd", "did not answer within %ss" % timeout,
                               self.log_path)

    def ctr(self, *args, timeout=CLIENT_TIMEOUT, check=True):
        return self._run([self.ctr_bin, "--address", self.sock] + list(args), timeout=timeout,
                         env=self.env, check=check)

    def _diag(self):
        return ("--- containerd log tail (%s)\n%s\n" % (self.log_path,
                                                        log_tail(self.log_path))
                + super()._diag())

    def pull(self, ref, platform=None):
        return self.ctr("images", "pull", "--hosts-dir", self.hosts_dir, "--snapshotter",
                        "native", *(["--platform", platform] if platform else []), ref)

    def images(self):
        """{ref: {"digest":..., "type":...}} from `ctr images ls`."""
        out = self.ctr("images", "ls").out
        imgs = {}
        for line in out.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                imgs[f[0]] = {"type": f[1], "digest": f[2]}
        return imgs

    def content(self):
        """Digests in the content store."""
        out = self.ctr("content", "ls", "-q").out
        return set(l.strip() for l in out.splitlines() if l.strip())

    def stop(self):
        rc = stop_process(self.proc)
        self.proc = None
        _umount_below(self.dir)
        return rc

    def close(self):
        self.stop()
        super().close()


class DaemonStartError(Exception):
    def __init__(self, what, status, log_path):
        self.what = what
        self.status = status
        self.log_path = log_path
        self.log = file_tail(log_path, 20000)
        super().__init__("%s could not start (exit status %s): %s" % (
            what, status, self.reason()))

    def reason(self):
        """The last error line of the daemon's log (what an operator would act on)."""
        errs = [l for l in self.log.splitlines()
                if re.search(r"level=(fatal|error)|failed to start|Error starting", l)]
        line = (errs or self.log.strip().splitlines() or ["(empty log)"])[-1]
        m = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
        return m.group(1) if m else line.strip()


def _umount_below(path):
    try:
        with open("/proc/self/mounts") as f:
            mounts = [l.split()[1] for l in f]
    except OSError:
        return
    for m in sorted((m for m in mounts if m.startswith(path.rstrip("/") + "/")),
                    key=len, reverse=True):
        subprocess.run(["umount", "-l", m], timeout=20, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
