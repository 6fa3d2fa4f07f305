"""OCI distribution spec v1.1: the base endpoint, blob pull and blob push (end-1, end-2,
end-4a/b, end-5, end-6, end-11, end-13)."""

import hashlib

import pytest

from helpers import (API_VERSION_HEADER, abs_location, assert_error, error_codes, random_bytes,
                     sha256, start_upload, unique_repo, upload_blob, upload_blob_chunked,
                     with_query)


# ---------------------------------------------------------------------------
# end-1: GET /v2/

def test_base_endpoint(reg):
    r = reg.get("/v2/")
    assert r.status_code == 200
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"
    assert r.headers.get("X-Content-Type-Options") == "nosniff"


def test_base_endpoint_head(reg):
    r = reg.head("/v2/")
    assert r.status_code == 200
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/it/nosuchrepo-x/tags/list"),
    ("GET", "/v2/it/nosuchrepo-x/manifests/latest"),
    ("HEAD", "/v2/it/nosuchrepo-x/manifests/latest"),
    ("GET", "/v2/it/nosuchrepo-x/blobs/sha256:" + "0" * 64),
    ("HEAD", "/v2/it/nosuchrepo-x/blobs/sha256:" + "0" * 64),
    ("GET", "/v2/it/nosuchrepo-x/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v2/it/nosuchrepo-x/manifests/sha256:" + "0" * 64),
    ("GET", "/v2/Upper/tags/list"),
    ("GET", "/v2/it/x/no-such-endpoint"),
])
def test_version_and_configured_headers_on_errors(reg, method, path):
    r = reg.request(method, path)
    assert 400 <= r.status_code < 500, r.status_code
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"
    assert r.headers.get("X-Content-Type-Options") == "nosniff"


# ---------------------------------------------------------------------------
# end-4a: POST session

def test_post_starts_session(reg, repo):
    r = reg.post("/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
    assert r.status_code == 202
    assert r.headers.get("Location")
    uuid_ = r.headers.get("Docker-Upload-UUID")
    assert uuid_
    assert uuid_ in r.headers["Location"]
    assert r.headers.get("Range") == "0-0"
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"


def test_post_then_put_monolithic(reg, repo):
    data = random_bytes(300 * 1024)
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=sha256(data)), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == sha256(data)
    blob_url = abs_location(reg, r)
    g = reg.get(blob_url)
    assert g.status_code == 200
    assert g.content == data


@pytest.mark.parametrize("algo", ["sha384", "sha512"])
def test_other_algorithm_blob_roundtrip(reg, repo, algo):
    """sha384 digests are accepted wherever sha512 ones are (go-digest, and so registry:2,
    supports sha256, sha384 and sha512)."""
    data = random_bytes(70 * 1024)
    d = algo + ":" + hashlib.new(algo, data).hexdigest()
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=d), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    for method in ("HEAD", "GET"):
        g = reg.request(method, "/v2/%s/blobs/%s" % (repo, d))
        assert g.status_code == 200, (method, g.text[:200])
        assert int(g.headers["Content-Length"]) == len(data)
    assert reg.get("/v2/%s/blobs/%s" % (repo, d)).content == data
    n = len(d) - len(algo) - 1
    r = reg.get("/v2/%s/blobs/%s:%s" % (repo, algo, "0" * n))
    assert_error(r, 404, "BLOB_UNKNOWN")
    # The wrong bytes for the digest are refused as for any other.
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=algo + ":" + "1" * n), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "DIGEST_INVALID")


def test_single_post_monolithic(reg, repo):
    """end-4b: a registry MAY store the blob in one POST (201) or answer 202 and let the
    client PUT (distribution 2.8 does the latter)."""
    data = random_bytes(50 * 1024)
    d = sha256(data)
    r = reg.post("/v2/%s/blobs/uploads/?digest=%s" % (repo, d), data=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (201, 202), r.text
    if r.status_code == 202:
        loc = abs_location(reg, r)
        r = reg.put(with_query(loc, digest=d), data=data,
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    assert r.headers.get("Location")
    g = reg.get("/v2/%s/blobs/%s" % (repo, d))
    assert g.status_code == 200 and g.content == data


def test_single_post_wrong_digest_stores_nothing(reg, repo):
    data = random_bytes(4096)
    wrong = sha256(b"something else")
    r = reg.post("/v2/%s/blobs/uploads/?digest=%s" % (repo, wrong), data=data,
                 headers={"Content-Type": "application/octet-stream"})
    if r.status_code == 202:  # session-only registries: nothing was taken from the body
        pass
    else:
        assert_error(r, 400, "DIGEST_INVALID")
    assert reg.head("/v2/%s/blobs/%s" % (repo, wrong)).status_code == 404
    assert reg.head("/v2/%s/blobs/%s" % (repo, sha256(data))).status_code == 404


# ---------------------------------------------------------------------------
# end-5 / end-13 / end-6: chunked upload

def test_chunked_upload_all_chunks_patched(reg, repo):
    data = random_bytes(700 * 1024 + 17)
    d = upload_blob_chunked(reg, repo, data, chunk=256 * 1024)
    g = reg.get("/v2/%s/blobs/%s" % (repo, d))
    assert g.status_code == 200 and g.content == data


def test_chunked_upload_final_chunk_in_put(reg, repo):
    data = random_bytes(300 * 1024 + 5)
    d = upload_blob_chunked(reg, repo, data, chunk=128 * 1024, final_in_put=True)
    g = reg.get("/v2/%s/blobs/%s" % (repo, d))
    assert g.status_code == 200 and g.content == data


def test_patch_without_content_range_streamed(reg, repo):
    """docker push style: one PATCH with Transfer-Encoding: chunked and no Content-Range."""
    data = random_bytes(400 * 1024)
    loc, _ = start_upload(reg, repo)

    def gen():
        for i in range(0, len(data), 10000):
            yield data[i:i + 10000]

    r = reg.patch(loc, data=gen(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    assert r.headers.get("Range") == "0-%d" % (len(data) - 1)
    loc = abs_location(reg, r)
    r = reg.put(with_query(loc, digest=sha256(data)), data=b"")
    assert r.status_code == 201, r.text
    assert reg.get("/v2/%s/blobs/%s" % (repo, sha256(data))).content == data


def test_upload_status(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.get(loc)
    assert r.status_code == 204
    assert r.headers.get("Range") == "0-0"
    assert r.headers.get("Docker-Upload-UUID")
    chunk = random_bytes(1000)
    r = reg.patch(loc, data=chunk, headers={"Content-Range": "0-999",
                                            "Content-Type": "application/octet-stream"})
    assert r.status_code == 202
    loc = abs_location(reg, r)
    r = reg.get(loc)
    assert r.status_code == 204
    assert r.headers.get("Range") == "0-999"
    assert r.headers.get("Location")
    assert r.content == b""


@pytest.mark.reference_deviation("PATCH ignores Content-Range and appends (202)")
def test_out_of_order_chunk_416(reg, repo):
    """Spec: chunks MUST be uploaded in order; an out-of-order chunk gets 416."""
    data = random_bytes(3000)
    loc, _ = start_upload(reg, repo)
    r = reg.patch(loc, data=data[:1000], headers={"Content-Range": "0-999",
                                                  "Content-Type": "application/octet-stream"})
    assert r.status_code == 202
    loc = abs_location(reg, r)
    r = reg.patch(loc, data=data[2000:], headers={"Content-Range": "2000-2999",
                                                  "Content-Type": "application/octet-stream"})
    assert r.status_code == 416, r.text
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"
    # The status tells where to resume, and the upload can go on from there.
    s = reg.get(loc)
    assert s.status_code == 204
    assert s.headers.get("Range") == "0-999"
    loc = abs_location(reg, s)
    r = reg.patch(loc, data=data[1000:], headers={"Content-Range": "1000-2999",
                                                  "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    loc = abs_location(reg, r)
    r = reg.put(with_query(loc, digest=sha256(data)), data=b"")
    assert r.status_code == 201, r.text
    assert reg.get("/v2/%s/blobs/%s" % (repo, sha256(data))).content == data


@pytest.mark.reference_deviation("PATCH ignores Content-Range and appends (202)")
def test_overlapping_chunk_416(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.patch(loc, data=b"a" * 100, headers={"Content-Range": "0-99"})
    assert r.status_code == 202
    loc = abs_location(reg, r)
    r = reg.patch(loc, data=b"b" * 100, headers={"Content-Range": "50-149"})
    assert r.status_code == 416


def test_put_digest_mismatch(reg, repo):
    data = random_bytes(2048)
    loc, _ = start_upload(reg, repo)
    wrong = sha256(b"not the data")
    r = reg.put(with_query(loc, digest=wrong), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "DIGEST_INVALID")
    assert reg.head("/v2/%s/blobs/%s" % (repo, wrong)).status_code == 404
    assert reg.head("/v2/%s/blobs/%s" % (repo, sha256(data))).status_code == 404


def test_put_malformed_digest(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest="sha256:nothex"), data=b"abc",
                headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "DIGEST_INVALID")


def test_put_without_digest(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.put(loc, data=b"abc", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    assert set(error_codes(r)) & {"DIGEST_INVALID", "BLOB_UPLOAD_INVALID"}


def test_cancel_upload(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.patch(loc, data=b"x" * 10, headers={"Content-Range": "0-9"})
    assert r.status_code == 202
    loc = abs_location(reg, r)
    r = reg.delete(loc)
    assert r.status_code == 204
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"
    assert_error(reg.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(reg.patch(loc, data=b"y", headers={"Content-Range": "10-10"}), 404,
                 "BLOB_UPLOAD_UNKNOWN")
    assert_error(reg.put(with_query(loc, digest=sha256(b"x" * 10)), data=b""), 404,
                 "BLOB_UPLOAD_UNKNOWN")


def test_unknown_upload_uuid(reg, repo):
    r = reg.get("/v2/%s/blobs/uploads/4a1c2a1e-0000-4000-8000-000000000000" % repo)
    assert r.status_code == 404
    assert set(error_codes(r)) & {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"}


def test_completed_upload_is_gone(reg, repo):
    data = random_bytes(100)
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=sha256(data)), data=data)
    assert r.status_code == 201
    r = reg.get(loc)
    assert r.status_code == 404
    assert set(error_codes(r)) & {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"}


def test_empty_blob(reg, repo):
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=sha256(b"")), data=b"")
    assert r.status_code == 201, r.text
    g = reg.get("/v2/%s/blobs/%s" % (repo, sha256(b"")))
    assert g.status_code == 200 and g.content == b""
    assert g.headers.get("Content-Length") == "0"


# ---------------------------------------------------------------------------
# end-11: cross-repository mount

def test_mount_existing_blob(reg, repo):
    src = unique_repo("src")
    data = random_bytes(10000)
    d = upload_blob(reg, src, data)
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, d, src))
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == d
    assert abs_location(reg, r).endswith("/v2/%s/blobs/%s" % (repo, d))
    g = reg.get("/v2/%s/blobs/%s" % (repo, d))
    assert g.status_code == 200 and g.content == data


def test_mount_missing_blob_starts_session(reg, repo):
    src = unique_repo("src")
    upload_blob(reg, src, b"something")
    missing = sha256(random_bytes(32))
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, missing, src))
    assert r.status_code == 202, r.text
    loc = abs_location(reg, r)
    data = random_bytes(100)
    r = reg.put(with_query(loc, digest=sha256(data)), data=data)
    assert r.status_code == 201


def test_mount_from_unknown_repo_starts_session(reg, repo):
    r = reg.post("/v2/%s/blobs/uploads/?mount=%s&from=%s"
                 % (repo, sha256(b"zz"), unique_repo("nosuch")))
    assert r.status_code == 202


# ---------------------------------------------------------------------------
# end-2: blob HEAD / GET / Range

def test_blob_head_and_get(reg, repo):
    data = random_bytes(123457)
    d = upload_blob(reg, repo, data)
    h = reg.head("/v2/%s/blobs/%s" % (repo, d))
    assert h.status_code == 200
    assert h.headers.get("Content-Length") == str(len(data))
    assert h.headers.get("Docker-Content-Digest") == d
    assert h.content == b""
    etag = h.headers.get("ETag")
    if etag is not None:
        assert d in etag
    g = reg.get("/v2/%s/blobs/%s" % (repo, d))
    assert g.status_code == 200
    assert g.headers.get("Content-Length") == str(len(data))
    assert g.headers.get("Docker-Content-Digest") == d
    assert hashlib.sha256(g.content).hexdigest() == d.split(":")[1]


def test_blob_unknown(reg, repo):
    upload_blob(reg, repo, b"make the repo exist")
    d = sha256(random_bytes(16))
    assert_error(reg.get("/v2/%s/blobs/%s" % (repo, d)), 404, "BLOB_UNKNOWN")
    h = reg.head("/v2/%s/blobs/%s" % (repo, d))
    assert h.status_code == 404
    assert h.headers.get(API_VERSION_HEADER) == "registry/2.0"


def test_blob_is_scoped_to_repository(reg, repo):
    d = upload_blob(reg, repo, random_bytes(64))
    other = unique_repo("other")
    upload_blob(reg, other, b"other repo content")
    assert reg.head("/v2/%s/blobs/%s" % (other, d)).status_code == 404


def test_blob_range_single(reg, repo):
    data = random_bytes(10000)
    d = upload_blob(reg, repo, data)
    r = reg.get("/v2/%s/blobs/%s" % (repo, d), headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers.get("Content-Range") == "bytes 100-199/10000"
    assert r.headers.get("Content-Length") == "100"
    assert r.content == data[100:200]
    r = reg.get("/v2/%s/blobs/%s" % (repo, d), headers={"Range": "bytes=9990-"})
    assert r.status_code == 206
    assert r.headers.get("Content-Range") == "bytes 9990-9999/10000"
    assert r.content == data[9990:]
    r = reg.get("/v2/%s/blobs/%s" % (repo, d), headers={"Range": "bytes=-10"})
    assert r.status_code == 206
    assert r.content == data[-10:]


def test_blob_range_unsatisfiable(reg, repo):
    data = random_bytes(1000)
    d = upload_blob(reg, repo, data)
    r = reg.get("/v2/%s/blobs/%s" % (repo, d), headers={"Range": "bytes=5000-6000"})
    assert r.status_code == 416
    assert r.headers.get("Content-Range") == "bytes */1000"
    assert r.headers.get(API_VERSION_HEADER) == "registry/2.0"


def test_blob_malformed_digest(reg, repo):
    upload_blob(reg, repo, b"exists")
    for bad in ("sha256:" + "a" * 40, "sha256:" + "z" * 64):
        assert_error(reg.get("/v2/%s/blobs/%s" % (repo, bad)), 400, "DIGEST_INVALID")


def test_large_blob_roundtrip(reg, repo):
    data = random_bytes(6 * 1024 * 1024 + 3)
    d = upload_blob_chunked(reg, repo, data, chunk=2 * 1024 * 1024)
    g = reg.get("/v2/%s/blobs/%s" % (repo, d), stream=True)
    h = hashlib.sha256()
    n = 0
    for chunk in g.iter_content(1 << 20):
        h.update(chunk)
        n += len(chunk)
    assert n == len(data)
    assert "sha256:" + h.hexdigest() == d
