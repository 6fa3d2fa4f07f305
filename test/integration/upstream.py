"""The upstream side of regmirror's pull-through tests.

    token server (tokenserver.py)  <-- realm in every challenge
         ^
    docker-registry (distribution 2.8, auth: token)  <--  CountingProxy  <--  regmirror / tests
                                                                ^ records every request,
                                                                  injects faults

`start_upstream(workdir)` starts all three and seeds images; `Upstream.url` (the counting proxy)
is what regmirror's `proxy.remoteurl` points at. The fixtures are in conftest_upstream.py.

Everything listens on 127.0.0.1 and runs in this process (threads) except docker-registry, so a
test process that entered a network namespace gets the whole upstream in that namespace.
"""

import gzip
import io
import json
import os
import re
import secrets
import socket
import tarfile
import threading
import time
import uuid
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

import helpers
import tokenserver
from helpers import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG,
                     OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256)

SERVICE = "test-upstream"
ISSUER = "test-issuer"
USERS = {"alice": "wonderland", "pusher": "pusher"}
ALL_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX])

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
              "proxy-connection"}

# ---------------------------------------------------------------------------
# request classification

_UPLOAD_RE = re.compile(r"^/v2/(?P<repo>.+?)/blobs/uploads/?(?P<ref>[^/]*)$")
_BLOB_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<ref>[A-Za-z0-9_+.-]+:[A-Za-z0-9=_-]+)$")
_MANIFEST_RE = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^/v2/(?P<repo>.+)/tags/list$")
_REFERRERS_RE = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<ref>[^/]+)$")


def classify(path):
    """(kind, repo, ref) of a registry API path; kind is one of base, catalog, upload, blob,
    manifest, tags, referrers, other."""
    if path in ("/v2", "/v2/"):
        return "base", None, None
    if path == "/v2/_catalog":
        return "catalog", None, None
    for kind, rx in (("upload", _UPLOAD_RE), ("blob", _BLOB_RE), ("manifest", _MANIFEST_RE),
                     ("tags", _TAGS_RE), ("referrers", _REFERRERS_RE)):
        m = rx.match(path)
        if m:
            return kind, m.group("repo"), m.groupdict().get("ref")
    return "other", None, None


# ---------------------------------------------------------------------------
# faults

FAULT_KINDS = ("fail", "stall", "cut", "corrupt", "throttle", "whole", "length")
_BODY_FAULTS = ("cut", "corrupt", "throttle", "whole")


class Fault:
    """One fault rule. It applies to a request when every given filter matches:
      method  "GET" / "HEAD" / ... (None: any)
      kinds   request kinds from classify() (defaults: blob for body faults, any for fail/stall)
      path    regular expression searched in the request path (with its query)
      host    "registry" (requests to the proxy) or "cdn" (redirected blob GETs); None: both
      ranged  True: only requests with a Range header, False: only those without; None: both
    and it applies `count` times (None: until cleared).
    Parameters by kind:
      fail     status (500, 429, 503, ...), retry_after (seconds, for 429/503), body (dict)
      stall    seconds (wait before forwarding), drop (close without answering after the wait)
      cut      after (body bytes sent before the connection is closed), rst (reset, not FIN)
      corrupt  offset (body offset of the flipped byte; default the middle, or 0 if unknown)
      whole    (none) the head and the body in one write, as a fast upstream's small blob
               arrives; cut and corrupt take whole=True for the same
      throttle rate (bytes per second on the connection)
      length   value (the Content-Length header sent instead of the real one, on HEAD and GET
               alike; a body is then sent whole and the connection closed after it)
    """

    def __init__(self, kind, count=None, method=None, kinds=None, path=None, host=None,
                 ranged=None, **params):
        if kind not in FAULT_KINDS:
            raise ValueError("unknown fault kind %r (one of %s)" % (kind, ", ".join(FAULT_KINDS)))
        self.kind = kind
        self.count = count
        self.method = method.upper() if method else (
            "GET" if kind in _BODY_FAULTS else None)
        if kinds is None and (kind in _BODY_FAULTS or kind == "length"):
            kinds = ("blob",)
        if isinstance(kinds, str):
            kinds = (kinds,)
        self.kinds = tuple(kinds) if kinds else None
        self.path = re.compile(path) if path else None
        self.host = host
        self.ranged = ranged
        self.params = params
        self.hits = 0

    def matches(self, rec):
        if self.count is not None and self.count <= 0:
            return False
        if self.method and rec["method"] != self.method:
            return False
        if self.kinds and rec["kind"] not in self.kinds:
            return False
        if self.host and rec["host"] != self.host:
            return False
        if self.ranged is not None and (rec["range"] is not None) != self.ranged:
            return False
        if self.path and not self.path.search(rec["path"] + ("?" + rec["query"]
                                                             if rec["query"] else "")):
            return False
        return True

    def to_dict(self):
        return {"kind": self.kind, "count": self.count, "method": self.method,
                "kinds": list(self.kinds) if self.kinds else None,
                "path": self.path.pattern if self.path else None, "host": self.host,
                "ranged": self.ranged,
                "hits": self.hits, **self.params}


def _error_body(status, message=None):
    code = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN",
            429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")
    if message is None:
        message = {429: "You have reached your pull rate limit. (injected by the regmirror "
                        "test upstream)"}.get(status, "injected failure (regmirror test upstream)")
    return {"errors": [{"code": code, "message": message}]}


# ---------------------------------------------------------------------------
# the counting proxy

class CountingProxy:
    """A reverse proxy on 127.0.0.1:<port> in front of one upstream host:port. It forwards
    every request with http.client, streams bodies in chunks both ways, passes redirects and
    WWW-Authenticate challenges through untouched, records each request, and injects faults.

    In-process API (tests): records(**filters), count(**filters), bytes(**filters), reset(),
    wait_idle(), add_fault(kind, ...) / fail() / stall() / cut_after() / corrupt() / throttle(),
    clear_faults(), down() / up(), redirect_blobs(on), hub_ratelimit(limit, remaining).
    HTTP API (for a proxy in another process): GET /__stats, GET|POST /__reset[?faults=1],
    POST /__fault (JSON {"kind": ..., filters and parameters}), POST /__fault?clear=1,
    POST /__down?seconds=N (refuse connections for N seconds), POST /__redirect?on=1|0.

    Records are dicts: id, host ("registry" or "cdn"), method, path, query, kind, repo, ref,
    status, bytes (response body bytes sent), req_bytes, faults (names applied), auth (the
    request carried Authorization), accept, range, user_agent, location, t0, t1, done, error.
    """

    CHUNK = 256 * 1024

    def __init__(self, upstream_host, upstream_port, port=0, cdn_host="localhost"):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = port
        self.cdn_port = 0
        self.cdn_host = cdn_host
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._records = []
        self._next_id = 1
        self._faults = []
        self._conns = set()
        self._httpd = None
        self._thread = None
        self._cdn_httpd = None
        self._cdn_thread = None
        self._cdn_keys = {}
        self._redirect = False
        self._ratelimit = None
        self._down_timer = None

    # -- lifecycle ---------------------------------------------------------------
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def cdn_url(self):
        return "http://%s:%d" % (self.cdn_host, self.cdn_port)

    def _serve(self, port, is_cdn):
        proxy = self

        class Handler(_ProxyHandler):
            pass

        Handler.proxy = proxy
        Handler.is_cdn = is_cdn
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        httpd.daemon_threads = True
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                             name="%s:%d" % ("cdn" if is_cdn else "proxy",
                                             httpd.server_address[1]), daemon=True)
        t.start()
        return httpd, t

    def start(self):
        self._httpd, self._thread = self._serve(self.port, False)
        self.port = self._httpd.server_address[1]
        self._cdn_httpd, self._cdn_thread = self._serve(self.cdn_port, True)
        self.cdn_port = self._cdn_httpd.server_address[1]
        return self

    def _close_listener(self, which):
        httpd = getattr(self, which)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            setattr(self, which, None)

    def _drop_connections(self, cdn=None):
        with self._lock:
            conns = list(self._conns)
        for sock, is_cdn in conns:
            if cdn is not None and is_cdn != cdn:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        if self._down_timer:
            self._down_timer.cancel()
        self._close_listener("_httpd")
        self._close_listener("_cdn_httpd")
        self._drop_connections()

    def is_up(self):
        return self._httpd is not None

    def down(self, seconds=None):
        """Stops listening (new connections are refused) and cuts every open connection,
        the CDN's too. With `seconds`, comes back up by itself after that long."""
        self._close_listener("_httpd")
        self._close_listener("_cdn_httpd")
        self._drop_connections()
        if seconds:
            self._down_timer = threading.Timer(seconds, self.up)
            self._down_timer.daemon = True
            self._down_timer.start()

    def up(self):
        """Listens again on the same ports."""
        deadline = time.monotonic() + 5
        while True:
            try:
                if self._httpd is None:
                    self._httpd, self._thread = self._serve(self.port, False)
                if self._cdn_httpd is None:
                    self._cdn_httpd, self._cdn_thread = self._serve(self.cdn_port, True)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _conn_opened(self, sock, is_cdn):
        with self._lock:
            self._conns.add((sock, is_cdn))

    def _conn_closed(self, sock, is_cdn):
        with self._lock:
            self._conns.discard((sock, is_cdn))

    # -- records -------------------------------------------------------------------
    def _new_record(self, handler, host):
        u = urlsplit(handler.path)
        kind, repo, ref = classify(u.path)
        rec = {"host": host, "method": handler.command, "path": u.path, "query": u.query,
               "kind": kind, "repo": repo, "ref": ref, "status": None, "bytes": 0,
               "req_bytes": 0, "faults": [], "auth": "Authorization" in handler.headers,
               "accept": ", ".join(handler.headers.get_all("Accept") or []) or None,
               "range": handler.headers.get("Range"),
               "user_agent": handler.headers.get("User-Agent"), "location": None,
               "t0": time.time(), "t1": None, "done": False, "error": None}
        with self._lock:
            rec["id"] = self._next_id
            self._next_id += 1
            self._records.append(rec)
        return rec

    def _finish_record(self, rec):
        with self._lock:
            rec["done"] = True
            rec["t1"] = time.time()
            self._idle.notify_all()

    @staticmethod
    def _match(rec, filters):
        for k, want in filters.items():
            have = rec.get(k)
            if callable(want):
                if not want(have):
                    return False
            elif isinstance(want, (tuple, list, set, frozenset)):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True

    def records(self, **filters):
        """Copies of the records matching every filter (value, collection of values, or
        predicate), oldest first. host defaults to both."""
        with self._lock:
            return [dict(r, faults=list(r["faults"])) for r in self._records
                    if self._match(r, filters)]

    def count(self, **filters):
        """How many requests match, e.g. count(method="GET", kind="blob", ref=digest)."""
        return len(self.records(**filters))

    def bytes(self, **filters):
        return sum(r["bytes"] for r in self.records(**filters))

    def blob_gets(self, digest=None, **filters):
        """Upstream GETs of a blob that got past auth (401 challenges are not counted; the
        proxy's and the CDN's both count), e.g. blob_gets(d) == 1 for one fetch. Pass
        status=... to narrow further."""
        if digest:
            filters["ref"] = digest
        filters.setdefault("status", lambda st: st != 401)
        return self.count(method="GET", kind="blob", **filters)

    def summary(self):
        """{"METHOD kind": {"count": n, "bytes": b, "status": {code: n}}}."""
        out = {}
        for r in self.records():
            key = "%s %s%s" % (r["method"], r["kind"], " (cdn)" if r["host"] == "cdn" else "")
            s = out.setdefault(key, {"count": 0, "bytes": 0, "status": {}})
            s["count"] += 1
            s["bytes"] += r["bytes"]
            st = str(r["status"])
            s["status"][st] = s["status"].get(st, 0) + 1
        return out

    def stats(self):
        return {"requests": self.records(), "summary": self.summary(),
                "faults": self.faults(), "up": self.is_up(), "redirect": self._redirect}

    def reset(self, faults=False):
        """Forgets the records, in-flight ones too (and, with faults=True, the fault rules
        and modes)."""
        with self._lock:
            self._records = []
        if faults:
            self.clear_faults()

    def wait_idle(self, timeout=10.0):
        """Waits until every recorded request has finished (its answer fully sent)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(not r["done"] for r in self._records):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- faults ---------------------------------------------------------------------
    def add_fault(self, kind, **kw):
        f = Fault(kind, **kw)
        with self._lock:
            self._faults.append(f)
        return f

    def fail(self, status=500, count=1, retry_after=None, window=21600, **kw):
        """The next `count` matching requests (None: all) get `status` without reaching the
        upstream. 429 carries Retry-After (default 10; "" for none) and Docker Hub's
        ratelimit-limit / ratelimit-remaining headers ("100;w=<window>", "0;w=<window>")."""
        if status == 429 and retry_after is None:
            retry_after = 10
        if retry_after == "":
            retry_after = None
        return self.add_fault("fail", status=status, count=count, retry_after=retry_after,
                              window=window, **kw)

    def stall(self, seconds, count=1, drop=False, **kw):
        return self.add_fault("stall", seconds=seconds, count=count, drop=drop, **kw)

    def cut_after(self, nbytes, count=1, rst=False, **kw):
        """The next `count` matching body answers (blob GETs by default) are cut: the
        connection closes after `nbytes` body bytes, with the full Content-Length announced."""
        return self.add_fault("cut", after=nbytes, count=count, rst=rst, **kw)

    def corrupt(self, count=1, offset=None, **kw):
        """The next `count` matching bodies (blob GETs by default) get one byte flipped."""
        return self.add_fault("corrupt", count=count, offset=offset, **kw)

    def throttle(self, rate, count=None, **kw):
        """Matching bodies (blob GETs by default) are sent at `rate` bytes per second."""
        return self.add_fault("throttle", rate=rate, count=count, **kw)

    def bad_length(self, value, count=1, **kw):
        """The next `count` matching answers (blob HEADs and GETs by default) carry
        `Content-Length: <value>` instead of the real length."""
        return self.add_fault("length", value=value, count=count, **kw)

    def clear_faults(self):
        with self._lock:
            self._faults = []
            self._redirect = False
            self._ratelimit = None
            self._cdn_keys.clear()
        if not self.is_up():
            if self._down_timer:
                self._down_timer.cancel()
            self.up()

    def faults(self):
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def _take(self, rec, kinds):
        """The first live rule of each kind in `kinds` that matches rec, used up by one."""
        got = {}
        with self._lock:
            for f in self._faults:
                if f.kind in kinds and f.kind not in got and f.matches(rec):
                    if f.count is not None:
                        f.count -= 1
                    f.hits += 1
                    got[f.kind] = f
                    rec["faults"].append(f.kind)
        return got

    def redirect_blobs(self, on=True):
        """Docker Hub style: blob GETs answer 307 to a 'CDN' (another host name and port,
        `cdn_url`) that serves the bytes; the CDN records whether Authorization came along."""
        with self._lock:
            self._redirect = bool(on)

    def hub_ratelimit(self, limit=100, remaining=100, window=21600, heads=False,
                      source="127.0.0.1"):
        """Manifest GETs carry Docker Hub's ratelimit-limit / ratelimit-remaining headers
        ("N;w=<window>"; remaining counts down with each GET); with heads=True manifest HEADs
        carry them too, without counting down (as Docker Hub does). None turns it off."""
        with self._lock:
            self._ratelimit = None if limit is None else {
                "limit": limit, "remaining": remaining, "window": window, "heads": heads,
                "source": source}

    def _ratelimit_headers(self, rec):
        with self._lock:
            rl = self._ratelimit
            if rl is None or rec["kind"] != "manifest" or rec["status"] >= 300:
                return []
            if rec["method"] == "GET":
                rl["remaining"] = max(0, rl["remaining"] - 1)
            elif not (rec["method"] == "HEAD" and rl["heads"]):
                return []
            return [("ratelimit-limit", "%d;w=%d" % (rl["limit"], rl["window"])),
                    ("ratelimit-remaining", "%d;w=%d" % (rl["remaining"], rl["window"])),
                    ("docker-ratelimit-source", rl["source"])]

    def _new_cdn_key(self, path, headers):
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._cdn_keys[key] = {"path": path, "headers": headers,
                                   "expires": time.time() + 600}
        return key

    def _cdn_lookup(self, key):
        with self._lock:
            e = self._cdn_keys.get(key)
            return e if e and e["expires"] > time.time() else None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "regmirror-test-proxy/1"
    proxy = None
    is_cdn = False
    timeout = 300

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.proxy._conn_opened(self.connection, self.is_cdn)

    def finish(self):
        try:
            super().finish()
        finally:
            self.proxy._conn_closed(self.connection, self.is_cdn)

    def handle_expect_100(self):
        return True  # the continue is sent when the body is read (see _read_body_chunks)

    def do_GET(self):
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- plumbing -------------------------------------------------------------------
    def _send_simple(self, status, obj=None, headers=(), body=None):
        if body is None:
            body = json.dumps(obj).encode() if obj is not None else b""
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return len(body) if self.command != "HEAD" else 0

    def _read_body_chunks(self):
        """Yields the request body in chunks (Content-Length or chunked)."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CountingProxy.CHUNK))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    left -= len(data)
                    yield data
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(left, CountingProxy.CHUNK))
                if not data:
                    raise ConnectionError("client closed mid-body")
                left -= len(data)
                yield data

    def _drain_body(self):
        for _ in self._read_body_chunks():
            pass

    def _abort(self, rst=False):
        self.close_connection = True
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- dispatch --------------------------------------------------------------------
    def _handle(self):
        u = urlsplit(self.path)
        if u.path.startswith("/__"):
            return self._control(u)
        rec = self.proxy._new_record(self, "cdn" if self.is_cdn else "registry")
        try:
            if self.is_cdn:
                self._cdn(u, rec)
            else:
                self._forward(rec)
        except (ConnectionError, socket.timeout, OSError) as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            self.close_connection = True
        finally:
            self.proxy._finish_record(rec)

    def _request_faults(self, rec):
        """Applies fail/stall rules; True when the request was answered (or dropped)."""
        got = self.proxy._take(rec, ("fail", "stall"))
        st = got.get("stall")
        if st:
            time.sleep(st.params.get("seconds", 1))
            if st.params.get("drop"):
                self._drain_body()
                rec["status"] = 0
                self._abort()
                return True
        f = got.get("fail")
        if f:
            self._drain_body()
            status = int(f.params.get("status", 500))
            headers = [("Docker-Distribution-API-Version", "registry/2.0")]
            if f.params.get("retry_after") is not None:
                headers.append(("Retry-After", str(f.params["retry_after"])))
            if status == 429:
                w = int(f.params.get("window", 21600))
                headers += [("ratelimit-limit", "100;w=%d" % w),
                            ("ratelimit-remaining", "0;w=%d" % w),
                            ("docker-ratelimit-source", "127.0.0.1")]
            rec["status"] = status
            rec["bytes"] = self._send_simple(status, f.params.get("body") or _error_body(status),
                                             headers)
            return True
        return False

    def _upstream_conn(self):
        return HTTPConnection(self.proxy.upstream_host, self.proxy.upstream_port, timeout=120)

    def _send_upstream(self, method, path, headers, body_chunks=None, chunked=False):
        conn = self._upstream_conn()
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        sent = 0
        if body_chunks is not None:
            for data in body_chunks:
                sent += len(data)
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                conn.send(b"0\r\n\r\n")
        return conn, sent

    def _forward(self, rec):
        if self._request_faults(rec):
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        has_body = chunked or int(self.headers.get("Content-Length") or 0) > 0
        conn, rec["req_bytes"] = self._send_upstream(
            self.command, self.path, headers,
            self._read_body_chunks() if has_body else None, chunked)
        try:
            resp = conn.getresponse()
            if (self.proxy._redirect and rec["kind"] == "blob" and self.command == "GET"
                    and resp.status == 200):
                key = self.proxy._new_cdn_key(self.path, headers)
                loc = "%s/cdn/%s?expires=%d&signature=%s" % (
                    self.proxy.cdn_url, key, int(time.time()) + 600, secrets.token_hex(8))
                rec["status"] = 307
                rec["location"] = loc
                self._send_simple(307, headers=[
                    ("Location", loc), ("Docker-Distribution-API-Version", "registry/2.0")],
                    body=b"")
                return
            self._relay(resp, rec)
        finally:
            conn.close()

    def _cdn(self, u, rec):
        m = re.match(r"^/cdn/([A-Za-z0-9_-]+)$", u.path)
        entry = self.proxy._cdn_lookup(m.group(1)) if m else None
        if entry is None:
            self._drain_body()
            rec["status"] = 403
            rec["bytes"] = self._send_simple(403, body=b"<Error>AccessDenied</Error>")
            return
        kind, repo, ref = classify(urlsplit(entry["path"]).path)
        rec.update(kind=kind, repo=repo, ref=ref)
        if self._request_faults(rec):
            return
        self._drain_body()
        headers = [(k, v) for k, v in entry["headers"]
                   if k.lower() not in ("range", "if-range", "if-none-match", "host")]
        headers.append(("Host", "%s:%d" % (self.proxy.upstream_host, self.proxy.upstream_port)))
        for k in ("Range", "If-Range", "If-None-Match"):
            if self.headers.get(k):
                headers.append((k, self.headers[k]))
        conn, _ = self._send_upstream(self.command, entry["path"], headers)
        try:
            self._relay(conn.getresponse(), rec)
        finally:
            conn.close()

    def _relay(self, resp, rec):
        """Sends the upstream answer on, streaming the body, with the body faults."""
        rec["status"] = resp.status
        out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        out_headers += self.proxy._ratelimit_headers(rec)
        loc = resp.getheader("Location")
        if loc:
            rec["location"] = loc
        no_body = (self.command == "HEAD" or resp.status in (204, 304)
                   or 100 <= resp.status < 200)
        length = resp.getheader("Content-Length")
        faults = {} if no_body else self.proxy._take(rec, _BODY_FAULTS)
        bad_length = self.proxy._take(rec, ("length",)).get("length") if resp.status < 300 else None
        if bad_length:
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            out_headers.append(("Content-Length", str(bad_length.params.get("value", ""))))
        self.send_response_only(resp.status, resp.reason)
        for k, v in out_headers:
            self.send_header(k, v)
        framing = "none" if no_body else ("length" if length is not None else
                                          ("chunked" if resp.chunked else "close"))
        if bad_length and framing != "none":
            framing = "close"
            self.close_connection = True
        if framing == "length" and ("whole" in faults or
                                    any(f.params.get("whole") for f in faults.values())):
            self._relay_whole(resp, faults)
            return
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if framing == "none":
            return

        total = int(length) if length is not None else None
        cut = faults.get("cut")
        corrupt = faults.get("corrupt")
        throttle = faults.get("throttle")
        flip_at = None
        if corrupt:
            flip_at = corrupt.params.get("offset")
            if flip_at is None:
                flip_at = total // 2 if total else 0
        rate = throttle.params.get("rate") if throttle else None
        chunk_size = CountingProxy.CHUNK
        if rate:
            chunk_size = max(1, min(chunk_size, int(rate) // 20 or 1))
        sent = 0
        started = time.monotonic()
        while True:
            data = resp.read1(chunk_size)
            if not data:
                break
            if flip_at is not None and sent <= flip_at < sent + len(data):
                i = flip_at - sent
                data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            if cut and sent + len(data) >= cut.params.get("after", 0):
                keep = max(0, cut.params.get("after", 0) - sent)
                self._write_body(data[:keep], framing)
                sent += keep
                rec["bytes"] = sent
                self._abort(rst=cut.params.get("rst", False))
                return
            self._write_body(data, framing)
            sent += len(data)
            rec["bytes"] = sent
            if rate:
                ahead = sent / float(rate) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if cut:
            # the body was shorter than the cut point: cut at the end anyway, unannounced
            self._abort(rst=cut.params.get("rst", False))
            return
        if framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")
        elif framing == "close":
            self._abort()

    def _relay_whole(self, resp, faults):
        """The head and the body with its faults in one write (see Fault)."""
        body = resp.read()
        corrupt, cut = faults.get("corrupt"), faults.get("cut")
        if corrupt and body:
            i = corrupt.params.get("offset")
            i = len(body) // 2 if i is None else min(i, len(body) - 1)
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        if cut:
            body = body[:cut.params.get("after", 0)]
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        if cut:
            # corked, the bytes and the FIN leave in one segment: the reader sees both at once
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self.wfile.write(head + body)
        if cut:
            self._abort(rst=cut.params.get("rst", False))

    def _write_body(self, data, framing):
        if not data:
            return
        if framing == "chunked":
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)

    # -- control endpoints ------------------------------------------------------------
    def _control(self, u):
        q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        body = b"".join(self._read_body_chunks())
        p = self.proxy
        try:
            if u.path == "/__stats":
                return self._send_simple(200, p.stats())
            if u.path == "/__reset":
                p.reset(faults=q.get("faults") in ("1", "true"))
                return self._send_simple(200, {"ok": True})
            if u.path == "/__fault":
                if q.get("clear") in ("1", "true") or self.command == "DELETE":
                    p.clear_faults()
                    return self._send_simple(200, {"faults": []})
                spec = json.loads(body or b"{}")
                kind = spec.pop("kind")
                f = p.add_fault(kind, **spec)
                return self._send_simple(200, f.to_dict())
            if u.path == "/__redirect":
                p.redirect_blobs(q.get("on", "1") in ("1", "true"))
                return self._send_simple(200, {"redirect": p._redirect})
            if u.path == "/__down":
                secs = float(q.get("seconds", "5"))
                self._send_simple(200, {"down_for": secs})
                self.close_connection = True
                threading.Thread(target=p.down, args=(secs,), daemon=True).start()
                return
        except (ValueError, KeyError, TypeError) as e:
            return self._send_simple(400, {"error": str(e)})
        return self._send_simple(404, {"error": "unknown control path"})


# ---------------------------------------------------------------------------
# a registry client that does the token dance

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_bearer_challenge(header):
    """{'realm':..., 'service':..., 'scope':..., 'error':...} of a Bearer challenge, or None."""
    if not header:
        return None
    m = re.search(r"\bBearer\s+(.*)", header, re.I)
    if not m:
        return None
    return {k.lower(): (u or re.sub(r"\\(.)", r"\1", q))
            for k, q, u in _CHALLENGE_PARAM.findall(m.group(1))}


class RegistryClient:
    """requests against a token-auth registry: on 401 it reads the Bearer challenge, gets a
    token from the realm (Basic auth when user is set), and retries once. Tokens are cached
    per scope until their expires_in."""

    def __init__(self, base, user=None, password=None):
        self.base = base.rstrip("/")
        self.user = user
        self.password = password
        self.session = requests.Session()
        self._tokens = {}

    def close(self):
        self.session.close()

    def fetch_token(self, challenge, scope=None):
        scope = scope if scope is not None else challenge.get("scope")
        params = {"service": challenge.get("service")}
        if scope:
            params["scope"] = scope
        auth = (self.user, self.password) if self.user else None
        r = self.session.get(challenge["realm"], params=params, auth=auth, timeout=30)
        r.raise_for_status()
        body = r.json()
        tok = body.get("token") or body.get("access_token")
        self._tokens[scope or ""] = (tok, time.monotonic() + body.get("expires_in", 60) - 1)
        return tok

    def _cached(self, scope):
        t = self._tokens.get(scope or "")
        return t[0] if t and t[1] > time.monotonic() else None

    def request(self, method, path, scope=None, **kw):
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", False)
        url = path if path.startswith("http") else self.base + path
        headers = dict(kw.pop("headers", None) or {})
        tok = self._cached(scope) if scope else None
        if tok:
            headers["Authorization"] = "Bearer " + tok
        r = self.session.request(method, url, headers=headers, **kw)
        if r.status_code != 401:
            return r
        ch = parse_bearer_challenge(r.headers.get("WWW-Authenticate"))
        if not ch or "realm" not in ch:
            return r
        want = scope or ch.get("scope")
        headers["Authorization"] = "Bearer " + self.fetch_token(ch, want)
        if "data" in kw and hasattr(kw["data"], "seek"):
            kw["data"].seek(0)
        return self.session.request(method, url, headers=headers, **kw)

    # -- shorthands ------------------------------------------------------------------
    def get_manifest(self, repo, ref, accept=ALL_ACCEPT, method="GET"):
        return self.request(method, "/v2/%s/manifests/%s" % (repo, ref),
                            scope="repository:%s:pull" % repo, headers={"Accept": accept})

    def get_blob(self, repo, digest, method="GET", **kw):
        return self.request(method, "/v2/%s/blobs/%s" % (repo, digest),
                            scope="repository:%s:pull" % repo, **kw)

    def push_blob(self, repo, data, digest=None):
        digest = digest or sha256(data)
        scope = "repository:%s:pull,push" % repo
        h = self.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest), scope=scope)
        if h.status_code == 200:
            return digest
        r = self.request("POST", "/v2/%s/blobs/uploads/" % repo, scope=scope, data=b"")
        assert r.status_code == 202, "upload start %s: %d %s" % (repo, r.status_code, r.text)
        loc = urljoin(self.base + "/", r.headers["Location"])
        r = self.request("PUT", helpers.with_query(loc, digest=digest), scope=scope, data=data,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, "blob PUT %s: %d %s" % (repo, r.status_code, r.text)
        return digest

    def push_manifest(self, repo, ref, body, media_type):
        r = self.request("PUT", "/v2/%s/manifests/%s" % (repo, ref),
                         scope="repository:%s:pull,push" % repo, data=body,
                         headers={"Content-Type": media_type})
        assert r.status_code == 201, "manifest PUT %s:%s: %d %s" % (repo, ref, r.status_code,
                                                                    r.text)
        assert r.headers.get("Docker-Content-Digest") == sha256(body)
        return r


# ---------------------------------------------------------------------------
# images that real clients can unpack

class Blob:
    """digest, size, media_type, data; for layers also diff_id (sha256 of the tar) and files
    (paths in the tar)."""

    def __init__(self, data, media_type, diff_id=None, files=()):
        self.data = data
        self.media_type = media_type
        self.digest = sha256(data)
        self.size = len(data)
        self.diff_id = diff_id
        self.files = list(files)

    def descriptor(self):
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def to_dict(self):
        d = {"digest": self.digest, "size": self.size, "media_type": self.media_type}
        if self.diff_id:
            d.update(diff_id=self.diff_id, files=self.files)
        return d


class SeededImage:
    """One image manifest. repo, tags, digest, media_type, manifest (raw bytes), size,
    config (Blob), layers ([Blob]), platform (dict, for index children), blobs ({digest: bytes})."""

    is_index = False

    def __init__(self, manifest, media_type, config, layers, platform=None):
        self.manifest = manifest
        self.media_type = media_type
        self.config = config
        self.layers = layers
        self.platform = platform
        self.digest = sha256(manifest)
        self.size = len(manifest)
        self.repo = None
        self.tags = []

    @property
    def tag(self):
        return self.tags[0] if self.tags else None

    @property
    def ref(self):
        return "%s:%s" % (self.repo, self.tag) if self.tag else "%s@%s" % (self.repo, self.digest)

    @property
    def blobs(self):
        out = {self.config.digest: self.config.data}
        for l in self.layers:
            out[l.digest] = l.data
        return out

    def descriptor(self, **extra):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        d.update(extra)
        return d

    def to_dict(self):
        return {"repo": self.repo, "tags": self.tags, "digest": self.digest, "size": self.size,
                "media_type": self.media_type, "platform": self.platform,
                "config": self.config.to_dict(), "layers": [l.to_dict() for l in self.layers]}


class SeededIndex:
    """A manifest list / OCI index: repo, tags, digest, media_type, manifest (raw bytes), size,
    children ([SeededImage] with .platform), child(arch, variant=None), blobs (all children's)."""

    is_index = True

    def __init__(self, manifest, media_type, children):
        self.manifest = manifest
        self.media_type = media_type
        self.children = children
        self.digest = sha256(manifest)
        self.size = len(manifest)
        self.repo = None
        self.tags = []

    tag = SeededImage.tag
    ref = SeededImage.ref

    def child(self, arch, variant=None, os_="linux"):
        for c in self.children:
            p = c.platform or {}
            if (p.get("architecture") == arch and p.get("os", "linux") == os_
                    and (variant is None or p.get("variant") == variant)):
                return c
        raise KeyError("no %s/%s%s child in %s" % (os_, arch, "/" + variant if variant else "",
                                                   self.ref))

    @property
    def blobs(self):
        out = {}
        for c in self.children:
            out.update(c.blobs)
        return out

    def to_dict(self):
        return {"repo": self.repo, "tags": self.tags, "digest": self.digest, "size": self.size,
                "media_type": self.media_type, "children": [c.to_dict() for c in self.children]}


def tar_gz_layer(files, compresslevel=1):
    """A gzip'd tar of `files` ([(path, bytes, mode)]; parent directories added). Returns
    (gz bytes, diff_id = sha256 of the uncompressed tar, [paths])."""
    raw = io.BytesIO()
    seen_dirs = set()
    names = []
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data, mode in files:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in seen_dirs:
                    seen_dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = 1700000000
                    tf.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size = len(data)
            info.mode = mode
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data))
            names.append("/" + "/".join(parts))
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=compresslevel, mtime=0), sha256(tar), names


def build_image(layer_files, arch="amd64", variant=None, oci=False, label=""):
    """An image whose layers hold real files. layer_files: one list of (path, bytes, mode) per
    layer, or (files, compresslevel). Docker schema2 types unless oci=True."""
    ltype = OCI_LAYER if oci else DOCKER_LAYER
    layers = []
    for spec in layer_files:
        files, level = spec if isinstance(spec, tuple) else (spec, 1)
        gz, diff_id, names = tar_gz_layer(files, level)
        layers.append(Blob(gz, ltype, diff_id, names))
    created = "2024-01-01T00:00:00Z"
    cfg = {"architecture": arch, "os": "linux",
           "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                      "Cmd": ["/bin/hello"], "WorkingDir": "/",
                      "Labels": {"org.regmirror.test": label or "image",
                                 "org.regmirror.nonce": uuid.uuid4().hex}},
           "created": created,
           "history": [{"created": created, "created_by": "regmirror test layer %d" % i}
                       for i in range(len(layers))],
           "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}
    if variant:
        cfg["variant"] = variant
    config = Blob(json.dumps(cfg, separators=(",", ":")).encode(),
                  OCI_CONFIG if oci else DOCKER_CONFIG)
    mt = OCI_MANIFEST if oci else DOCKER_MANIFEST
    m = {"schemaVersion": 2, "mediaType": mt, "config": config.descriptor(),
         "layers": [l.descriptor() for l in layers]}
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return SeededImage((json.dumps(m, indent=3) + "\n").encode(), mt, config, layers, platform)


def build_index(children, oci=False):
    mt = OCI_INDEX if oci else DOCKER_LIST
    m = {"schemaVersion": 2, "mediaType": mt,
         "manifests": [c.descriptor(platform=c.platform) for c in children]}
    return SeededIndex((json.dumps(m, indent=3) + "\n").encode(), mt, children)


def hello_files(text, random_kb=0, extra=()):
    """/bin/hello (a text file) and, when asked, an incompressible data file."""
    files = [("bin/hello", ("#!/bin/sh\necho '%s'\n" % text).encode(), 0o755)]
    if random_kb:
        files.append(("usr/share/regmirror/%s.bin" % uuid.uuid4().hex[:8],
                      os.urandom(random_kb * 1024), 0o644))
    files.extend(extra)
    return files


def build_seed_images(big_size=50 * 1024 * 1024):
    """The images the upstream is seeded with, keyed by 'repo:tag' (not yet pushed)."""
    alpine = build_image([
        hello_files("hello from regmirror alpine layer 1", 300),
        [("etc/alpine-release", b"3.19.0\n", 0o644),
         ("usr/share/regmirror/layer2.bin", os.urandom(400 * 1024), 0o644)],
        [("etc/motd", b"regmirror test image\n", 0o644),
         ("usr/share/regmirror/layer3.bin", os.urandom(250 * 1024), 0o644)],
    ], label="alpine")
    plats = [("amd64", None), ("arm64", "v8"), ("arm", "v7")]
    multi = build_index([build_image([hello_files("multi %s%s" % (a, v or ""), 64)],
                                     arch=a, variant=v, label="multi-" + a) for a, v in plats])
    multi_oci = build_index([build_image([hello_files("multi-oci %s%s" % (a, v or ""), 64)],
                                         arch=a, variant=v, oci=True, label="multi-oci-" + a)
                             for a, v in plats], oci=True)
    big = build_image([([("usr/share/regmirror/big.bin", os.urandom(big_size), 0o644)], 0)],
                      label="big")
    secret = build_image([hello_files("private image", 32,
                                      [("etc/secret.txt", b"the cake is a lie\n", 0o600)])],
                         label="secret")
    return {"library/alpine:3.19": alpine, "library/multi:1": multi,
            "library/multi-oci:1": multi_oci, "library/big:1": big, "private/secret:1": secret}


class Seed:
    """What was pushed to the upstream. seed["library/alpine:3.19"] or seed.alpine, .multi,
    .multi_oci, .big, .secret; seed.images is the dict; seed.all_blobs() maps every blob digest
    to its bytes; seed.to_dict() is a JSON-able summary (digests, sizes, media types)."""

    SHORT = {"alpine": "library/alpine:3.19", "multi": "library/multi:1",
             "multi_oci": "library/multi-oci:1", "big": "library/big:1",
             "secret": "private/secret:1"}

    def __init__(self, images):
        self.images = images

    def __getitem__(self, name):
        return self.images[name]

    def __getattr__(self, name):
        if name in Seed.SHORT:
            return self.images[Seed.SHORT[name]]
        raise AttributeError(name)

    def all_blobs(self):
        out = {}
        for img in self.images.values():
            out.update(img.blobs)
        return out

    def to_dict(self):
        return {k: v.to_dict() for k, v in self.images.items()}


def push_seeded(client, repo, img, tags=()):
    """Pushes an image or index (children first) to repo and tags it."""
    img.repo = repo
    if img.is_index:
        for c in img.children:
            push_seeded(client, repo, c)
    else:
        for d, data in img.blobs.items():
            client.push_blob(repo, data, d)
    client.push_manifest(repo, img.digest, img.manifest, img.media_type)
    for t in tags:
        client.push_manifest(repo, t, img.manifest, img.media_type)
        if t not in img.tags:
            img.tags.append(t)
    return img


# ---------------------------------------------------------------------------
# network namespaces

def enter_netns(name):
    """Moves the calling thread into network namespace `name` (/run/netns/NAME, made with
    `ip netns add NAME; ip netns exec NAME ip link set lo up`) or a path to a netns file.
    Sockets, threads and processes made afterwards by this thread live in that namespace;
    called in the main thread before start_upstream(), it puts the whole upstream where the
    clients and the mirror run. Needs root."""
    import ctypes
    path = name if "/" in name else os.path.join("/run/netns", name)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# the whole upstream

class Upstream:
    """Token server + docker-registry (token auth) + counting proxy, seeded.

    url / host        the counting proxy: what regmirror's proxy.remoteurl points at
    direct_url        docker-registry itself (uncounted, no faults)
    token             tokenserver.TokenServer (realm, service, issuer, stats(), configure())
    proxy             CountingProxy (records, counters, faults)
    registry          helpers.Registry running docker-registry
    seed              Seed (digests, sizes, raw manifests, blob bytes)
    users             {"alice": "wonderland", "pusher": "pusher"}
    """

    def __init__(self, workdir, lifetime=tokenserver.DEFAULT_LIFETIME, alg="RS256",
                 binary=None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.users = dict(USERS)
        self.service = SERVICE
        self.issuer = ISSUER
        self.token = tokenserver.TokenServer(self.workdir, issuer=ISSUER, service=SERVICE,
                                             lifetime=lifetime, alg=alg)
        self.registry = None
        self.proxy = None
        self.seed = None
        self._binary = binary or helpers.binary_for("docker-registry")

    def registry_yaml(self):
        return ("auth:\n"
                "  token:\n"
                "    realm: %s\n"
                "    service: %s\n"
                "    issuer: %s\n"
                "    rootcertbundle: %s\n") % (self.token.realm, self.service, self.issuer,
                                              self.token.bundle_path)

    def start(self, seed=True, big_size=50 * 1024 * 1024):
        self.token.start()
        self.registry = helpers.Registry("docker-registry", os.path.join(self.workdir, "registry"),
                                         extra_yaml=self.registry_yaml(), binary=self._binary)
        self.registry.start()
        self.proxy = CountingProxy("127.0.0.1", self.registry.port).start()
        if seed:
            self.seed = self.push_seed(build_seed_images(big_size))
            self.reset()
        return self

    def stop(self):
        if self.proxy:
            self.proxy.stop()
        rc = self.registry.stop() if self.registry else None
        self.token.stop()
        return rc

    def alive(self):
        return self.registry is not None and self.registry.alive() and self.token.running()

    @property
    def url(self):
        return self.proxy.url

    @property
    def host(self):
        return self.proxy.host

    @property
    def direct_url(self):
        return self.registry.base

    @property
    def realm(self):
        return self.token.realm

    def push_seed(self, images):
        c = self.client("pusher", direct=True)
        try:
            for name, img in images.items():
                repo, tag = name.rsplit(":", 1)
                push_seeded(c, repo, img, [tag])
        finally:
            c.close()
        return Seed(images)

    def push(self, repo, img, tags=()):
        """Pushes another image (build_image / build_index) straight to docker-registry, e.g.
        to move a tag; uncounted."""
        c = self.client("pusher", direct=True)
        try:
            return push_seeded(c, repo, img, tags)
        finally:
            c.close()

    def client(self, user=None, password=None, direct=False):
        """A RegistryClient through the counting proxy (or straight to docker-registry)."""
        if user and password is None:
            password = self.users.get(user)
        return RegistryClient(self.direct_url if direct else self.url, user, password)

    def get_token(self, scopes, user=None, password=None, **params):
        """A token from the token server (GET with Basic auth when user is set)."""
        if isinstance(scopes, str):
            scopes = [scopes]
        if user and password is None:
            password = self.users.get(user)
        p = {"service": self.service, "scope": list(scopes)}
        p.update(params)
        r = requests.get(self.realm, params=p, auth=(user, password) if user else None,
                         timeout=30)
        assert r.status_code == 200, "token: %d %s" % (r.status_code, r.text)
        return r.json()["token"]

    def proxy_yaml(self, username=None, password=None, extra=""):
        """The `proxy:` section of a regmirror / registry:2 config pulling from this upstream."""
        text = "proxy:\n  remoteurl: %s\n" % self.url
        if username:
            text += "  username: %s\n  password: %s\n" % (username, password
                                                         or self.users.get(username, ""))
        return text + extra

    def reset(self):
        """Counters forgotten, faults and token-server settings back to normal, proxy up."""
        if self.proxy:
            self.proxy.wait_idle(5)
            self.proxy.clear_faults()
            self.proxy.reset()
        if not self.token.running():
            self.token.start()  # a test stopped it: same port again
        self.token.restore_defaults()
        self.token.reset()


def start_upstream(workdir, **kw):
    """Starts and seeds an Upstream; the caller stops it."""
    up = Upstream(workdir, **{k: v for k, v in kw.items() if k in ("lifetime", "alg", "binary")})
    try:
        up.start(**{k: v for k, v in kw.items() if k in ("seed", "big_size")})
    except Exception:
        up.stop()
        raise
    return up


def main(argv=None):
    """python3 upstream.py serve [--workdir D] [--lifetime N]: the seeded upstream, until ^C.
    python3 upstream.py proxy --upstream HOST:PORT [--port P]: only the counting proxy."""
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(description="regmirror's test upstream")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="token server + docker-registry + proxy, seeded")
    sp.add_argument("--workdir")
    sp.add_argument("--lifetime", type=int, default=tokenserver.DEFAULT_LIFETIME)
    sp.add_argument("--no-seed", action="store_true")
    pp = sub.add_parser("proxy", help="the counting proxy in front of HOST:PORT")
    pp.add_argument("--upstream", required=True)
    pp.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "proxy":
        host, _, port = args.upstream.rpartition(":")
        p = CountingProxy(host or "127.0.0.1", int(port), port=args.port).start()
        print("proxy %s -> %s (cdn %s); GET /__stats, POST /__fault, /__reset, /__down" % (
            p.url, args.upstream, p.cdn_url), flush=True)
        stopper = p
    else:
        workdir = args.workdir or tempfile.mkdtemp(prefix="regmirror-upstream-")
        up = start_upstream(workdir, lifetime=args.lifetime, seed=not args.no_seed)
        print("upstream (counting proxy): %s\ndocker-registry: %s\ntoken realm: %s\n"
              "users: %s\nworkdir: %s" % (up.url, up.direct_url, up.realm, up.users, workdir),
              flush=True)
        if up.seed:
            for name, img in up.seed.images.items():
                print("  %-22s %s" % (name, img.digest), flush=True)
        print(up.proxy_yaml(), flush=True)
        stopper = up
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stopper.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
