#!/usr/bin/python3
"""A token server for regmirror's pull-through tests, speaking Docker Hub's token protocol.

The test upstream (distribution 2.8, `auth: token`) sends clients here; regmirror's upstream
client must get its tokens the way it gets them from auth.docker.io.

Protocol
  GET  /token?service=S&scope=repository:NAME:pull[,push]&scope=...[&offline_token=true]
       optional HTTP Basic auth (what docker, skopeo and podman send)
  POST /token  (application/x-www-form-urlencoded, OAuth2 as containerd sends it)
       grant_type=password&username=U&password=P  or  grant_type=refresh_token&refresh_token=R
       client_id, service, scope (several scopes space-separated, or repeated), access_type
  -> 200 {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": RFC3339
          [, "refresh_token": R]}
     401 {"details": "incorrect username or password"} for bad credentials (anonymous is fine)
     503 while the server is switched down (/control?down=1)

Policy (Hub-like): a scope the caller may not have is left out of the token's access list, the
request still succeeds. Anonymous callers get pull on every repository that does not match a
private pattern (default `private/*`). Users get their grants on top of that. Default users:
  alice / wonderland   pull on private/*
  pusher / pusher      pull, push, delete on everything, and registry:catalog:*

JWT: RS256 (or ES256), header kid = libtrust key ID of the public key, claims iss, sub,
aud (= service, a string as distribution 2.8 wants), exp, nbf, iat, jti, access. distribution
accepts a token until exp + 60 s (its clock-skew leeway); `exp` is written that much early so the
token really stops working `lifetime` seconds after issue, as `expires_in` says.

Control and inspection
  GET /stats                 {"requests", "failures", "issued", "by_user", "by_method", "log"}
                             (each log entry says whether an Authorization header came)
  GET /control?down=1|0&lifetime=N&omit_expires_in=1|0&reset=1    -> current settings
  GET /healthz

Standalone:
  python3 tokenserver.py --port P --key K --issuer I --service S --users users.json
      [--bundle B] [--lifetime N] [--alg RS256|ES256]
K is created when missing; the PEM certificate bundle for distribution's
`auth.token.rootcertbundle` goes to B (default: K with suffix .bundle.pem).
users.json: {"users": {"NAME": {"password": "...", "grants": [["PATTERN", ["pull", ...]], ...]}},
             "private": ["private/*"]}   (both keys optional; without "users" the defaults apply)
"""

import argparse
import base64
import datetime
import fnmatch
import hashlib
import json
import os
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

DEFAULT_ISSUER = "test-issuer"
DEFAULT_SERVICE = "test-upstream"
DEFAULT_LIFETIME = 300
# distribution 2.8 accepts tokens until exp + Leeway (registry/auth/token/token.go).
REGISTRY_LEEWAY = 60

DEFAULT_USERS = {
    "alice": {"password": "wonderland", "grants": [["private/*", ["pull"]]]},
    "pusher": {"password": "pusher", "grants": [["*", ["pull", "push", "delete"]]],
               "catalog": True},
}
DEFAULT_PRIVATE = ["private/*"]


# ---------------------------------------------------------------------------
# keys, certificates, JWT

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    text = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text.encode())


def libtrust_key_id(public_key):
    """docker/libtrust's key ID: base32 of the first 30 bytes of SHA-256 of the DER
    SubjectPublicKeyInfo, no padding, in 12 groups of 4 joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i:i + 4] for i in range(0, len(s), 4))


def generate_key(alg="RS256"):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def load_or_create_key(path, alg="RS256"):
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    key = generate_key(alg)
    if path:
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return key


def key_alg(key):
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


def self_signed_cert_pem(key, common_name="regmirror test token issuer"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def sign_jwt(key, claims, header_extra=None):
    """Compact JWS of `claims` signed with `key` (RSA -> RS256, EC P-256 -> ES256), with the
    libtrust kid of the key in the header."""
    alg = key_alg(key)
    header = {"typ": "JWT", "alg": alg, "kid": libtrust_key_id(key.public_key())}
    if header_extra:
        header.update(header_extra)
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    if alg == "ES256":
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def decode_jwt(token):
    """(header, claims) of a JWT, without verifying it (for tests)."""
    h, c, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(c))


def rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# scopes and policy

def parse_scope(scope):
    """'repository:library/alpine:pull,push' -> ('repository', 'library/alpine', ['pull','push']).
    The name may itself contain ':' (a host:port prefix); the type is before the first ':',
    the actions after the last one. Returns None for a malformed scope."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last == first:
        return None
    typ, name, actions = scope[:first], scope[first + 1:last], scope[last + 1:]
    if not name:
        return None
    return typ, name, [a for a in actions.split(",") if a]


class Policy:
    def __init__(self, users=None, private=None):
        self.users = json.loads(json.dumps(users if users is not None else DEFAULT_USERS))
        self.private = list(private if private is not None else DEFAULT_PRIVATE)

    @classmethod
    def from_file(cls, path):
        with open(path) as f:
            data = json.load(f)
        return cls(data.get("users"), data.get("private"))

    def authenticate(self, user, password):
        u = self.users.get(user)
        return u is not None and secrets.compare_digest(str(u.get("password", "")), password)

    def is_private(self, name):
        return any(fnmatch.fnmatchcase(name, p) for p in self.private)

    def allowed(self, user, typ, name):
        """The set of actions `user` (None: anonymous) may have on the resource."""
        acts = set()
        if typ == "repository":
            if not self.is_private(name):
                acts.add("pull")
            u = self.users.get(user) if user else None
            for pattern, actions in (u or {}).get("grants", []):
                if fnmatch.fnmatchcase(name, pattern):
                    acts.update(actions)
        elif typ == "registry" and name == "catalog":
            u = self.users.get(user) if user else None
            if u and u.get("catalog"):
                acts.add("*")
        return acts

    def grant(self, user, scopes):
        """The access list for a token: requested actions the user may have, unknown or
        denied ones left out; one entry per (type, name)."""
        out = {}
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            typ, name, wanted = parsed
            allowed = self.allowed(user, typ, name)
            got = [a for a in wanted if a in allowed]
            if not got:
                continue
            entry = out.setdefault((typ, name), {"type": typ, "name": name, "actions": []})
            for a in got:
                if a not in entry["actions"]:
                    entry["actions"].append(a)
        return list(out.values())


# ---------------------------------------------------------------------------
# the server

class TokenServer:
    """Hub-style token server on 127.0.0.1:<port> (0: a free port), in a thread of this process.

    ts = TokenServer(workdir).start(); ts.realm -> "http://127.0.0.1:P/token";
    ts.bundle_path -> the PEM bundle for rootcertbundle; ts.stats(); ts.reset();
    ts.configure(down=True, lifetime=3, omit_expires_in=True); ts.stop().
    """

    def __init__(self, workdir=None, port=0, key_path=None, bundle_path=None,
                 issuer=DEFAULT_ISSUER, service=DEFAULT_SERVICE, policy=None,
                 lifetime=DEFAULT_LIFETIME, alg="RS256", leeway_compensation=REGISTRY_LEEWAY,
                 host="127.0.0.1"):
        self.host = host
        self.port = port
        self.issuer = issuer
        self.service = service
        self.policy = policy or Policy()
        if workdir and not key_path:
            key_path = os.path.join(str(workdir), "token-key.pem")
        if key_path and not bundle_path:
            bundle_path = os.path.splitext(key_path)[0] + ".bundle.pem"
        self.key = load_or_create_key(key_path, alg)
        self.key_path = key_path
        self.kid = libtrust_key_id(self.key.public_key())
        self.bundle_pem = self_signed_cert_pem(self.key)
        self.bundle_path = bundle_path
        if bundle_path:
            with open(bundle_path, "wb") as f:
                f.write(self.bundle_pem)
        self.defaults = {"down": False, "lifetime": lifetime, "omit_expires_in": False,
                         "leeway_compensation": leeway_compensation, "delay": 0.0}
        self.settings = dict(self.defaults)
        self._lock = threading.Lock()
        self._refresh = {}  # refresh token -> user
        self._httpd = None
        self._thread = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    @property
    def realm(self):
        return self.url + "/token"

    def _bind(self):
        server = self

        class Handler(_TokenHandler):
            ts = server

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]

    def start(self):
        self._bind()
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="tokenserver:%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def running(self):
        return self._httpd is not None

    def serve_forever(self):
        """For the command line: bind (unless bound) and serve in the calling thread."""
        if self._httpd is None:
            self._bind()
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self._httpd.server_close()
            self._httpd = None

    # -- settings and counters ------------------------------------------------
    def configure(self, **kw):
        """down, lifetime, omit_expires_in, leeway_compensation, delay (seconds per answer)."""
        with self._lock:
            for k, v in kw.items():
                if k not in self.defaults:
                    raise KeyError("unknown token server setting %r" % k)
                self.settings[k] = v
            return dict(self.settings)

    def restore_defaults(self):
        with self._lock:
            self.settings = dict(self.defaults)

    def reset(self):
        with self._lock:
            self._stats = {"requests": 0, "failures": 0, "issued": 0, "by_user": {},
                           "by_method": {}, "by_status": {}, "log": []}

    def stats(self):
        with self._lock:
            return json.loads(json.dumps(self._stats))

    def _record(self, entry):
        with self._lock:
            s = self._stats
            s["requests"] += 1
            user = entry.get("user") or "anonymous"
            s["by_user"][user] = s["by_user"].get(user, 0) + 1
            s["by_method"][entry["method"]] = s["by_method"].get(entry["method"], 0) + 1
            st = str(entry["status"])
            s["by_status"][st] = s["by_status"].get(st, 0) + 1
            if entry["status"] != 200:
                s["failures"] += 1
            else:
                s["issued"] += 1
            s["log"].append(entry)
            if len(s["log"]) > 2000:
                del s["log"][:1000]

    # -- tokens -----------------------------------------------------------------
    def make_token(self, user, access, lifetime=None, now=None, audience=None, issuer=None,
                   key=None, leeway_compensation=None):
        """A signed JWT; tests use it to forge expired, foreign or mis-addressed tokens."""
        now = int(now if now is not None else time.time())
        if lifetime is None:
            lifetime = self.settings["lifetime"]
        if leeway_compensation is None:
            leeway_compensation = self.settings["leeway_compensation"]
        claims = {
            "iss": issuer or self.issuer,
            "sub": user or "",
            "aud": audience or self.service,
            "exp": now + int(lifetime) - int(leeway_compensation),
            "nbf": now - int(leeway_compensation),
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return sign_jwt(key or self.key, claims)

    def issue(self, user, scopes, offline=False):
        """The JSON answer for `user` (None: anonymous) asking for `scopes`."""
        now = time.time()
        access = self.policy.grant(user, scopes)
        lifetime = self.settings["lifetime"]
        token = self.make_token(user, access, lifetime=lifetime, now=now)
        body = {"token": token, "access_token": token, "issued_at": rfc3339(now)}
        if not self.settings["omit_expires_in"]:
            body["expires_in"] = int(lifetime)
        if offline and user:
            rt = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh[rt] = user
            body["refresh_token"] = rt
        return body, access

    def refresh_user(self, refresh_token):
        with self._lock:
            return self._refresh.get(refresh_token)


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "regmirror-test-tokenserver/1"
    ts = None  # set by subclass

    def log_message(self, fmt, *args):
        pass

    def _send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self):
        u = urlsplit(self.path)
        q = parse_qs(u.query, keep_blank_values=True)
        if u.path == "/token":
            return self._token(q)
        if u.path == "/stats":
            return self._send_json(200, self.ts.stats())
        if u.path == "/control":
            self._read_body()
            kw = {}
            for k in ("down", "omit_expires_in"):
                if k in q:
                    kw[k] = q[k][-1] in ("1", "true", "yes")
            for k in ("lifetime", "leeway_compensation"):
                if k in q:
                    kw[k] = int(q[k][-1])
            if "delay" in q:
                kw["delay"] = float(q["delay"][-1])
            if q.get("reset", ["0"])[-1] in ("1", "true"):
                self.ts.reset()
            try:
                return self._send_json(200, self.ts.configure(**kw))
            except KeyError as e:
                return self._send_json(400, {"details": str(e)})
        if u.path == "/healthz":
            return self._send_json(200, {"ok": True})
        self._read_body()
        return self._send_json(404, {"details": "not found"})

    def _basic_auth(self):
        """(user, password) from an Authorization: Basic header, or None."""
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None
        try:
            raw = base64.b64decode(h[6:].strip()).decode("utf-8")
        except Exception:
            return ("", "\0invalid")
        user, _, password = raw.partition(":")
        return user, password

    def _token(self, q):
        ts = self.ts
        entry = {"t": time.time(), "method": self.command, "user": None, "scopes": [],
                 "granted": [], "status": 0, "grant_type": None, "client_id": None,
                 "service": None, "user_agent": self.headers.get("User-Agent"),
                 "authorization": self.headers.get("Authorization") is not None}
        try:
            self._token_inner(q, entry)
        finally:
            if not entry["status"]:  # an exception: still counted
                ts._record(entry)

    def _answer(self, entry, status, obj, headers=None):
        """Counts the request, then answers: a client that got its answer sees it counted."""
        entry["status"] = status
        self.ts._record(entry)
        self._send_json(status, obj, headers)

    _fail = _answer

    def _token_inner(self, q, entry):
        ts = self.ts
        body = self._read_body() if self.command == "POST" else b""
        if ts.settings["delay"]:
            time.sleep(ts.settings["delay"])
        if ts.settings["down"]:
            return self._fail(entry, 503, {"details": "token service unavailable"},
                              {"Retry-After": "1"})
        params = {k: list(v) for k, v in q.items()}
        if self.command == "POST":
            ctype = self.headers.get("Content-Type", "")
            if "application/x-www-form-urlencoded" not in ctype:
                return self._fail(entry, 400, {"error": "invalid_request",
                                               "details": "form body expected"})
            for k, v in parse_qs(body.decode("utf-8", "replace"),
                                 keep_blank_values=True).items():
                params.setdefault(k, []).extend(v)
        scopes = []
        for s in params.get("scope", []):
            scopes.extend(x for x in s.split(" ") if x)
        entry["scopes"] = scopes
        service = (params.get("service") or [None])[-1]
        entry["service"] = service
        entry["client_id"] = (params.get("client_id") or [None])[-1]
        if service is not None and service != ts.service:
            return self._fail(entry, 400, {"details": "unknown service %r" % service})

        user = None
        offline = False
        if self.command == "POST":
            grant = (params.get("grant_type") or [""])[-1]
            entry["grant_type"] = grant
            if grant == "password":
                user = (params.get("username") or [""])[-1]
                password = (params.get("password") or [""])[-1]
                entry["user"] = user
                if not ts.policy.authenticate(user, password):
                    return self._fail(entry, 401, {"error": "invalid_grant",
                                                   "details": "incorrect username or password"})
            elif grant == "refresh_token":
                user = ts.refresh_user((params.get("refresh_token") or [""])[-1])
                entry["user"] = user
                if not user:
                    return self._fail(entry, 401, {"error": "invalid_grant",
                                                   "details": "invalid refresh token"})
            else:
                return self._fail(entry, 400, {"error": "unsupported_grant_type"})
            offline = (params.get("access_type") or [""])[-1] == "offline"
        else:
            creds = self._basic_auth()
            if creds is not None:
                user, password = creds
                entry["user"] = user
                if not ts.policy.authenticate(user, password):
                    return self._fail(entry, 401, {"details": "incorrect username or password"},
                                      {"WWW-Authenticate": 'Basic realm="regmirror-test"'})
            offline = (params.get("offline_token") or [""])[-1] == "true"

        answer, access = ts.issue(user, scopes, offline=offline)
        entry["granted"] = access
        self._answer(entry, 200, answer)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--key", required=True, help="PEM private key (created when missing)")
    ap.add_argument("--bundle", help="where to write the certificate bundle "
                    "(default: KEY with suffix .bundle.pem)")
    ap.add_argument("--issuer", default=DEFAULT_ISSUER)
    ap.add_argument("--service", default=DEFAULT_SERVICE)
    ap.add_argument("--users", help="users.json (see the module doc)")
    ap.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME)
    ap.add_argument("--alg", choices=("RS256", "ES256"), default="RS256")
    args = ap.parse_args(argv)
    policy = Policy.from_file(args.users) if args.users else Policy()
    ts = TokenServer(port=args.port, host=args.host, key_path=args.key, bundle_path=args.bundle,
                     issuer=args.issuer, service=args.service, policy=policy,
                     lifetime=args.lifetime, alg=args.alg)
    ts._bind()
    print("tokenserver: realm %s service=%s issuer=%s kid=%s bundle=%s" % (
        ts.realm, ts.service, ts.issuer, ts.kid, ts.bundle_path), flush=True)
    try:
        ts.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
