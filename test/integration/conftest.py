"""Server fixtures for the regmirror integration suite.

Target selection (see helpers.target_kind):
  REGMIRROR_BIN=/path/to/regmirror                  -> regmirror (the default target)
  REGISTRY_UNDER_TEST=docker-registry               -> /usr/bin/docker-registry (distribution 2.8)

One registry is shared by the whole session; every test uses its own repository names.
Tests that need a differently configured registry start their own with `make_registry`.

Storage (see helpers.storage_kind):
  REGMIRROR_TEST_STORAGE=fs (default)               -> storage.filesystem under tmp dirs
  REGMIRROR_TEST_STORAGE=oss                        -> storage.oss against one OSS emulator
                                                       (test/oss/emulator.py) for the session
On OSS the tests that need the filesystem root itself are skipped (OSS_SKIP below).
"""

import json
import os
import shutil
import subprocess

import pytest

import helpers
from helpers import Registry

pytest_plugins = ["conftest_upstream", "cluster"]


# Tests that cannot run when the registries store on OSS, by node id (a prefix of it:
# a file, a test, a parametrized test), with the reason.
OSS_SKIP = {
    "test_interop.py": "shares one filesystem root between regmirror and docker-registry",
    "test_clients.py": "the mirror runs in a network namespace of its own, where the session's "
                       "OSS emulator (on the test process's 127.0.0.1) is out of reach",
    "test_eviction.py": "ages and counts files under the filesystem root (upload purging on OSS "
                        "is test_maintenance_oss.py)",
    "test_gc.py": "runs garbage-collect on filesystem roots (on OSS: test_gc_oss.py)",
    "test_health_metrics.py::test_storage_driver_failure_after_threshold":
        "removes the filesystem root to make the storage check fail",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "regmirror_only: behaviour that only regmirror has "
                            "(skipped when the target is docker-registry)")
    config.addinivalue_line("markers", "reference_deviation(reason): the OCI spec requires it and "
                            "distribution 2.8 does otherwise (skipped on docker-registry)")
    config.addinivalue_line("markers", "oss_only(reason): runs only with "
                            "REGMIRROR_TEST_STORAGE=oss")
    config._regmirror_summary = []


def pytest_report_header(config):
    kind = helpers.target_kind()
    lines = ["registry under test: %s (%s)" % (kind, helpers.binary_for(kind)
                                               or "REGMIRROR_BIN unset")]
    if helpers.storage_kind() == "oss":
        lines.append("storage: oss (%s=oss: one OSS emulator for the session, bucket %s; blob "
                     "GETs streamed through the registry)" % (helpers.STORAGE_ENV,
                                                             helpers.OssStore.BUCKET))
    else:
        lines.append("storage: filesystem")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What tests asked to show (summary_line fixture), and the storage of this run, just
    above pytest's own summary line."""
    lines = getattr(config, "_regmirror_summary", [])
    if lines:
        terminalreporter.write_sep("-", "regmirror measurements")
        for line in lines:
            terminalreporter.write_line(line)
    terminalreporter.write_line("storage of this run: %s" % (
        "oss (OSS emulator)" if helpers.storage_kind() == "oss" else "filesystem"))


@pytest.fixture(scope="session")
def summary_line(pytestconfig):
    """summary_line(text): shows text in the terminal summary (also without -s)."""
    return pytestconfig._regmirror_summary.append


@pytest.fixture(scope="session", autouse=True)
def _oss_session(tmp_path_factory):
    """The OSS emulator the registries store on with REGMIRROR_TEST_STORAGE=oss."""
    if helpers.storage_kind() != "oss":
        yield None
        return
    st = helpers.OssStore(tmp_path_factory.mktemp("oss-emulator"))
    helpers.set_oss_store(st)
    yield st
    helpers.set_oss_store(None)
    st.stop()


@pytest.fixture(scope="session")
def oss_store(_oss_session):
    if _oss_session is None:
        pytest.skip("needs %s=oss" % helpers.STORAGE_ENV)
    return _oss_session


def _skip_reason_for_target():
    kind = helpers.target_kind()
    binary = helpers.binary_for(kind)
    if kind == "regmirror" and not binary:
        return "REGMIRROR_BIN is not set (or set REGISTRY_UNDER_TEST=docker-registry)"
    if not binary or not os.access(binary, os.X_OK):
        return "registry binary %r is not executable" % binary
    return None


def _oss_skip_reason(nodeid):
    for prefix, why in OSS_SKIP.items():
        if nodeid == prefix or nodeid.startswith(prefix + "::") or nodeid.startswith(prefix + "["):
            return why
    return None


def pytest_collection_modifyitems(config, items):
    oss = helpers.storage_kind() == "oss"
    for item in items:
        if oss:
            why = _oss_skip_reason(item.nodeid)
            if why:
                item.add_marker(pytest.mark.skip(reason="not on OSS: " + why))
        else:
            m = item.get_closest_marker("oss_only")
            if m is not None:
                item.add_marker(pytest.mark.skip(reason="needs %s=oss: %s" % (
                    helpers.STORAGE_ENV, m.kwargs.get("reason") or (m.args[0] if m.args else ""))))
    if helpers.target_kind() != "docker-registry":
        return
    for item in items:
        m = item.get_closest_marker("regmirror_only")
        if m is not None:
            why = m.kwargs.get("reason") or (m.args[0] if m.args else "")
            item.add_marker(pytest.mark.skip(
                reason="regmirror extension, not in distribution 2.8" + (": " + why if why else "")))
            continue
        m = item.get_closest_marker("reference_deviation")
        if m is not None:
            why = m.kwargs.get("reason") or (m.args[0] if m.args else "")
            item.add_marker(pytest.mark.skip(reason="distribution 2.8 deviates from the spec: " + why))


@pytest.fixture(scope="session")
def target_kind():
    return helpers.target_kind()


@pytest.fixture(scope="session")
def is_reference(target_kind):
    return target_kind == "docker-registry"


@pytest.fixture(scope="session")
def _started():
    """Every Registry started through make_registry / shared_registry, for the failure report."""
    return []


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory, _started):
    reason = _skip_reason_for_target()
    if reason:
        pytest.skip(reason)
    reg = Registry(helpers.target_kind(), tmp_path_factory.mktemp("shared-registry"))
    _started.append(reg)
    reg.start()
    yield reg
    rc = reg.stop()
    _started.remove(reg)
    # A clean shutdown on SIGTERM is expected from both targets (ASan reports leaks here too).
    if rc not in (0, -15, None):
        pytest.fail("registry exited with status %s on SIGTERM; log tail:\n%s"
                    % (rc, reg.log_tail()), pytrace=False)


@pytest.fixture
def reg(shared_registry):
    """The shared registry, checked to be alive before and after the test."""
    if not shared_registry.alive():
        pytest.fail("shared registry is not running; log tail:\n" + shared_registry.log_tail(),
                    pytrace=False)
    yield shared_registry
    if not shared_registry.alive():
        pytest.fail("shared registry died during this test; log tail:\n"
                    + shared_registry.log_tail(), pytrace=False)


@pytest.fixture
def make_registry(tmp_path, _started):
    """Factory: make_registry(kind=None, rootdir=None, delete_enabled=True, start=True, ...)."""
    regs = []

    def factory(kind=None, rootdir=None, delete_enabled=True, start=True, name=None, **kw):
        kind = kind or helpers.target_kind()
        if kind == "regmirror" and not helpers.regmirror_bin():
            pytest.skip("REGMIRROR_BIN is not set")
        if kind == "docker-registry" and not os.access(helpers.binary_for(kind), os.X_OK):
            pytest.skip("docker-registry is not installed")
        workdir = tmp_path / (name or "reg%d-%s" % (len(regs), kind))
        r = Registry(kind, workdir, rootdir=rootdir, delete_enabled=delete_enabled, **kw)
        regs.append(r)
        _started.append(r)
        if start:
            r.start()
        return r

    yield factory
    for r in regs:
        r.stop()
        if r in _started:
            _started.remove(r)


@pytest.fixture
def repo():
    return helpers.unique_repo()


@pytest.fixture(scope="session")
def skopeo():
    path = shutil.which("skopeo")
    if not path:
        pytest.skip("skopeo is not installed")
    return path


@pytest.fixture
def sk(skopeo, tmp_path):
    """Runs skopeo with a private policy and auth file; returns stdout."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    regconf = tmp_path / "registries.conf"
    regconf.write_text("")
    env = dict(os.environ)
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "auth.json")
    env["HOME"] = str(tmp_path)
    env["TMPDIR"] = str(tmp_path)

    def run(*args, check=True):
        cmd = [skopeo, "--policy", str(policy), "--registries-conf", str(regconf)]
        cmd += list(args)
        p = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
        if check and p.returncode != 0:
            pytest.fail("%s\nexit %d\nstdout: %s\nstderr: %s" % (
                " ".join(cmd), p.returncode, p.stdout.decode(errors="replace")[-2000:],
                p.stderr.decode(errors="replace")[-4000:]))
        return p.stdout

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when in ("setup", "call", "teardown") and rep.failed:
        started = item.funcargs.get("_started") if hasattr(item, "funcargs") else None
        seen = set()
        for value in list(getattr(item, "funcargs", {}).values()) + list(started or []):
            if isinstance(value, Registry) and id(value) not in seen:
                seen.add(id(value))
                rep.sections.append(("%s log (%s) tail" % (value.kind, value.log_path),
                                     value.log_tail()))
