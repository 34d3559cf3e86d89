"""Dashboard frame rate under a fast feed (the rollout plan's phase-5 gate: "chart remains >= 30 fps
during active feed", "no uncontrolled rerender loops").

    python benchmarks/dashboard.py                 # 10 s measured after 3 s of warm-up
    python benchmarks/dashboard.py --seconds 30 --price-hz 40

A real gateway process (``python -m services.gateway``) is fed over the bus by this script's own
publishers: SPY trades at ``--price-hz`` (20/s), the in-progress 1 s bar updated with every trade and
closed each second, a setup transition every 5 s, a full coach panel (100 alerts, then one a second)
and a feed status each second. Headless Chromium (Debian's ``chromium``) opens the dashboard with a
token. Measured in the page over the window: frames (``requestAnimationFrame`` callbacks per second),
chart renders per second (the dashboard draws at most once per frame), and main-thread busy time
(DevTools ``Performance.getMetrics`` TaskDuration / wall time). Target: >= 30 fps. Loopback only;
bounded; everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import zmq

from services.gateway import auth
from services.gateway.devtools import Chromium
from spx_common.bus import Publisher
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import CoachEvent, FeedStatus, MicroBar, Quote, SetupTransition, Trade, coach_event_id
from spx_testing import ServiceProcess

SECRET = "benchmark-secret-0123456789"
S = 1_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit(f"benchmark: {what} not within {timeout_s:g} s")


class Feed:
    """The fake upstream: publishes what the feed, aggregator, detector and coach would."""

    def __init__(self, run_dir: Path, price_hz: float) -> None:
        rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
        self.ctx = zmq.Context()
        self.pubs = {s: Publisher(self.ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0)
                     for s in ("feed", "aggregator", "detector", "coach")}
        self.price_hz = price_hz
        self.t0 = (int(time.time()) // 60) * 60 * S
        self.stop = threading.Event()
        self.sent = {"trades": 0, "bars": 0, "coach": 0, "setups": 0}

    def heartbeat(self) -> None:
        for p in self.pubs.values():
            p.heartbeat(self.t0)

    def coach(self, i: int, ts: int) -> None:
        kind = ("entry_window_opened", "stop_threat", "target1_touched")[i % 3]
        ev = CoachEvent(user="bench", kind=kind, message=f"{kind} on SPY #{i}: reclaim long, stop 599.80", ts=ts,
                        setup_id=f"s{i % 7}", id=coach_event_id("bench", kind, ts, f"s{i % 7}"))
        self.pubs["coach"].publish("coach.bench", "coach", ev, ts)
        self.sent["coach"] += 1

    def run(self) -> None:
        for i in range(100):  # a full coach panel before the page opens
            self.coach(i, self.t0 - (100 - i) * S)
        step = 1.0 / self.price_hz
        i, k, sec, last_beat = 0, 100, -1, 0.0
        start = time.monotonic()
        bar = None
        while not self.stop.is_set() and i < 10_000_000:
            now = time.monotonic()
            if now - last_beat >= 1.0:
                self.heartbeat()
                last_beat = now
            ts = self.t0 + int((now - start) * S)
            px = 600 + 2 * ((i % 400) / 400 - 0.5) + (i % 7) * 0.01
            cur = (ts - self.t0) // S
            if cur != sec:
                if bar is not None:  # close the previous second's bar
                    closed = MicroBar(**{**{f: getattr(bar, f) for f in bar.__struct_fields__}, "closed": True})
                    self.pubs["aggregator"].publish("bar.1s.SPY", "bar", closed, closed.start_ns)
                    self.sent["bars"] += 1
                    self.pubs["feed"].publish("status.feed", "feed_status", FeedStatus(
                        mode="tick", connected=True, events_per_s=self.price_hz * 2, ts=ts,
                        availability_pct=99.9, availability_day="bench"), ts)
                    self.coach(k, ts)
                    k += 1
                    if cur % 5 == 0:
                        t = SetupTransition(setup_id=f"bench-{cur}", detector="vwap_reclaim", family="vwap", sym="SPY",
                                            direction="long", to_state="forming", reason="bench", ts=ts,
                                            entry_low=px - 0.1, entry_high=px + 0.1, stop=px - 0.6, targets=[px + 0.8])
                        self.pubs["detector"].publish("setup.transition", "setup_transition", t, ts)
                        self.sent["setups"] += 1
                sec = cur
                bar = MicroBar(sym="SPY", interval="1s", start_ns=self.t0 + cur * S, open=px, high=px, low=px,
                               close=px, volume=0.0, trades=0, closed=False)
            bar = MicroBar(**{**{f: getattr(bar, f) for f in bar.__struct_fields__}, "high": max(bar.high, px),
                              "low": min(bar.low, px), "close": px, "volume": bar.volume + 10,
                              "trades": bar.trades + 1, "buy_volume": (bar.buy_volume or 0) + 6,
                              "sell_volume": (bar.sell_volume or 0) + 4})
            self.pubs["feed"].publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=px - 0.01, ask=px + 0.01, bid_size=300,
                                                                 ask_size=200, ts=ts),
                                                           Trade(sym="SPY", price=px, size=10, ts=ts)], ts)
            self.pubs["aggregator"].publish("bar.1s.SPY", "bar", bar, ts)
            self.sent["trades"] += 1
            i += 1
            self.stop.wait(max(0.0, start + i * step - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        for p in self.pubs.values():
            p.close()
        self.ctx.destroy(linger=0)


MEASURE = """
new Promise(resolve => {
  const chart = document.getElementById('chart');
  const r0 = +chart.dataset.renders; let frames = 0; const t0 = performance.now();
  (function f() { frames++; if (performance.now() - t0 < %d) requestAnimationFrame(f);
    else resolve({frames, ms: performance.now() - t0, renders: +chart.dataset.renders - r0,
                  bars: +chart.dataset.bars, coach: document.querySelectorAll('#coach li').length}); })();
})
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of feed before measuring (default 3)")
    ap.add_argument("--price-hz", type=float, default=20.0, help="price updates per second (default 20)")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="spx-bench-", dir="/tmp"))
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_GATEWAY_TOKEN_SECRET": SECRET}
    feed = Feed(run_dir, args.price_hz)
    gw = ServiceProcess.service("gateway", run_dir=run_dir, env=env).start()
    browser = page = None
    thread = threading.Thread(target=feed.run, daemon=True)
    try:
        with gw:
            def up() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0
            gw.wait_ready(up, 30, "gateway listening")
            feed.heartbeat()
            thread.start()
            token = auth.mint("bench", SECRET.encode(), int(time.time()) + 3600)
            browser = Chromium(f"http://127.0.0.1:{port}/?token={token}")
            page = browser.page()
            wait(lambda: int(page.js("+document.getElementById('chart').dataset.bars || 0") or 0) >= 2, 30,
                 "candles on the page")
            time.sleep(args.warmup)
            page.call("Performance.enable")
            m0, w0 = page.metrics(), time.monotonic()
            res = page.js(MEASURE % int(args.seconds * 1000), await_promise=True, timeout_s=args.seconds + 30)
            m1, w1 = page.metrics(), time.monotonic()
    finally:
        feed.close()
        thread.join(5)
        if page is not None:
            page.close()
        if browser is not None:
            browser.close()
    secs = res["ms"] / 1000
    fps = res["frames"] / secs
    def share(name: str) -> float:
        return (m1.get(name, 0) - m0.get(name, 0)) / (w1 - w0) * 100

    busy, script = share("TaskDuration"), share("ScriptDuration")
    layout, style = share("LayoutDuration"), share("RecalcStyleDuration")
    print(f"dashboard under {args.price_hz:g} price updates/s, 1 s bars, a setup every 5 s, {res['coach']} coach "
          f"alerts on the panel, {res['bars']} candles:")
    print(f"  frames {fps:5.1f} fps  (target >= 30)   chart renders {res['renders'] / secs:5.1f}/s "
          f"(<= frames: one draw per frame at most)")
    print(f"  main thread busy {busy:4.1f}% of wall time (script {script:4.1f}%, style {style:4.1f}%, layout "
          f"{layout:4.1f}%, the rest paint and compositing) over {secs:.1f} s; fed {feed.sent['trades']:,} trades, "
          f"{feed.sent['bars']} closed bars")
    return 0 if fps >= 30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
