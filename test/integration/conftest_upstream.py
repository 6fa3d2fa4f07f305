"""Fixtures for the pull-through tests: the upstream regmirror pulls from.

Registered from conftest.py with `pytest_plugins = ["conftest_upstream"]`.

  upstream_server  (session)  upstream.Upstream, started and seeded once
  upstream         (function) the same object, counters cleared and faults / token-server
                              settings back to normal before and after the test
  token_server     (function) upstream.token  (tokenserver.TokenServer)
  upstream_proxy   (function) upstream.proxy  (upstream.CountingProxy)
  seeded           (session)  upstream_server.seed (upstream.Seed)

The upstream runs docker-registry (distribution 2.8) whichever registry is under test; the
session skips these tests when it is not installed.
"""

import os

import pytest

import helpers
import upstream as upstream_mod


@pytest.fixture(scope="session")
def upstream_server(tmp_path_factory):
    binary = helpers.binary_for("docker-registry")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("the test upstream needs docker-registry (%s)" % binary)
    up = upstream_mod.start_upstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.stop()


@pytest.fixture
def upstream(upstream_server):
    up = upstream_server
    up.reset()
    if not up.alive():
        pytest.fail("the test upstream is down; docker-registry log tail:\n"
                    + up.registry.log_tail(), pytrace=False)
    yield up
    up.reset()
    if not up.registry.alive():
        pytest.fail("docker-registry (the test upstream) died during this test; log tail:\n"
                    + up.registry.log_tail(), pytrace=False)


@pytest.fixture
def token_server(upstream):
    return upstream.token


@pytest.fixture
def upstream_proxy(upstream):
    return upstream.proxy


@pytest.fixture(scope="session")
def seeded(upstream_server):
    return upstream_server.seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used the upstream gets its docker-registry log tail, the proxy's
    last requests and the token server's counters in the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("setup", "call", "teardown") or not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    up = funcargs.get("upstream") or funcargs.get("upstream_server")
    if not isinstance(up, upstream_mod.Upstream):
        return
    if up.registry is not None:
        rep.sections.append(("upstream docker-registry log (%s) tail" % up.registry.log_path,
                             up.registry.log_tail(4000)))
    if up.proxy is not None:
        lines = ["%(id)d %(host)s %(method)s %(path)s -> %(status)s, %(bytes)d bytes, "
                 "faults %(faults)s, error %(error)s" % r for r in up.proxy.records()[-40:]]
        rep.sections.append(("upstream proxy: last requests", "\n".join(lines) or "(none)"))
    st = up.token.stats()
    st.pop("log", None)
    rep.sections.append(("upstream token server counters", repr(st)))
