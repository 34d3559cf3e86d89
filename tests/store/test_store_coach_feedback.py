"""Issue 28 in the store: a real recorder process keeps every coach alert with its user's first answer and
each finished session's feed availability; ``spx coach stats`` reports acknowledgment and dismiss rates per
kind and day from them (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json

import zmq

from services.cli.main import main as spx_main
from spx_common.bus import Publisher, RpcClient, RpcError
from spx_common.calendar import ET
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import CoachEvent, CoachFeedback, coach_event_id
from spx_common.store import open_store
from spx_testing import ServiceProcess
from tests.conftest import eventually

S = 1_000_000_000


def test_recorder_keeps_alerts_answers_and_availability_and_cli_reports_rates(db_url, run_dir, capsys,
                                                                              monkeypatch):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    pubs = {s: Publisher(ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0) for s in ("coach", "gateway", "feed")}
    open_store(db_url).close()
    rec = ServiceProcess.service("recorder", run_dir=run_dir, env={"DATABASE_URL": db_url})
    rpc = RpcClient(ctx, bus.rep_endpoint("recorder", rt), timeout_s=1.0, retries=0)
    try:
        with rec:
            def hears_all():
                for p in pubs.values():
                    p.heartbeat(0)
                try:
                    peers = rpc.call("status")["peers"]
                except RpcError:
                    return False
                return {"coach", "gateway", "feed"} <= set(peers)

            rec.wait_ready(hears_all, 30, "recorder hears coach, gateway and feed", 0.2)
            # the alerts fall in today's New York day (the stats' day and the CLI's default window), also
            # between 19:00 and 24:00 ET when the machine's UTC date is already tomorrow's
            wall = dt.datetime.now(ET)
            midnight = int(wall.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()) * S
            now = int(wall.timestamp()) * S
            base = midnight + (now - midnight) // 2
            alerts = [CoachEvent(user="alice", kind=kind, message=f"{kind} #{i}", ts=base + i * S, setup_id="s",
                                 id=coach_event_id("alice", kind, base + i * S, "s"))
                      for i, kind in enumerate(["stop_threat"] * 4 + ["entry_window_opened"] * 2)]
            # one answer arrives before its alert (bus order across publishers is not guaranteed)
            early = CoachFeedback(user="alice", event_id=alerts[5].id, action="dismiss", kind=alerts[5].kind,
                                  event_ts=alerts[5].ts, ts=now)
            pubs["gateway"].publish("feedback.coach", "coach_feedback", early, early.event_ts)
            for a in alerts:
                pubs["coach"].publish("coach.alice", "coach", a, a.ts)
            for eid, action in ((alerts[0].id, "ack"), (alerts[1].id, "dismiss"), (alerts[0].id, "dismiss")):
                fb = CoachFeedback(user="alice", event_id=eid, action=action, kind="stop_threat", event_ts=alerts[0].ts,
                                   ts=now)
                pubs["gateway"].publish("feedback.coach", "coach_feedback", fb, fb.event_ts)
            day = {"day": "2026-11-20", "pct": 99.91, "session_s": 23_400, "elapsed_s": 23_400, "available_s": 23_379,
                   "longest_gap_s": 12, "longest_gap_start_ns": 1_795_190_000 * S, "closed": True}
            pubs["feed"].publish("availability.feed", "doc", day, now)
            store = open_store(db_url, migrate=False)
            try:
                today = wall.date().isoformat()

                def stored():
                    rows = {r["kind"]: r for r in store.coach_stats(today, today)}
                    return (rows.get("stop_threat", {}).get("acked") == 1 and rows.get("entry_window_opened", {})
                            .get("dismissed") == 1 and store.availability() and rows)
                rows = eventually(stored, 20, 0.2, what="alerts, answers and availability stored")
                assert rows["stop_threat"] == {"day": today, "kind": "stop_threat", "alerts": 4, "acked": 1,
                                               "dismissed": 1, "ack_rate": 0.25, "dismiss_rate": 0.25}
                assert rows["entry_window_opened"]["alerts"] == 2 and rows["entry_window_opened"]["dismiss_rate"] == 0.5
                (av,) = store.availability()
                assert (av["day"], av["pct"], av["longest_gap_s"]) == ("2026-11-20", 99.91, 12)
            finally:
                store.close()
            monkeypatch.setenv("DATABASE_URL", db_url)
            assert spx_main(["coach", "stats", "--days", "1", "--json"]) == 0
            doc = json.loads(capsys.readouterr().out)
            assert {(r["kind"], r["acked"], r["dismissed"]) for r in doc["days"]} == {("stop_threat", 1, 1),
                                                                                     ("entry_window_opened", 0, 1)}
            assert spx_main(["coach", "stats", "--days", "1"]) == 0
            out = capsys.readouterr().out
            assert "stop_threat" in out and "25%" in out
    finally:
        rpc.close()
        for p in pubs.values():
            p.close()
        ctx.destroy(linger=0)
