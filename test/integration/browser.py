"""Headless Chromium for the integration tests, driven through chromium-driver's WebDriver
HTTP API (standard library only: no selenium).

    with Browser(workdir) as b:
        b.get(url)
        b.run("return document.title")
        b.screenshot(path)
        b.console()          # the browser's console messages so far

Chromium runs as root here, so with --no-sandbox, on a throw-away profile in workdir, and with
every request that is not for the loopback sent to a proxy that refuses connections (and every
host name but localhost unresolvable): a page that loads anything from elsewhere fails to.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import helpers

CHROMIUM = "/usr/lib/chromium/chromium"  # the binary itself, not Debian's launcher script


def available():
    """None when chromium and chromium-driver are installed, else why not."""
    if not shutil.which("chromedriver"):
        return "chromium-driver is not installed (scripts/deps.sh installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium is not installed (scripts/deps.sh installs it)"
    return None


class Browser:
    def __init__(self, workdir, width=1280, height=1500):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = helpers.free_port()
        self.refusing = helpers.free_port()  # nothing listens: the proxy refuses everything
        self.log_path = os.path.join(self.workdir, "chromedriver.log")
        self.proc = subprocess.Popen(
            ["chromedriver", "--port=%d" % self.port, "--log-path=%s" % self.log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = "http://127.0.0.1:%d" % self.port
        self.session = None
        try:
            helpers.wait_until(self._ready, timeout=20)
            args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-domain-reliability",
                    "--user-data-dir=%s" % os.path.join(self.workdir, "profile"),
                    "--window-size=%d,%d" % (width, height),
                    "--proxy-server=http://127.0.0.1:%d" % self.refusing,
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self.close()
            raise

    def _ready(self):
        try:
            with urllib.request.urlopen(self.base + "/status", timeout=2) as r:
                return json.load(r)["value"].get("ready", False)
        except (OSError, ValueError):
            return False

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError("chromedriver %s %s: %s" % (method, path, e.read().decode(
                errors="replace")[:2000])) from None

    def _s(self, path):
        return "/session/%s%s" % (self.session, path)

    def get(self, url):
        self._call("POST", self._s("/url"), {"url": url})

    def run(self, script, *args):
        """Runs script (a function body) in the page; returns what it returns."""
        return self._call("POST", self._s("/execute/sync"), {"script": script,
                                                             "args": list(args)})

    def wait(self, script, timeout=15.0):
        """Waits until script returns something true; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.run(script)
            if v or time.monotonic() > deadline:
                return v
            time.sleep(0.1)

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(png)
        return path

    def console(self):
        """The console messages since the last call: dicts with level, message, source."""
        return self._call("POST", self._s("/se/log"), {"type": "browser"})

    def close(self):
        if self.session:
            try:
                self._call("DELETE", self._s(""))
            except (OSError, RuntimeError):
                pass
            self.session = None
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
