"""The selector with the real feed process (synthetic session): chain docs and live option quotes
from the feed give a fresh chain with greeks computed from quotes, and ``select`` answers on it."""

from __future__ import annotations


import zmq

from spx_common.bus import RpcClient, RpcError
from spx_common.config import BusConfig, RuntimeConfig
from spx_testing import Processes


def test_selector_on_real_feed_chain(run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = {"SPX_FEED_REPLAY_SPEED": "50", "SPX_FEED_SOURCE": "synthetic"}
    ps = Processes()
    sel = ps.service("selector", run_dir=run_dir, env=env)
    ps.service("feed", run_dir=run_dir, env=env)
    ctx = zmq.Context()
    rpc = RpcClient(ctx, bus.rep_endpoint("selector", rt), timeout_s=1.0, retries=0)

    def chain_ready():
        try:
            v = rpc.call("chain")
        except RpcError:
            return None
        return v if v["ok"] and any(c["greeks"] == "computed" for c in v["near"]) else None

    try:
        with ps:
            view = sel.wait_ready(chain_ready, 25, what="fresh chain from the feed with computed greeks")
            assert view["contracts"] >= 20 and view["underlying"] > 0
            spot = view["underlying"]
            for direction, stop in (("long", spot - 6), ("short", spot + 6)):
                r = rpc.call("select", {"setup": {"direction": direction, "entry": spot, "stop": stop},
                                        "risk": {"maxRiskDollars": 1000, "dayTradeBuyingPower": 30_000},
                                        "regime": "trending"})
                assert r["ok"], r["reason"]
                assert r["option_type"] == ("call" if direction == "long" else "put")
                assert 0.40 <= abs(r["delta"]) <= 0.65 and r["suggestedContracts"] >= 1
    finally:
        rpc.close()
        ctx.destroy(linger=0)
