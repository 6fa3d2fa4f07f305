"""Docker Hub's pull budget: the test upstream (docker-registry behind the counting proxy) sends
ratelimit-limit / ratelimit-remaining / docker-ratelimit-source the way Docker Hub does; the
mirror's gauges follow them, proxy.ratelimitreserve keeps cached tags off the upstream while
the budget is low, and a 429 keeps them off until the window resets. Also: every metric the
shipped Grafana dashboard and Prometheus alert rules name is one a live /metrics exports."""

import json
import os
import re
import time

import pytest
import requests
import yaml

import helpers
from helpers import pull_image, pull_manifest, wait_until

pytestmark = pytest.mark.regmirror_only("the pull budget, its metrics and dashboards are "
                                        "regmirror's")

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")
MAIN = "docker.io"  # the upstream label of proxy.remoteurl


def start(make_registry, upstream, extra="", name="mirror"):
    port = helpers.free_port()
    debug = ("  debug:\n    addr: 127.0.0.1:%d\n    prometheus:\n      enabled: true\n"
             "      path: /metrics\n" % port)
    reg = make_registry(name=name, extra_yaml=debug + upstream.proxy_yaml(extra=extra))
    reg.debug = "http://127.0.0.1:%d" % port
    return reg


def scrape_text(reg):
    r = requests.get(reg.debug + "/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def samples(text):
    """{sample line name with labels: value}, checking the exposition as it goes: every sample
    belongs to a family declared by # TYPE before it, and every family is declared once."""
    out, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, kind = line.split(" ")
            assert fam not in types, "family %s declared twice" % fam
            types[fam] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? '
                     r'(\S+)$', line)
        assert m, "not a sample line: %r" % line
        name = m.group(1)
        fam = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert fam in types, "sample %s without a # TYPE" % name
        key = name + (m.group(2) or "")
        assert key not in out, "sample %s twice" % key
        out[key] = float(m.group(3))
    return out


def budget(reg):
    m = samples(scrape_text(reg))
    lim = m.get('regmirror_upstream_ratelimit_limit{upstream="%s"}' % MAIN)
    rem = m.get('regmirror_upstream_ratelimit_remaining{upstream="%s"}' % MAIN)
    return lim, rem


def tag_checks(upstream, img):
    upstream.proxy.wait_idle()
    return upstream.proxy.count(kind="manifest", ref=img.tag)


def test_gauges_follow_the_headers(make_registry, upstream, seeded):
    reg = start(make_registry, upstream)
    text = scrape_text(reg)
    # declared from the start, with no sample until an upstream announced a budget
    assert "# TYPE regmirror_upstream_ratelimit_limit gauge" in text
    assert "# TYPE regmirror_upstream_ratelimit_remaining gauge" in text
    assert budget(reg) == (None, None)
    upstream.proxy.hub_ratelimit(200, 150, heads=True)
    img = seeded.alpine
    pull_image(reg, img)  # cold: one manifest GET upstream counts the budget down
    assert budget(reg) == (200, 149)
    upstream.proxy.hub_ratelimit(100, 42, heads=True)
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200  # the re-check, a HEAD
    assert budget(reg) == (100, 42)
    # an answer without the headers (or with unreadable ones) leaves the last budget
    upstream.proxy.hub_ratelimit(None)
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert budget(reg) == (100, 42)
    upstream.proxy.hub_ratelimit(100, 41, heads=True, source="bad source")
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert budget(reg) == (100, 41)


@pytest.mark.parametrize("reserve,remaining", [("10", 10), ("10%", 10), ("0", 0)])
def test_reserve_serves_cached_tags_without_asking(make_registry, upstream, seeded, reserve,
                                                   remaining):
    reg = start(make_registry, upstream, extra="  ratelimitreserve: %s\n" % reserve)
    img, other = seeded.alpine, seeded.multi
    upstream.proxy.hub_ratelimit(100, 50, window=2, heads=True)
    pull_image(reg, img)
    upstream.proxy.reset()
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert tag_checks(upstream, img) == 1  # above the reserve: checked as usual
    # the budget drops to the reserve: the next check reads it, and then no more checks
    upstream.proxy.hub_ratelimit(100, remaining, window=2, heads=True)
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert budget(reg) == (100, remaining)
    upstream.proxy.reset()
    t0 = time.monotonic()
    for _ in range(3):
        r = pull_manifest(reg, img.repo, img.tag)
        assert r.status_code == 200 and r.content == img.manifest
        pull_image(reg, img)
    assert time.monotonic() - t0 < 1.5, "too slow to test inside the 2 s window"
    assert tag_checks(upstream, img) == 0
    assert upstream.proxy.count() == 0
    # an uncached pull still goes upstream
    assert pull_manifest(reg, other.repo, other.tag).content == other.manifest
    upstream.proxy.wait_idle()
    assert upstream.proxy.count(kind="manifest", repo=other.repo) >= 1
    # said once for the window
    log = open(reg.log_path, encoding="utf-8", errors="replace").read()
    assert log.count("cached tags are served without asking it until the window resets") == 1
    assert "proxy.ratelimitreserve %s" % reserve in log
    # the window passed: the budget is read again with the next check
    upstream.proxy.hub_ratelimit(100, 90, window=2, heads=True)
    time.sleep(2.2)
    upstream.proxy.reset()
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert tag_checks(upstream, img) == 1
    assert budget(reg) == (100, 90)


def test_after_429_no_check_until_the_window_resets(make_registry, upstream, seeded):
    reg = start(make_registry, upstream)
    img = seeded.alpine
    pull_image(reg, img)
    upstream.proxy.reset()
    # the re-check gets a 429 (Retry-After 2, window 2): the cached tag is served ...
    upstream.proxy.fail(429, count=1, kinds=["manifest"], method="HEAD", retry_after=2, window=2)
    t0 = time.monotonic()
    r = pull_manifest(reg, img.repo, img.tag)
    assert r.status_code == 200 and r.content == img.manifest
    assert tag_checks(upstream, img) == 1
    upstream.proxy.reset()
    # ... and until the reset nothing asks the upstream about it
    while time.monotonic() - t0 < 1.5:
        assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
        pull_image(reg, img)
        time.sleep(0.1)
    assert tag_checks(upstream, img) == 0
    assert upstream.proxy.count() == 0
    log = open(reg.log_path, encoding="utf-8", errors="replace").read()
    assert log.count("rate limited (429): cached tags are served without asking it") == 1
    # the window reset: checked again
    time.sleep(max(0.0, 2.2 - (time.monotonic() - t0)))
    assert pull_manifest(reg, img.repo, img.tag).status_code == 200
    assert tag_checks(upstream, img) == 1
    # the 429 was counted
    m = samples(scrape_text(reg))
    assert m["regmirror_upstream_rate_limited_total"] == 1


def test_429_without_retry_after_waits_for_the_window(make_registry, upstream, seeded):
    reg = start(make_registry, upstream)
    img = seeded.alpine
    pull_image(reg, img)
    upstream.proxy.fail(429, count=1, kinds=["manifest"], method="HEAD", retry_after="",
                        window=2)
    t0 = time.monotonic()
    assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    upstream.proxy.reset()
    assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    assert tag_checks(upstream, img) == 0
    time.sleep(max(0.0, 2.2 - (time.monotonic() - t0)))
    assert pull_manifest(reg, img.repo, img.tag).content == img.manifest
    assert tag_checks(upstream, img) == 1


def test_check_config_prints_the_reserve(tmp_path):
    binary = helpers.regmirror_bin()
    if not binary:
        pytest.skip("REGMIRROR_BIN is not set")
    import subprocess
    cfg = tmp_path / "c.yml"
    base = ("version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: 127.0.0.1:0\n"
            "proxy:\n  remoteurl: https://registry-1.docker.io\n")
    cfg.write_text(base + "  ratelimitreserve: 15%\n")
    r = subprocess.run([binary, "check-config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "  ratelimitreserve: 15%\n" in r.stdout
    env = dict(os.environ, REGISTRY_PROXY_RATELIMITRESERVE="7")
    r = subprocess.run([binary, "check-config", str(cfg)], capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0 and "  ratelimitreserve: 7\n" in r.stdout
    cfg.write_text(base + "  ratelimitreserve: half\n")
    r = subprocess.run([binary, "check-config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "proxy.ratelimitreserve: expected" in r.stdout + r.stderr


# ---- the dashboard and the alert rules ----

METRIC_RE = re.compile(r"\bregmirror_[a-z0-9_]+")


def dashboard_exprs():
    with open(os.path.join(CONF, "grafana-dashboard.json"), encoding="utf-8") as f:
        dash = json.load(f)
    assert dash.get("title") and dash.get("panels")
    exprs = []
    for panel in dash["panels"]:
        assert panel.get("title"), panel
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return exprs


def alert_exprs():
    with open(os.path.join(CONF, "prometheus-alerts.yml"), encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    exprs = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
            exprs.append(str(rule["expr"]))
    return exprs


def test_dashboard_and_alerts_name_exported_metrics(make_registry, upstream, seeded):
    dash, alerts = dashboard_exprs(), alert_exprs()
    named = set()
    for e in dash + alerts:
        named |= set(METRIC_RE.findall(e))
    assert len(named) >= 10
    for want in ("regmirror_upstream_ratelimit_remaining", "regmirror_proxy_cache_hit_ratio",
                 "regmirror_http_request_duration_seconds_bucket",
                 "regmirror_upstream_rate_limited_total"):
        assert want in named
    alert_names = set()
    for e in alerts:
        alert_names |= set(METRIC_RE.findall(e))
    for want in ("regmirror_health_check_up", "regmirror_upstream_ratelimit_remaining",
                 "regmirror_proxy_maxsize_bytes"):
        assert want in alert_names

    # traffic, so that the labelled series exist
    reg = start(make_registry, upstream, extra="  maxsize: 1GB\n")
    upstream.proxy.hub_ratelimit(100, 80, heads=True)
    pull_image(reg, seeded.alpine)
    pull_image(reg, seeded.alpine)
    assert wait_until(lambda: "regmirror_health_check_up{" in scrape_text(reg), timeout=15)
    exported = {k.partition("{")[0] for k in samples(scrape_text(reg))}
    missing = sorted(n for n in named if n not in exported)
    assert not missing, "named but not exported: %s" % missing
