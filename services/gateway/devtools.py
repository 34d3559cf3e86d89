"""Drive the dashboard in headless Chromium over the DevTools protocol (browser tests and
``benchmarks/dashboard.py``): start Debian's ``chromium`` on a page, evaluate JavaScript, read the
page's performance counters, take screenshots. Bounded: every wait has a timeout; :meth:`Chromium.close`
stops the browser and removes its profile."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets.sync.client as wsc

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1440,900", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _until(cond, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:g} s")


class DevTools:
    """A minimal DevTools-protocol client over the websockets library (one page)."""

    def __init__(self, url: str) -> None:
        self.ws = wsc.connect(url, open_timeout=10, max_size=50_000_000).__enter__()
        self.ids = itertools.count(1)

    def call(self, method: str, timeout_s: float = 15.0, **params: Any) -> dict:
        rid = next(self.ids)
        self.ws.send(json.dumps({"id": rid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == rid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str, await_promise: bool = False, timeout_s: float = 15.0) -> Any:
        res = self.call("Runtime.evaluate", timeout_s=timeout_s, expression=expr, returnByValue=True,
                        awaitPromise=await_promise)
        return res["result"].get("value")

    def metrics(self) -> dict[str, float]:
        """``Performance.getMetrics`` as a map (``Performance.enable`` first)."""
        return {m["name"]: m["value"] for m in self.call("Performance.getMetrics")["metrics"]}

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """Headless Chromium on ``url`` with its own profile; ``page()`` is a DevTools client on the page."""

    def __init__(self, url: str, binary: str | None = None, timeout_s: float = 30.0) -> None:
        binary = binary or chromium_path()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="spx-chromium-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        _until(lambda: port_file.exists() and port_file.read_text().strip(), timeout_s, "chromium DevTools port")
        self.port = int(port_file.read_text().split()[0])

    def page(self, timeout_s: float = 20.0) -> DevTools:
        def target():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        return DevTools(_until(target, timeout_s, "a page target", 0.2))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
