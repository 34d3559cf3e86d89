"""The dashboard in headless Chromium (Debian's ``chromium``) against a real gateway fed by real bus
frames: the page loads, candles render and update, a setup appears, the badge says ``tick``, coach
alerts and positions show for the token's user. Driven over the DevTools protocol; the screenshot is
saved to ``artifacts/dashboard.png``."""

from __future__ import annotations

import base64
import threading
import time
import urllib.request

import pytest

from services.gateway import auth
from services.gateway.devtools import DevTools, chromium_path
from spx_common.config import PROJECT_DIR
from spx_common.models import CoachEvent, FeedStatus, Order, Position
from spx_testing import Processes
from tests.conftest import eventually
from tests.gateway.harness import SECRET, T0, GatewayRunner

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def test_dashboard_renders_live_candles_setups_badge_and_coach(run_dir, browser):
    gw = GatewayRunner(run_dir, price_throttle_ms=100)
    stop = threading.Event()
    bars_sent = [0]

    def feed():
        i = 0
        while not stop.is_set() and i < 2000:
            px = 600 + (i % 40) * 0.05 - (i % 7) * 0.03
            gw.bar(i, px, closed=False)
            gw.trade(px + 0.01)
            gw.bar(i, px, closed=True)
            bars_sent[0] = i + 1
            if i % 10 == 0:
                gw.pubs["feed"].publish("status.feed", "feed_status",
                                        FeedStatus(mode="tick", connected=True, events_per_s=120.0, ts=gw.ts), gw.ts)
            i += 1
            stop.wait(0.05)

    try:
        for i in range(30):  # history before the page opens: the snapshot
            gw.bar(-30 + i, 599 + i * 0.03, closed=True)
        gw.transition("vwap-1", "forming", ts=T0, entry_low=599.8, entry_high=600.2, stop=599.0, targets=[601.5])
        gw.transition("vwap-1", "ready", ts=T0 + 1, price=600.0)
        gw.pubs["coach"].publish("coach.alice", "coach", CoachEvent(
            user="alice", kind="entry_window_opened", message="reclaim long on SPY: entry window open", ts=T0), T0)
        gw.pubs["broker"].publish("position.alice", "position", Position(
            user="alice", option_symbol="SPXW260220C05000000", quantity=2, avg_price=1.5, realized_pnl=40.0,
            unrealized_pnl=12.5, ts=T0), T0)
        for oid, typ, price, trig in (("o-stop", "stop", None, 1.2), ("o-sl", "stop_limit", 1.1, 1.2),
                                      ("o-lim", "limit", 1.5, None)):
            gw.pubs["broker"].publish("order.alice", "order", Order(
                order_id=oid, user="alice", option_symbol="SPXW260220C05000000", side="sell_to_close"
                if typ != "limit" else "buy_to_open", quantity=2, type=typ, price=price, stop=trig,
                status="open", ts=T0), T0)
        gw.pubs["detector"].publish("state.market", "doc", {"levels": {"PDH": 601.2, "ORL": 599.4}, "regime": "trend",
                                                            "ts": T0}, T0)
        eventually(lambda: "alice" in gw.svc.hub.user_data and len(gw.svc.hub.setups) == 1 and gw.svc.hub.market, 5)
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        token = auth.mint("alice", SECRET.encode(), int(time.time()) + 600)
        dt = browser(f"http://127.0.0.1:{gw.port}/?token={token}")
        try:
            bars = lambda: int(dt.js("document.getElementById('chart').dataset.bars") or 0)  # noqa: E731
            first = eventually(lambda: bars() >= 31 and bars(), 20, 0.2, what="candles rendered")
            renders = int(dt.js("document.getElementById('chart').dataset.renders"))
            eventually(lambda: bars() >= first + 5, 15, 0.2, what="candles update live")
            eventually(lambda: int(dt.js("document.getElementById('chart').dataset.renders")) > renders, 10, 0.2,
                       what="the chart redrawn for the new candles")
            assert eventually(lambda: dt.js("document.getElementById('badge-mode').textContent") == "tick", 10, 0.2)
            state = dt.js("document.querySelector('#setups tr[data-setup-id=\"vwap-1\"]')?.dataset.state")
            assert state == "ready"
            gw.transition("vwap-1", "triggered", ts=T0 + 2, price=600.1)
            eventually(lambda: dt.js("document.querySelector('#setups tr[data-setup-id=\"vwap-1\"]')?.dataset.state")
                       == "triggered", 10, 0.2, what="setup state updates")
            coach = dt.js("[...document.querySelectorAll('#coach li')].map(li => li.dataset.kind)")
            assert coach == ["entry_window_opened"]
            assert "52.50" in dt.js("document.getElementById('pnl').textContent")
            # a resting protective stop shows its trigger price, not '-'
            prices = eventually(lambda: (lambda p: len(p) == 3 and p)(dt.js(
                "Object.fromEntries([...document.querySelectorAll('#orders tr[data-order-id]')].map(r => "
                "[r.dataset.orderId, r.querySelector('.order-price').textContent]))")), 10, 0.2, what="three orders")
            assert prices == {"o-stop": "stop 1.20", "o-sl": "1.10 (stop 1.20)", "o-lim": "1.50"}, prices
            assert dt.js("document.getElementById('user').textContent") == "user alice"
            assert dt.js("document.getElementById('chart').dataset.levels") == "PDH,ORL"
            # render throttling: at most one draw per animation frame however fast messages come
            res = dt.call("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression=(
                "new Promise(r => { const c = document.getElementById('chart'); const r0 = +c.dataset.renders; "
                "let n = 0; const t0 = performance.now(); (function f() { n++; if (performance.now() - t0 < 1000) "
                "requestAnimationFrame(f); else r({frames: n, renders: +c.dataset.renders - r0}); })(); })"))
            fr = res["result"]["value"]
            assert fr["renders"] <= fr["frames"] + 1, fr
            shot = dt.call("Page.captureScreenshot", format="png")
            out = PROJECT_DIR / "artifacts" / "dashboard.png"
            out.parent.mkdir(exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
            assert out.stat().st_size > 10_000
        finally:
            dt.close()
    finally:
        stop.set()
        gw.close()


def test_dashboard_against_real_feed_aggregator_coach_and_gateway_processes(run_dir, browser):
    """The real processes (synthetic feed, aggregator, coach, gateway) plus a stand-in detector
    publishing one real setup transition: candles from the real aggregator, the badge from real
    ticks, the setup, and the coach's derived alert for the token's user."""
    import os

    import zmq

    from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
    from spx_common.config import BusConfig, RuntimeConfig
    from spx_common.models import SetupTransition, Watermark
    from spx_common.topics import watermark_topic
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_GATEWAY_PORT": str(port),
           "SPX_AGGREGATOR_WARMUP_FROM_JOURNAL": "false", "SPX_COACH_USERS": "default",
           "SPX_GATEWAY_TOKEN_SECRET": SECRET}
    for k in [k for k in env if k.startswith(("MASSIVE_", "TRADIER_"))]:
        env.pop(k)
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    detector = Publisher(ctx, bus.pub_endpoint("detector", rt, bind=True), "detector", linger_ms=0)
    ps = Processes()
    for name in ("feed", "aggregator", "coach", "gateway"):
        ps.service(name, env=env, inherit_env=False)
    rpcs = {s: RpcClient(ctx, bus.rep_endpoint(s, rt), timeout_s=1.0, retries=0) for s in ("gateway", "coach")}

    def hears_detector(service):
        detector.heartbeat(T0)
        try:
            return rpcs[service].call("status")["peers"].get("detector")
        except RpcError:
            return None
    dt = None
    try:
        with ps:
            for service in rpcs:
                ps[service].wait_ready(lambda s=service: hears_detector(s), 30, f"{service} hears the detector", 0.2)
            token = auth.mint("default", SECRET.encode(), int(time.time()) + 600)
            dt = browser(f"http://127.0.0.1:{port}/?token={token}")
            bars = lambda: int(dt.js("document.getElementById('chart').dataset.bars") or 0)  # noqa: E731
            first = eventually(lambda: bars() >= 2 and bars(), 30, 0.2, what="candles from the real aggregator")
            eventually(lambda: bars() >= first + 2, 20, 0.2, what="candles update")
            eventually(lambda: dt.js("document.getElementById('badge-mode').textContent") == "tick", 10, 0.2)
            # the setup is stamped in the data's time (the feed replays a generated session, not today): the
            # coach takes its inputs in event time and holds a transition until the bars' watermark passes it
            wm_sub = Subscriber(ctx, [bus.pub_endpoint("aggregator", rt)], ["wm."])
            try:
                frame = eventually(lambda: wm_sub.recv(0.2), 20, 0, what="the aggregator's watermark")
                now = frame.body().ns
            finally:
                wm_sub.close()
            t = SetupTransition(setup_id="orb-1", detector="orb", family="opening_range", sym="SPY", direction="long",
                                from_state="forming", to_state="ready", reason="range break", ts=now, price=600.0,
                                entry_low=599.9, entry_high=600.1, stop=599.0, targets=[601.5])
            detector.publish("setup.transition", "setup_transition", t, now)
            # as the real detector (a relay) does: its watermark passes the transition, so the coach, which
            # takes its inputs in event time, handles it now rather than after its idle wait (align_idle_s)
            detector.publish(watermark_topic("detector"), "watermark", Watermark(ns=now + 1), now + 1)
            eventually(lambda: dt.js("document.querySelector('#setups tr[data-setup-id=\"orb-1\"]')?.dataset.state")
                       == "ready", 10, 0.2, what="setup on the page")
            eventually(lambda: dt.js("[...document.querySelectorAll('#coach li')].map(li => li.dataset.kind).join()")
                       == "entry_window_opened", 10, 0.2, what="coach alert derived by the real coach")
            shot = dt.call("Page.captureScreenshot", format="png")
            out = PROJECT_DIR / "artifacts" / "dashboard-mesh.png"
            out.parent.mkdir(exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        if dt is not None:
            dt.close()
        for r in rpcs.values():
            r.close()
        detector.close()
        ctx.destroy(linger=0)


def _pixels(dt: DevTools, selector: str, top_frac: float = 0.0, bottom_frac: float = 1.0):
    """The element's screenshot (a slice of its height) as an RGB array (0-255)."""
    import io

    import matplotlib.image as mpimg

    r = dt.js(f"(() => {{ const b = document.querySelector('{selector}').getBoundingClientRect(); "
              "return {x: b.x, y: b.y, w: b.width, h: b.height}; })()")
    clip = {"x": r["x"], "y": r["y"] + r["h"] * top_frac, "width": r["w"], "height": r["h"] * (bottom_frac - top_frac),
            "scale": 1}
    shot = dt.call("Page.captureScreenshot", format="png", clip=clip)
    img = mpimg.imread(io.BytesIO(base64.b64decode(shot["data"])), format="png")
    return (img[..., :3] * 255).round().astype(int)


def _count(img, rgb, tol: int = 12) -> int:
    import numpy as np

    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


@pytest.mark.mesh
def test_dashboard_on_the_running_mesh_replay_setups_coach_and_flatten(run_dir, browser):
    """``spx up``'s mesh (generated session replayed at 60x, paper broker) and the dashboard with no
    token on loopback (the default user): ET time axis labels, the buy/sell volume pane (DOM and
    pixels), the REPLAY badge with the session date and speed, a setup row with its symbol and time and
    its levels on the chart, a coach line with a time, every service in the mesh panel, and the
    flatten button closing the paper position the broker opened."""
    import re

    from services.cli import supervise
    from spx_common.config import RuntimeConfig
    from tests.conftest import free_port

    runtime = RuntimeConfig(run_dir=run_dir)
    port = free_port()
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(port), "SPX_FEED_REPLAY_SPEED": "60",
                              "SPX_AGGREGATOR_INTERVALS": '["1s", "5s", "1m"]'})
    dt = None
    js = None
    try:
        supervise.wait_running(runtime, 60)
        eventually(lambda: _healthz(port), 90, 0.3, what="gateway answers")
        dt = browser(f"http://127.0.0.1:{port}/")
        js = dt.js
        hhmmss = re.compile(r"^\d{2}:\d{2}:\d{2}$")
        assert eventually(lambda: js("document.getElementById('user').textContent") == "user default", 20, 0.2)

        # REPLAY badge: mode, session date, speed
        badge = eventually(lambda: (lambda t: t if t.startswith("REPLAY ") else None)(
            js("document.getElementById('feed-badge').textContent")), 30, 0.3, what="REPLAY badge")
        m = re.match(r"^REPLAY (\d{4}-\d{2}-\d{2}) ×60$", badge)
        assert m, badge
        assert js("document.getElementById('feed-badge').dataset.mode") == "replay"

        # candles and the ET time axis: tick labels are ET clock times; the header clock has the session date
        chart = "document.getElementById('chart').dataset"
        eventually(lambda: int(js(f"{chart}.bars") or 0) >= 20, 60, 0.3, what="bars on the chart")
        def clock_labels():
            labels = [x for x in (js(f"{chart}.timeLabels") or "").split("|") if x]
            return [x for x in labels if re.match(r"^\d{2}:\d{2}(:\d{2})?$", x)]
        clock_like = eventually(lambda: (lambda c: c if len(c) >= 3 else None)(clock_labels()), 30, 0.3,
                                what="time axis labels")
        labels = clock_like
        assert all(9 <= int(x[:2]) <= 16 for x in clock_like), labels  # US/Eastern session hours, not UTC
        date = js("document.getElementById('clock').dataset.date")  # the session's date, from bar event time
        eventually(lambda: js("document.getElementById('feed-badge').textContent") == f"REPLAY {date} ×60", 10, 0.2,
                   what="the badge names the replayed session's date")

        # the session VWAP is the detector's (market state), not computed over the bars the page holds
        eventually(lambda: js(f"{chart}.vwap"), 30, 0.3, what="session VWAP from the server")
        vwap, label = js(f"[{chart}.vwap, document.getElementById('vwap-label').textContent]")
        assert 100 < float(vwap) < 10_000 and label == f"session VWAP {float(vwap):.2f}", (vwap, label)

        # volume pane: bars with volume in the DOM, buy (green) and sell (red) pixels in the lower pane
        assert int(js(f"{chart}.volumeBars") or 0) >= 10
        pane = _pixels(dt, "#chart", 0.78, 0.93)
        assert _count(pane, (0x2f, 0x9e, 0x6b)) > 50 and _count(pane, (0xc2, 0x4d, 0x4d)) > 50

        # a setup row with symbol and time; selecting it draws its entry / stop / targets
        row = "document.querySelector('#setups tr[data-setup-id]')"
        eventually(lambda: js(f"{row}?.dataset.sym"), 120, 0.5, what="a setup row")
        # one read of one row (the table re-renders every second)
        seen = js(f"(() => {{ const r = {row}; r.click(); return {{sym: r.dataset.sym, cell: r.cells[1].textContent, "
                  "time: r.querySelector('time').textContent}; })()")
        sym = seen["sym"]
        assert sym and seen["cell"] == sym and hhmmss.match(seen["time"]), seen
        lines = eventually(lambda: js(f"{chart}.setupLines"), 10, 0.2, what="setup lines on the chart")
        assert "stop" in lines.split(",") and any(x.startswith("entry") for x in lines.split(",")), lines
        eventually(lambda: js("document.getElementById('chart-title').textContent").startswith(sym + " "), 10, 0.2,
                   what="the chart follows the selected setup's symbol")

        # a coach line with its time
        li = "document.querySelector('#coach li[data-kind]')"
        eventually(lambda: js(f"{li}?.dataset.kind"), 120, 0.5, what="a coach line")
        assert hhmmss.match(js(f"{li}.querySelector('time').textContent"))

        # every service in the mesh panel, healthy
        # every service has a row; all healthy at once (bounded: heartbeats are late on a loaded host)
        names = eventually(lambda: (lambda n: n if len(n) == 8 else None)(
            js("[...document.querySelectorAll('#services .svc.ok')].map(e => e.dataset.service)")), 60, 0.3,
            what="all 8 services healthy in the mesh panel: " + str(
                js("[...document.querySelectorAll('#services .svc')].map(e => e.innerText)")))
        assert set(names) == {"feed", "aggregator", "detector", "selector", "broker", "coach", "gateway", "recorder"}

        # the paper position the broker opened, flattened from the page (confirm = second click)
        pos = "document.querySelector('#positions tr[data-symbol] button.flatten')"
        eventually(lambda: js(f"!!{pos}"), 150, 0.5, what="an open paper position with a flatten button")
        symbol = js(f"{pos}.dataset.symbol")
        if sym != "SPY":  # the picture for the docs: SPY with its volume
            js("(() => { const i = document.getElementById('sym'); i.value = 'SPY'; i.onchange({target: i}); })()")
            eventually(lambda: int(js(f"{chart}.bars") or 0) >= 20 and js(f"{chart}.vwap"), 30, 0.3,
                       what="SPY bars and VWAP again")
        shot = dt.call("Page.captureScreenshot", format="png")
        out = PROJECT_DIR / "artifacts" / "dashboard-mesh-full.png"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        # at 60x the broker's own exits race the button: flatten the first open position, and again with
        # another one when its exit was already under way (the flatten then queues no new order)
        for _attempt in range(4):
            # one script finds the button and clicks twice, so no message re-renders the table in between
            # (the broker's own exit can close the position we saw a moment before: then try again)
            res = eventually(lambda: js(
                f"(() => {{ const b = () => {pos}; if (!b()) return null; const symbol = b().dataset.symbol; "
                f"const btn = () => document.querySelector(`#positions tr[data-symbol=\"${{symbol}}\"] "
                f"button.flatten`); const r = document.getElementById('flatten-result'); r.textContent = ''; "
                f"btn().click(); const armed = btn()?.textContent; const sent = r.textContent; "
                f"btn()?.click(); return {{symbol, armed, sent, after: r.textContent}}; }})()"),
                150, 0.3, what="an open paper position")
            symbol = res["symbol"]
            assert res["armed"] == "Confirm flatten?" and res["sent"] == "", res  # one click sends nothing
            assert res["after"].startswith("flattening "), res
            eventually(lambda: js("document.getElementById('flatten-result').dataset.ok") == "true", 20, 0.2,
                       what="flatten answered ok")
            text = js("document.getElementById('flatten-result').textContent")
            if not text.endswith(": 0 exit orders queued"):
                break
        # an exit queued now, or after the position's resting protective stop is cancelled (issue 18, item 5)
        assert re.search(r": ([1-9]\d* exit orders? queued|closing [1-9]\d* positions?)( \(\d+ protective stops? "
                         r"cancelled first\))?$", text), text
        # the positions show the contract's greeks from the feed's chain (delta in shares, IV in %)
        greeks = js("[...document.querySelectorAll('#positions tr[data-symbol]')].map(r => [r.cells[5].textContent, "
                    "r.cells[7].textContent])")
        assert any(d != "-" and iv.endswith("%") for d, iv in greeks), greeks
        eventually(lambda: js(f"document.querySelector('#positions tr[data-symbol=\"{symbol}\"]').dataset.quantity")
                   == "0", 60, 0.3, what="the position closed by the exit fill")
        assert js("!!document.querySelector('#orders tr[data-status]')")

        # 1 m bars when the aggregator makes them
        js("(() => { const s = document.getElementById('interval'); s.value = '1m'; s.onchange({target: s}); })()")
        eventually(lambda: js("document.getElementById('chart-title').textContent") == "SPY 1m"
                   and int(js(f"{chart}.bars") or 0) >= 2, 30, 0.3, what="1 m bars on the chart")
    except BaseException:
        if js is not None:
            print("page state:", js("document.body.innerText.slice(0, 3000)"))
        raise
    finally:
        if dt is not None:
            dt.close()
        supervise.stop(runtime, 30)


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_dashboard_mesh_panel_shows_a_service_that_cannot_start_red_with_the_reason(run_dir, browser):
    """A service whose configuration is refused writes its fatal record; the gateway's status channel and
    the dashboard's Mesh panel show it (a red dot and the reason naming the key), not a missing row."""
    from spx_common import health

    health.record_fatal(run_dir, "selector", "invalid configuration: [selector] max_spread_pct = '-1' "
                        "(environment SPX_SELECTOR_MAX_SPREAD_PCT): Input should be greater than 0")
    gw = GatewayRunner(run_dir)
    try:
        dt = browser(f"http://127.0.0.1:{gw.port}/")
        try:
            sel = "document.querySelector('#services .svc[data-service=\"selector\"]')"
            eventually(lambda: dt.js(f"{sel}?.dataset.state") == "fatal", 20, 0.2, what="selector row, fatal")
            assert dt.js(f"{sel}.classList.contains('dead')")
            assert "max_spread_pct" in dt.js(f"{sel}.querySelector('.reason').textContent")
            color = dt.js(f"getComputedStyle({sel}.querySelector('.dot')).color")
            assert color == "rgb(239, 107, 107)", color  # the red dot
            assert dt.js("!!document.querySelector('#services .svc.ok[data-service=\"gateway\"]')")
        finally:
            dt.close()
    finally:
        gw.close()


def test_dashboard_acknowledges_and_dismisses_coach_alerts_and_shows_feed_availability(run_dir, browser):
    """Issue 28: the coach panel's buttons answer an alert once (op: ack / dismiss through the real gateway,
    recorded on the held alert); the feed badge shows the session's availability, marked below the SLO."""
    from spx_common.models import coach_event_id

    gw = GatewayRunner(run_dir, price_throttle_ms=100)
    try:
        events = [CoachEvent(user="alice", kind=kind, message=f"{kind} on SPY", ts=T0 + i, setup_id="s1",
                             id=coach_event_id("alice", kind, T0 + i, "s1"))
                  for i, kind in enumerate(("entry_window_opened", "stop_threat"))]
        for ev in events:
            gw.pubs["coach"].publish("coach.alice", "coach", ev, ev.ts)
        eventually(lambda: len(gw.svc.hub.user_data.get("alice", {}).get("coach", ())) == 2, 5)
        token = auth.mint("alice", SECRET.encode(), int(time.time()) + 600)
        dt = browser(f"http://127.0.0.1:{gw.port}/?token={token}")
        try:
            sel = "#coach li[data-event-id=\"{}\"]"
            eventually(lambda: dt.js(f"!!document.querySelector('{sel.format(events[0].id)} button.ack')"), 20, 0.2,
                       what="alerts with buttons")
            dt.js(f"document.querySelector('{sel.format(events[0].id)} button.ack').click()")
            dt.js(f"document.querySelector('{sel.format(events[1].id)} button.dismiss').click()")
            eventually(lambda: dt.js(f"document.querySelector('{sel.format(events[0].id)}').dataset.feedback") == "ack"
                       and dt.js(f"document.querySelector('{sel.format(events[1].id)}').dataset.feedback") == "dismiss",
                       10, 0.2, what="answers shown")
            held = {e["id"]: e.get("feedback") for e in gw.svc.hub.user_data["alice"]["coach"]}
            assert held == {events[0].id: "ack", events[1].id: "dismiss"}
            assert dt.js("document.querySelectorAll('#coach button').length") == 0  # answered: no more buttons
            # availability in the feed badge, flagged below the 99.5% SLO
            gw.pubs["feed"].publish("status.feed", "feed_status", FeedStatus(
                mode="tick", connected=True, ts=T0, availability_pct=98.25, availability_day="2026-02-20",
                longest_gap_s=300, longest_gap_start_ns=T0), T0)
            eventually(lambda: dt.js("document.getElementById('feed-availability').dataset.availability") == "98.25",
                       10, 0.2, what="availability beside the feed badge")
            assert dt.js("document.getElementById('feed-availability').textContent") == "prices 98.25%"
            assert dt.js("document.getElementById('feed-availability').classList.contains('below-slo')")
            assert "longest gap 300 s" in dt.js("document.getElementById('feed-availability').title")
        finally:
            dt.close()
    finally:
        gw.close()


def test_dashboard_crosshair_tooltip_zoom_and_pan(run_dir, browser):
    """Hovering a candle shows its OHLCV and microstructure in ET; the wheel zooms and a drag pans."""
    gw = GatewayRunner(run_dir)
    try:
        for i in range(120):
            gw.bar(i, 600 + (i % 9) * 0.05, closed=True)
        dt = browser(f"http://127.0.0.1:{gw.port}/")
        try:
            eventually(lambda: int(dt.js("document.getElementById('chart').dataset.bars") or 0) >= 120, 20, 0.2,
                       what="bars on the chart")
            box = dt.js("(() => { const b = document.getElementById('chart').getBoundingClientRect(); "
                        "return {x: b.x, y: b.y, w: b.width, h: b.height}; })()")
            x, y = box["x"] + box["w"] * 0.5, box["y"] + box["h"] * 0.35

            def mouse(kind, **kw):
                dt.call("Input.dispatchMouseEvent", type=kind, x=kw.pop("x", x), y=kw.pop("y", y), **kw)
            mouse("mouseMoved")
            eventually(lambda: dt.js("!document.getElementById('tooltip').hidden"), 10, 0.1, what="tooltip shown")
            tip = dt.js("document.getElementById('tooltip').innerText")
            for word in ("O H L C", "volume", "buy / sell", "delta vol", "bid/ask imb.", "spread", "quote cov.", " ET"):
                assert word in tip, tip
            rng = "(() => { const r = window.spxDashboard.chart.timeScale().getVisibleLogicalRange(); " \
                  "return [r.from, r.to]; })()"
            before = dt.js(rng)
            def wheel():
                mouse("mouseWheel", deltaX=0, deltaY=-240)
                r = dt.js(rng)
                return r[1] - r[0] < (before[1] - before[0]) * 0.9
            eventually(wheel, 10, 0.2, what="wheel zooms in")
            zoomed = dt.js(rng)
            mouse("mousePressed", button="left", clickCount=1)
            for step in range(1, 11):
                mouse("mouseMoved", x=x + step * 20, button="left", buttons=1)
            mouse("mouseReleased", x=x + 200, button="left", clickCount=1)
            panned = dt.js(rng)
            assert panned[0] < zoomed[0] - 1, (zoomed, panned)  # dragged right: earlier bars come into view
        finally:
            dt.close()
    finally:
        gw.close()
