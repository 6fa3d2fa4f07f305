#!/usr/bin/python3
"""HTTP peer for the httpc and upstream unit tests.

Listens on 127.0.0.1 (the "registry" and plain test endpoints) and on 127.0.0.2 (a "CDN" host
that blob redirects point to), prints "PORTS <p1> <p2>" on stdout and serves until stdin closes,
so it dies with the test binary that started it.

Registry behaviour is chosen by the first component of the repository name:
  open/*     no auth                          basic/*   Basic challenge, alice:s3cret
  (other)    Bearer challenge, token from /token (anonymous, except private/* which needs
             alice:s3cret at the token endpoint)
  short/*    tokens live 1 s                  access/*  token endpoint answers access_token
  revoke/*   the first token issued works once, then is refused; later ones work
  deny/*     every token refused (insufficient_scope)
  flaky/*    503 twice per path, then 200     down/*    always 503
  limited/*  429 with Retry-After: 42         cdn/*     blobs answer 307 to 127.0.0.2
  rel/*      blobs answer 302 to /v2/open/x/... deadrealm/*  the realm's port is closed
  foreign/*  the realm is on 127.0.0.2           tokredir/*  the realm answers 302 to 127.0.0.2
Counters at GET /_stats (JSON), reset with GET /_reset.
"""
import base64
import json
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {}
TOKENS = {}  # token -> (repo, expiry)
ISSUED = {}  # repo -> number of tokens issued
PATH_HITS = {}
CONNS = set()
USES = {}  # token -> requests that carried it
PORTS = [0, 0]
CREDS = "Basic " + base64.b64encode(b"alice:s3cret").decode()


def count(key, n=1):
    with LOCK:
        STATS[key] = STATS.get(key, 0) + n


def pattern(start, n):
    off = start % 251
    rep = bytes(range(251)) * ((off + n) // 251 + 1)
    return rep[off:off + n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle and delayed ACKs
        # add 40 ms to every answer.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- plain endpoints for test_httpc ----

    def plain(self, path, query):
        if path == "/hello":
            self.reply(200, b"hello world", [("Content-Type", "text/plain"),
                                             ("X-Multi", "a"), ("x-multi", "b")])
        elif path == "/echo":
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            self.reply(200, body, [("X-Method", self.command),
                                   ("X-Content-Type", self.headers.get("Content-Type", "-"))])
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(10):
                piece = ("chunk %d;" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        elif path == "/big":
            n = int(query.get("n", ["1048576"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            sent = 0
            while sent < n:
                k = min(65536, n - sent)
                self.wfile.write(pattern(sent, k))
                sent += k
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for i in range(1000):
                    self.wfile.write(pattern(i * 1000, 1000))
                    self.wfile.flush()
                    time.sleep(0.02)
            except OSError:
                count("slow_cut")
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0")
            self.wfile.flush()
            time.sleep(5)
        elif path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
        elif path == "/bigheaders":
            self.send_response(200)
            for i in range(100):
                self.send_header("X-Filler-%d" % i, "x" * 1000)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect":
            self.reply(302, b"moved", [("Location", "/hello")])
        elif path.startswith("/status/"):
            self.reply(int(path[8:]), b"status body")
        else:
            self.reply(404, b"no such test path")

    # ---- token endpoint ----

    def token(self, query):
        count("token")
        scope = query.get("scope", [""])[0]
        service = query.get("service", [""])[0]
        auth = self.headers.get("Authorization")
        if auth:
            count("token_auth")
        if service != "peer.test" or not scope.startswith("repository:") or \
                not scope.endswith(":pull"):
            self.reply(400, b'{"errors":[{"code":"bad scope"}]}')
            return
        repo = scope[len("repository:"):-len(":pull")]
        if auth is not None and auth != CREDS:
            self.reply(401, b'{"details":"wrong credentials"}')
            return
        if repo.startswith("private/") and auth != CREDS:
            self.reply(401, b'{"details":"credentials required"}')
            return
        with LOCK:
            n = ISSUED.get(repo, 0) + 1
            ISSUED[repo] = n
            tok = "tok-%d-%s" % (n, repo)
            life = 1 if repo.startswith("short/") else 300
            TOKENS[tok] = (repo, time.time() + life)
        key = "access_token" if repo.startswith("access/") else "token"
        body = {key: tok, "expires_in": life,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.reply(200, json.dumps(body).encode(), [("Content-Type", "application/json")])

    # ---- registry ----

    def authorized(self, repo):
        auth = self.headers.get("Authorization", "")
        kind = repo.split("/")[0]
        if kind == "open" or kind == "cdn":
            if kind == "cdn" and not auth.startswith("Bearer "):
                return False, 'Bearer realm="http://127.0.0.1:%d/token",service="peer.test"' % PORTS[0]
            return True, None
        if kind == "basic":
            return auth == CREDS, 'Basic realm="peer"'
        realm_port = 1 if kind == "deadrealm" else PORTS[0]
        realm = "http://127.0.0.1:%d/token" % realm_port
        if kind == "foreign":
            realm = "http://127.0.0.2:%d/token" % PORTS[1]
        elif kind == "tokredir":
            realm = "http://127.0.0.1:%d/tokenredirect" % PORTS[0]
        challenge = ('Bearer realm="%s",service="peer.test",'
                     'scope="repository:%s:pull"' % (realm, repo))
        if not auth.startswith("Bearer "):
            return False, challenge
        tok = auth[7:]
        with LOCK:
            known = TOKENS.get(tok)
        if not known or known[0] != repo or known[1] < time.time():
            return False, challenge + ',error="invalid_token"'
        with LOCK:
            uses = USES.get(tok, 0) + 1
            USES[tok] = uses
        if kind == "deny" or (kind == "revoke" and tok.startswith("tok-1-") and uses > 1):
            return False, challenge + ',error="insufficient_scope"'
        return True, None

    def registry(self, path):
        parts = path[4:].split("/")
        if len(parts) < 3 or parts[-2] not in ("manifests", "blobs"):
            self.reply(404, b"{}")
            return
        repo = "/".join(parts[:-2])
        kind, ref = parts[-2], parts[-1]
        count("%s %s" % (self.command, path))
        if self.headers.get("Authorization"):
            count("registry_auth")
        ok, challenge = self.authorized(repo)
        if not ok:
            count("401")
            self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                       [("WWW-Authenticate", challenge), ("Content-Type", "application/json")])
            return
        rl = [("ratelimit-limit", "100;w=21600"), ("ratelimit-remaining", "99;w=21600")]
        top = repo.split("/")[0]
        if top == "flaky" or top == "down":
            with LOCK:
                hits = PATH_HITS.get(path, 0) + 1
                PATH_HITS[path] = hits
            if top == "down" or hits <= 2:
                self.reply(503, b"busy")
                return
        if top == "limited":
            self.reply(429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}',
                       [("Retry-After", "42"), ("ratelimit-limit", "100;w=21600"),
                        ("ratelimit-remaining", "0;w=21600")])
            return
        if ref == "missing":
            self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return
        if kind == "manifests":
            body = json.dumps({"schemaVersion": 2, "repo": repo, "ref": ref}).encode()
            self.reply(200, body, rl + [
                ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                ("Docker-Content-Digest", "sha256:" + "ab" * 32),
                ("X-Accept", ",".join(self.headers.get_all("Accept") or []))])
            return
        if top == "cdn":
            self.reply(307, b"", [("Location", "http://127.0.0.2:%d/cdn/%s?sig=s3cr3t"
                                   % (PORTS[1], ref))])
            return
        if top == "rel":
            self.reply(302, b"", [("Location", "/v2/open/x/blobs/" + ref)])
            return
        n = 1048576 if ref == "big" else 1000
        rng = self.headers.get("Range")
        if rng:
            start, end = rng[6:].split("-")
            start, end = int(start), int(end)
            self.reply(206, pattern(start, end - start + 1),
                       [("Content-Range", "bytes %d-%d/%d" % (start, end, n))])
            return
        self.reply(200, pattern(0, n), [("Content-Type", "application/octet-stream")])

    def cdn(self, path):
        count("cdn")
        if self.headers.get("Authorization"):
            count("cdn_auth")
        self.reply(200, pattern(0, 5000), [("Content-Type", "application/octet-stream")])

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        if not path.startswith("/_"):
            with LOCK:
                CONNS.add(self.client_address)
                STATS["conns"] = len(CONNS)
        if self.server.server_address[0] == "127.0.0.2" and path == "/token":
            count("foreign_token")
            if self.headers.get("Authorization"):
                count("foreign_token_auth")
            self.token(query)
        elif self.server.server_address[0] == "127.0.0.2":
            self.cdn(path)
        elif path == "/tokenredirect":
            count("token_redirect")
            if self.headers.get("Authorization"):
                count("token_redirect_auth")
            self.reply(302, b"", [("Location", "http://127.0.0.2:%d/token?%s"
                                   % (PORTS[1], url.query))])
        elif path == "/_stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self.reply(200, body)
        elif path == "/_reset":
            with LOCK:
                STATS.clear()
                PATH_HITS.clear()
                CONNS.clear()
            self.reply(200, b"{}")
        elif path == "/token":
            self.token(query)
        elif path.startswith("/v2/"):
            self.registry(path)
        else:
            self.plain(path, query)

    do_GET = do_HEAD = do_POST = do_PUT = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the parallel tests connect dozens of sockets at once

    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-body are what several tests do on purpose


def main():
    servers = [Server(("127.0.0.1", 0), Handler), Server(("127.0.0.2", 0), Handler)]
    for i, s in enumerate(servers):
        PORTS[i] = s.server_address[1]
        threading.Thread(target=s.serve_forever, daemon=True).start()
    sys.stdout.write("PORTS %d %d\n" % (PORTS[0], PORTS[1]))
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
