"""Snapshots from the real aggregator's query API: a gateway started after bars were made (e.g. after
a gateway restart) still gives a subscriber the history, then stitches the live stream to it."""


import zmq

from spx_common.bus import Publisher, RpcClient, RpcError
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import Quote, Trade
from spx_testing import ServiceProcess
from tests.conftest import eventually
from tests.gateway.harness import T0, GatewayRunner, WsClient

S = 1_000_000_000


def test_snapshot_history_comes_from_the_aggregator_and_live_bars_continue_it(run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    agg = ServiceProcess.service("aggregator", run_dir=run_dir, env={"SPX_AGGREGATOR_WARMUP_FROM_JOURNAL": "false"})
    rpc = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1.0, retries=0)
    gw = None
    state = {"ts": T0}

    def trade(px: float, dt_ns: int = S // 10) -> None:
        state["ts"] += dt_ns
        ts = state["ts"]
        feed.publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=px - 0.01, ask=px + 0.01, bid_size=100, ask_size=100, ts=ts),
                                           Trade(sym="SPY", price=px, size=10, ts=ts)], ts)

    def status():
        try:
            return rpc.call("status")
        except RpcError:
            return None
    try:
        with agg:
            agg.wait_ready(lambda: (feed.heartbeat(T0) or True) and (st := status()) and st["peers"].get("feed"), 20,
                           "aggregator hears the feed", 0.1)
            for i in range(100):  # 10 s of event time
                trade(600 + (i % 13) * 0.05)
            history = eventually(lambda: (r := rpc.call("bars_since", {"sym": "SPY", "interval": "1s"}))["bars"]
                                 and len(r["bars"]) >= 8 and r, 10, what="aggregator made bars")
            gw = GatewayRunner(run_dir, publishers={"feed": feed}, stand_ins=("detector", "broker", "coach"),
                               price_throttle_ms=0)
            eventually(lambda: gw.svc.core.peer_alive("aggregator"), 10, what="gateway hears the aggregator")
            c = WsClient(gw.url)
            c.subscribe("microbar:SPY:1s")
            snap = c.on("microbar:SPY:1s", ("snapshot",))[0]
            starts = [b["startNs"] for b in snap["data"]["bars"]]
            assert gw.svc.m_seed.value(result="ok") == 1, gw.svc.metrics.render()[-3000:]
            assert starts[: len(history["bars"])] == [b["start_ns"] for b in history["bars"]]
            assert gw.svc.m_seed.value(result="ok") == 1
            for i in range(40):  # 4 more seconds: new bars close live
                trade(601 + (i % 7) * 0.05)
            closed = []
            while len(closed) < 3:
                m = c.until(lambda m: m["channel"] == "microbar:SPY:1s" and m["type"] == "update")
                if m["data"]["closed"]:
                    closed.append(m)
            all_starts = starts + [m["data"]["startNs"] for m in closed]
            assert all_starts == sorted(set(all_starts)), "no duplicate and in order"
            assert all(b - a == S for a, b in zip(all_starts, all_starts[1:], strict=False)), "no gap between history and live bars"
            seqs = [m["seq"] for m in c.on("microbar:SPY:1s")]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "per-channel seq contiguous from the snapshot"
            c.close()
    finally:
        if gw is not None:
            gw.close()
        else:
            feed.close()
        rpc.close()
        ctx.destroy(linger=0)
