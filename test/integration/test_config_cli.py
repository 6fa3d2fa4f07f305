"""regmirror's command line: version, check-config, serve with bad config (skipped when the
target is docker-registry), and REGISTRY_* environment overrides on serve (both targets)."""

import os
import subprocess
import time

import pytest
import requests

import helpers
from helpers import free_port, port_is_listening, random_bytes, sha256, tail, upload_blob

PROXY_PASSWORD = "hub-Pa55word-7f3c9e"
OSS_SECRET = "oss-SeCrEt-91b2d4e6"
REDIS_PASSWORD = "redis-pw-5c8a1f"
HTTP_SECRET = "http-secret-0a9b8c"


@pytest.fixture
def rm():
    if helpers.target_kind() == "docker-registry":
        pytest.skip("regmirror extension, not in distribution 2.8: regmirror command line")
    path = helpers.regmirror_bin()
    if not path:
        pytest.skip("REGMIRROR_BIN is not set")
    return path


@pytest.fixture
def serve_bin():
    """The binary of the target under test (both understand REGISTRY_* overrides)."""
    path = helpers.binary_for(helpers.target_kind())
    if not path or not os.access(path, os.X_OK):
        pytest.skip("no registry binary for the target")
    return path


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(extra)
    return env


def run(rm, *args, env=None, timeout=30):
    p = subprocess.run([rm] + list(args), capture_output=True, timeout=timeout,
                       env=env or clean_env(), stdin=subprocess.DEVNULL)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


MIRROR_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:5000
  secret: {http_secret}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
  username: hubuser
  password: {password}
"""

OSS_CONFIG = """\
version: 0.1
log:
  level: info
storage:
  oss:
    accesskeyid: LTAIexampleid
    accesskeysecret: {secret}
    region: oss-cn-shanghai
    bucket: example-bucket
  cache:
    blobdescriptor: redis
  delete:
    enabled: true
redis:
  addr: 127.0.0.1:6379
  password: {redis_password}
  db: 0
  pool:
    maxidle: 16
    maxactive: 64
    idletimeout: 300s
http:
  addr: :5000
"""


def test_version(rm):
    rc, out = run(rm, "version")
    assert rc == 0, out
    assert out.strip()


def test_check_config_masks_proxy_password(rm, tmp_path):
    cfg = write(tmp_path, "mirror.yml", MIRROR_CONFIG.format(
        root=tmp_path / "data", password=PROXY_PASSWORD, http_secret=HTTP_SECRET))
    rc, out = run(rm, "check-config", cfg)
    assert rc == 0, out
    assert "*****" in out
    assert PROXY_PASSWORD not in out
    assert HTTP_SECRET not in out
    # the rest of the configuration is printed
    assert "hubuser" in out
    assert "registry-1.docker.io" in out


def test_check_config_masks_oss_secret(rm, tmp_path):
    cfg = write(tmp_path, "oss.yml", OSS_CONFIG.format(secret=OSS_SECRET,
                                                       redis_password=REDIS_PASSWORD))
    rc, out = run(rm, "check-config", cfg)
    assert rc == 0, out
    assert "*****" in out
    assert OSS_SECRET not in out
    assert REDIS_PASSWORD not in out
    assert "LTAIexampleid" in out
    assert "example-bucket" in out


def test_check_config_masks_env_secret(rm, tmp_path):
    cfg = write(tmp_path, "mirror.yml", MIRROR_CONFIG.format(
        root=tmp_path / "data", password="placeholder", http_secret=HTTP_SECRET))
    rc, out = run(rm, "check-config", cfg,
                  env=clean_env(REGISTRY_PROXY_PASSWORD=PROXY_PASSWORD))
    assert rc == 0, out
    assert PROXY_PASSWORD not in out
    assert "placeholder" not in out


@pytest.mark.parametrize("snippet,keypath", [
    ("storage:\n  filesystem:\n    rootdirectory: /tmp/x\n  delete:\n    enabled: [1, 2]\n",
     "storage.delete.enabled"),
    ("storage:\n  filesystem:\n    rootdirectory: /tmp/x\nredis:\n  addr: a:1\n  db: notanumber\n",
     "redis.db"),
    ("storage:\n  filesystem:\n    rootdirectory: /tmp/x\nhttp:\n  addr: 127.0.0.1:5000\n"
     "  headers: 17\n", "http.headers"),
])
def test_check_config_bad_type(rm, tmp_path, snippet, keypath):
    cfg = write(tmp_path, "bad.yml", "version: 0.1\n" + snippet)
    rc, out = run(rm, "check-config", cfg)
    assert rc == 1, out
    assert keypath in out, out


def test_check_config_unknown_key(rm, tmp_path):
    cfg = write(tmp_path, "unknown.yml", helpers.render_config(
        str(tmp_path / "data"), "127.0.0.1:5000") + "  bogusknob: 3\n")
    rc, out = run(rm, "check-config", cfg)
    assert rc == 0, out
    assert "bogusknob" in out


def test_check_config_yaml_syntax_error(rm, tmp_path):
    cfg = write(tmp_path, "broken.yml", "version: 0.1\nstorage:\n  filesystem: [unclosed\n")
    rc, out = run(rm, "check-config", cfg)
    assert rc == 1, out
    assert out.strip()


def test_check_config_missing_file(rm, tmp_path):
    rc, out = run(rm, "check-config", str(tmp_path / "does-not-exist.yml"))
    assert rc != 0
    assert out.strip()


def test_serve_bad_config_exits_without_listening(rm, tmp_path):
    port = free_port()
    cfg = write(tmp_path, "bad.yml", helpers.render_config(
        str(tmp_path / "data"), "127.0.0.1:%d" % port).replace(
        "enabled: true", "enabled: [not, a, bool]"))
    log = tmp_path / "serve.log"
    with open(log, "wb") as lf:
        p = subprocess.Popen([rm, "serve", cfg], stdout=lf, stderr=subprocess.STDOUT,
                             env=clean_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while p.poll() is None and time.monotonic() < deadline:
            assert not port_is_listening(port), "serve listened with a bad config"
            time.sleep(0.05)
        assert p.poll() is not None, "serve kept running with a bad config"
        assert p.returncode == 1, tail(str(log))
        assert "storage.delete.enabled" in tail(str(log))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_serve_env_overrides(serve_bin, tmp_path):
    rm = serve_bin
    cfg_root = tmp_path / "from-config"
    env_root = tmp_path / "from-env"
    cfg_root.mkdir()
    env_root.mkdir()
    cfg_port, env_port = free_port(), free_port()
    cfg = write(tmp_path, "config.yml", helpers.render_config(str(cfg_root),
                                                              "127.0.0.1:%d" % cfg_port))
    log = tmp_path / "serve.log"
    env = clean_env(REGISTRY_HTTP_ADDR="127.0.0.1:%d" % env_port,
                    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(env_root),
                    REGISTRY_STORAGE_DELETE_ENABLED="false")
    with open(log, "wb") as lf:
        p = subprocess.Popen([rm, "serve", cfg], stdout=lf, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL)
    try:
        reg = helpers.Registry(helpers.target_kind(), tmp_path / "unused", rootdir=env_root)
        reg.port = env_port
        deadline = time.monotonic() + 20
        while True:
            assert p.poll() is None, "serve exited: " + tail(str(log))
            try:
                if requests.get(reg.url("/v2/"), timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "no answer on the REGISTRY_HTTP_ADDR port"
            time.sleep(0.05)
        assert not port_is_listening(cfg_port), "still listening on the config file's addr"
        data = random_bytes(1000)
        d = upload_blob(reg, "it/envtest", data)
        blob_path = os.path.join(str(env_root), "docker", "registry", "v2", "blobs", "sha256",
                                 d[7:9], d[7:], "data")
        assert os.path.isfile(blob_path), "blob not stored under the env rootdirectory"
        with open(blob_path, "rb") as f:
            assert f.read() == data
        assert not any(os.scandir(cfg_root)), "something written under the config's rootdirectory"
        r = reg.delete("/v2/it/envtest/blobs/%s" % d)
        assert r.status_code == 405, "REGISTRY_STORAGE_DELETE_ENABLED=false not applied"
        assert sha256(reg.get("/v2/it/envtest/blobs/%s" % d).content) == d
        reg.session.close()
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
