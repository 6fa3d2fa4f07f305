"""A pull-through blob fetch that fails before any byte of the answer has left: the client gets
a status it can act on (502 for an upstream fault, 503 when the store cannot take the blob)
with an OCI error body instead of a closed connection, nothing is stored, and the access log
tells the status and the bytes that actually went out."""

import json
import os
import re
import subprocess
import time

import pytest

from helpers import API_VERSION_HEADER, blob_files, pull_manifest, raw_get

pytestmark = pytest.mark.regmirror_only("pull-through fault answers are regmirror's behaviour")


@pytest.fixture
def mirror(make_registry, upstream):
    return make_registry(name="mirror", extra_yaml=upstream.proxy_yaml(username="alice"))


def log_lines(reg, path, timeout=5.0):
    """(status, bytes) of each access log line for path, once there is one."""
    rx = re.compile(r'msg=request\b.*?path="?%s"? status=(\d+) bytes=(\d+)' % re.escape(path))
    deadline = time.monotonic() + timeout
    while True:
        with open(reg.log_path, errors="replace") as f:
            got = [(int(m.group(1)), int(m.group(2))) for m in map(rx.search, f) if m]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def expect_early_error(reg, repo, blob, status, code):
    path = "/v2/%s/blobs/%s" % (repo, blob.digest)
    got, headers, body, complete = raw_get(reg, path)
    assert got == status, (got, body[:300])
    assert complete
    assert headers.get(API_VERSION_HEADER) == "registry/2.0"
    assert headers.get("Content-Type", "").startswith("application/json")
    errs = json.loads(body)["errors"]
    assert [e["code"] for e in errs] == [code], errs
    assert errs[0].get("detail"), errs
    assert blob.digest not in blob_files(reg.rootdir)
    # the log says what the client got, not the 200 that was queued and taken back
    assert log_lines(reg, path) == [(status, len(body))]
    return errs[0]


@pytest.mark.parametrize("fault", ["corrupt", "short"])
def test_fast_blob_fault_answers_502(mirror, upstream, seeded, fault):
    img = seeded.alpine
    blob = img.config
    assert pull_manifest(mirror, img.repo, img.tag).status_code == 200
    if fault == "corrupt":
        upstream.proxy.corrupt(whole=True, path=blob.digest)
    else:
        upstream.proxy.cut_after(len(blob.data) // 2, whole=True, path=blob.digest)
    err = expect_early_error(mirror, img.repo, blob, 502, "UNKNOWN")
    assert ("do not match" if fault == "corrupt" else "of %d bytes" % len(blob.data)) in \
        err["detail"]
    upstream.proxy.clear_faults()
    got, _, body, complete = raw_get(mirror, "/v2/%s/blobs/%s" % (img.repo, blob.digest))
    assert got == 200 and complete and body == blob.data


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode().strip())


def _fill(path, leave):
    """Fills the file system of path but for `leave` bytes (a multiple of the page size)."""
    filler = os.path.join(str(path), "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))


def test_store_full_answers_503(make_registry, upstream, seeded, tmp_path):
    root = tmp_path / "small"
    _mount_tmpfs(root, "4m")
    try:
        reg = make_registry(name="mirror-full", rootdir=root, storage="fs",
                            extra_yaml=upstream.proxy_yaml(username="alice"))
        child = seeded.multi.children[0]
        assert pull_manifest(reg, seeded.multi.repo, child.digest).status_code == 200
        layer = child.layers[0]
        assert len(layer.data) > 16384
        # room for the upload's own small files, none for the blob's first bytes
        _fill(root, 4096)
        upstream.proxy.add_fault("whole", count=1, path=layer.digest)
        expect_early_error(reg, seeded.multi.repo, layer, 503, "UNAVAILABLE")
        reg.stop()
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
