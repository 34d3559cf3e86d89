"""The runner trail works live (issue 18, item 6): over the replayed generated day the aggregator
publishes 60 s bars, the selector's exit advisor trails the runner on them, and ``trail_stop`` advice
reaches the broker process (its ``broker_exit_advice_total{action="trail_stop"}``); what the engine does
with it (raise every resting stop, never lower) is tested in tests/broker/test_broker_exits_always.py."""

import re
import time

import pytest
import zmq

from services.cli import supervise
from spx_common.bus import RpcClient, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import free_port

pytestmark = pytest.mark.mesh


def test_trail_stop_advice_reaches_the_broker_on_a_replayed_day(run_dir):
    runtime = RuntimeConfig(run_dir=run_dir)
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(free_port()), "SPX_FEED_REPLAY_SPEED": "300"})
    ctx = zmq.Context()
    bus = BusConfig()
    sub = Subscriber(ctx, [bus.pub_endpoint(s, runtime) for s in ("aggregator", "selector")], ["bar.60s.", "exit."])
    rpc = RpcClient(ctx, bus.rep_endpoint("broker", runtime), timeout_s=2.0, retries=1)
    seen = {"bar60": 0, "trail": 0}
    try:
        supervise.wait_running(runtime, 60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (seen["bar60"] and seen["trail"]):
            frame = sub.recv(1.0)
            if frame is None:
                continue
            if frame.topic.startswith("bar.60s."):
                seen["bar60"] += 1
            elif frame.type == "exit_advice" and frame.body().action == "trail_stop":
                seen["trail"] += 1
        assert seen["bar60"] and seen["trail"], f"saw {seen}; logs in {runtime.path('logs')}"

        def received() -> float:
            m = re.search(r'broker_exit_advice_total\{action="trail_stop"\} ([0-9.e+]+)', rpc.call("metrics"))
            return float(m.group(1)) if m else 0.0

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and received() < 1:
            time.sleep(0.5)
        assert received() >= 1
    finally:
        sub.close()
        rpc.close()
        ctx.destroy(linger=0)
        supervise.stop(runtime, 30)
