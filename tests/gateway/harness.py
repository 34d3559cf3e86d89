"""A real gateway (GatewayService on its own asyncio loop in a thread) fed by real bus publishers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import websockets.sync.client as wsc
import zmq

from services.gateway.config import GatewayConfig
from services.gateway.protocol import CHANNEL_DATA, ErrorData, ServerMessage, Welcome
from services.gateway.service import GatewayService
from spx_common.bus import Publisher
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import MicroBar, Quote, SetupTransition, Trade
from tests.conftest import eventually

T0 = 1_771_599_600_000_000_000  # 2026-02-20 15:00 UTC
SECRET = "test-secret-0123456789"


class GatewayRunner:
    def __init__(self, run_dir, publishers: dict[str, Publisher] | None = None,
                 stand_ins: tuple[str, ...] = ("feed", "aggregator", "detector", "broker", "coach"),
                 **overrides: Any) -> None:
        """``stand_ins``: services this harness publishes for; ``publishers``: ones the test already bound."""
        self.rt = RuntimeConfig(run_dir=run_dir)
        self.bus = BusConfig()
        self.ctx = zmq.Context()
        self.pubs = dict(publishers or {})
        for s in stand_ins:
            if s not in self.pubs:
                self.pubs[s] = Publisher(self.ctx, self.bus.pub_endpoint(s, self.rt, bind=True), s, linger_ms=0)
        # no loopback dashboard user unless a test asks for one: these tests are about tokens
        cfg = {"port": 0, "token_secret": SECRET, "loopback_user": "", **overrides}
        self.svc = GatewayService(self.rt, self.bus, config=GatewayConfig(**cfg))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        eventually(lambda: self.svc.port or self.rc is not None, 10, what="gateway listening")
        assert self.rc is None, "gateway stopped at start"
        self.port = self.svc.port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.ts = T0
        # slow joiner: publish until the gateway has the subscription connected for every publisher
        for name, pub in self.pubs.items():
            eventually(lambda p=pub, name=name: p.heartbeat(T0) or name in self.svc.core.peers, 10, 0.05,
                       what=f"gateway hears {name}")

    def _run(self) -> None:
        async def go():
            self.loop = asyncio.get_running_loop()
            return await self.svc.run_async()
        self.rc = asyncio.run(go())

    def close(self) -> None:
        if self.loop is not None and self.rc is None:
            self.loop.call_soon_threadsafe(self.svc.request_stop)
        self.thread.join(10)
        for p in self.pubs.values():
            p.close()
        self.ctx.destroy(linger=0)

    # ------------------------------------------------------------------ publishing real frames

    def trade(self, price: float, sym: str = "SPY", size: float = 10, ts: int | None = None) -> None:
        self.ts = ts or self.ts + 1_000_000
        self.pubs["feed"].publish(f"tick.{sym}", "ticks",
                                  [Quote(sym=sym, bid=price - 0.01, ask=price + 0.01, ts=self.ts),
                                   Trade(sym=sym, price=price, size=size, ts=self.ts)], self.ts)

    def bar(self, i: int, close: float, closed: bool, sym: str = "SPY", interval: str = "1s") -> MicroBar:
        b = MicroBar(sym=sym, interval=interval, start_ns=T0 + i * 1_000_000_000, open=close - 0.1, high=close + 0.2,
                     low=close - 0.2, close=close, volume=100 + i, trades=5, vwap=close - 0.05, delta_volume=12.0,
                     bid_ask_imbalance=0.2, closed=closed)
        self.pubs["aggregator"].publish(f"bar.{interval}.{sym}", "bar", b, b.start_ns)
        return b

    def transition(self, setup_id: str, to_state: str, ts: int | None = None, **kw: Any) -> SetupTransition:
        t = SetupTransition(setup_id=setup_id, detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                            to_state=to_state, reason="test", ts=ts or T0, **kw)
        self.pubs["detector"].publish("setup.transition", "setup_transition", t, t.ts)
        return t


def check_schema(msg: dict) -> None:
    """Every message must match the schemas documented in docs/gateway.md."""
    ServerMessage.model_validate(msg)
    if msg["type"] == "error":
        ErrorData.model_validate(msg["data"])
    elif msg["type"] == "welcome":
        Welcome.model_validate(msg["data"])
    elif msg["type"] in ("snapshot", "update") and msg["data"] is not None:
        name = msg["channel"]
        key = ("price:<symbol>" if name.startswith("price:") else
               "microbar:<symbol>:<interval>" if name.startswith("microbar:") else name)
        snap_model, update_model = CHANNEL_DATA[key]
        (snap_model if msg["type"] == "snapshot" else update_model).model_validate(msg["data"])


class WsClient:
    """A blocking websocket client with bounded receives."""

    def __init__(self, url: str, token: str | None = None, **kw: Any) -> None:
        self.ws = wsc.connect(url + (f"?token={token}" if token else ""), open_timeout=5, **kw).__enter__()
        self.messages: list[dict] = []
        self.welcome = self.recv()
        assert self.welcome["type"] == "welcome", self.welcome

    def send(self, obj: Any) -> None:
        self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    def subscribe(self, *channels: str, **kw: Any) -> dict:
        self.send({"op": "subscribe", "channels": list(channels), **kw})
        return self.until(lambda m: m["type"] == "subscribed")

    def recv(self, timeout_s: float = 5.0) -> dict:
        msg = json.loads(self.ws.recv(timeout=timeout_s))
        for key in ("channel", "type", "seq", "source", "data"):
            assert key in msg, (key, msg)
        check_schema(msg)
        self.messages.append(msg)
        return msg

    def until(self, cond, timeout_s: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout_s}s; last: {self.messages[-3:]}")
            msg = self.recv(left)
            if cond(msg):
                return msg

    def on(self, channel: str, types=("snapshot", "update")) -> list[dict]:
        return [m for m in self.messages if m["channel"] == channel and m["type"] in types]

    def close(self) -> None:
        self.ws.close()
