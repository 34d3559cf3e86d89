"""Issue acceptance, embedded default: a setup triggers, the paper broker opens a position, T1 scales it
out, and the ledger (broker), the gateway (websocket channels) and the coach all show it.

Real processes: broker, coach and gateway (``python -m services.<name>``); the detector, selector and
feed are stand-in publishers in this test (they are other areas' processes)."""

from __future__ import annotations

import contextlib
import json
import time

from websockets.sync.client import connect

from spx_common.bus import RpcClient, RpcError, Subscriber
from spx_common.models import SetupTransition
from spx_testing import Processes
from tests.broker.harness import SYM, T0, Harness
from tests.conftest import eventually, free_port

S = 1_000_000_000
SECRET = "acceptance-secret"


def _alive(client: RpcClient, peers: list[str]) -> bool:
    try:
        st = client.call("status")
    except RpcError:
        return False
    return all(st["peers"].get(p) for p in peers)


def test_trigger_paper_position_t1_scale_out_seen_by_ledger_gateway_and_coach(run_dir):
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_TOKEN_SECRET": SECRET}
    ps = Processes()
    for name in ("coach", "gateway"):
        ps.service(name, run_dir=run_dir, env=env)
    h = Harness(run_dir)
    stack = contextlib.ExitStack()
    try:
        with ps:
            coach_rpc = RpcClient(h.ctx, h.bus.rep_endpoint("coach", h.rt), timeout_s=0.5, retries=0)
            gw_rpc = RpcClient(h.ctx, h.bus.rep_endpoint("gateway", h.rt), timeout_s=0.5, retries=0)

            def peers_up():
                for p in h.pubs.values():
                    p.heartbeat(T0)
                return _alive(coach_rpc, ["detector", "broker"]) and _alive(gw_rpc, ["broker", "coach"])

            ps["gateway"].wait_ready(peers_up, 20, what="coach and gateway see their publishers")
            from services.gateway.auth import mint

            token = mint("default", SECRET.encode(), int(time.time()) + 600)
            ws = stack.enter_context(connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10))
            assert json.loads(ws.recv(5))["type"] == "welcome"
            ws.send(json.dumps({"op": "subscribe", "channels": ["positions", "fills", "orders", "coach"]}))
            got: list[dict] = []

            def drain(pred):
                while True:
                    try:
                        msg = json.loads(ws.recv(0.1))
                    except TimeoutError:
                        return any(pred(m) for m in got)
                    got.append(msg)

            eventually(lambda: drain(lambda m: m["type"] == "subscribed"), 10)
            coach_sub = Subscriber(h.ctx, [h.bus.pub_endpoint("coach", h.rt)], ["coach."])

            # 1. the setup triggers (detector) with its contract (selector): a paper position opens
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("acc-1", T0 + S, qty=4) or h.seen("fill.default"), 10, what="entry")
            # 2. T1: the detector reports target1_hit, the exit advisor scales half out
            h.quote(3.0, 3.1, T0 + 60 * S)
            t1 = SetupTransition(setup_id="acc-1", detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                                 from_state="triggered", to_state="target1_hit", reason="T1 reached", ts=T0 + 61 * S,
                                 price=6010.0, targets=[6010.0, 6020.0], stop=5990.0)
            h.pubs["detector"].publish("setup.transition", "setup_transition", t1, t1.ts)
            eventually(lambda: h.advice("acc-1", "scale_out", T0 + 61 * S, 0.5) or len(h.seen("fill.default")) >= 2,
                       10, what="scale-out")

            # the ledger (broker)
            ledger = h.call("ledger", {"user": "default"})["default"]
            assert ledger["positions"][0]["quantity"] == 2 and ledger["pnl"]["realized"] == 200.0
            assert [f["side"] for f in ledger["fills"]] == ["buy_to_open", "sell_to_close"]

            # the gateway (websocket channels of user "default")
            def gateway_shows():
                return drain(lambda m: m["channel"] == "positions" and m["type"] == "update"
                             and m["data"]["quantity"] == 2 and m["data"]["option_symbol"] == SYM) and \
                    drain(lambda m: m["channel"] == "fills" and m["type"] == "update"
                          and m["data"]["side"] == "sell_to_close")
            eventually(gateway_shows, 10, what="gateway positions and fills")
            assert any(m["channel"] == "orders" and m["type"] == "update" and m["data"]["status"] == "filled"
                       for m in got)

            # the coach (coach.default on the bus, and the gateway's coach channel)
            kinds: list[str] = []

            def coach_shows():
                while (f := coach_sub.recv(0.05)) is not None:
                    kinds.append(f.body().kind)
                return "target1_touched" in kinds
            eventually(lambda: h.pubs["detector"].publish("setup.transition", "setup_transition", t1, t1.ts) and
                       coach_shows(), 10, what="coach target1_touched")
            eventually(lambda: drain(lambda m: m["channel"] == "coach" and m["type"] == "update"
                                     and m["data"]["kind"] == "target1_touched"), 10, what="gateway coach channel")
            coach_sub.close()
            coach_rpc.close()
            gw_rpc.close()
    finally:
        stack.close()
        h.close()
