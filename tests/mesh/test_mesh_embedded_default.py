"""The embedded default end to end on the real mesh: generated session -> bars -> detector setups ->
selector recommendation -> paper broker fills -> recorder rows -> coach alerts.

Replays the generated day at 60x so the opening range completes within the test's bounds.
"""

import json
import re
import sqlite3
import threading
import time

import pytest
import zmq

from services.cli import supervise
from spx_common.bus import Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import free_port

pytestmark = pytest.mark.mesh


def _watch_setups(port: int, out: list, stop: threading.Event) -> None:
    """A browser-like client of the gateway's ``setups`` channel: (setup id, state) in arrival order."""
    from websockets.sync.client import connect

    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            ws = connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    else:
        return
    with ws:
        ws.send(json.dumps({"op": "subscribe", "channels": ["setups"]}))
        while not stop.is_set():
            try:
                msg = json.loads(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            if msg.get("channel") == "setups" and msg.get("type") == "update":
                out.append((msg["data"]["setup_id"], msg["data"]["to_state"]))


def test_setup_triggers_paper_broker_fills_and_everything_is_recorded(run_dir, capsys):
    runtime = RuntimeConfig(run_dir=run_dir)
    port = free_port()
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(port), "SPX_FEED_REPLAY_SPEED": "60"})
    ws_seen: list = []
    ws_stop = threading.Event()
    ws_thread = threading.Thread(target=_watch_setups, args=(port, ws_seen, ws_stop), daemon=True)
    ctx = zmq.Context()
    bus = BusConfig()
    sub = Subscriber(ctx, [bus.pub_endpoint(s, runtime) for s in ("detector", "selector", "broker", "coach")],
                     ["setup.transition", "reco.", "fill.", "coach.", "order."])
    seen: dict[str, int] = {}
    entries: list = []
    try:
        supervise.wait_running(runtime, 60)
        ws_thread.start()
        deadline = time.monotonic() + 150
        want = {"triggered", "reco_ok", "fill", "coach"}
        while time.monotonic() < deadline and not want <= set(seen):
            frame = sub.recv(1.0)
            if frame is None:
                continue
            body = frame.body()
            if frame.topic == "setup.transition":
                seen[body.to_state] = seen.get(body.to_state, 0) + 1
            elif frame.topic.startswith("reco.") and body.ok and body.suggestedContracts > 0:
                seen["reco_ok"] = seen.get("reco_ok", 0) + 1
            elif frame.topic.startswith("fill."):
                seen["fill"] = seen.get("fill", 0) + 1
            elif frame.topic.startswith("order.") and body.side == "buy_to_open" and body.status == "new":
                entries.append(body)
            elif frame.topic.startswith("coach."):
                seen["coach"] = seen.get("coach", 0) + 1
        assert want <= set(seen), f"saw only {seen}; logs in {runtime.path('logs')}"
        # every entry was re-sized by the broker for its user (issue 18): its loss to the stop, spread
        # included, times its contracts fits the default $500 budget ([broker] max_risk_per_trade)
        assert entries
        for o in entries:
            m = re.search(r"sized (\d+) \([^)]*\): loss \$([\d.]+)/contract", o.reason)
            assert m and int(m.group(1)) >= o.quantity, o.reason
            assert o.quantity * float(m.group(2)) <= 500, o.reason
        db = sqlite3.connect(runtime.path("spx.sqlite3"))

        def rows(table):
            return db.execute(f"select count(*) from {table}").fetchone()[0]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (rows("fills") and rows("setup_instances")):
            time.sleep(0.5)
        assert rows("fills") > 0 and rows("orders") > 0 and rows("setup_instances") > 0
        # issue 19: every row is the demo's, stamped synthetic with this run's id (never live)
        for table in ("setup_instances", "setup_transitions", "orders", "fills", "positions"):
            stamped = set(db.execute(f"select distinct source, run_id from {table}"))
            assert len(stamped) == 1 and next(iter(stamped))[0] == "synthetic" and next(iter(stamped))[1], (
                table, stamped)
        # the recorder stores 1 s bars with their microstructure, so the day can be backtested offline
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rows("bars") < 300:
            time.sleep(0.5)
        assert rows("bars") >= 300
        assert set(db.execute("select distinct source, interval from bars")) == {("synthetic", "1s")}
        extra = json.loads(db.execute("select extra from bars where sym = 'SPY' and trades > 0 limit 1").fetchone()[0])
        assert extra.get("quote_coverage_pct") is not None and extra.get("buy_volume") is not None
        db.close()
        _status_says_replay_and_lags_on_the_replay_clock(capsys)
        _offline_backtest_of_the_replayed_day(run_dir, capsys)
        # the gateway's setups channel showed setups appearing and moving through their states
        rank = {"forming": 0, "ready": 1, "triggered": 2, "target1_hit": 3, "target2_hit": 4}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(st == "triggered" for _, st in ws_seen):
            time.sleep(0.2)
        by_id: dict[str, list] = {}
        for sid, st in ws_seen:
            by_id.setdefault(sid, []).append(st)
        moved = [sts for sts in by_id.values() if "forming" in sts and "triggered" in sts]
        assert moved, f"no setup seen going forming -> triggered on the setups channel: {by_id}"
        for sts in by_id.values():  # forward-only, no state twice
            live = [rank[x] for x in sts if x in rank]
            assert live == sorted(live) and len(set(sts)) == len(sts), sts
    finally:
        ws_stop.set()
        if ws_thread.is_alive():
            ws_thread.join(5)
        sub.close()
        ctx.destroy(linger=0)
        supervise.stop(runtime, 30)


def _status_says_replay_and_lags_on_the_replay_clock(capsys) -> None:
    """``spx status``: REPLAY with the replayed date and speed, never LIVE; event lag measured against the
    replay clock (before: ``event lag 411.8h`` for every service)."""
    from services.cli.main import main

    capsys.readouterr()
    deadline = time.monotonic() + 15
    while True:  # healthy once every service's heartbeat is in (bounded)
        code = main(["status", "--json"])
        doc = json.loads(capsys.readouterr().out)
        if code == 0 or time.monotonic() > deadline:
            break
    assert code == 0, doc["unhealthy"]
    assert doc["feed"]["source"] == "synthetic" and doc["feed"]["run_id"]
    assert doc["feed"]["badge"] == "REPLAY 2026-11-20 x60 (synthetic)", doc["feed"]
    lags = {r["service"]: r["event_lag_s"] for r in doc["services"] if r["event_lag_s"] is not None}
    assert lags and all(abs(v) < 600 for v in lags.values()), lags  # minutes of replay time at most, not days


def _offline_backtest_of_the_replayed_day(run_dir, capsys) -> None:
    """Right after ``spx up`` with no key, ``spx backtest <the replayed day>`` runs on what the recorder
    stored and reports setups and outcomes."""
    from services.cli.main import main

    capsys.readouterr()
    out = run_dir / "bt"
    assert main(["backtest", "2026-11-20", "2026-11-20", "--out", str(out), "--quiet", "--no-record"]) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "report.json").read_text())
    data = result["evidence"]["data"]
    assert [(d["source"], d["resolution"], d["provenance"]) for d in data] == [
        ("store second bars", "second", ["synthetic"])], data
    sample = result["evidence"]["sample"]
    assert sample["bars"] >= 300 and sample["setups"] > 0, sample
    assert "store second bars (synthetic)" in text and "resolved trades" in text
    assert "synthetic" in (out / "report.md").read_text()
