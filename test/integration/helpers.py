"""Helpers for the regmirror integration suite: starting registries, talking the
distribution API, building images and OCI layouts, snapshotting storage."""

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from urllib.parse import urljoin

import pytest
import requests

# ---------------------------------------------------------------------------
# media types

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ALL_MANIFEST_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
ACCEPT_ALL = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
API_VERSION_HEADER = "Docker-Distribution-API-Version"

REFERENCE_BIN = "/usr/bin/docker-registry"


# ---------------------------------------------------------------------------
# digests and names

def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_repo(prefix="t"):
    """A fresh repository name with two path components."""
    return "it/%s-%s" % (prefix, uuid.uuid4().hex[:12])


def random_bytes(n):
    return os.urandom(n)


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pretty_json(obj):
    """A non-canonical serialisation, to catch registries that re-encode."""
    return (json.dumps(obj, indent=3) + "\n").encode()


# ---------------------------------------------------------------------------
# processes and ports

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_listening(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def tail(path, nbytes=6000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(no log: %s)" % e


def target_kind():
    """'regmirror' (REGMIRROR_BIN, default target) or 'docker-registry'
    (REGISTRY_UNDER_TEST=docker-registry)."""
    want = os.environ.get("REGISTRY_UNDER_TEST", "").strip()
    if want in ("docker-registry", "reference"):
        return "docker-registry"
    if want and want != "regmirror":
        raise RuntimeError("REGISTRY_UNDER_TEST must be 'regmirror' or 'docker-registry'")
    return "regmirror"


def regmirror_bin():
    return os.environ.get("REGMIRROR_BIN", "").strip()


def release_bin():
    """The release build next to REGMIRROR_BIN (the Makefile's B/asan -> B/release)."""
    explicit = os.environ.get("REGMIRROR_RELEASE_BIN", "").strip()
    if explicit:
        return explicit
    b = regmirror_bin()
    parent, leaf = os.path.split(os.path.dirname(b))
    if leaf == "asan":
        cand = os.path.join(parent, "release", os.path.basename(b))
        if os.access(cand, os.X_OK):
            return cand
    return b


def wait_until(fn, timeout=15.0, every=0.05):
    """Polls fn until it returns something true (returned) or timeout passes (fn's last
    answer is returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    return fn()


def binary_for(kind):
    if kind == "docker-registry":
        return os.environ.get("DOCKER_REGISTRY_BIN", REFERENCE_BIN)
    return regmirror_bin()


def render_config(rootdir, addr, delete_enabled=True, extra_yaml="", storage_yaml="",
                  driver_yaml=None):
    """The config.yml both registries understand. driver_yaml replaces the filesystem driver's
    section (storage.filesystem.rootdirectory: rootdir) when given."""
    if driver_yaml is None:
        driver_yaml = "  filesystem:\n    rootdirectory: %s\n" % rootdir
    text = (
        "version: 0.1\n"
        "log:\n"
        "  level: info\n"
        "  fields:\n"
        "    service: registry\n"
        "storage:\n"
        "%s"
        "  delete:\n"
        "    enabled: %s\n"
        "%s"
        "http:\n"
        "  addr: %s\n"
        "  headers:\n"
        "    X-Content-Type-Options: [nosniff]\n"
    ) % (driver_yaml, "true" if delete_enabled else "false", storage_yaml, addr)
    return text + extra_yaml


# ---------------------------------------------------------------------------
# storage under test: the filesystem (default) or OSS through the emulator

STORAGE_ENV = "REGMIRROR_TEST_STORAGE"
OSS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oss")


def storage_kind():
    """'fs' (default) or 'oss' (REGMIRROR_TEST_STORAGE=oss): the driver of the regmirror
    registries the fixtures start. docker-registry (the reference, the test upstream) always
    runs on the filesystem."""
    want = os.environ.get(STORAGE_ENV, "").strip().lower()
    if want in ("", "fs", "filesystem"):
        return "fs"
    if want == "oss":
        return "oss"
    raise RuntimeError("%s must be 'fs' or 'oss', not %r" % (STORAGE_ENV, want))


def oss_driver_yaml(ak, sk, region, endpoint, bucket, prefix, extra=""):
    """The storage.oss section (indented under storage:) for an emulator at endpoint (plain
    http), rooted at /<prefix>/; extra: more lines of that section."""
    return ("  oss:\n"
            "    accesskeyid: %s\n"
            "    accesskeysecret: %s\n"
            "    region: oss-%s\n"
            "    endpoint: %s\n"
            "    bucket: %s\n"
            "    secure: false\n"
            "    rootdirectory: /%s/\n"
            "%s" % (ak, sk, region, endpoint, bucket, prefix, extra))


def import_emulator():
    import sys
    d = os.path.abspath(OSS_DIR)
    if d not in sys.path:
        sys.path.insert(0, d)
    import emulator
    return emulator


class OssStore:
    """One OSS emulator (test/oss/emulator.py, in this process) with a fresh bucket; every
    registry gets its own root directory (key prefix) in that bucket.

    The emulator keeps objects under names hashed from the key, so tests that inspect a
    registry's root see a materialised view instead: `view(prefix, dest)` hard-links every
    object under the prefix to dest/root/<key without the prefix> (and the bucket's top-level
    objects to dest/, where a path escaping the root would land). The view is read-only:
    writing into it changes the emulator's copy behind its back."""

    AK = "ITESTAK"
    SK = "it-secret-Zq8w3Lm"
    BUCKET = "regmirror-it"
    REGION = "cn-hangzhou"

    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.emu = import_emulator().Emulator(
            os.path.join(self.workdir, "data"), ak=self.AK, sk=self.SK, buckets=[self.BUCKET],
            region=self.REGION).start()
        self._spooldir_ok = None
        self._views = {}  # view directory -> {file: emulator data file name}

    def stop(self):
        self.emu.stop()

    @property
    def port(self):
        return self.emu.port

    def prefix_for(self, rootdir):
        """The bucket prefix standing for a filesystem root path (registries given the same
        rootdir share their storage, as on the filesystem)."""
        h = hashlib.sha1(os.path.abspath(str(rootdir)).encode()).hexdigest()[:10]
        leaf = os.path.basename(os.path.dirname(os.path.abspath(str(rootdir)))) or "root"
        return "%s-%s" % (leaf[:40], h)

    def driver_yaml(self, prefix, endpoint=None, bucket=None):
        """storage.oss against the emulator, rooted at /<prefix>/."""
        return oss_driver_yaml(self.AK, self.SK, self.REGION,
                               endpoint or "localhost:%d" % self.port, bucket or self.BUCKET,
                               prefix)

    def keys(self, prefix=""):
        """The keys under prefix (a root directory, with or without its trailing slash)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        store = self.emu.store
        b = store.bucket(self.BUCKET)
        with store.lock:
            return [k for k, _ in store.iter_keys(b, None, prefix)]

    def read(self, key):
        return self.emu.get_bytes(self.BUCKET, key)

    def size(self, key):
        return self.emu.head(self.BUCKET, key)["size"]

    def view(self, prefix, dest):
        """Materialises the objects under prefix as files under dest/root; returns that.
        Kept in sync from call to call: only what changed in the bucket is linked or removed
        (a directory costs a millisecond on some machines, a root holds thousands)."""
        dest = os.path.abspath(dest)
        root = os.path.join(dest, "root")
        state = self._views.get(dest)
        if state is None or not os.path.isdir(root):
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(root)
            state = self._views[dest] = {}
        store = self.emu.store
        b = store.bucket(self.BUCKET)
        pre = prefix.rstrip("/") + "/"
        want = {}
        with store.lock:  # no object is replaced or deleted while its data file is linked
            for key, meta in store.iter_keys(b, None, ""):
                if key.startswith(pre):
                    rel = key[len(pre):]
                    target = os.path.join(root, rel)
                elif "/" not in key:
                    rel, target = key, os.path.join(dest, key)
                else:
                    continue
                if not rel or rel.endswith("/"):
                    continue
                target = os.path.normpath(target)
                if not target.startswith(os.path.join(dest, "")):
                    # a key that climbs out of the view: shown flattened next to the root
                    target = os.path.join(dest, rel.replace("/", "%2F"))
                want[target] = meta["data"]
                if state.get(target) == meta["data"]:
                    continue
                if target in state:
                    os.unlink(target)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                src = os.path.join(os.path.dirname(b.base(key)), meta["data"])
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copyfile(src, target)
        for target in set(state) - set(want):
            os.unlink(target)
            d = os.path.dirname(target)
            while d not in (root, dest) and not os.listdir(d):
                os.rmdir(d)
                d = os.path.dirname(d)
        state.clear()
        state.update(want)
        return root

    def spooldir_supported(self, binary):
        """Whether this regmirror knows proxy.spooldir (asked once with check-config)."""
        if self._spooldir_ok is None:
            cfg = os.path.join(self.workdir, "spooldir-probe.yml")
            with open(cfg, "w") as f:
                f.write(render_config("/nonexistent", "127.0.0.1:1",
                                      driver_yaml=self.driver_yaml("probe"))
                        + "proxy:\n  remoteurl: http://127.0.0.1:1\n  spooldir: %s\n"
                        % self.workdir)
            p = subprocess.run([binary, "check-config", cfg], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL)
            self._spooldir_ok = p.returncode == 0
        return self._spooldir_ok


_oss_store = None


def set_oss_store(store):
    global _oss_store
    _oss_store = store


def oss_store():
    """The session's OssStore (started by conftest when REGMIRROR_TEST_STORAGE=oss)."""
    if _oss_store is None:
        raise RuntimeError("no OSS emulator: REGMIRROR_TEST_STORAGE=oss starts one per session")
    return _oss_store


class StoredFiles:
    """Read access to what a registry stored, by path relative to its root
    ('docker/registry/v2/...'), whichever the driver."""

    def __init__(self, reg):
        self.reg = reg

    def list(self):
        """{relative path: size} of every stored file."""
        self.reg.settle()
        if self.reg.storage == "oss":
            st = oss_store()
            pre = self.reg.oss_prefix + "/"
            return {k[len(pre):]: st.size(k) for k in st.keys(pre)}
        out = {}
        root = self.reg.fs_root
        for dirpath, _, files in os.walk(root):
            for fn in files:
                p = os.path.join(dirpath, fn)
                out[os.path.relpath(p, root)] = os.path.getsize(p)
        return out

    def read(self, rel):
        self.reg.settle()
        if self.reg.storage == "oss":
            return oss_store().read(self.reg.oss_prefix + "/" + rel)
        with open(os.path.join(self.reg.fs_root, rel), "rb") as f:
            return f.read()

    def exists(self, rel):
        if self.reg.storage == "oss":
            return rel in self.list()
        return os.path.exists(os.path.join(self.reg.fs_root, rel))


class Registry:
    """One registry process on 127.0.0.1:<free port>."""

    def __init__(self, kind, workdir, rootdir=None, delete_enabled=True, extra_yaml="",
                 env=None, binary=None, storage_yaml="", storage=None, redirect=False,
                 driver_yaml=None):
        """storage: 'fs' or 'oss' (default: storage_kind() for regmirror, 'fs' for
        docker-registry). On OSS the root is a prefix of the session's bucket named after
        rootdir, blob GETs are streamed through the registry unless redirect is true (then
        they answer 307 to a presigned emulator URL), and `rootdir` is a read-only view of the
        stored objects, refreshed on every access. driver_yaml replaces the storage.oss
        section (another bucket or endpoint of the emulator)."""
        self.kind = kind
        self.binary = binary or binary_for(kind)
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.storage = storage or (storage_kind() if kind == "regmirror" else "fs")
        self.redirect = redirect
        self.driver_yaml = driver_yaml
        self.fs_root = str(rootdir) if rootdir else os.path.join(self.workdir, "root")
        if self.storage == "oss":
            self.oss_prefix = oss_store().prefix_for(self.fs_root)
        else:
            self.oss_prefix = None
            os.makedirs(self.fs_root, exist_ok=True)
        self.files = StoredFiles(self)
        self.delete_enabled = delete_enabled
        self.extra_yaml = extra_yaml
        self.storage_yaml = storage_yaml
        self.env = env or {}
        self.port = None
        self.proc = None
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.session = requests.Session()

    @property
    def rootdir(self):
        """The storage root: the directory on the filesystem; on OSS a fresh read-only view,
        taken once the proxy has stored what it spooled (see settle)."""
        if self.storage == "oss":
            self.settle()
            return oss_store().view(self.oss_prefix, os.path.join(self.workdir, "oss-view"))
        return self.fs_root

    @property
    def spooldir(self):
        return os.path.join(self.workdir, "spool")

    def settle(self, timeout=15.0):
        """On a remote store the proxy answers from its local spool and stores the blob
        afterwards, off the request; on the filesystem the spool is the store (a rename
        before the answer). Waits until the spool holds no file, so that what a test then
        reads from the store is what a filesystem registry would hold at that point."""
        if self.storage != "oss" or not os.path.isdir(self.spooldir):
            return
        deadline = time.monotonic() + timeout
        while any(files for _, _, files in os.walk(self.spooldir)):
            if time.monotonic() > deadline or not self.alive():
                return
            time.sleep(0.02)

    def render(self):
        """This registry's config.yml text."""
        addr = "127.0.0.1:%d" % self.port
        if self.storage != "oss":
            return render_config(self.fs_root, addr, self.delete_enabled, self.extra_yaml,
                                 self.storage_yaml)
        st = oss_store()
        storage_yaml = self.storage_yaml
        if not self.redirect:
            storage_yaml = "  redirect:\n    disable: true\n" + storage_yaml
        extra = self.extra_yaml
        # The proxy's local spool (the store is remote): a directory of this registry's own.
        if re.search(r"^proxy:\n", extra, re.M) and st.spooldir_supported(self.binary):
            spool = self.spooldir
            os.makedirs(spool, exist_ok=True)
            extra = re.sub(r"^proxy:\n", lambda _: "proxy:\n  spooldir: %s\n" % spool, extra,
                           count=1, flags=re.M)
        return render_config(None, addr, self.delete_enabled, extra, storage_yaml,
                             driver_yaml=self.driver_yaml or st.driver_yaml(self.oss_prefix))

    @property
    def is_reference(self):
        return self.kind == "docker-registry"

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def url(self, path):
        return self.base + path

    def start(self, timeout=20.0):
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise RuntimeError("registry binary not executable: %r" % self.binary)
        last_err = None
        for _ in range(3):  # a port may be taken between free_port() and bind()
            self.port = free_port()
            with open(self.config_path, "w") as f:
                f.write(self.render())
            env = dict(os.environ)
            for k in list(env):
                if k.startswith("REGISTRY_") and k != "REGISTRY_UNDER_TEST":
                    del env[k]
            env.update(self.env)
            env.setdefault("OTEL_TRACES_EXPORTER", "none")
            logf = open(self.log_path, "ab")
            self.proc = subprocess.Popen([self.binary, "serve", self.config_path],
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         cwd=self.workdir)
            logf.close()
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError as e:
                last_err = e
                self.stop()
                if "address already in use" not in tail(self.log_path).lower():
                    break
        raise last_err

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s during start-up; log tail:\n%s" % (
                    self.kind, self.proc.returncode, tail(self.log_path)))
            try:
                r = requests.get(self.url("/v2/"), timeout=1)
                if r.status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("%s did not answer GET /v2/ within %ss; log tail:\n%s" % (
            self.kind, timeout, tail(self.log_path)))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stops the process (SIGTERM, then SIGKILL). Returns its exit status."""
        self.session.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log_tail(self, nbytes=6000):
        return tail(self.log_path, nbytes)

    # -- HTTP shorthands ----------------------------------------------------
    def request(self, method, path_or_url, **kw):
        kw.setdefault("timeout", 30)
        kw.setdefault("allow_redirects", False)
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        return self.session.request(method, url, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


# ---------------------------------------------------------------------------
# API helpers

def abs_location(reg, resp):
    loc = resp.headers.get("Location")
    assert loc, "no Location header in %s answer" % resp.status_code
    return urljoin(reg.base + "/", loc)


def with_query(url, **params):
    from urllib.parse import urlencode
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode(params)


def error_codes(resp):
    """The list of error codes of an error body (asserting its shape)."""
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), resp.text
    codes = []
    for e in body["errors"]:
        assert isinstance(e, dict) and isinstance(e.get("code"), str), resp.text
        assert "message" in e, resp.text
        codes.append(e["code"])
    return codes


def assert_error(resp, status, code):
    assert resp.status_code == status, "want %d %s, got %d: %s" % (
        status, code, resp.status_code, resp.text[:500])
    assert code in error_codes(resp), resp.text[:500]
    assert resp.headers.get(API_VERSION_HEADER) == "registry/2.0"


def start_upload(reg, repo):
    r = reg.post("/v2/%s/blobs/uploads/" % repo, data=b"")
    assert r.status_code == 202, r.text
    return abs_location(reg, r), r


def upload_blob(reg, repo, data, digest=None):
    """POST then PUT (monolithic). Returns the digest."""
    digest = digest or sha256(data)
    loc, _ = start_upload(reg, repo)
    r = reg.put(with_query(loc, digest=digest), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, "blob PUT: %d %s" % (r.status_code, r.text)
    return digest


def upload_blob_chunked(reg, repo, data, chunk=64 * 1024, final_in_put=False):
    """POST, PATCH chunks with Content-Range, PUT ?digest=. Returns the digest."""
    digest = sha256(data)
    loc, _ = start_upload(reg, repo)
    off = 0
    end = len(data)
    last_chunk = b""
    if final_in_put and end > 0:
        last_start = ((end - 1) // chunk) * chunk
        last_chunk = data[last_start:]
        end = last_start
    while off < end:
        piece = data[off:min(off + chunk, end)]
        r = reg.patch(loc, data=piece, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": "%d-%d" % (off, off + len(piece) - 1)})
        assert r.status_code == 202, "PATCH: %d %s" % (r.status_code, r.text)
        assert r.headers.get("Range") == "0-%d" % (off + len(piece) - 1)
        loc = abs_location(reg, r)
        off += len(piece)
    headers = {"Content-Type": "application/octet-stream"}
    if last_chunk:
        headers["Content-Range"] = "%d-%d" % (off, off + len(last_chunk) - 1)
    r = reg.put(with_query(loc, digest=digest), data=last_chunk, headers=headers)
    assert r.status_code == 201, "PUT: %d %s" % (r.status_code, r.text)
    return digest


def put_manifest(reg, repo, ref, body, media_type):
    return reg.put("/v2/%s/manifests/%s" % (repo, ref), data=body,
                   headers={"Content-Type": media_type})


def put_manifest_ok(reg, repo, ref, body, media_type):
    r = put_manifest(reg, repo, ref, body, media_type)
    assert r.status_code == 201, "manifest PUT %s: %d %s" % (ref, r.status_code, r.text)
    assert r.headers.get("Docker-Content-Digest") == sha256(body)
    return r


def get_manifest(reg, repo, ref, accept=None, method="GET"):
    accept = accept or ALL_MANIFEST_TYPES
    return reg.request(method, "/v2/%s/manifests/%s" % (repo, ref),
                       headers={"Accept": ", ".join(accept)})


# ---------------------------------------------------------------------------
# image builders

def descriptor(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update(extra)
    return d


def image_config(arch="amd64", os_="linux", diff_ids=None):
    return canonical_json({
        "architecture": arch, "os": os_,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or []},
        "history": [{"created_by": "regmirror integration test %s" % uuid.uuid4().hex}],
    })


class Image:
    """Blobs plus a manifest, not yet pushed."""

    def __init__(self, manifest, media_type, blobs, config=None):
        self.manifest = manifest
        self.media_type = media_type
        self.blobs = blobs  # digest -> bytes
        self.config = config

    @property
    def digest(self):
        return sha256(self.manifest)

    def desc(self, **extra):
        return descriptor(self.media_type, self.manifest, **extra)


def tar_layer(size, name=None):
    """A gzip-compressed tar holding one file of `size` random (incompressible) bytes.
    Returns (compressed bytes, diff_id)."""
    import gzip
    import io
    import tarfile
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name or "data-%s.bin" % uuid.uuid4().hex[:8])
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(random_bytes(size)))
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=1, mtime=0), sha256(tar)


def make_image(layer_sizes=(1024, 2048), docker=False, arch="amd64", pretty=True,
               annotations=None, subject=None, artifact_type=None, config=None,
               config_type=None, real_layers=False):
    if real_layers:
        pairs = [tar_layer(n) for n in layer_sizes]
        layers = [p[0] for p in pairs]
        diff_ids = [p[1] for p in pairs]
    else:
        layers = [random_bytes(n) for n in layer_sizes]
        diff_ids = [sha256(l) for l in layers]
    cfg = config if config is not None else image_config(arch, diff_ids=diff_ids)
    if docker:
        mt, ct, lt = DOCKER_MANIFEST, config_type or DOCKER_CONFIG, DOCKER_LAYER
    else:
        mt, ct, lt = OCI_MANIFEST, config_type or OCI_CONFIG, OCI_LAYER
    m = {"schemaVersion": 2, "mediaType": mt, "config": descriptor(ct, cfg),
         "layers": [descriptor(lt, l) for l in layers]}
    if artifact_type:
        m["artifactType"] = artifact_type
    if subject:
        m["subject"] = subject
    if annotations:
        m["annotations"] = annotations
    body = pretty_json(m) if pretty else canonical_json(m)
    blobs = {sha256(cfg): cfg}
    for l in layers:
        blobs[sha256(l)] = l
    return Image(body, mt, blobs, cfg)


def make_index(children, docker=False, platforms=None, annotations=None):
    mt = DOCKER_LIST if docker else OCI_INDEX
    platforms = platforms or [{"architecture": "amd64", "os": "linux"},
                              {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    m = {"schemaVersion": 2, "mediaType": mt, "manifests": []}
    for child, plat in zip(children, platforms):
        m["manifests"].append(child.desc(platform=plat))
    if annotations:
        m["annotations"] = annotations
    return pretty_json(m), mt


def push_image(reg, repo, image, ref=None):
    for d, data in image.blobs.items():
        upload_blob(reg, repo, data, d)
    return put_manifest_ok(reg, repo, ref or image.digest, image.manifest, image.media_type)


def image_of(layers, docker=False, subject=None, artifact_type=None):
    """An image with the given layer bytes (so images can share layers)."""
    cfg = image_config(diff_ids=[sha256(l) for l in layers])
    mt, ct, lt = ((DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER) if docker
                  else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER))
    m = {"schemaVersion": 2, "mediaType": mt, "config": descriptor(ct, cfg),
         "layers": [descriptor(lt, l) for l in layers]}
    if subject:
        m["subject"] = subject
    if artifact_type:
        m["artifactType"] = artifact_type
    blobs = {sha256(cfg): cfg}
    for l in layers:
        blobs[sha256(l)] = l
    return Image(pretty_json(m), mt, blobs, cfg)


def local_image_sharing(layer):
    """A local image whose first layer is a (proxied) layer's bytes."""
    own = random_bytes(20 * 1024)
    cfg = image_config(diff_ids=[sha256(layer), sha256(own)])
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, cfg),
         "layers": [descriptor(OCI_LAYER, layer), descriptor(OCI_LAYER, own)]}
    return Image(pretty_json(m), OCI_MANIFEST, {sha256(cfg): cfg, sha256(layer): layer,
                                                sha256(own): own}, cfg)


# ---------------------------------------------------------------------------
# OCI image layout on disk

def write_oci_layout(path, images, indexes=()):
    """images: list of (tag, Image); indexes: list of (tag, index_bytes, media_type, [Image])."""
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put_blob(data):
        p = os.path.join(path, "blobs", "sha256", sha256(data).split(":", 1)[1])
        with open(p, "wb") as f:
            f.write(data)

    entries = []
    for tag, img in images:
        for data in img.blobs.values():
            put_blob(data)
        put_blob(img.manifest)
        entries.append(img.desc(annotations={"org.opencontainers.image.ref.name": tag}))
    for tag, body, mt, children in indexes:
        for img in children:
            for data in img.blobs.values():
                put_blob(data)
            put_blob(img.manifest)
        put_blob(body)
        entries.append(descriptor(mt, body,
                                  annotations={"org.opencontainers.image.ref.name": tag}))
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, f)


def read_oci_layout(path):
    """Returns (index.json dict, {digest: bytes})."""
    with open(os.path.join(path, "index.json")) as f:
        idx = json.load(f)
    blobs = {}
    bdir = os.path.join(path, "blobs", "sha256")
    for name in os.listdir(bdir):
        with open(os.path.join(bdir, name), "rb") as f:
            blobs["sha256:" + name] = f.read()
    return idx, blobs


# ---------------------------------------------------------------------------
# storage snapshots

def snapshot(root):
    """{relative path: sha256 of content (files) or 'dir'} for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = "dir"
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            h = hashlib.sha256()
            try:
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out[os.path.join(rel, fn)] = h.hexdigest()
            except OSError:
                out[os.path.join(rel, fn)] = "unreadable"
    return out


def snapshot_diff(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return {"added": added, "removed": removed, "changed": changed}


def blob_set(root):
    """digest -> size of every blob with data under root."""
    out = {}
    for algo in ("sha256", "sha384", "sha512"):
        base = os.path.join(root, "docker/registry/v2/blobs", algo)
        for dirpath, _, files in os.walk(base):
            if "data" in files:
                out["%s:%s" % (algo, os.path.basename(dirpath))] = os.path.getsize(
                    os.path.join(dirpath, "data"))
    return out


def blob_files(root):
    """digest -> size of every blob committed under a registry root."""
    out = {}
    base = os.path.join(root, "docker/registry/v2/blobs/sha256")
    for dirpath, _, files in os.walk(base):
        if "data" in files:
            out["sha256:" + os.path.basename(dirpath)] = os.path.getsize(
                os.path.join(dirpath, "data"))
    return out


# ---------------------------------------------------------------------------
# pulling, as clients of a mirror do

def pull_manifest(reg, repo, ref, method="GET", accept=ACCEPT_ALL):
    return reg.session.request(method, reg.url("/v2/%s/manifests/%s" % (repo, ref)),
                               headers={"Accept": accept}, timeout=60)


def raw_get(reg, path, headers=None, timeout=60):
    """GET with http.client, which (unlike requests) tells a cut body from a complete one.
    Returns (status, headers, body, complete)."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        try:
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return 0, {}, b"", False
        try:
            body = resp.read()
            complete = True
        except http.client.IncompleteRead as e:
            body = e.partial
            complete = False
        return resp.status, dict(resp.getheaders()), body, complete
    finally:
        conn.close()


def http_request(reg, path, method="GET", headers=None):
    """(status, body, complete) with http.client, which tells a cut body from a whole one;
    status 0 when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        try:
            return resp.status, resp.read(), True
        except http.client.IncompleteRead as e:
            return resp.status, e.partial, False
    except (ConnectionError, http.client.HTTPException) as e:
        return 0, str(e).encode(), False
    finally:
        conn.close()


def pull_image(reg, img, name=None):
    """Pulls a seeded image through reg the way dockerd does: HEAD by tag, GET by digest,
    every blob; checks every byte."""
    repo = name or img.repo
    r = pull_manifest(reg, repo, img.tag, method="HEAD")
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == img.digest
    r = pull_manifest(reg, repo, img.digest)
    assert r.status_code == 200, r.text
    assert r.content == img.manifest
    for d, data in img.blobs.items():
        status, _, body, complete = raw_get(reg, "/v2/%s/blobs/%s" % (repo, d))
        assert status == 200 and complete and sha256(body) == d


def pull_problems(reg, img, repo):
    """Pulls a seeded image (or index and its first child) as dockerd does; returns a list of
    problems (empty when every byte arrived right), for pulls that run beside eviction."""
    problems = []
    accept = {"Accept": ACCEPT_ALL}
    st, body, ok = http_request(reg, "/v2/%s/manifests/%s" % (repo, img.tag), "HEAD", accept)
    if st != 200:
        problems.append("HEAD tag: %s" % st)
    st, body, ok = http_request(reg, "/v2/%s/manifests/%s" % (repo, img.digest), headers=accept)
    if st != 200 or body != img.manifest:
        problems.append("GET manifest: %s %s" % (st, body[:120]))
    images = [img.children[0]] if img.is_index else [img]
    for im in images:
        if img.is_index:
            st, body, ok = http_request(reg, "/v2/%s/manifests/%s" % (repo, im.digest),
                                        headers=accept)
            if st != 200 or body != im.manifest:
                problems.append("GET child: %s" % st)
        for d, data in im.blobs.items():
            st, body, ok = http_request(reg, "/v2/%s/blobs/%s" % (repo, d))
            if st != 200 or not ok or body != data:
                problems.append("GET blob %s: %s complete=%s len=%d" % (d[:19], st, ok, len(body)))
    return problems


def blob_get(mirror, repo, digest):
    """One GET of a blob: (status, bytes read, sha256 of them). A body cut short shows as
    fewer bytes; a registry gone before it answered as (0, 0, None)."""
    h = hashlib.sha256()
    n = 0
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
    try:
        try:
            conn.request("GET", "/v2/%s/blobs/%s" % (repo, digest))
            resp = conn.getresponse()
        except (http.client.HTTPException, ConnectionError):
            return 0, 0, None
        try:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        except (http.client.IncompleteRead, ConnectionError):
            pass
        return resp.status, n, "sha256:" + h.hexdigest()
    finally:
        conn.close()


def herd_get(mirror, repo, digest, clients):
    """clients concurrent GETs of one blob: (status, bytes, sha256 digest) of each body."""
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: blob_get(mirror, repo, digest), range(clients)))


# ---------------------------------------------------------------------------
# garbage-collect

def need_reference():
    if not os.access(binary_for("docker-registry"), os.X_OK):
        pytest.skip("needs docker-registry")


def write_config(path, rootdir, extra=""):
    with open(path, "w") as f:
        f.write(render_config(rootdir, "127.0.0.1:%d" % free_port(), extra_yaml=extra))
    return path


def run_gc(config, *flags, timeout=60):
    return subprocess.run([regmirror_bin(), "garbage-collect", *flags, config],
                          capture_output=True, text=True, timeout=timeout)


def populate(reg):
    """Shared-layer images in two repositories, deleted manifests, a moved tag (untagged
    revision), an index, a referrer. Returns what must survive each mode."""
    base = random_bytes(200 * 1024)       # shared by everything below
    mid = random_bytes(50 * 1024)         # shared by app:1 and app:2
    a, b = unique_repo("gc-app"), unique_repo("gc-other")
    app1 = image_of([base, mid, random_bytes(30 * 1024)])
    app2 = image_of([base, mid, random_bytes(40 * 1024)])
    app3 = image_of([base, random_bytes(60 * 1024)], docker=True)
    other = image_of([base, random_bytes(20 * 1024)])
    gone = image_of([base, random_bytes(70 * 1024)])
    push_image(reg, a, app1, "1")
    push_image(reg, a, app2, "2")
    push_image(reg, a, app3, "3")
    # moving tag 3 leaves app3 untagged
    app3b = image_of([base, random_bytes(10 * 1024)], docker=True)
    push_image(reg, a, app3b, "3")
    push_image(reg, b, other, "latest")
    push_image(reg, b, gone, "gone")
    r = reg.delete("/v2/%s/manifests/%s" % (b, gone.digest))
    assert r.status_code == 202, r.text
    kids = [image_of([base, random_bytes(5000)]) for _ in range(2)]
    for k in kids:
        push_image(reg, a, k)
    index, index_mt = make_index(kids)
    put_manifest_ok(reg, a, "multi", index, index_mt)
    sig = image_of([random_bytes(300)], subject=app1.desc(), artifact_type="application/x-sig")
    push_image(reg, a, sig)
    return {"repo": a, "other": b, "app1": app1, "app2": app2, "app3": app3, "app3b": app3b,
            "other_img": other, "gone": gone, "kids": kids, "index": index, "sig": sig}


# ---------------------------------------------------------------------------
# raw HTTP over a socket

def recv_response(sock, head_request=False, timeout=10.0):
    """Reads one HTTP/1.1 response from sock. Returns (status, headers(dict lower), body, rest)
    where rest is any bytes read past the response (pipelining)."""
    sock.settimeout(timeout)
    buf = getattr(sock, "_pending", b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before response head: %r" % buf[:200])
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    body = b""
    if head_request or status in (204, 304) or 100 <= status < 200:
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                buf += _recv_more(sock)
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += _recv_more(sock)
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            buf += _recv_more(sock)
        body, buf = buf[:n], buf[n:]
    else:
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
        body, buf = buf, b""
    sock._pending = buf
    return status, headers, body


def _recv_more(sock):
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("connection closed mid-body")
    return chunk


class RawSocket(socket.socket):
    """socket with a _pending attribute for recv_response."""
    _pending = b""


def raw_connect(reg, timeout=10.0):
    s = RawSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", reg.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_request(reg, data, head_request=False, timeout=10.0):
    """Sends data as is on a new connection; returns (status, headers, body) or raises
    ConnectionError when the server closed without an answer."""
    with raw_connect(reg, timeout) as s:
        s.sendall(data)
        return recv_response(s, head_request=head_request, timeout=timeout)


def which(name):
    return shutil.which(name)
