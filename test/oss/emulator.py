#!/usr/bin/env python3
"""Aliyun OSS emulator for regmirror's tests: a small HTTP server over a local directory.

    python3 test/oss/emulator.py --port P --root DIR --ak AK --sk SK [--bucket B] ...

or, from Python (pytest):

    from emulator import Emulator
    emu = Emulator(root, ak="AK", sk="SK", buckets=["b1"]).start()   # port 0 = any free port
    ... emu.port, emu.stats(), emu.keys("b1"), emu.get_bytes("b1", "k") ...
    emu.stop()

What it is (see test/oss/README.md for the full list):
- Virtual-hosted style only, as OSS: the bucket is the first label of the Host
  (`<bucket>.<endpoint-host>`), or the Host is a bucket's custom domain (--cname DOMAIN=BUCKET).
  A request to an IP / `localhost` Host is path style, which OSS refuses
  (403 SecondLevelDomainForbidden); such hosts serve the control API under `/__`.
- Every request must carry a signature that verifies: V1 header (`OSS ak:sig`), V1 signed URL
  (OSSAccessKeyId/Expires/Signature), V4 header (`OSS4-HMAC-SHA256 Credential=...`) and V4
  signed URL (x-oss-signature-version/x-oss-credential/x-oss-date/x-oss-expires/x-oss-signature).
- Objects: Put/Get(Range, OSS rules)/Head/Delete/DeleteMultiple/ListObjects(V1, V2)/Copy,
  multipart (initiate, part, part copy, complete, abort, list parts, list uploads).
- Bodies are streamed to temp files and renamed into place; nothing big is held in memory.
- Control API (Host = IP or localhost): GET /__stats, POST /__stats/reset, GET /__requests,
  POST /__faults (JSON), DELETE /__faults, GET /__health, PUT /__buckets/<name>.

Python 3 standard library only (Debian's /usr/bin/python3).
"""

import argparse
import base64
import binascii
import bisect
import calendar
import collections
import email.utils
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape as _xml_escape

KB = 1024
MB = 1024 * KB
GB = 1024 * MB

# Limits of the real service (each can be lowered per emulator so tests need no GB objects).
DEFAULT_LIMITS = {
    "min_part_size": 100 * KB,      # every part but the last, checked at CompleteMultipartUpload
    "max_part_size": 5 * GB,
    "max_parts": 10000,
    "max_object_size": 5 * GB,      # PutObject
    "copy_limit": 1 * GB,           # CopyObject source; above it UploadPartCopy is required
    "max_delete_keys": 1000,
    "max_keys": 1000,
    "max_key_bytes": 1023,
}

MAX_SKEW = 15 * 60          # seconds of clock difference OSS tolerates (RequestTimeTooSkewed)
MAX_V4_EXPIRES = 7 * 24 * 3600

# V1: query parameters that are part of the CanonicalizedResource (the union of what
# aliyun-oss-go-sdk, alibabacloud-oss-go-sdk-v2 and ali-oss sign); any `x-oss-*` query
# parameter is signed too.
V1_SUBRESOURCES = frozenset("""
acl uploads location cors logging website referer lifecycle delete append tagging objectMeta
uploadId partNumber security-token position img style styleName replication replicationProgress
replicationLocation cname bucketInfo comp qos live status vod startTime endTime symlink
x-oss-process response-content-type x-oss-traffic-limit response-content-language
response-expires response-cache-control response-content-disposition response-content-encoding
udf udfName udfImage udfId udfImageDesc udfApplication udfApplicationLog restore callback
callback-var qosInfo policy stat encryption versions versioning versionId requestPayment
x-oss-request-payer sequential inventory inventoryId continuation-token asyncFetch worm wormId
wormExtend withHashContext x-oss-enable-md5 x-oss-enable-sha1 x-oss-enable-sha256
x-oss-hash-ctx x-oss-md5-ctx transferAcceleration regionList cloudboxes x-oss-ac-source-ip
x-oss-ac-subnet-mask x-oss-ac-vpc-id x-oss-ac-forward-allow metaQuery resourceGroup rtc
x-oss-async-process responseHeader
""".split())

# Error codes -> EC values shown in <EC> and x-oss-ec. Illustrative: clients key on <Code>.
_EC = {
    "NoSuchKey": "0026-00000001",
    "NoSuchBucket": "0015-00000101",
    "SignatureDoesNotMatch": "0002-00000040",
    "InvalidAccessKeyId": "0002-00000902",
    "AccessDenied": "0003-00000001",
    "RequestTimeTooSkewed": "0002-00000017",
    "NoSuchUpload": "0042-00000002",
}


class OSSError(Exception):
    def __init__(self, status, code, message, **extra):
        super().__init__("%d %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra   # more XML elements (StringToSign, ...)


# --------------------------------------------------------------------------------------------
# Signatures. Pure functions of the request's parts; the unit tests call them with published
# vectors.
#   headers: dict lower-case name -> value (several values already joined with ",")
#   query:   list of (name, value) pairs, both URL-decoded, in request order
# --------------------------------------------------------------------------------------------

def v1_canonical_resource(bucket, key, query):
    res = "/"
    if bucket:
        res += bucket + "/"
    if key:
        res += key
    params = {}
    for k, v in query:
        if k in V1_SUBRESOURCES or k.startswith("x-oss-"):
            params[k] = v
    if params:
        res += "?" + "&".join(k + ("=" + params[k] if params[k] else "") for k in sorted(params))
    return res


def v1_string_to_sign(method, headers, bucket, key, query, date):
    oss = sorted((k, v.strip()) for k, v in headers.items() if k.startswith("x-oss-"))
    return "\n".join([method.upper(), headers.get("content-md5", ""),
                      headers.get("content-type", ""), date]) + "\n" + \
        "".join("%s:%s\n" % kv for kv in oss) + v1_canonical_resource(bucket, key, query)


def v1_signature(secret, string_to_sign):
    mac = hmac.new(secret.encode(), string_to_sign.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _uri_encode(s, safe=""):
    # RFC 3986 unreserved characters stay, everything else is %XX of its UTF-8 bytes.
    return urllib.parse.quote(s, safe=safe + "~")


def v4_canonical_uri(bucket, key):
    return _uri_encode("/" + (bucket + "/" if bucket else "") + (key or ""), safe="/")


def v4_canonical_query(query, exclude=()):
    items = sorted((_uri_encode(k), _uri_encode(v)) for k, v in query if k not in exclude)
    return "&".join(k + ("=" + v if v else "") for k, v in items)


def v4_canonical_headers(headers, additional):
    names = sorted(set(k for k in headers
                       if k in ("content-type", "content-md5") or k.startswith("x-oss-"))
                   | set(additional))
    return "".join("%s:%s\n" % (k, headers.get(k, "").strip()) for k in names)


def v4_canonical_request(method, bucket, key, query, headers, additional, exclude_query=()):
    return "\n".join([
        method.upper(),
        v4_canonical_uri(bucket, key),
        v4_canonical_query(query, exclude_query),
        v4_canonical_headers(headers, additional),
        ";".join(additional),
        headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
    ])


def v4_string_to_sign(datetime_iso, scope, canonical_request):
    return "\n".join(["OSS4-HMAC-SHA256", datetime_iso, scope,
                      hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])


def v4_signing_key(secret, date, region, product="oss"):
    k = hmac.new(("aliyun_v4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, product, "aliyun_v4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def v4_signature(secret, date, region, product, string_to_sign):
    return hmac.new(v4_signing_key(secret, date, region, product),
                    string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_query(raw):
    """Raw query string -> list of (name, value), '+' and %XX decoded, empty value for `k`."""
    out = []
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((urllib.parse.unquote_plus(k), urllib.parse.unquote_plus(v)))
    return out


def _parse_http_date(s):
    t = email.utils.parsedate_tz(s)
    if t is None:
        return None
    return email.utils.mktime_tz(t)


def _parse_iso_basic(s):
    try:
        return calendar.timegm(time.strptime(s, "%Y%m%dT%H%M%SZ"))
    except (ValueError, TypeError):
        return None


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


def iso8601(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def xml_text(s):
    return _xml_escape(str(s))


def _request_id():
    return uuid.uuid4().hex[:24].upper()


# --------------------------------------------------------------------------------------------
# Storage: one directory per bucket under root. Object data and metadata live in files named
# by a hash of the key (any key works, no file/directory clashes); an in-memory sorted index of
# the metadata serves listings. Writes go to a temp file and are renamed into place.
# --------------------------------------------------------------------------------------------

class Bucket:
    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.objdir = os.path.join(path, "objects")
        self.tmpdir = os.path.join(path, "tmp")
        self.updir = os.path.join(path, "uploads")
        for d in (self.objdir, self.tmpdir, self.updir):
            os.makedirs(d, exist_ok=True)
        for f in os.listdir(self.tmpdir):
            _unlink(os.path.join(self.tmpdir, f))
        shutil.rmtree(self.updir, ignore_errors=True)
        os.makedirs(self.updir, exist_ok=True)
        self.keys = []          # sorted
        self.meta = {}          # key -> dict
        self.uploads = {}       # upload id -> dict
        for sub in os.listdir(self.objdir):
            d = os.path.join(self.objdir, sub)
            for f in os.listdir(d):
                if f.endswith(".json"):
                    try:
                        with open(os.path.join(d, f)) as fh:
                            m = json.load(fh)
                    except (OSError, ValueError):
                        continue
                    self.meta[m["key"]] = m
        self.keys = sorted(self.meta)

    def base(self, key):
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        d = os.path.join(self.objdir, h[:2])
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, h)

    def tmpfile(self):
        path = os.path.join(self.tmpdir, uuid.uuid4().hex)
        return path, open(path, "w+b")


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Store:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.lock = threading.RLock()
        self.buckets = {}
        for name in sorted(os.listdir(self.root)):
            if os.path.isdir(os.path.join(self.root, name)) and _valid_bucket(name):
                self.buckets[name] = Bucket(name, os.path.join(self.root, name))

    def create_bucket(self, name):
        if not _valid_bucket(name):
            raise OSSError(400, "InvalidBucketName", "The specified bucket is not valid.",
                           BucketName=name)
        with self.lock:
            if name not in self.buckets:
                self.buckets[name] = Bucket(name, os.path.join(self.root, name))
            return self.buckets[name]

    def bucket(self, name):
        b = self.buckets.get(name)
        if b is None:
            raise OSSError(404, "NoSuchBucket", "The specified bucket does not exist.",
                           BucketName=name)
        return b

    def head(self, b, key):
        with self.lock:
            m = b.meta.get(key)
        if m is None:
            raise OSSError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        return m

    def open(self, b, key):
        """(meta, open file) of the current version; the file stays readable after a replace."""
        with self.lock:
            m = b.meta.get(key)
            if m is None:
                raise OSSError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
            return m, open(os.path.join(os.path.dirname(b.base(key)), m["data"]), "rb")

    def commit(self, b, key, tmp_path, meta):
        """Move a finished temp file into place as `key` with `meta` (atomic for readers)."""
        base = b.base(key)
        data_name = os.path.basename(base) + "." + uuid.uuid4().hex[:12] + ".data"
        meta = dict(meta, key=key, data=data_name)
        os.replace(tmp_path, os.path.join(os.path.dirname(base), data_name))
        mtmp = base + ".json." + uuid.uuid4().hex[:8]
        with open(mtmp, "w") as fh:
            json.dump(meta, fh)
        with self.lock:
            old = b.meta.get(key)
            os.replace(mtmp, base + ".json")
            if old is None:
                bisect.insort(b.keys, key)
            b.meta[key] = meta
            if old is not None:
                _unlink(os.path.join(os.path.dirname(base), old["data"]))
        return meta

    def delete(self, b, key):
        with self.lock:
            old = b.meta.pop(key, None)
            if old is None:
                return False
            i = bisect.bisect_left(b.keys, key)
            if i < len(b.keys) and b.keys[i] == key:
                del b.keys[i]
            base = b.base(key)
            _unlink(base + ".json")
            _unlink(os.path.join(os.path.dirname(base), old["data"]))
            return True

    def iter_keys(self, b, start_after, prefix):
        """(key, meta) in order, key > start_after, with prefix. Call with self.lock held."""
        i = bisect.bisect_right(b.keys, start_after) if start_after else 0
        if prefix:
            i = max(i, bisect.bisect_left(b.keys, prefix))
        while i < len(b.keys):
            k = b.keys[i]
            if prefix and not k.startswith(prefix):
                break
            yield k, b.meta[k]
            i += 1


def _valid_bucket(name):
    return re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name or "") is not None


def _is_ip(host):
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.strip("[]"))
        return True
    except OSError:
        return False


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.ops = collections.Counter()
            self.auth = collections.Counter()
            self.errors = collections.Counter()
            self.statuses = collections.Counter()
            self.bytes_in = 0
            self.bytes_out = 0
            self.requests = collections.deque(maxlen=2000)

    def record(self, rec):
        with self.lock:
            self.ops[rec["op"]] += 1
            self.auth[rec["auth"]] += 1
            self.statuses[str(rec["status"])] += 1
            if rec.get("code"):
                self.errors[rec["code"]] += 1
            self.bytes_in += rec.get("bytes_in", 0)
            self.requests.append(rec)

    def add_out(self, n):
        with self.lock:
            self.bytes_out += n

    def as_dict(self):
        with self.lock:
            return {"ops": dict(self.ops), "auth": dict(self.auth), "errors": dict(self.errors),
                    "statuses": dict(self.statuses), "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out, "total": sum(self.ops.values())}


# --------------------------------------------------------------------------------------------
# Request body: Content-Length or chunked, read in pieces.
# --------------------------------------------------------------------------------------------

class Body:
    def __init__(self, rfile, length, chunked):
        self.rfile = rfile
        self.left = length
        self.chunked = chunked
        self.chunk_left = 0
        self.done = (not chunked) and not length
        self.count = 0

    def read(self, n=256 * KB):
        if self.done:
            return b""
        if self.chunked:
            if self.chunk_left == 0:
                line = self.rfile.readline(1024)
                try:
                    self.chunk_left = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise OSSError(400, "InvalidArgument", "Bad chunked encoding.")
                if self.chunk_left == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return b""
            data = self.rfile.read(min(n, self.chunk_left))
            if not data:
                raise ConnectionError("client went away")
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                self.rfile.readline(16)
        else:
            data = self.rfile.read(min(n, self.left))
            if not data:
                raise ConnectionError("client went away")
            self.left -= len(data)
            if self.left == 0:
                self.done = True
        self.count += len(data)
        return data

    def read_all(self, limit=10 * MB):
        buf = io.BytesIO()
        while True:
            d = self.read()
            if not d:
                break
            buf.write(d)
            if buf.tell() > limit:
                raise OSSError(400, "InvalidArgument", "Request body too large.")
        return buf.getvalue()

    def drain(self, limit=8 * MB):
        """Consume what is left (so the connection can be reused); False if too much."""
        total = 0
        while not self.done:
            d = self.read()
            if not d:
                break
            total += len(d)
            if total > limit:
                return False
        return True


# --------------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""

    def setup(self):
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK
        # cost ~40 ms per small response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.emu.verbose:
            sys.stderr.write("oss-emulator: " + (fmt % args) + "\n")

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- plumbing --------------------------------------------------------------------------

    def _handle(self):
        emu = self.server.emu
        self.rid = _request_id()
        self.rec = {"method": self.command, "path": self.path, "host": self.headers.get("Host", ""),
                    "op": "Unknown", "auth": "none", "status": 0, "code": None,
                    "bytes_in": 0, "bytes_out": 0, "time": time.time()}
        self.recorded = False
        self.body = None
        path, _, rawq = self.path.partition("?")
        self.query_list = parse_query(rawq)
        self.query = dict(self.query_list)
        self.hdrs = {}
        for k, v in self.headers.items():
            k = k.lower()
            self.hdrs[k] = (self.hdrs[k] + "," + v) if k in self.hdrs else v
        te = self.hdrs.get("transfer-encoding", "").lower()
        try:
            length = int(self.hdrs.get("content-length", "0") or 0)
        except ValueError:
            length = 0
        self.body = Body(self.rfile, length, "chunked" in te)
        try:
            self.bucket_name, control = self._route_host()
            if control:
                self.rec["op"] = "Control"
                self._control(urllib.parse.unquote(path))
                return
            self.key = urllib.parse.unquote(path)[1:] if path.startswith("/") else \
                urllib.parse.unquote(path)
            self.op = self._operation()
            self.rec["op"] = self.op
            self._check_key()
            self._authenticate()
            fault = emu.take_fault(self.op)
            if fault is not None:
                self._apply_fault(fault)
                return
            getattr(self, "op_" + self.op)()
        except OSSError as e:
            self._send_error(e)
        except (ConnectionError, BrokenPipeError, socket.timeout):
            self.close_connection = True
            self.rec["status"] = self.rec["status"] or 499
        except Exception as e:  # a bug here must be a 500, not a hung client
            import traceback
            traceback.print_exc()
            self._send_error(OSSError(500, "InternalError", "emulator bug: %r" % (e,)))
        finally:
            self._record()

    def _route_host(self):
        emu = self.server.emu
        host = self.hdrs.get("host", "").strip().lower()
        if host.startswith("["):
            hostname = host[:host.index("]") + 1] if "]" in host else host
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        hostname = hostname.rstrip(".")
        if hostname in emu.cnames:
            return emu.cnames[hostname], False
        if not hostname or _is_ip(hostname) or hostname == "localhost" or "." not in hostname:
            if self.path.startswith("/__"):
                return None, True
            raise OSSError(403, "SecondLevelDomainForbidden",
                           "Please use virtual hosted style to access.")
        bucket, _, rest = hostname.partition(".")
        if emu.endpoints and rest not in emu.endpoints:
            raise OSSError(403, "AccessDenied", "The host %r is not an endpoint of this "
                           "emulator (endpoints: %s)."
                           % (hostname, ", ".join(sorted(emu.endpoints))))
        return bucket, False

    def _operation(self):
        q, m = self.query, self.command
        if not self.key:
            if m == "GET":
                if "uploads" in q:
                    return "ListMultipartUploads"
                if "location" in q:
                    return "GetBucketLocation"
                if q.get("list-type") == "2":
                    return "ListObjectsV2"
                if any(k in q for k in ("acl", "bucketInfo", "cors", "lifecycle", "policy",
                                        "referer", "logging", "website", "versioning", "tagging")):
                    return "NotImplemented"
                return "ListObjects"
            if m == "POST" and "delete" in q:
                return "DeleteMultipleObjects"
            if m == "PUT" and not q:
                return "PutBucket"
            if m == "HEAD":
                return "HeadBucket"
            return "NotImplemented"
        if m == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return "UploadPartCopy" if "x-oss-copy-source" in self.hdrs else "UploadPart"
            if any(k in q for k in ("acl", "tagging", "symlink", "append")):
                return "NotImplemented"
            return "CopyObject" if "x-oss-copy-source" in self.hdrs else "PutObject"
        if m in ("GET", "HEAD"):
            if "uploadId" in q and m == "GET":
                return "ListParts"
            if "objectMeta" in q:
                return "GetObjectMeta"
            if any(k in q for k in ("acl", "tagging", "symlink")):
                return "NotImplemented"
            return "GetObject" if m == "GET" else "HeadObject"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if m == "POST":
            if "uploads" in q:
                return "InitiateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
        return "NotImplemented"

    def _check_key(self):
        if not self.key:
            return
        raw = self.key.encode("utf-8", "surrogatepass")
        if len(raw) > self.server.emu.limits["max_key_bytes"] or self.key[0] in "/\\":
            raise OSSError(400, "InvalidObjectName", "The specified object is not valid.",
                           ObjectName=self.key)
        try:
            self.key.encode("utf-8")
        except UnicodeEncodeError:
            raise OSSError(400, "InvalidObjectName", "The specified object is not valid.")

    # -- authentication --------------------------------------------------------------------

    def _authenticate(self):
        emu = self.server.emu
        auth = self.hdrs.get("authorization", "")
        q = self.query
        now = emu.clock()
        if auth.startswith("OSS4-HMAC-SHA256 "):
            self.rec["auth"] = "v4-header"
            self._auth_v4(auth[len("OSS4-HMAC-SHA256 "):], now, in_query=False)
        elif auth.startswith("OSS "):
            self.rec["auth"] = "v1-header"
            self._auth_v1_header(auth[4:], now)
        elif auth:
            self.rec["auth"] = "unsupported"
            raise OSSError(400, "InvalidArgument", "Authorization header is invalid "
                           "(the emulator speaks V1 `OSS` and V4 `OSS4-HMAC-SHA256`).")
        elif q.get("x-oss-signature-version") == "OSS4-HMAC-SHA256":
            self.rec["auth"] = "v4-query"
            self._auth_v4(None, now, in_query=True)
        elif "x-oss-signature-version" in q:
            self.rec["auth"] = "unsupported"
            raise OSSError(400, "InvalidArgument", "Unsupported x-oss-signature-version.")
        elif "Signature" in q or "OSSAccessKeyId" in q:
            self.rec["auth"] = "v1-query"
            self._auth_v1_query(now)
        else:
            raise OSSError(403, "AccessDenied", "You have no right to access this object "
                           "because of bucket acl.")

    def _secret(self, ak):
        sk = self.server.emu.credentials.get(ak)
        if sk is None:
            raise OSSError(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does "
                           "not exist in our records.", OSSAccessKeyId=ak)
        return sk

    def _sig_mismatch(self, sts, provided, **extra):
        raise OSSError(403, "SignatureDoesNotMatch", "The request signature we calculated does "
                       "not match the signature you provided. Check your key and signing "
                       "method.", StringToSign=sts, SignatureProvided=provided,
                       StringToSignBytes=" ".join("%02x" % c for c in sts.encode("utf-8")),
                       **extra)

    def _auth_v1_header(self, cred, now):
        ak, _, sig = cred.rpartition(":")
        sk = self._secret(ak.strip())
        # The Date line: the Date header, or x-oss-date when there is no Date (ali-oss sends
        # only x-oss-date; the Go SDKs send Date, v2 both with the same value).
        date = self.hdrs.get("date") or self.hdrs.get("x-oss-date")
        if not date:
            raise OSSError(403, "AccessDenied", "Missing Date header.")
        t = _parse_http_date(date)
        if t is None:
            raise OSSError(403, "AccessDenied", "Invalid Date header %r." % date)
        if abs(now - t) > MAX_SKEW:
            raise OSSError(403, "RequestTimeTooSkewed", "The difference between the request "
                           "time and the current time is too large.", RequestTime=date,
                           ServerTime=iso8601(now), MaxAllowedSkewMilliseconds=MAX_SKEW * 1000)
        sts = v1_string_to_sign(self.command, self.hdrs, self.bucket_name, self.key,
                                self.query_list, date)
        if not hmac.compare_digest(v1_signature(sk, sts), sig.strip()):
            self._sig_mismatch(sts, sig.strip())

    def _auth_v1_query(self, now):
        q = self.query
        for p in ("OSSAccessKeyId", "Expires", "Signature"):
            if p not in q:
                raise OSSError(403, "AccessDenied", "Missing %s in the signed URL." % p)
        sk = self._secret(q["OSSAccessKeyId"])
        try:
            expires = int(q["Expires"])
        except ValueError:
            raise OSSError(403, "AccessDenied", "Invalid Expires.")
        if now > expires:
            raise OSSError(403, "AccessDenied", "Request has expired.",
                           Expires=iso8601(expires), ServerTime=iso8601(now))
        qs = [(k, v) for k, v in self.query_list
              if k not in ("OSSAccessKeyId", "Expires", "Signature")]
        sts = v1_string_to_sign(self.command, self.hdrs, self.bucket_name, self.key, qs,
                                q["Expires"])
        if not hmac.compare_digest(v1_signature(sk, sts), q["Signature"]):
            self._sig_mismatch(sts, q["Signature"])

    def _auth_v4(self, header, now, in_query):
        emu = self.server.emu
        if in_query:
            q = self.query
            for p in ("x-oss-credential", "x-oss-date", "x-oss-expires", "x-oss-signature"):
                if not q.get(p):
                    raise OSSError(403, "AccessDenied", "Missing %s in the signed URL." % p)
            credential, provided = q["x-oss-credential"], q["x-oss-signature"]
            additional = q.get("x-oss-additional-headers", "")
            dt = q["x-oss-date"]
        else:
            fields = {}
            for part in header.split(","):
                k, _, v = part.strip().partition("=")
                fields[k] = v
            credential, provided = fields.get("Credential", ""), fields.get("Signature", "")
            additional = fields.get("AdditionalHeaders", "")
            if not credential or not provided:
                raise OSSError(403, "AccessDenied", "Invalid V4 Authorization header.")
            dt = self.hdrs.get("x-oss-date", "")
            if "x-oss-content-sha256" not in self.hdrs:
                raise OSSError(403, "AccessDenied", "Missing x-oss-content-sha256 header.")
        add_list = [h for h in additional.split(";")] if additional else []
        if any(not h or h != h.lower() for h in add_list) or add_list != sorted(add_list):
            raise OSSError(403, "AccessDenied", "Invalid AdditionalHeaders %r." % additional)
        for h in add_list:
            if h not in self.hdrs:
                raise OSSError(403, "AccessDenied", "Additional header %r is not in the request."
                               % h)
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aliyun_v4_request" or parts[3] != "oss":
            raise OSSError(403, "AccessDenied", "Invalid credential %r." % credential)
        ak, date, region = parts[0], parts[1], parts[2]
        sk = self._secret(ak)
        t = _parse_iso_basic(dt)
        if t is None:
            raise OSSError(403, "AccessDenied", "Invalid or missing x-oss-date %r." % dt)
        if date != dt[:8]:
            raise OSSError(403, "AccessDenied", "The credential date %s does not match "
                           "x-oss-date %s." % (date, dt))
        if emu.region and region != emu.region:
            raise OSSError(403, "AccessDenied", "Invalid signing region %r in the credential "
                           "(this bucket is in %r)." % (region, emu.region))
        if in_query:
            try:
                exp = int(self.query["x-oss-expires"])
            except ValueError:
                raise OSSError(403, "AccessDenied", "Invalid x-oss-expires.")
            if exp <= 0 or exp > MAX_V4_EXPIRES:
                raise OSSError(400, "InvalidArgument", "x-oss-expires must be 1..604800.")
            if now > t + exp:
                raise OSSError(403, "AccessDenied", "Request has expired.",
                               Expires=iso8601(t + exp), ServerTime=iso8601(now))
            if t - now > MAX_SKEW:
                raise OSSError(403, "AccessDenied", "Request is not valid yet.")
        elif abs(now - t) > MAX_SKEW:
            raise OSSError(403, "RequestTimeTooSkewed", "The difference between the request "
                           "time and the current time is too large.", RequestTime=dt,
                           ServerTime=iso8601(now), MaxAllowedSkewMilliseconds=MAX_SKEW * 1000)
        creq = v4_canonical_request(self.command, self.bucket_name, self.key, self.query_list,
                                    self.hdrs, add_list,
                                    exclude_query=("x-oss-signature",) if in_query else ())
        sts = v4_string_to_sign(dt, "/".join(parts[1:]), creq)
        if not hmac.compare_digest(v4_signature(sk, date, region, "oss", sts), provided):
            self._sig_mismatch(sts, provided, CanonicalRequest=creq)

    # -- responses -------------------------------------------------------------------------

    def _record(self):
        """Count the request, before the client can see the answer (tests read the stats
        right after their request returns); the control API is not counted."""
        if self.recorded:
            return
        self.recorded = True
        self.rec["bytes_in"] = self.body.count if self.body else 0
        if self.rec["op"] != "Control":
            self.server.emu.stats.record(self.rec)

    def _out(self, n):
        self.rec["bytes_out"] += n
        self.server.emu.stats.add_out(n)

    def _start(self, status, headers=(), length=0, ctype=None):
        self.rec["status"] = status
        self._record()
        self.send_response(status)
        self.send_header("x-oss-request-id", self.rid)
        self.send_header("Date", http_date(time.time()))
        self.send_header("Server", "AliyunOSS")
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status, body=b"", headers=(), ctype=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._start(status, headers, len(body), ctype)
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._out(len(body))

    def _send_xml(self, status, xml, headers=()):
        self._send(status, '<?xml version="1.0" encoding="UTF-8"?>\n' + xml, headers,
                   "application/xml")

    def _finish_body(self):
        """Before answering early: drain a small unread body, or close the connection."""
        if self.body is not None and not self.body.done:
            try:
                if not self.body.drain():
                    self.close_connection = True
            except (OSSError, ConnectionError, OSError):
                self.close_connection = True

    def _send_error(self, e):
        self.rec["code"] = e.code
        self.rec["status"] = e.status
        ec = _EC.get(e.code, "0000-00000000")
        host = self.hdrs.get("host", "") if hasattr(self, "hdrs") else ""
        xml = ("<Error>\n  <Code>%s</Code>\n  <Message>%s</Message>\n  <RequestId>%s</RequestId>\n"
               "  <HostId>%s</HostId>\n" % (xml_text(e.code), xml_text(e.message), self.rid,
                                            xml_text(host)))
        for k, v in e.extra.items():
            xml += "  <%s>%s</%s>\n" % (k, xml_text(v), k)
        xml += "  <EC>%s</EC>\n</Error>\n" % ec
        self._finish_body()
        headers = [("x-oss-ec", ec)]
        if self.command == "HEAD":
            headers.append(("x-oss-err", base64.b64encode(xml.encode()).decode()))
        try:
            self._send_xml(e.status, xml, headers)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    def _apply_fault(self, f):
        action = f.get("action", "error")
        if f.get("delay"):
            time.sleep(float(f["delay"]))
        if action == "close":
            self.close_connection = True
            self.rec["status"] = 0
            self.rec["code"] = "FaultClose"
            self._record()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if action == "delay":
            getattr(self, "op_" + self.op)()
            return
        raise OSSError(int(f.get("status", 503)), f.get("code", "ServiceUnavailable"),
                       f.get("message", "Injected fault."))

    # -- control API -----------------------------------------------------------------------

    def _control(self, path):
        emu = self.server.emu
        m = self.command
        if path == "/__health":
            return self._send(200, "ok\n", ctype="text/plain")
        if path == "/__stats" and m == "GET":
            return self._send(200, json.dumps(emu.stats.as_dict(), indent=1),
                              ctype="application/json")
        if path in ("/__stats/reset", "/__stats") and m in ("POST", "DELETE"):
            emu.stats.reset()
            return self._send(204)
        if path == "/__requests" and m == "GET":
            with emu.stats.lock:
                reqs = list(emu.stats.requests)
            return self._send(200, json.dumps(reqs, indent=1), ctype="application/json")
        if path == "/__faults" and m == "POST":
            spec = json.loads(self.body.read_all() or b"{}")
            emu.add_fault(**spec)
            return self._send(204)
        if path == "/__faults" and m == "DELETE":
            emu.clear_faults()
            return self._send(204)
        if path.startswith("/__buckets/") and m == "PUT":
            emu.store.create_bucket(path[len("/__buckets/"):])
            return self._send(200)
        if path.startswith("/__objects/") and m == "GET":
            b = emu.store.bucket(path[len("/__objects/"):])
            return self._send(200, json.dumps(emu.keys(b.name)), ctype="application/json")
        raise OSSError(404, "NotFound", "No such control endpoint %s %s." % (m, path))

    # -- helpers ---------------------------------------------------------------------------

    def _bucket(self):
        return self.server.emu.store.bucket(self.bucket_name)

    def _int_param(self, name, default, lo, hi):
        v = self.query.get(name)
        if v is None or v == "":
            return default
        try:
            n = int(v)
        except ValueError:
            raise OSSError(400, "InvalidArgument", "%s must be an integer." % name,
                           ArgumentName=name, ArgumentValue=v)
        if n < lo or n > hi:
            raise OSSError(400, "InvalidArgument", "%s must be between %d and %d." % (name, lo, hi),
                           ArgumentName=name, ArgumentValue=v)
        return n

    def _spool(self, b, max_size):
        """Read the request body into a temp file: (path, size, md5 bytes)."""
        try:
            declared = int(self.hdrs.get("content-length", "-1"))
        except ValueError:
            declared = -1
        if declared > max_size:
            raise OSSError(400, "EntityTooLarge", "Your proposed upload exceeds the maximum "
                           "allowed size.", MaxSizeAllowed=max_size, ProposedSize=declared)
        md5 = hashlib.md5()
        want_sha = self.hdrs.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")
        sha = hashlib.sha256() if re.fullmatch(r"[0-9a-f]{64}", want_sha) else None
        path, fh = b.tmpfile()
        size = 0
        try:
            with fh:
                while True:
                    d = self.body.read()
                    if not d:
                        break
                    size += len(d)
                    if size > max_size:
                        raise OSSError(400, "EntityTooLarge", "Your proposed upload exceeds "
                                       "the maximum allowed size.", MaxSizeAllowed=max_size)
                    md5.update(d)
                    if sha:
                        sha.update(d)
                    fh.write(d)
            cmd5 = self.hdrs.get("content-md5")
            if cmd5 is not None:
                try:
                    want = base64.b64decode(cmd5, validate=True)
                except binascii.Error:
                    want = b""
                if want != md5.digest():
                    raise OSSError(400, "InvalidDigest", "The Content-MD5 you specified is not "
                                   "valid.", CalculatedMD5=base64.b64encode(md5.digest()).decode(),
                                   ClientMD5=cmd5)
            if sha and sha.hexdigest() != want_sha:
                raise OSSError(400, "InvalidArgument", "x-oss-content-sha256 does not match "
                               "the body.")
        except BaseException:
            _unlink(path)
            raise
        return path, size, md5.digest()

    def _object_meta_from_headers(self):
        meta = {"content_type": self.hdrs.get("content-type") or "application/octet-stream",
                "user": {k: v for k, v in self.hdrs.items() if k.startswith("x-oss-meta-")},
                "headers": {}}
        for h in ("cache-control", "content-disposition", "content-encoding", "expires",
                  "content-language"):
            if h in self.hdrs:
                meta["headers"][h] = self.hdrs[h]
        return meta

    def _object_headers(self, m):
        h = [("ETag", '"%s"' % m["etag"]), ("Last-Modified", http_date(m["mtime"])),
             ("x-oss-object-type", m.get("type", "Normal")),
             ("x-oss-storage-class", "Standard"), ("Accept-Ranges", "bytes")]
        for k, v in sorted(m.get("headers", {}).items()):
            h.append((k, v))
        for k, v in sorted(m.get("user", {}).items()):
            h.append((k, v))
        return h

    def _check_preconditions(self, m, prefix=""):
        """If-Match & co (prefix 'x-oss-copy-source-' for copies)."""
        etag = '"%s"' % m["etag"]
        im = self.hdrs.get(prefix + "if-match")
        if im is not None and im.strip() not in (etag, m["etag"], "*"):
            raise OSSError(412, "PreconditionFailed", "At least one of the pre-conditions you "
                           "specified did not hold.", Condition=prefix + "If-Match")
        inm = self.hdrs.get(prefix + "if-none-match")
        if inm is not None and inm.strip() in (etag, m["etag"], "*"):
            if prefix or self.command not in ("GET", "HEAD"):
                raise OSSError(412, "PreconditionFailed", "At least one of the pre-conditions "
                               "you specified did not hold.", Condition=prefix + "If-None-Match")
            return 304
        ius = self.hdrs.get(prefix + "if-unmodified-since")
        if ius is not None:
            t = _parse_http_date(ius)
            if t is not None and int(m["mtime"]) > t:
                raise OSSError(412, "PreconditionFailed", "At least one of the pre-conditions "
                               "you specified did not hold.",
                               Condition=prefix + "If-Unmodified-Since")
        ims = self.hdrs.get(prefix + "if-modified-since")
        if ims is not None:
            t = _parse_http_date(ims)
            if t is not None and int(m["mtime"]) <= t:
                if prefix:
                    raise OSSError(412, "PreconditionFailed", "At least one of the "
                                   "pre-conditions you specified did not hold.",
                                   Condition=prefix + "If-Modified-Since")
                return 304
        return None

    def _copy_source(self):
        src = self.hdrs["x-oss-copy-source"]
        src = src.split("?", 1)[0]
        src = urllib.parse.unquote(src)
        if not src.startswith("/") or "/" not in src[1:]:
            raise OSSError(400, "InvalidArgument", "Copy Source must mention the source bucket "
                           "and key: /sourcebucket/sourcekey.",
                           ArgumentName="x-oss-copy-source", ArgumentValue=src)
        bname, _, key = src[1:].partition("/")
        if not key:
            raise OSSError(400, "InvalidArgument", "Copy Source key is empty.")
        store = self.server.emu.store
        return store.bucket(bname), key

    def _stream_file(self, fh, start, length):
        fh.seek(start)
        left = length
        while left > 0:
            d = fh.read(min(256 * KB, left))
            if not d:
                break
            self.wfile.write(d)
            self._out(len(d))
            left -= len(d)
        if left:
            self.close_connection = True

    # -- object operations -----------------------------------------------------------------

    def op_NotImplemented(self):
        raise OSSError(501, "NotImplemented", "The emulator does not implement %s %s."
                       % (self.command, self.path))

    def op_PutBucket(self):
        self.body.drain()
        self.server.emu.store.create_bucket(self.bucket_name)
        self._send(200, headers=[("Location", "/" + self.bucket_name)])

    def op_HeadBucket(self):
        self._bucket()
        self._send(200)

    def op_GetBucketLocation(self):
        self._bucket()
        self._send_xml(200, "<LocationConstraint>oss-%s</LocationConstraint>"
                       % xml_text(self.server.emu.region or "cn-hangzhou"))

    def op_PutObject(self):
        emu = self.server.emu
        b = self._bucket()
        path, size, digest = self._spool(b, emu.limits["max_object_size"])
        meta = self._object_meta_from_headers()
        meta.update(etag=digest.hex().upper(), size=size, mtime=time.time(), type="Normal")
        emu.store.commit(b, self.key, path, meta)
        self._send(200, headers=[("ETag", '"%s"' % meta["etag"]),
                                 ("Content-MD5", base64.b64encode(digest).decode())])

    def _range(self, size):
        """(start, length, partial) for the Range header under OSS's rules."""
        rng = self.hdrs.get("range")
        if not rng:
            return 0, size, False
        standard = self.hdrs.get("x-oss-range-behavior", "").lower() == "standard"
        mt = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*(,.*)?", rng)
        if not mt or (mt.group(1) == "" and mt.group(2) == ""):
            return 0, size, False
        a, z = mt.group(1), mt.group(2)
        if a == "":                      # suffix: last z bytes
            n = int(z)
            if n == 0:
                return 0, size, False
            if n > size:
                return (0, size, True) if standard and size else (0, size, False)
            return size - n, n, True
        start = int(a)
        end = int(z) if z != "" else size - 1
        if start >= size:
            if standard:
                raise OSSError(416, "InvalidRange", "The requested range cannot be satisfied.",
                               ActualObjectSize=size, RangeRequested=rng)
            return 0, size, False
        if end < start:
            return 0, size, False
        if end >= size:
            if not standard:
                return 0, size, False
            end = size - 1
        return start, end - start + 1, True

    def op_GetObject(self):
        emu = self.server.emu
        b = self._bucket()
        m, fh = emu.store.open(b, self.key)
        with fh:
            cond = self._check_preconditions(m)
            headers = self._object_headers(m)
            if cond == 304:
                self.rec["status"] = 304
                self._record()
                self.send_response(304)
                self.send_header("x-oss-request-id", self.rid)
                for k, v in headers[:2]:
                    self.send_header(k, v)
                self.end_headers()
                return
            size = m["size"]
            start, length, partial = self._range(size)
            ctype = m.get("content_type", "application/octet-stream")
            for qk, hk in (("response-content-type", None),
                           ("response-content-disposition", "Content-Disposition"),
                           ("response-cache-control", "Cache-Control"),
                           ("response-content-encoding", "Content-Encoding"),
                           ("response-content-language", "Content-Language"),
                           ("response-expires", "Expires")):
                if qk in self.query:
                    if hk is None:
                        ctype = self.query[qk]
                    else:
                        headers = [h for h in headers if h[0].lower() != hk.lower()]
                        headers.append((hk, self.query[qk]))
            if partial:
                headers.append(("Content-Range", "bytes %d-%d/%d" % (start, start + length - 1,
                                                                      size)))
            self._start(206 if partial else 200, headers, length, ctype)
            if self.command != "HEAD":
                self._stream_file(fh, start, length)

    def op_HeadObject(self):
        emu = self.server.emu
        b = self._bucket()
        m = emu.store.head(b, self.key)
        cond = self._check_preconditions(m)
        if cond == 304:
            self.rec["status"] = 304
            self._record()
            self.send_response(304)
            self.send_header("x-oss-request-id", self.rid)
            self.send_header("ETag", '"%s"' % m["etag"])
            self.end_headers()
            return
        self._start(200, self._object_headers(m), m["size"],
                    m.get("content_type", "application/octet-stream"))

    def op_GetObjectMeta(self):
        m = self.server.emu.store.head(self._bucket(), self.key)
        self._start(200, [("ETag", '"%s"' % m["etag"]), ("Last-Modified", http_date(m["mtime"])),
                          ("x-oss-object-type", m.get("type", "Normal"))], 0)
        # OSS answers GetObjectMeta with Content-Length: <size> and no body; the emulator sends
        # 0 so that a GET ?objectMeta keeps the connection usable.

    def op_DeleteObject(self):
        self.server.emu.store.delete(self._bucket(), self.key)
        self._send(204)

    def op_DeleteMultipleObjects(self):
        emu = self.server.emu
        b = self._bucket()
        if "content-md5" not in self.hdrs:
            raise OSSError(400, "InvalidDigest", "Missing Content-MD5 (required by "
                           "DeleteMultipleObjects).")
        raw = self.body.read_all(limit=4 * MB)
        try:
            want = base64.b64decode(self.hdrs["content-md5"], validate=True)
        except binascii.Error:
            want = b""
        if hashlib.md5(raw).digest() != want:
            raise OSSError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
        try:
            root = ET.fromstring(raw)
        except ET.ParseError:
            raise OSSError(400, "MalformedXML", "The XML you provided was not well-formed or "
                           "did not validate against our published schema.")
        if root.tag != "Delete":
            raise OSSError(400, "MalformedXML", "The root element must be <Delete>.")
        quiet = (root.findtext("Quiet") or "false").strip().lower() == "true"
        url_enc = self.query.get("encoding-type") == "url"
        keys = [o.findtext("Key") or "" for o in root.findall("Object")]
        if not keys or len(keys) > emu.limits["max_delete_keys"]:
            raise OSSError(400, "MalformedXML", "Between 1 and %d objects per request."
                           % emu.limits["max_delete_keys"])
        out = ["<DeleteResult>"]
        if url_enc:
            out.append("<EncodingType>url</EncodingType>")
        for k in keys:
            if url_enc:
                k = urllib.parse.unquote(k)
            if not k:
                raise OSSError(400, "InvalidObjectName", "Empty key in the delete list.")
            emu.store.delete(b, k)
            if not quiet:
                shown = urllib.parse.quote(k, safe="/") if url_enc else k
                out.append("<Deleted><Key>%s</Key></Deleted>" % xml_text(shown))
        out.append("</DeleteResult>")
        self._send_xml(200, "".join(out))

    def _list(self, v2):
        emu = self.server.emu
        b = self._bucket()
        q = self.query
        prefix = q.get("prefix", "")
        delim = q.get("delimiter", "")
        max_keys = self._int_param("max-keys", 100, 0, emu.limits["max_keys"])
        url_enc = q.get("encoding-type") == "url"
        if q.get("encoding-type") not in (None, "", "url"):
            raise OSSError(400, "InvalidArgument", "encoding-type must be url.")
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after", "")
            if token is not None:
                try:
                    marker = base64.urlsafe_b64decode(token.encode() + b"==").decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise OSSError(400, "InvalidArgument", "The continuation token provided is "
                                   "incorrect.", ArgumentName="continuation-token",
                                   ArgumentValue=token)
            else:
                marker = start_after
        else:
            marker = q.get("marker", "")
        enc = (lambda s: urllib.parse.quote(s, safe="/")) if url_enc else (lambda s: s)
        contents, prefixes = [], []
        truncated = False
        emu.store.lock.acquire()
        try:
            for k, m in emu.store.iter_keys(b, marker, prefix):
                if self._list_one(k, m, prefix, delim, marker, max_keys, contents, prefixes):
                    truncated = True
                    break
        finally:
            emu.store.lock.release()
        count = len(contents) + len(prefixes)
        if contents and prefixes:
            next_marker = max(contents[-1][0], prefixes[-1])
        else:
            next_marker = contents[-1][0] if contents else (prefixes[-1] if prefixes else "")
        fetch_owner = (not v2) or q.get("fetch-owner") == "true"
        x = ["<ListBucketResult>", "<Name>%s</Name>" % xml_text(b.name),
             "<Prefix>%s</Prefix>" % xml_text(enc(prefix))]
        if v2:
            if "continuation-token" in q:
                x.append("<ContinuationToken>%s</ContinuationToken>"
                         % xml_text(q["continuation-token"]))
            if "start-after" in q:
                x.append("<StartAfter>%s</StartAfter>" % xml_text(enc(q["start-after"])))
        else:
            x.append("<Marker>%s</Marker>" % xml_text(enc(marker)))
        x.append("<MaxKeys>%d</MaxKeys>" % max_keys)
        x.append("<Delimiter>%s</Delimiter>" % xml_text(enc(delim)))
        if url_enc:
            x.append("<EncodingType>url</EncodingType>")
        x.append("<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false"))
        if truncated:
            if v2:
                x.append("<NextContinuationToken>%s</NextContinuationToken>" % base64.
                         urlsafe_b64encode(next_marker.encode()).decode().rstrip("="))
            else:
                x.append("<NextMarker>%s</NextMarker>" % xml_text(enc(next_marker)))
        if v2:
            x.append("<KeyCount>%d</KeyCount>" % count)
        for k, m in contents:
            x.append("<Contents><Key>%s</Key><LastModified>%s</LastModified><ETag>\"%s\"</ETag>"
                     "<Type>%s</Type><Size>%d</Size><StorageClass>Standard</StorageClass>"
                     % (xml_text(enc(k)), iso8601(m["mtime"]), m["etag"], m.get("type", "Normal"),
                        m["size"]))
            if fetch_owner:
                x.append("<Owner><ID>%s</ID><DisplayName>%s</DisplayName></Owner>"
                         % (emu.owner, emu.owner))
            x.append("</Contents>")
        for p in prefixes:
            x.append("<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % xml_text(enc(p)))
        x.append("</ListBucketResult>")
        self._send_xml(200, "".join(x))

    @staticmethod
    def _list_one(k, m, prefix, delim, marker, max_keys, contents, prefixes):
        """Add key k to a listing page; True when the page is full (k does not fit)."""
        if delim:
            i = k.find(delim, len(prefix))
            if i >= 0:
                cp = k[:i + len(delim)]
                if cp <= marker or (prefixes and prefixes[-1] == cp):
                    return False
                if len(contents) + len(prefixes) >= max_keys:
                    return True
                prefixes.append(cp)
                return False
        if len(contents) + len(prefixes) >= max_keys:
            return True
        contents.append((k, m))
        return False

    def op_ListObjects(self):
        self._list(v2=False)

    def op_ListObjectsV2(self):
        self._list(v2=True)

    def op_CopyObject(self):
        emu = self.server.emu
        b = self._bucket()
        self.body.drain()
        sb, skey = self._copy_source()
        sm, sfh = emu.store.open(sb, skey)
        with sfh:
            self._check_preconditions(sm, prefix="x-oss-copy-source-")
            if sm["size"] > emu.limits["copy_limit"]:
                raise OSSError(400, "EntityTooLarge", "CopyObject source larger than %d bytes; "
                               "use UploadPartCopy." % emu.limits["copy_limit"],
                               MaxSizeAllowed=emu.limits["copy_limit"])
            directive = self.hdrs.get("x-oss-metadata-directive", "COPY").upper()
            if directive not in ("COPY", "REPLACE"):
                raise OSSError(400, "InvalidArgument", "Invalid x-oss-metadata-directive.")
            path, fh = b.tmpfile()
            try:
                with fh:
                    shutil.copyfileobj(sfh, fh, 1 * MB)
            except BaseException:
                _unlink(path)
                raise
        if directive == "REPLACE":
            meta = self._object_meta_from_headers()
        else:
            meta = {k: sm.get(k) for k in ("content_type", "user", "headers")}
        meta.update(etag=sm["etag"], size=sm["size"], mtime=time.time(),
                    type=sm.get("type", "Normal"))
        meta = emu.store.commit(b, self.key, path, meta)
        self._send_xml(200, "<CopyObjectResult><ETag>\"%s\"</ETag><LastModified>%s</LastModified>"
                       "</CopyObjectResult>" % (meta["etag"], iso8601(meta["mtime"])),
                       headers=[("ETag", '"%s"' % meta["etag"])])

    # -- multipart -------------------------------------------------------------------------

    def _upload(self, b):
        uid = self.query.get("uploadId", "")
        with self.server.emu.store.lock:
            up = b.uploads.get(uid)
        if up is None or up["key"] != self.key:
            raise OSSError(404, "NoSuchUpload", "The specified upload does not exist. The "
                           "upload ID may be invalid, or the upload may have been aborted or "
                           "completed.", UploadId=uid)
        return up

    def op_InitiateMultipartUpload(self):
        emu = self.server.emu
        b = self._bucket()
        self.body.drain()
        uid = uuid.uuid4().hex.upper()
        d = os.path.join(b.updir, uid)
        os.makedirs(d)
        up = {"id": uid, "key": self.key, "dir": d, "initiated": time.time(), "parts": {},
              "meta": self._object_meta_from_headers()}
        with emu.store.lock:
            b.uploads[uid] = up
        self._send_xml(200, "<InitiateMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key>"
                       "<UploadId>%s</UploadId></InitiateMultipartUploadResult>"
                       % (xml_text(b.name), xml_text(self.key), uid))

    def _part_number(self):
        return self._int_param("partNumber", None, 1, self.server.emu.limits["max_parts"])

    def _store_part(self, b, up, n, path, size, digest):
        final = os.path.join(up["dir"], "part-%05d.%s" % (n, uuid.uuid4().hex[:8]))
        os.replace(path, final)
        part = {"n": n, "etag": digest.hex().upper(), "md5": digest.hex(), "size": size,
                "mtime": time.time(), "path": final}
        with self.server.emu.store.lock:
            if up["id"] not in b.uploads:
                _unlink(final)
                raise OSSError(404, "NoSuchUpload", "The specified upload does not exist.",
                               UploadId=up["id"])
            old = up["parts"].get(n)
            up["parts"][n] = part
        if old:
            _unlink(old["path"])
        return part

    def op_UploadPart(self):
        emu = self.server.emu
        b = self._bucket()
        n = self._part_number()
        if n is None:
            raise OSSError(400, "InvalidArgument", "Missing partNumber.")
        up = self._upload(b)
        path, size, digest = self._spool(b, emu.limits["max_part_size"])
        part = self._store_part(b, up, n, path, size, digest)
        self._send(200, headers=[("ETag", '"%s"' % part["etag"]),
                                 ("Content-MD5", base64.b64encode(digest).decode())])

    def op_UploadPartCopy(self):
        emu = self.server.emu
        b = self._bucket()
        n = self._part_number()
        if n is None:
            raise OSSError(400, "InvalidArgument", "Missing partNumber.")
        up = self._upload(b)
        self.body.drain()
        sb, skey = self._copy_source()
        sm, sfh = emu.store.open(sb, skey)
        with sfh:
            self._check_preconditions(sm, prefix="x-oss-copy-source-")
            size = sm["size"]
            rng = self.hdrs.get("x-oss-copy-source-range")
            start, length = 0, size
            if rng:
                mt = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", rng)
                if not mt:
                    raise OSSError(400, "InvalidArgument", "Invalid x-oss-copy-source-range.",
                                   ArgumentName="x-oss-copy-source-range", ArgumentValue=rng)
                start = int(mt.group(1))
                end = int(mt.group(2)) if mt.group(2) else size - 1
                if start >= size or end < start or end >= size:
                    raise OSSError(416, "InvalidRange", "The requested range cannot be "
                                   "satisfied.", ActualObjectSize=size, RangeRequested=rng)
                length = end - start + 1
            if length > emu.limits["max_part_size"]:
                raise OSSError(400, "EntityTooLarge", "Part larger than %d bytes."
                               % emu.limits["max_part_size"])
            path, fh = b.tmpfile()
            md5 = hashlib.md5()
            try:
                with fh:
                    sfh.seek(start)
                    left = length
                    while left:
                        d = sfh.read(min(1 * MB, left))
                        if not d:
                            break
                        md5.update(d)
                        fh.write(d)
                        left -= len(d)
            except BaseException:
                _unlink(path)
                raise
        part = self._store_part(b, up, n, path, length, md5.digest())
        self._send_xml(200, "<CopyPartResult><LastModified>%s</LastModified><ETag>\"%s\"</ETag>"
                       "</CopyPartResult>" % (iso8601(part["mtime"]), part["etag"]),
                       headers=[("ETag", '"%s"' % part["etag"])])

    def op_CompleteMultipartUpload(self):
        emu = self.server.emu
        b = self._bucket()
        up = self._upload(b)
        raw = self.body.read_all(limit=4 * MB)
        with emu.store.lock:
            parts = dict(up["parts"])
        if self.hdrs.get("x-oss-complete-all", "").lower() == "yes":
            if raw.strip():
                raise OSSError(400, "InvalidArgument", "x-oss-complete-all with a part list.")
            chosen = [parts[n] for n in sorted(parts)]
        else:
            try:
                root = ET.fromstring(raw)
            except ET.ParseError:
                raise OSSError(400, "MalformedXML", "The XML you provided was not well-formed "
                               "or did not validate against our published schema.")
            if root.tag != "CompleteMultipartUpload":
                raise OSSError(400, "MalformedXML", "The root element must be "
                               "<CompleteMultipartUpload>.")
            chosen, last = [], 0
            for p in root.findall("Part"):
                try:
                    n = int(p.findtext("PartNumber") or "")
                except ValueError:
                    raise OSSError(400, "MalformedXML", "Bad PartNumber.")
                etag = (p.findtext("ETag") or "").strip().strip('"').upper()
                if n <= last:
                    raise OSSError(400, "InvalidPartOrder", "The list of parts was not in "
                                   "ascending order. Parts list must specified in order by "
                                   "part number.")
                last = n
                part = parts.get(n)
                if part is None or part["etag"] != etag:
                    raise OSSError(400, "InvalidPart", "One or more of the specified parts "
                                   "could not be found or the specified entity tag might not "
                                   "have matched the part's entity tag.", PartNumber=n,
                                   ETag=etag)
                chosen.append(part)
        if not chosen:
            raise OSSError(400, "MalformedXML", "No parts to complete.")
        for part in chosen[:-1]:
            if part["size"] < emu.limits["min_part_size"]:
                raise OSSError(400, "EntityTooSmall", "Your proposed upload smaller than the "
                               "minimum allowed size.", PartNumber=part["n"],
                               MinSizeAllowed=emu.limits["min_part_size"],
                               ProposedSize=part["size"], PartEtag=part["etag"])
        path, fh = b.tmpfile()
        size = 0
        try:
            with fh:
                for part in chosen:
                    with open(part["path"], "rb") as pf:
                        shutil.copyfileobj(pf, fh, 1 * MB)
                    size += part["size"]
        except BaseException:
            _unlink(path)
            raise
        etag = "%s-%d" % (hashlib.md5(b"".join(bytes.fromhex(p["md5"]) for p in chosen))
                          .hexdigest().upper(), len(chosen))
        meta = dict(up["meta"], etag=etag, size=size, mtime=time.time(), type="Multipart")
        with emu.store.lock:
            if b.uploads.pop(up["id"], None) is None:
                _unlink(path)
                raise OSSError(404, "NoSuchUpload", "The specified upload does not exist.",
                               UploadId=up["id"])
        emu.store.commit(b, self.key, path, meta)
        shutil.rmtree(up["dir"], ignore_errors=True)
        url_enc = self.query.get("encoding-type") == "url"
        key = urllib.parse.quote(self.key, safe="/") if url_enc else self.key
        self._send_xml(200, "<CompleteMultipartUploadResult>%s<Location>http://%s/%s</Location>"
                       "<Bucket>%s</Bucket><Key>%s</Key><ETag>\"%s\"</ETag>"
                       "</CompleteMultipartUploadResult>"
                       % ("<EncodingType>url</EncodingType>" if url_enc else "",
                          xml_text(self.hdrs.get("host", "")),
                          xml_text(urllib.parse.quote(self.key, safe="/")), xml_text(b.name),
                          xml_text(key), etag),
                       headers=[("ETag", '"%s"' % etag)])

    def op_AbortMultipartUpload(self):
        b = self._bucket()
        up = self._upload(b)
        with self.server.emu.store.lock:
            b.uploads.pop(up["id"], None)
        shutil.rmtree(up["dir"], ignore_errors=True)
        self._send(204)

    def op_ListParts(self):
        emu = self.server.emu
        b = self._bucket()
        up = self._upload(b)
        max_parts = self._int_param("max-parts", 1000, 1, 1000)
        marker = self._int_param("part-number-marker", 0, 0, emu.limits["max_parts"])
        with emu.store.lock:
            parts = [up["parts"][n] for n in sorted(up["parts"]) if n > marker]
        truncated = len(parts) > max_parts
        parts = parts[:max_parts]
        x = ["<ListPartsResult><Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>"
             % (xml_text(b.name), xml_text(self.key), up["id"]),
             "<PartNumberMarker>%d</PartNumberMarker>" % marker,
             "<NextPartNumberMarker>%d</NextPartNumberMarker>" % (parts[-1]["n"] if parts else 0),
             "<MaxParts>%d</MaxParts>" % max_parts,
             "<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false")]
        for p in parts:
            x.append("<Part><PartNumber>%d</PartNumber><LastModified>%s</LastModified>"
                     "<ETag>\"%s\"</ETag><Size>%d</Size></Part>"
                     % (p["n"], iso8601(p["mtime"]), p["etag"], p["size"]))
        x.append("</ListPartsResult>")
        self._send_xml(200, "".join(x))

    def op_ListMultipartUploads(self):
        emu = self.server.emu
        b = self._bucket()
        prefix = self.query.get("prefix", "")
        key_marker = self.query.get("key-marker", "")
        id_marker = self.query.get("upload-id-marker", "")
        max_uploads = self._int_param("max-uploads", 1000, 1, 1000)
        with emu.store.lock:
            ups = sorted((u["key"], u["initiated"], u["id"]) for u in b.uploads.values()
                         if u["key"].startswith(prefix))
        ups = [u for u in ups if u[0] > key_marker or (u[0] == key_marker and id_marker
                                                         and u[2] > id_marker)]
        truncated = len(ups) > max_uploads
        ups = ups[:max_uploads]
        x = ["<ListMultipartUploadsResult><Bucket>%s</Bucket>" % xml_text(b.name),
             "<KeyMarker>%s</KeyMarker><UploadIdMarker>%s</UploadIdMarker>"
             % (xml_text(key_marker), xml_text(id_marker)),
             "<NextKeyMarker>%s</NextKeyMarker><NextUploadIdMarker>%s</NextUploadIdMarker>"
             % (xml_text(ups[-1][0] if ups else ""), ups[-1][2] if ups else ""),
             "<Delimiter></Delimiter><Prefix>%s</Prefix>" % xml_text(prefix),
             "<MaxUploads>%d</MaxUploads><IsTruncated>%s</IsTruncated>"
             % (max_uploads, "true" if truncated else "false")]
        for key, initiated, uid in ups:
            x.append("<Upload><Key>%s</Key><UploadId>%s</UploadId><Initiated>%s</Initiated>"
                     "</Upload>" % (xml_text(key), uid, iso8601(initiated)))
        x.append("</ListMultipartUploadsResult>")
        self._send_xml(200, "".join(x))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Emulator:
    """An OSS emulator on 127.0.0.1 (importable; `start()` runs it in a thread)."""

    def __init__(self, root, ak="AK", sk="SK", buckets=(), host="127.0.0.1", port=0,
                 region="cn-hangzhou", cnames=None, endpoints=None, limits=None,
                 verbose=False, credentials=None, owner="1234567890"):
        self.store = Store(root)
        self.credentials = dict(credentials or {})
        if ak:
            self.credentials[ak] = sk
        for b in buckets:
            self.store.create_bucket(b)
        self.host = host
        self.port = port
        self.region = region[4:] if region and region.startswith("oss-") else region
        self.cnames = {k.lower(): v for k, v in (cnames or {}).items()}
        for bname in self.cnames.values():
            self.store.create_bucket(bname)
        self.endpoints = set(e.lower() for e in (endpoints or ()))
        self.limits = dict(DEFAULT_LIMITS, **(limits or {}))
        self.verbose = verbose
        self.owner = owner
        self.stats = Stats()
        self.clock = time.time
        self._faults = []
        self._flock = threading.Lock()
        self.httpd = None
        self.thread = None

    # faults: {"op": "PutObject" | "*", "count": 1, "action": "error"|"close"|"delay",
    #          "status": 503, "code": "ServiceUnavailable", "delay": seconds}
    def add_fault(self, op="*", count=1, **spec):
        with self._flock:
            self._faults.append(dict(spec, op=op, count=int(count)))

    def clear_faults(self):
        with self._flock:
            self._faults = []

    def take_fault(self, op):
        with self._flock:
            for f in self._faults:
                if f["op"] in ("*", op) and f["count"] > 0:
                    f["count"] -= 1
                    if f["count"] == 0:
                        self._faults.remove(f)
                    return f
        return None

    def serve_forever(self):
        self._bind()
        self.httpd.serve_forever(poll_interval=0.2)

    def _bind(self):
        self.httpd = _Server((self.host, self.port), Handler)
        self.httpd.emu = self
        self.port = self.httpd.server_address[1]

    def start(self):
        self._bind()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.1}, name="oss-emulator", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    @property
    def endpoint(self):
        return "http://%s:%d" % (self.host, self.port)

    def stats_dict(self):
        return self.stats.as_dict()

    def reset_stats(self):
        self.stats.reset()

    def requests(self):
        with self.stats.lock:
            return list(self.stats.requests)

    def keys(self, bucket):
        b = self.store.bucket(bucket)
        with self.store.lock:
            return list(b.keys)

    def head(self, bucket, key):
        return dict(self.store.head(self.store.bucket(bucket), key))

    def get_bytes(self, bucket, key):
        m, fh = self.store.open(self.store.bucket(bucket), key)
        with fh:
            return fh.read()

    def uploads(self, bucket):
        b = self.store.bucket(bucket)
        with self.store.lock:
            return [(u["key"], u["id"], sorted(u["parts"])) for u in b.uploads.values()]


def start(root, **kw):
    return Emulator(root, **kw).start()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Aliyun OSS emulator (virtual-hosted, signed "
                                 "requests only) for regmirror's tests.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--root", required=True, help="data directory (one subdirectory a bucket)")
    ap.add_argument("--ak", required=True, help="AccessKeyId accepted")
    ap.add_argument("--sk", required=True, help="AccessKeySecret of --ak")
    ap.add_argument("--bucket", action="append", default=[], help="create this bucket "
                    "(repeatable)")
    ap.add_argument("--region", default="cn-hangzhou", help="region V4 credentials must name "
                    "(oss- prefix optional); '' accepts any")
    ap.add_argument("--cname", action="append", default=[], metavar="DOMAIN=BUCKET",
                    help="custom domain of a bucket (repeatable)")
    ap.add_argument("--endpoint", action="append", default=[], metavar="HOST",
                    help="accept <bucket>.HOST only (repeatable); default: any <bucket>.<host>")
    for name, val in DEFAULT_LIMITS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=val,
                        help="limit (default %d)" % val)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    cnames = {}
    for c in a.cname:
        dom, _, b = c.partition("=")
        if not b:
            ap.error("--cname wants DOMAIN=BUCKET")
        cnames[dom] = b
    limits = {k: getattr(a, k) for k in DEFAULT_LIMITS}
    emu = Emulator(a.root, a.ak, a.sk, buckets=a.bucket, host=a.host, port=a.port,
                   region=a.region, cnames=cnames, endpoints=a.endpoint, limits=limits,
                   verbose=a.verbose)
    emu._bind()
    sys.stderr.write("oss-emulator: listening on %s (buckets: %s)\n"
                     % (emu.endpoint, ", ".join(sorted(emu.store.buckets)) or "none"))
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as fh:
            fh.write("%d\n" % emu.port)
        os.replace(tmp, a.port_file)
    try:
        emu.httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
