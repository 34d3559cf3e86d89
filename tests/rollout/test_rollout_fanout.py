"""tick_fanout on a real gateway process: tick-cadence prices for everyone, an allow-list of users, or
nobody; everyone else falls back to poll-cadence prices within one cadence, and back again, with no
restart and no lost state (sequences stitch, the last price is the one published)."""

from __future__ import annotations

import threading
import time

import pytest

from services.gateway import auth
from spx_common.models import Quote, Trade
from tests.conftest import eventually, free_port
from tests.harness import service_process
from tests.rollout.helpers import WsRecorder, reload_set, spx_flags_set

T0 = 1_771_599_600_000_000_000
SECRET = "rollout-secret-0123456789"
CADENCE_S = 1.0


class TickPump:
    """The fake feed publishing SPY every 20 ms (and heartbeats) from its own thread."""

    def __init__(self, pub) -> None:
        self.pub = pub
        self.stop = threading.Event()
        self.i = 0
        self.last_price = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        beat = 0.0
        while not self.stop.is_set():
            self.i += 1
            ts = T0 + self.i * 20_000_000
            price = round(600 + (self.i % 500) * 0.01, 2)
            self.pub.publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=price - 0.01, ask=price + 0.01, ts=ts),
                                                   Trade(sym="SPY", price=price, size=1, ts=ts)], ts)
            with self.lock:
                self.last_price = (price, ts)
            if time.monotonic() - beat > 0.5:
                self.pub.heartbeat(T0)
                beat = time.monotonic()
            self.stop.wait(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def gateway(run_dir):
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_TOKEN_SECRET": SECRET, "SPX_GATEWAY_PRICE_THROTTLE_MS": "0",
           "SPX_GATEWAY_POLL_CADENCE_MS": str(int(CADENCE_S * 1000)), "SPX_GATEWAY_SNAPSHOT_RPC": "false"}
    with service_process(run_dir, "gateway", peers=("feed",), env=env) as (pubs, sub, rpc):
        pump = TickPump(pubs["feed"])
        try:
            yield f"ws://127.0.0.1:{port}/ws", rpc, pump
        finally:
            pump.close()


def _token(user: str) -> str:
    return auth.mint(user, SECRET.encode(), int(time.time()) + 3600)


def _stream_since(rec: WsRecorder, since: float) -> list[dict]:
    return [m for _, m in rec.on("price:SPY", since)]


def _is_tick(msgs: list[dict]) -> bool:
    return all(m["source"] == "tick" and "cadenceMs" not in m for m in msgs)


def _is_poll(msgs: list[dict]) -> bool:
    return all(m["source"] == "poll" and m["cadenceMs"] == CADENCE_S * 1000 for m in msgs)


def _stitched(msgs: list[dict]) -> bool:
    """Every update follows the previous message's seq by one; a snapshot restarts the count."""
    for a, b in zip(msgs, msgs[1:], strict=False):
        if b["type"] == "update" and b["seq"] != a["seq"] + 1:
            return False
    return True


def test_fanout_allow_list_falls_back_to_poll_cadence_within_one_cadence_and_back(run_dir, gateway):
    url, rpc, pump = gateway
    alice = WsRecorder(url, ["price:SPY", "status"], _token("alice"))
    bob = WsRecorder(url, ["price:SPY"], _token("bob"))
    anon = WsRecorder(url, ["price:SPY"])
    pid = rpc.call("status")["pid"]
    try:
        # default 'all': everyone at tick cadence (many updates a second)
        t = time.monotonic()
        for rec in (alice, bob, anon):
            eventually(lambda r=rec: len(_stream_since(r, t)) >= 20, 10, what="tick cadence for everyone")
            assert _is_tick([m for _, m in rec.on("price:SPY")])

        # allow-list: alice keeps tick cadence; bob and the tokenless client fall back within one cadence
        answer = reload_set(run_dir, rpc, "tick_fanout", "alice")
        flipped = time.monotonic()
        assert answer["changed"] == {"tick_fanout": "alice"}
        for rec in (bob, anon):
            first = eventually(lambda r=rec: _stream_since(r, flipped - 0.5) and [
                (at, m) for at, m in r.on("price:SPY", flipped - 0.5) if m.get("cadenceMs")], CADENCE_S,
                what="poll-cadence price within one cadence")
            at, snap = first[0]
            assert snap["type"] == "snapshot" and snap["source"] == "poll" and at - flipped <= CADENCE_S
            assert snap["data"]["sym"] == "SPY" and snap["data"]["price"] is not None
        time.sleep(3.2 * CADENCE_S)  # observe three cadences
        window = time.monotonic()
        for rec in (bob, anon):
            poll = [(at, m) for at, m in rec.on("price:SPY") if m.get("cadenceMs")]
            msgs = [m for _, m in poll]
            assert _is_poll(msgs) and _stitched(msgs)
            updates = [at for at, m in poll if m["type"] == "update"]
            assert 2 <= len(updates) <= 5, len(updates)  # one conflated price per cadence
            gaps = [b - a for a, b in zip(updates, updates[1:], strict=False)]
            assert min(gaps) >= 0.5 * CADENCE_S, gaps
            assert msgs[-1]["data"]["ts"] > snap["data"]["ts"]  # the conflated price moves on
        tick_after = [m for at, m in alice.on("price:SPY", flipped) if at <= window]
        assert len(tick_after) >= 50 and _is_tick(tick_after) and _stitched(tick_after)
        st = rpc.call("status")
        assert st["gateway"]["fanout"]["policy"] == "alice"
        assert st["gateway"]["fanout"]["subscriptions"] == {"tick": 1, "poll": 2}
        # the dashboard's status channel shows the switch the gateway applies
        eventually(lambda: any(m["data"]["switches"].get("gateway", {}).get("tick_fanout") == "alice"
                               for _, m in alice.on("status", flipped)), 5, what="switch on the status channel")

        # 'none' (operator path: spx flags set): alice falls back too
        out = spx_flags_set(run_dir, "tick_fanout", "none")
        assert "gateway" in out
        eventually(lambda: any(m.get("cadenceMs") for m in _stream_since(alice, window)), 5,
                   what="alice on poll cadence")

        # back to 'all': everyone returns to tick cadence with a fresh snapshot, no restart
        restored = time.monotonic()
        reload_set(run_dir, rpc, "tick_fanout", "all")
        for rec in (alice, bob, anon):
            eventually(lambda r=rec: len([m for m in _stream_since(r, restored) if "cadenceMs" not in m]) >= 20, 10,
                       what="tick cadence restored")
            back = [m for m in _stream_since(rec, restored) if "cadenceMs" not in m]
            assert back[0]["type"] == "snapshot" and _is_tick(back) and _stitched(back)
        with pump.lock:
            price, ts = pump.last_price
        eventually(lambda: _stream_since(bob, restored)[-1]["data"]["ts"] >= ts, 5, what="latest price reaches bob")
        assert rpc.call("status")["pid"] == pid
    finally:
        for rec in (alice, bob, anon):
            rec.close()
