"""The embedded default end to end on the real mesh: generated session -> bars -> detector setups ->
selector recommendation -> paper broker fills -> recorder rows -> coach alerts.

Replays the generated day at 60x so the opening range completes within the test's bounds.
"""

import sqlite3
import time

import pytest
import zmq

from services.cli import supervise
from spx_common.bus import Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import free_port

pytestmark = pytest.mark.mesh


def test_setup_triggers_paper_broker_fills_and_everything_is_recorded(run_dir):
    runtime = RuntimeConfig(run_dir=run_dir)
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(free_port()), "SPX_FEED_REPLAY_SPEED": "60"})
    ctx = zmq.Context()
    bus = BusConfig()
    sub = Subscriber(ctx, [bus.pub_endpoint(s, runtime) for s in ("detector", "selector", "broker", "coach")],
                     ["setup.transition", "reco.", "fill.", "coach."])
    seen: dict[str, int] = {}
    try:
        supervise.wait_running(runtime, 60)
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
            elif frame.topic.startswith("coach."):
                seen["coach"] = seen.get("coach", 0) + 1
        assert want <= set(seen), f"saw only {seen}; logs in {runtime.path('logs')}"
        db = sqlite3.connect(runtime.path("spx.sqlite3"))

        def rows(table):
            return db.execute(f"select count(*) from {table}").fetchone()[0]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (rows("fills") and rows("setup_instances")):
            time.sleep(0.5)
        assert rows("fills") > 0 and rows("orders") > 0 and rows("setup_instances") > 0
        db.close()
    finally:
        sub.close()
        ctx.destroy(linger=0)
        supervise.stop(runtime, 30)
