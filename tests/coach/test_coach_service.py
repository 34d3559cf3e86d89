"""The real coach process (``python -m services.coach``) on real sockets: transitions and alerts in,
``coach.<user>`` out, bad input counted, metric exposed."""

import os
import subprocess
import sys

import pytest
import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import SetupTransition
from tests.conftest import eventually

T0 = 1_771_599_600_000_000_000


@pytest.fixture
def coach(run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    pubs = {s: Publisher(ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0) for s in ("detector", "broker")}
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_COACH_USERS": "alice,bob"}
    proc = subprocess.Popen([sys.executable, "-m", "services.coach"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    rpc = RpcClient(ctx, bus.rep_endpoint("coach", rt), timeout_s=1.0, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint("coach", rt)], ["coach."], heartbeats=True)

    def ping():
        try:
            return rpc.call("ping")
        except RpcError:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    try:
        eventually(ping, 20, what="coach answers ping")
        eventually(lambda: sub.recv(0.2) is not None, 10, what="coach heartbeat")
        for name, pub in pubs.items():  # slow joiner: until the coach sees each publisher
            eventually(lambda p=pub, n=name: p.heartbeat(T0) or n in rpc.call("status")["peers"], 10)
        yield pubs, sub, rpc
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        rpc.close()
        sub.close()
        for p in pubs.values():
            p.close()
        ctx.destroy(linger=0)


def _collect(sub, n, timeout_s=5.0):
    got = []
    eventually(lambda: [got.append((f.topic, f.body())) for f in iter(lambda: sub.recv(0.05), None)
                        if f.topic.startswith("coach.")] is not None and len(got) >= n, timeout_s)
    return got


def test_coach_process_publishes_user_scoped_tactical_alerts(coach):
    pubs, sub, rpc = coach
    t = SetupTransition(setup_id="s1", detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                        from_state="forming", to_state="ready", reason="t", ts=T0, entry_low=6000, entry_high=6002,
                        stop=5996)
    pubs["detector"].publish("setup.transition", "setup_transition", t, T0)
    pubs["broker"].publish("alert.carol", "doc", {"kind": "no-ts", "message": "bad"}, T0)  # refused, counted
    pubs["broker"].publish("alert.carol", "doc", {"kind": "pdt_equity", "severity": "critical",
                                                  "message": "equity under 25k", "ts": T0, "user": "carol"}, T0)
    got = _collect(sub, 3)
    assert sorted((topic, ev.kind) for topic, ev in got) == [
        ("coach.alice", "entry_window_opened"), ("coach.bob", "entry_window_opened"), ("coach.carol", "pdt_alert")]
    assert all(topic == f"coach.{ev.user}" for topic, ev in got)
    metrics = eventually(lambda: (lambda t: "coach_tactical_alert_rate 2" in t and t)(rpc.call("metrics")), 5)
    assert 'coach_bad_input_total{topic="alert"} 1' in metrics
    assert rpc.call("status")["coach"]["emitted"] == {"entry_window_opened": 2, "pdt_alert": 1}
