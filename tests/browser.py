"""Open a results page in headless Chromium, as a reader would: for checks, timings and screenshots.

Test and benchmark tooling (tests/test_report_browser.py, benchmarks/report_page.py); not part
of the package.

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte on file descriptors 3 and 4 of the browser), so nothing but the
browser executable is needed and no port is opened. Every host name is made unresolvable: a
page that reaches for the network fails to load that part rather than fetching it.

    with Browser() as b:
        b.open(page.as_uri())               # waits for the load event
        b.eval("document.title")            # any expression, its value back as JSON
        png = b.screenshot(1280, 1400)      # bytes of a PNG
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio",
         # nothing on a page may come from the network: make every host unresolvable
         "--host-resolver-rules=MAP * ~NOTFOUND"]


def find_chromium() -> str | None:
    """The path of a Chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """The browser failed, answered with an error, or did not answer in time."""


class Browser:
    """One headless Chromium with one tab (a fresh profile, removed on :meth:`close`).

    Args:
        exe: the executable (default: :func:`find_chromium`).
        timeout: seconds to wait for any one answer or event.
    """

    def __init__(self, exe: str | None = None, timeout: float = 120.0):
        exe = exe or find_chromium()
        if exe is None:
            raise BrowserError("no chromium executable on PATH")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._profile = tempfile.mkdtemp(prefix="hfk-chromium-")
        # a file, not a pipe: a chatty browser must never block on a full stderr pipe
        self._log = tempfile.TemporaryFile()
        to_r, self._to_w = os.pipe()  # we write commands, the browser reads them on its fd 3
        self._from_r, from_w = os.pipe()  # the browser answers on its fd 4

        def fds():  # in the child, before exec: the pipe ends at the numbers Chromium expects
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self._proc = subprocess.Popen([exe, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                                       "about:blank"], preexec_fn=fds, close_fds=False,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self._events: list[dict] = []
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # protocol -----------------------------------------------------------------------------

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not answer within {self.timeout:.0f} s")
            import select

            ready, _, _ = select.select([self._from_r], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_r, 1 << 20)
                if not chunk:
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")[-2000:]
                    raise BrowserError(f"chromium closed its pipe (exit {self._proc.poll()}): {err}")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self._events.append(m)

    def send(self, method: str, params: dict | None = None) -> dict:
        """One DevTools command to the tab; its result."""
        return self._call(method, params, self._session)

    def wait_event(self, method: str) -> dict:
        """The params of the next event ``method`` from the tab (events already queued count)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for k, e in enumerate(self._events):
                if e.get("method") == method:
                    del self._events[k]
                    return e.get("params", {})
            m = self._read(deadline)
            if "method" in m:
                self._events.append(m)

    # a reader's actions ---------------------------------------------------------------------

    def open(self, url: str, width: int = 1280, height: int = 1000) -> float:
        """Load ``url`` in a ``width`` x ``height`` window and wait for its load event; returns
        the seconds from the request to that event, as seen from outside the page."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        t0 = time.perf_counter()
        r = self.send("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise BrowserError(f"cannot open {url}: {r['errorText']}")
        self.wait_event("Page.loadEventFired")
        return time.perf_counter() - t0

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited), as JSON data."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            details = r["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description', details)}")
        return r.get("result", {}).get("value")

    def screenshot(self, width: int = 1280, height: int = 1400) -> bytes:
        """A PNG of the top ``width`` x ``height`` CSS pixels of the page, as shown now."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        # the lazily loaded pictures now in view arrive before the picture is taken
        self.eval("Promise.all(Array.from(document.images)"
                  ".filter(i => !i.complete && i.getBoundingClientRect().top < innerHeight)"
                  ".map(i => new Promise(r => { i.onload = i.onerror = r; setTimeout(r, 5000); })))")
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        """End the browser and remove its profile."""
        if self._proc.poll() is None:
            try:
                os.write(self._to_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_w, self._from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Browser", "BrowserError", "FLAGS", "find_chromium"]
