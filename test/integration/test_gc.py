"""`regmirror garbage-collect`: the same kept blobs as Debian's `docker-registry garbage-collect`
on copies of one data directory, dry runs, referrers, the instance lock, and SIGKILL at random
points (the store still serves every kept image)."""

import fcntl
import random
import re
import shutil
import subprocess
import time

import pytest

import helpers
from helpers import (blob_set, get_manifest, image_of, need_reference, populate, push_image,
                     random_bytes, run_gc, sha256, unique_repo, write_config)

pytestmark = pytest.mark.regmirror_only("garbage-collect is a command of the regmirror binary")


def du(root):
    return sum(blob_set(root).values())


def store_from_reference(make_registry, tmp_path):
    need_reference()
    root = tmp_path / "ref-root"
    root.mkdir()
    reg = make_registry(kind="docker-registry", rootdir=root, name="populate")
    info = populate(reg)
    assert reg.stop() in (0, -15)
    return root, info


@pytest.mark.parametrize("untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_same_kept_blobs_as_docker_registry(make_registry, tmp_path, untagged):
    root, info = store_from_reference(make_registry, tmp_path)
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    shutil.copytree(root, theirs)
    shutil.copytree(root, ours)
    flags = ["--delete-untagged"] if untagged else []
    ref = subprocess.run([helpers.binary_for("docker-registry"), "garbage-collect", *flags,
                          write_config(str(tmp_path / "theirs.yml"), theirs)],
                         capture_output=True, text=True, timeout=60)
    assert ref.returncode == 0, ref.stderr[-2000:]
    mine = run_gc(write_config(str(tmp_path / "ours.yml"), ours), *flags)
    assert mine.returncode == 0, mine.stderr + mine.stdout[-2000:]
    before, kept_theirs, kept_ours = blob_set(root), blob_set(theirs), blob_set(ours)
    gone = info["gone"]
    assert gone.digest not in kept_ours
    assert sha256(gone.manifest) not in kept_ours
    if not untagged:
        assert kept_ours == kept_theirs
        assert len(kept_ours) < len(before)
        return
    # registry:2 with --delete-untagged also deletes what regmirror keeps on purpose: the
    # children of a tagged index (and their layers) and the referrer of a tagged image.
    extra = set(kept_ours) - set(kept_theirs)
    assert set(kept_theirs) <= set(kept_ours)
    expected_extra = {info["sig"].digest} | set(info["sig"].blobs)
    for k in info["kids"]:
        expected_extra |= {k.digest} | set(k.blobs)
    assert extra <= expected_extra
    assert info["sig"].digest in kept_ours and info["app3"].digest not in kept_ours
    for d in set(info["app3"].blobs) - set(info["app1"].blobs):
        assert d not in kept_ours and d not in kept_theirs


def test_dry_run_then_real_run_on_shared_layers(make_registry, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    reg = make_registry(rootdir=root, name="populate")
    info = populate(reg)
    assert reg.stop() in (0, -15)
    cfg = write_config(str(tmp_path / "gc.yml"), root)
    snap = helpers.snapshot(str(root))
    size_before = du(str(root))
    dry = run_gc(cfg, "--dry-run", "--delete-untagged")
    assert dry.returncode == 0, dry.stderr
    assert helpers.snapshot(str(root)) == snap, "a dry run changed the store"
    listed = re.findall(r"^blob eligible for deletion: (\S+) \((\d+) bytes\)", dry.stdout, re.M)
    m = re.search(r"would delete (\d+) manifests and (\d+) blobs, freeing (\d+) bytes", dry.stdout)
    assert m, dry.stdout
    assert int(m.group(2)) == len(listed)
    assert int(m.group(3)) == sum(int(n) for _, n in listed)
    assert "manifest eligible for deletion: %s@%s" % (info["repo"], info["app3"].digest) \
        in dry.stdout
    real = run_gc(cfg, "--delete-untagged")
    assert real.returncode == 0, real.stderr
    size_after = du(str(root))
    assert size_before - size_after == int(m.group(3))
    print("\n--- dry run ---\n%s--- real run ---\n%s" % (dry.stdout[-1500:], real.stdout[-600:]))
    print("blob bytes before %d, after %d" % (size_before, size_after))
    again = run_gc(cfg, "--delete-untagged", "--dry-run")
    assert "would delete 0 manifests and 0 blobs" in again.stdout
    # everything kept still serves
    reg2 = make_registry(rootdir=root, name="after")
    verify_kept(reg2, info)


def verify_kept(reg, info):
    a = info["repo"]
    for tag, img in (("1", info["app1"]), ("2", info["app2"]), ("3", info["app3b"])):
        g = get_manifest(reg, a, tag)
        assert g.status_code == 200 and g.content == img.manifest, (tag, g.status_code)
        for d, data in img.blobs.items():
            r = reg.get("/v2/%s/blobs/%s" % (a, d))
            assert r.status_code == 200 and r.content == data, (tag, d, r.status_code)
    g = get_manifest(reg, a, "multi")
    assert g.status_code == 200 and g.content == info["index"]
    for k in info["kids"]:
        assert get_manifest(reg, a, k.digest).status_code == 200
        for d, data in k.blobs.items():
            assert reg.get("/v2/%s/blobs/%s" % (a, d)).content == data
    r = reg.get("/v2/%s/referrers/%s" % (a, info["app1"].digest))
    assert r.status_code == 200
    assert [m["digest"] for m in r.json()["manifests"]] == [info["sig"].digest]
    b = info["other"]
    g = get_manifest(reg, b, "latest")
    assert g.status_code == 200 and g.content == info["other_img"].manifest
    for d, data in info["other_img"].blobs.items():
        assert reg.get("/v2/%s/blobs/%s" % (b, d)).content == data


def test_refuses_while_a_writable_instance_runs(make_registry, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    reg = make_registry(rootdir=root, name="writable")
    cfg = write_config(str(tmp_path / "gc.yml"), root)
    r = run_gc(cfg)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "refusing to run" in r.stderr and "regmirror serve pid %d" % reg.proc.pid in r.stderr
    assert "storage.maintenance.readonly" in r.stderr
    assert run_gc(cfg, "--dry-run").returncode == 0
    assert run_gc(cfg, "--force").returncode == 0
    reg.stop()
    ro = make_registry(rootdir=root, name="readonly",
                       storage_yaml="  maintenance:\n    readonly:\n      enabled: true\n")
    r = run_gc(cfg)
    assert r.returncode == 0, r.stderr
    ro.stop()


def test_serve_refuses_to_start_while_gc_holds_the_lock(make_registry, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "regmirror.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        reg = make_registry(rootdir=root, name="blocked", start=False)
        with pytest.raises(RuntimeError, match="garbage-collect is running"):
            reg.start(timeout=5)


def test_sigkill_at_random_points_leaves_kept_images_served(make_registry, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    reg = make_registry(rootdir=root, name="populate")
    info = populate(reg)
    # plenty of garbage so that kills land in the middle of the sweep
    junk = unique_repo("gc-junk")
    for i in range(40):
        img = image_of([random_bytes(2000), random_bytes(1000)])
        push_image(reg, junk, img, "t%d" % i)
        push_image(reg, junk, image_of([random_bytes(1500)]), "t%d" % i)  # untags the first
    assert reg.stop() in (0, -15)
    cfg = write_config(str(tmp_path / "gc.yml"), root)
    full = time.monotonic()
    dry = run_gc(cfg, "--dry-run", "--delete-untagged")
    full = time.monotonic() - full
    rnd = random.Random(5)
    kills = 0
    for _ in range(6):
        p = subprocess.Popen([helpers.regmirror_bin(), "garbage-collect", "--delete-untagged",
                              cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.0, full * 0.9))
        if p.poll() is None:
            p.kill()
            kills += 1
        p.wait()
        check = make_registry(rootdir=root, name="check%d" % kills + str(time.monotonic_ns()))
        verify_kept(check, info)
        check.stop()
    done = run_gc(cfg, "--delete-untagged")
    assert done.returncode == 0, done.stderr
    assert "would delete 0 manifests and 0 blobs" in run_gc(cfg, "--dry-run",
                                                            "--delete-untagged").stdout
    final = make_registry(rootdir=root, name="final")
    verify_kept(final, info)
    assert dry.returncode == 0
    print("\n%d of 6 runs killed" % kills)
    assert kills >= 2
