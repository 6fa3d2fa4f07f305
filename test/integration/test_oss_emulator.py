"""The OSS emulator (test/oss/emulator.py), checked three ways:

1. its signature code against signature examples published by Aliyun (the V1 examples of the
   OSS API documentation) and by Aliyun's SDKs (alibabacloud-oss-go-sdk-v2's signer tests,
   V1 and V4, header and query);
2. the same vectors sent over HTTP to a running emulator whose clock is set to the vector's time;
3. Aliyun's official Node.js SDK (ali-oss, test/oss/sdkcheck) driven against it: every request
   must verify and round-trip byte-identical (skipped without node or `npm ci`).

Plus the OSS rules the driver depends on (limits, errors, Range, listing) with a small signing
client of its own. Needs no registry binary; runs in a few seconds.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
OSS_DIR = os.path.join(HERE, "..", "oss")
SDK_DIR = os.path.join(OSS_DIR, "sdkcheck")
sys.path.insert(0, OSS_DIR)

import emulator as E  # noqa: E402


# ------------------------------------------------------------------------------------------
# 1. Published vectors, checked against the signature functions
# ------------------------------------------------------------------------------------------

DOC_AK, DOC_SK = "44CF9590006BF252F707", "OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV"


def test_v1_documentation_examples():
    # OSS API documentation, "Include a V1 signature in the Authorization header": PUT /nelson
    h = {"content-md5": "ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=", "content-type": "text/html",
         "date": "Thu, 17 Nov 2005 18:49:58 GMT", "x-oss-meta-author": "foo@bar.com",
         "x-oss-magic": "abracadabra"}
    sts = E.v1_string_to_sign("PUT", h, "oss-example", "nelson", [], h["date"])
    assert sts == ("PUT\nODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=\ntext/html\n"
                   "Thu, 17 Nov 2005 18:49:58 GMT\nx-oss-magic:abracadabra\n"
                   "x-oss-meta-author:foo@bar.com\n/oss-example/nelson")
    assert E.v1_signature(DOC_SK, sts) == "26NBxoKdsyly4EDv6inkoDft/yA="
    # ... and the signed-URL example: GET /oss-api.pdf, Expires=1141889120
    sts = E.v1_string_to_sign("GET", {}, "oss-example", "oss-api.pdf", [], "1141889120")
    assert E.v1_signature(DOC_SK, sts) == "EwaNTn1erJGkimiJ9WmXgwnANLc="


GO_V1_HEADERS = {"content-md5": "eB5eJF1ptWaXm4bijSPyxw==", "content-type": "text/html",
                 "x-oss-meta-author": "alice", "x-oss-meta-magic": "abracadabra",
                 "x-oss-date": "Wed, 28 Dec 2022 10:27:41 GMT",
                 "date": "Wed, 28 Dec 2022 10:27:41 GMT"}


@pytest.mark.parametrize("method,headers,key,query,want", [
    # alibabacloud-oss-go-sdk-v2 oss/signer/signer_test.go TestV1AuthHeader, cases 1-4
    ("PUT", GO_V1_HEADERS, "nelson", [], "kSHKmLxlyEAKtZPkJhG9bZb5k7M="),
    ("PUT", GO_V1_HEADERS, "nelson", [("acl", "")], "/afkugFbmWDQ967j1vr6zygBLQk="),
    ("GET", {"x-oss-date": "Wed, 28 Dec 2022 10:27:41 GMT"}, "",
     [("resourceGroup", ""), ("non-resousce", "null")], "vkQmfuUDyi1uDi3bKt67oemssIs="),
    ("GET", {"x-oss-date": "Wed, 28 Dec 2022 10:27:41 GMT"}, "",
     [("resourceGroup", ""), ("acl", "")], "x3E5TgOvl/i7PN618s5mEvpJDYk="),
])
def test_v1_go_sdk_header_vectors(method, headers, key, query, want):
    sts = E.v1_string_to_sign(method, headers, "examplebucket", key, query,
                              "Wed, 28 Dec 2022 10:27:41 GMT")
    assert E.v1_signature("sk", sts) == want


@pytest.mark.parametrize("key,query,expires,want", [
    # TestV1AuthQuery: a signed URL (Expires in the Date slot), versionId is a sub-resource
    ("key", [("versionId", "versionId")], "1699807420", "dcLTea+Yh9ApirQ8o8dOPqtvJXQ="),
    ("key+123", [("security-token", "token"), ("versionId", "versionId")], "1699808204",
     "jzKYRrM5y6Br0dRFPaTGOsbrDhY="),
])
def test_v1_go_sdk_query_vectors(key, query, expires, want):
    sts = E.v1_string_to_sign("GET", {}, "bucket", key, query, expires)
    assert E.v1_signature("sk", sts) == want


# The V4 vectors of alibabacloud-oss-go-sdk-v2 (oss/signer/signer_test.go): PUT of
# bucket/"1234+-/123/1.txt" with these headers and query, region cn-hangzhou, ak/sk.
V4_QUERY = [("param1", "value1"), ("+param1", "value3"), ("|param1", "value4"),
            ("+param2", ""), ("|param2", ""), ("param2", "")]
V4_KEY = "1234+-/123/1.txt"


def _v4_headers(ctype, extra=()):
    h = {"x-oss-head1": "value", "abc": "value", "zabc": "value", "xyz": "value",
         "content-type": ctype}
    h.update(extra)
    return h


def _iso(t):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


@pytest.mark.parametrize("t,extra,additional,want", [
    (1702743657, {}, [], "e21d18daa82167720f9b1047ae7e7f1ce7cb77a31e8203a7d5f4624fa0284afe"),
    (1702784856, {"x-oss-security-token": "token"}, [],
     "b94a3f999cf85bcdc00d332fbd3734ba03e48382c36fa4d5af5df817395bd9ea"),
    (1702747512, {}, ["abc", "zabc"],
     "4a4183c187c07c8947db7620deb0a6b38d9fbdd34187b6dbaccb316fa251212f"),
])
def test_v4_go_sdk_header_vectors(t, extra, additional, want):
    dt = _iso(t)
    h = _v4_headers("text/plain", dict(extra, **{"x-oss-content-sha256": "UNSIGNED-PAYLOAD",
                                                  "x-oss-date": dt}))
    creq = E.v4_canonical_request("PUT", "bucket", V4_KEY, V4_QUERY, h, additional)
    sts = E.v4_string_to_sign(dt, "%s/cn-hangzhou/oss/aliyun_v4_request" % dt[:8], creq)
    assert E.v4_signature("sk", dt[:8], "cn-hangzhou", "oss", sts) == want


@pytest.mark.parametrize("t,additional,want", [
    (1702781677, [], "a39966c61718be0d5b14e668088b3fa07601033f6518ac7b523100014269c0fe"),
    (1702783809, ["abc", "zabc"],
     "6bd984bfe531afb6db1f7550983a741b103a8c58e5e14f83ea474c2322dfa2b7"),
])
def test_v4_go_sdk_query_vectors(t, additional, want):
    dt = _iso(t)
    q = V4_QUERY + _v4_query_auth(dt, additional)
    creq = E.v4_canonical_request("PUT", "bucket", V4_KEY, q,
                                  _v4_headers("application/octet-stream"), additional)
    sts = E.v4_string_to_sign(dt, "%s/cn-hangzhou/oss/aliyun_v4_request" % dt[:8], creq)
    assert E.v4_signature("sk", dt[:8], "cn-hangzhou", "oss", sts) == want


def _v4_query_auth(dt, additional):
    q = [("x-oss-signature-version", "OSS4-HMAC-SHA256"), ("x-oss-date", dt),
         ("x-oss-expires", "599"), ("x-oss-credential", "ak/%s/cn-hangzhou/oss/aliyun_v4_request"
                                    % dt[:8])]
    if additional:
        q.append(("x-oss-additional-headers", ";".join(additional)))
    return q


# ------------------------------------------------------------------------------------------
# 2. The same vectors over HTTP (the emulator's clock set to the vector's time)
# ------------------------------------------------------------------------------------------

def _raw(method, port, host, target, headers=(), body=b""):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", host)
        for k, v in headers:
            c.putheader(k, v)
        if body or method in ("PUT", "POST"):
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body if body else None)
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def _code(body):
    s = body.decode("utf-8", "replace")
    return s.split("<Code>")[1].split("</Code>")[0] if "<Code>" in s else None


@pytest.fixture
def vector_emulator(tmp_path):
    emu = E.Emulator(str(tmp_path / "oss"), ak="ak", sk="sk", buckets=["bucket"]).start()
    yield emu
    emu.stop()


def _go_query_string(pairs):
    # Go's url.Values.Encode(): sorted by key, QueryEscape (space as +)
    return "&".join(urllib.parse.quote_plus(k) + "=" + urllib.parse.quote_plus(v)
                    for k, v in sorted(pairs))


def test_vectors_over_http(vector_emulator):
    emu = vector_emulator
    host = "bucket.oss-cn-hangzhou.aliyuncs.com"
    target = "/" + urllib.parse.quote(V4_KEY, safe="/")
    # V4 header, Go SDK case 1
    t = 1702743657
    emu.clock = lambda: t + 5
    hdrs = [("x-oss-head1", "value"), ("abc", "value"), ("ZAbc", "value"), ("XYZ", "value"),
            ("Content-Type", "text/plain"), ("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-oss-date", _iso(t)), ("Authorization", "OSS4-HMAC-SHA256 Credential=ak/20231216/"
             "cn-hangzhou/oss/aliyun_v4_request,Signature=e21d18daa82167720f9b1047ae7e7f1ce7cb77"
             "a31e8203a7d5f4624fa0284afe")]
    st, _, body = _raw("PUT", emu.port, host, target + "?" + _go_query_string(V4_QUERY), hdrs)
    assert st == 200, body
    # one changed header value and the same signature fails
    bad = [(k, "other" if k == "x-oss-head1" else v) for k, v in hdrs]
    st, _, body = _raw("PUT", emu.port, host, target + "?" + _go_query_string(V4_QUERY), bad)
    assert st == 403 and _code(body) == "SignatureDoesNotMatch"
    assert b"<CanonicalRequest>" in body and b"<StringToSign>" in body
    # V4 signed URL with additional headers, Go SDK TestV4AuthQueryWithAdditionalHeaders
    t = 1702783809
    q = V4_QUERY + _v4_query_auth(_iso(t), ["abc", "zabc"]) + [
        ("x-oss-signature", "6bd984bfe531afb6db1f7550983a741b103a8c58e5e14f83ea474c2322dfa2b7")]
    hdrs = [("x-oss-head1", "value"), ("abc", "value"), ("ZAbc", "value"), ("XYZ", "value"),
            ("Content-Type", "application/octet-stream")]
    emu.clock = lambda: t + 598
    st, _, body = _raw("PUT", emu.port, host, target + "?" + _go_query_string(q), hdrs)
    assert st == 200, body
    emu.clock = lambda: t + 600         # x-oss-expires=599 has passed
    st, _, body = _raw("PUT", emu.port, host, target + "?" + _go_query_string(q), hdrs)
    assert st == 403 and _code(body) == "AccessDenied" and b"expired" in body
    # V1 signed URL, Go SDK TestV1AuthQuery case 1 (the object is there: 200)
    emu.clock = lambda: 1699807420 - 60
    st, _, body = _raw("GET", emu.port, "bucket.oss-cn-hangzhou.aliyuncs.com",
                       "/key?Expires=1699807420&OSSAccessKeyId=ak&Signature=dcLTea%2BYh9ApirQ8o8"
                       "dOPqtvJXQ%3D&versionId=versionId")
    assert st == 404 and _code(body) == "NoSuchKey", body     # verified; the key is absent
    emu.clock = lambda: 1699807420 + 1
    st, _, body = _raw("GET", emu.port, "bucket.oss-cn-hangzhou.aliyuncs.com",
                       "/key?Expires=1699807420&OSSAccessKeyId=ak&Signature=dcLTea%2BYh9ApirQ8o8"
                       "dOPqtvJXQ%3D&versionId=versionId")
    assert st == 403 and b"expired" in body
    # V1 header, the documentation example (Date 2005: the clock goes back too)
    emu.credentials[DOC_AK] = DOC_SK
    emu.store.create_bucket("oss-example")
    emu.clock = lambda: E._parse_http_date("Thu, 17 Nov 2005 18:49:58 GMT")
    st, _, body = _raw("PUT", emu.port, "oss-example.oss-cn-hangzhou.aliyuncs.com", "/nelson", [
        ("Content-Md5", base64.b64encode(hashlib.md5(b"0123456789").digest()).decode()),
        ("Content-Type", "text/html"), ("Date", "Thu, 17 Nov 2005 18:49:58 GMT"),
        ("X-OSS-Meta-Author", "foo@bar.com"), ("X-OSS-Magic", "abracadabra"),
        ("Authorization", "OSS %s:26NBxoKdsyly4EDv6inkoDft/yA=" % DOC_AK)], b"0123456789")
    # with a Content-MD5 other than the example's, the example's signature does not verify
    assert st == 403 and _code(body) == "SignatureDoesNotMatch"
    # with the example's headers it verifies; the example's Content-MD5 is no body's MD5, so the
    # request gets past authentication and stops at the body check
    st, _, body = _raw("PUT", emu.port, "oss-example.oss-cn-hangzhou.aliyuncs.com", "/nelson", [
        ("Content-Md5", "ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM="),
        ("Content-Type", "text/html"), ("Date", "Thu, 17 Nov 2005 18:49:58 GMT"),
        ("X-OSS-Meta-Author", "foo@bar.com"), ("X-OSS-Magic", "abracadabra"),
        ("Authorization", "OSS %s:26NBxoKdsyly4EDv6inkoDft/yA=" % DOC_AK)], b"0123456789")
    assert st == 400 and _code(body) == "InvalidDigest", body


# ------------------------------------------------------------------------------------------
# 3. The official SDK (ali-oss) against the emulator
# ------------------------------------------------------------------------------------------

SDK_OPS = {"PutObject", "GetObject", "HeadObject", "DeleteObject", "DeleteMultipleObjects",
           "ListObjects", "ListObjectsV2", "CopyObject", "InitiateMultipartUpload", "UploadPart",
           "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload", "ListParts",
           "ListMultipartUploads"}


def _sdk_skip_reason():
    if not shutil.which("node"):
        return "node is not installed (Debian: apt-get install nodejs npm)"
    if not os.path.exists(os.path.join(SDK_DIR, "node_modules", "ali-oss", "package.json")):
        return "ali-oss is not installed: npm ci --prefix test/oss/sdkcheck"
    return None


def test_official_sdk_against_emulator(tmp_path):
    reason = _sdk_skip_reason()
    if reason:
        pytest.skip(reason)
    emu = E.Emulator(str(tmp_path / "oss"), ak="SDKTESTAK", sk="sdk-test-secret",
                     buckets=["sdk-bucket"], cnames={"img.sdk.test": "sdk-bucket"}).start()
    try:
        cfg = {"port": emu.port, "ak": "SDKTESTAK", "sk": "sdk-test-secret",
               "bucket": "sdk-bucket", "cname": "img.sdk.test", "vhostSuffix": "oss-test.localhost"}
        p = subprocess.run(["node", "sdkcheck.js", json.dumps(cfg)], cwd=SDK_DIR,
                           capture_output=True, text=True, timeout=120)
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        checks = [x for x in lines if "check" in x]
        summary = [x for x in lines if x.get("summary")]
        failed = [x for x in checks if not x["ok"]]
        assert summary and not summary[-1].get("fatal"), p.stdout + p.stderr
        assert not failed, json.dumps(failed, indent=1)
        assert p.returncode == 0, p.stdout + p.stderr
        modes = {c["check"].split(":")[0] for c in checks}
        assert modes == {"ip-v1", "ip-v4", "cname-v1", "cname-v4", "vhost-v1", "vhost-v4"}
        assert len(checks) >= 90

        stats = emu.stats_dict()
        missing = SDK_OPS - set(stats["ops"])
        assert not missing, "operations the SDK run did not reach: %s" % missing
        for kind in ("v1-header", "v4-header", "v1-query", "v4-query"):
            assert stats["auth"].get(kind, 0) > 0, stats["auth"]
        assert stats["auth"].get("none", 0) == 0
        # Every request the SDK signed with the right key verified: the only authentication
        # failures are the deliberate ones (wrong secret / AK under <mode>/never, a tampered
        # signed URL "obx", expired signed URLs).
        for r in emu.requests():
            if r["code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied",
                             "RequestTimeTooSkewed"):
                path = urllib.parse.unquote(r["path"])
                deliberate = ("/never" in path or "obx" in path or
                              (r["code"] == "AccessDenied" and "/signed/" in path))
                assert deliberate, "an SDK request failed authentication: %r" % r
        assert stats["errors"].get("SignatureDoesNotMatch", 0) >= 6 * 3
        assert stats["errors"].get("InvalidAccessKeyId", 0) == 6
    finally:
        emu.stop()


# ------------------------------------------------------------------------------------------
# 4. OSS rules, with a small signing client
# ------------------------------------------------------------------------------------------

class Client:
    """Minimal OSS client (V1 or V4 header signing) for the emulator's own behaviour tests."""

    def __init__(self, emu, bucket, ak="AK", sk="SK", v4=True, region="cn-hangzhou",
                 host_suffix="oss-cn-hangzhou.aliyuncs.com"):
        self.emu, self.bucket, self.ak, self.sk, self.v4 = emu, bucket, ak, sk, v4
        self.region, self.host = region, "%s.%s" % (bucket, host_suffix)

    def request(self, method, key="", query=(), headers=None, body=b"", sign=True, when=None,
                chunked=False):
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        t = when if when is not None else time.time()
        if sign and self.v4:
            dt = _iso(t)
            headers["x-oss-date"] = dt
            headers["x-oss-content-sha256"] = "UNSIGNED-PAYLOAD"
            creq = E.v4_canonical_request(method, self.bucket, key, list(query), headers, [])
            scope = "%s/%s/oss/aliyun_v4_request" % (dt[:8], self.region)
            sts = E.v4_string_to_sign(dt, scope, creq)
            sig = E.v4_signature(self.sk, dt[:8], self.region, "oss", sts)
            headers["authorization"] = "OSS4-HMAC-SHA256 Credential=%s/%s,Signature=%s" % (
                self.ak, scope, sig)
        elif sign:
            headers["date"] = E.http_date(t)
            sts = E.v1_string_to_sign(method, headers, self.bucket, key, list(query),
                                      headers["date"])
            headers["authorization"] = "OSS %s:%s" % (self.ak, E.v1_signature(self.sk, sts))
        target = "/" + urllib.parse.quote(key, safe="/~")
        if query:
            target += "?" + "&".join(urllib.parse.quote(k, safe="~") +
                                     ("=" + urllib.parse.quote(v, safe="~") if v else "")
                                     for k, v in query)
        c = http.client.HTTPConnection("127.0.0.1", self.emu.port, timeout=10)
        try:
            c.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            c.putheader("Host", self.host)
            for k, v in headers.items():
                c.putheader(k, v)
            if chunked:
                c.putheader("Transfer-Encoding", "chunked")
                c.endheaders()
                for i in range(0, len(body), 1000):
                    piece = body[i:i + 1000]
                    c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                c.send(b"0\r\n\r\n")
            else:
                if body or method in ("PUT", "POST"):
                    c.putheader("Content-Length", str(len(body)))
                c.endheaders(body if body else None)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()


@pytest.fixture
def emu(tmp_path):
    e = E.Emulator(str(tmp_path / "oss"), buckets=["rules"],
                   limits={"copy_limit": 300 * 1024}).start()
    yield e
    e.stop()


def _md5b64(b):
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def test_rules_auth(emu):
    c = Client(emu, "rules")
    st, h, body = c.request("GET", "x", sign=False)
    assert (st, _code(body)) == (403, "AccessDenied")
    assert h["x-oss-request-id"] and h["x-oss-ec"] and b"<RequestId>" in body and b"<EC>" in body
    st, _, body = _raw("GET", emu.port, "127.0.0.1:%d" % emu.port, "/rules/x")
    assert (st, _code(body)) == (403, "SecondLevelDomainForbidden")
    st, _, body = Client(emu, "rules", region="cn-beijing").request("GET", "x")
    assert (st, _code(body)) == (403, "AccessDenied") and b"region" in body
    st, _, body = c.request("GET", "x", when=time.time() - 3600)
    assert (st, _code(body)) == (403, "RequestTimeTooSkewed")
    st, _, body = Client(emu, "rules", sk="wrong", v4=False).request("GET", "x")
    assert (st, _code(body)) == (403, "SignatureDoesNotMatch")
    st, h, _ = Client(emu, "rules", sk="wrong").request("HEAD", "x")
    assert st == 403 and _code(base64.b64decode(h["x-oss-err"])) == "SignatureDoesNotMatch"
    st, _, body = Client(emu, "nosuchbucket").request("GET", "x")
    assert (st, _code(body)) == (404, "NoSuchBucket")
    st, _, body = c.request("GET", "k" * 1024)
    assert (st, _code(body)) == (400, "InvalidObjectName")


def test_rules_objects(emu):
    c = Client(emu, "rules")
    data = bytes(range(256)) * 40
    st, h, _ = c.request("PUT", "obj", headers={"Content-MD5": _md5b64(data)}, body=data)
    assert st == 200 and h["etag"] == '"%s"' % hashlib.md5(data).hexdigest().upper()
    st, _, body = c.request("PUT", "obj", headers={"Content-MD5": _md5b64(b"x")}, body=data)
    assert (st, _code(body)) == (400, "InvalidDigest")
    assert emu.get_bytes("rules", "obj") == data, "a rejected PUT leaves the old object"
    # chunked upload (V1), read back
    st, _, _ = Client(emu, "rules", v4=False).request("PUT", "chunked", body=data, chunked=True)
    assert st == 200 and emu.get_bytes("rules", "chunked") == data
    # Range, OSS rules
    for rng, want_st, want in [("bytes=0-9", 206, data[:10]), ("bytes=-3", 206, data[-3:]),
                               ("bytes=10-", 206, data[10:]),
                               ("bytes=0-%d" % len(data), 200, data),        # end past size
                               ("bytes=%d-" % len(data), 200, data),         # start past size
                               ("bytes=5-2", 200, data), ("items=0-1", 200, data),
                               ("bytes=0-1,4-5", 206, data[:2])]:            # first range only
        st, h, body = c.request("GET", "obj", headers={"Range": rng})
        assert (st, body) == (want_st, want), rng
    st, h, body = c.request("GET", "obj", headers={"Range": "bytes=100-%d" % (len(data) + 50),
                                                   "x-oss-range-behavior": "standard"})
    assert st == 206 and body == data[100:] and h["content-range"].endswith("/%d" % len(data))
    # conditional GET
    st, h, _ = c.request("GET", "obj")
    st, _, _ = c.request("GET", "obj", headers={"If-None-Match": h["etag"]})
    assert st == 304
    st, _, body = c.request("GET", "obj", headers={"If-Match": '"0"'})
    assert (st, _code(body)) == (412, "PreconditionFailed")
    # CopyObject above the (lowered) copy limit -> EntityTooLarge; UploadPartCopy does it
    big = os.urandom(400 * 1024)
    assert c.request("PUT", "big", body=big)[0] == 200
    st, _, body = c.request("PUT", "big2", headers={"x-oss-copy-source": "/rules/big"})
    assert (st, _code(body)) == (400, "EntityTooLarge")
    st, _, body = c.request("POST", "big2", query=[("uploads", "")])
    uid = body.decode().split("<UploadId>")[1].split("</UploadId>")[0]
    etags = []
    for n, rng in ((1, "bytes=0-204799"), (2, "bytes=204800-409599")):
        st, h, body = c.request("PUT", "big2", query=[("partNumber", str(n)), ("uploadId", uid)],
                                headers={"x-oss-copy-source": "/rules/big",
                                         "x-oss-copy-source-range": rng})
        assert st == 200 and h["etag"] in body.decode()
        etags.append(h["etag"])
    xml = "<CompleteMultipartUpload>%s</CompleteMultipartUpload>" % "".join(
        "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>" % (i + 1, e)
        for i, e in enumerate(etags))
    st, h, body = c.request("POST", "big2", query=[("uploadId", uid)], body=xml.encode())
    assert st == 200, body
    want = hashlib.md5(b"".join(hashlib.md5(big[i:i + 204800]).digest()
                                for i in (0, 204800))).hexdigest().upper() + "-2"
    assert h["etag"] == '"%s"' % want and emu.get_bytes("rules", "big2") == big
    # part number limits
    st, _, body = c.request("POST", "p", query=[("uploads", "")])
    uid = body.decode().split("<UploadId>")[1].split("</UploadId>")[0]
    st, _, body = c.request("PUT", "p", query=[("partNumber", "10001"), ("uploadId", uid)],
                            body=b"x")
    assert (st, _code(body)) == (400, "InvalidArgument")
    st, _, body = c.request("PUT", "p", query=[("partNumber", "1"), ("uploadId", "nope")],
                            body=b"x")
    assert (st, _code(body)) == (404, "NoSuchUpload")
    # DeleteMultipleObjects needs Content-MD5
    xml = b"<Delete><Quiet>true</Quiet><Object><Key>obj</Key></Object></Delete>"
    st, _, body = c.request("POST", "", query=[("delete", "")], body=xml)
    assert (st, _code(body)) == (400, "InvalidDigest")
    st, _, body = c.request("POST", "", query=[("delete", "")], body=xml,
                            headers={"Content-MD5": _md5b64(xml)})
    assert st == 200 and "obj" not in emu.keys("rules")


def test_rules_listing(emu):
    c = Client(emu, "rules", v4=False)
    for k in ["a/1", "a/2", "b/1", "c", "d e+f/\u00e9", "z"]:
        assert c.request("PUT", k, body=b"1")[0] == 200
    st, _, body = c.request("GET", "", query=[("delimiter", "/"), ("encoding-type", "url"),
                                              ("max-keys", "10")])
    s = body.decode()
    assert "<CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes>" in s
    assert "<Prefix>d%20e%2Bf/</Prefix>" in s and "<Key>c</Key>" in s
    assert "<Owner>" in s and "<StorageClass>Standard</StorageClass>" in s
    st, _, body = c.request("GET", "", query=[("max-keys", "1001")])
    assert (st, _code(body)) == (400, "InvalidArgument")
    # V2: no Owner unless fetch-owner=true; paging by token is exhaustive
    keys, token, pages = [], None, 0
    while True:
        q = [("list-type", "2"), ("max-keys", "2")] + ([("continuation-token", token)]
                                                       if token else [])
        st, _, body = c.request("GET", "", query=q)
        s = body.decode()
        assert st == 200 and "<Owner>" not in s and "<KeyCount>" in s
        keys += [x.split("</Key>")[0] for x in s.split("<Key>")[1:]]
        pages += 1
        if "<IsTruncated>true</IsTruncated>" not in s:
            break
        token = s.split("<NextContinuationToken>")[1].split("</NextContinuationToken>")[0]
    assert keys == ["a/1", "a/2", "b/1", "c", "d e+f/\u00e9", "z"] and pages == 3


def test_control_api_and_restart(tmp_path):
    root = str(tmp_path / "oss")
    e = E.Emulator(root, buckets=["ctl"]).start()
    try:
        c = Client(e, "ctl")
        assert c.request("PUT", "persist", body=b"kept")[0] == 200
        st, _, body = _raw("GET", e.port, "127.0.0.1", "/__stats")
        stats = json.loads(body)
        assert st == 200 and stats["ops"]["PutObject"] == 1 and stats["auth"]["v4-header"] == 1
        # faults: the next PutObject answers 503, the next GetObject's connection is cut
        _raw("POST", e.port, "127.0.0.1", "/__faults",
             body=json.dumps({"op": "PutObject", "status": 503, "code": "ServiceUnavailable"})
             .encode())
        e.add_fault("GetObject", action="close")
        st, _, body = c.request("PUT", "f", body=b"1")
        assert (st, _code(body)) == (503, "ServiceUnavailable")
        assert c.request("PUT", "f", body=b"1")[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            c.request("GET", "f")
        assert c.request("GET", "f")[2] == b"1"
        assert _raw("POST", e.port, "127.0.0.1", "/__stats/reset")[0] == 204
        assert json.loads(_raw("GET", e.port, "127.0.0.1", "/__stats")[2])["total"] == 0
    finally:
        e.stop()
    e = E.Emulator(root).start()
    try:
        st, _, body = Client(e, "ctl").request("GET", "persist")
        assert (st, body) == (200, b"kept")
    finally:
        e.stop()


def test_command_line(tmp_path):
    port_file = tmp_path / "port"
    p = subprocess.Popen([sys.executable, os.path.join(OSS_DIR, "emulator.py"), "--port", "0",
                          "--root", str(tmp_path / "d"), "--ak", "CLIAK", "--sk", "CLISK",
                          "--bucket", "cli-bucket", "--port-file", str(port_file)],
                         stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if port_file.exists():
                break
            time.sleep(0.05)
        port = int(port_file.read_text())
        e = type("P", (), {"port": port})()
        c = Client(e, "cli-bucket", ak="CLIAK", sk="CLISK")
        assert c.request("PUT", "k", body=b"v")[0] == 200
        assert c.request("GET", "k")[2] == b"v"
    finally:
        p.terminate()
        p.wait(10)
