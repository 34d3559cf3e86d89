"""One Massive WebSocket connection per market (stocks, options, indices), kept alive.

The connection task does only I/O: connect, handshake (``connected`` -> ``auth`` ->
``auth_success``), subscribe, then read frames and queue them *raw* with their arrival time
(bounded deque: when full the oldest frame is dropped and counted) so a slow parser never makes
the vendor see a slow consumer.  Parsing and status handling happen in the consumer
(:mod:`services.feed.live`), which hands status messages back through :meth:`MassiveStream.on_status`.

Reconnect policy (see docs/feed.md):

* delay = uniform(0, min(backoff_max_s, backoff_initial_s x 2^attempt)) ("full jitter");
* ``attempt`` is reset only after a connection that delivered market data *and* stayed up for
  ``backoff_stable_s`` - never merely because auth succeeded (public clients hot-looped that way);
* at most ``max_connects_per_minute`` connection attempts per rolling minute; beyond that the
  attempt waits and ``feed_connect_throttled_total`` counts it;
* ``auth_failed`` raises :class:`AuthFailed`: no retry loop, the feed reports it and stays down;
* ``max_connections`` (another client of the account took the slot) is reported and retried at
  the maximum backoff only, so two clients cannot evict each other in a tight loop;
* after every reconnect the client re-authenticates and re-subscribes its current topic set, and
  the owner is told the gap (``on_reconnect(down_since_ns)``) so it can backfill from REST.
* WebSocket ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` closes the
  connection (the vendor has no application heartbeat; a stalled server is detected this way).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from services.feed.config import FeedConfig
from services.feed.parsing import Status
from spx_common.errors import Fatal
from spx_common.retry import Backoff, RateLimiter

_STATUS = msgspec.json.Decoder(list[dict])


class AuthFailed(Fatal, RuntimeError):
    """The vendor refused the key (or the plan has no WebSocket access). Not retried."""


RawItem = tuple["MassiveStream", bytes | str, float]


class MassiveStream:
    """A self-healing connection to ``<ws_url>/<market>`` (see module docstring)."""

    def __init__(
        self,
        market: str,
        cfg: FeedConfig,
        sink: deque,
        wake: asyncio.Event,
        *,
        on_connected: Callable[[MassiveStream], None] | None = None,
        on_reconnect: Callable[[MassiveStream, int], None] | None = None,
        count: Callable[[str, str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.market = market
        self.cfg = cfg
        self.url = f"{cfg.ws_url.rstrip('/')}/{market}"
        self.sink = sink
        self.wake = wake
        self.on_connected = on_connected
        self.on_reconnect = on_reconnect
        self.count = count or (lambda name, label: None)
        self.backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, rng)
        self.limiter = RateLimiter(cfg.max_connects_per_minute, 60.0)
        self.topics: set[str] = set()
        self.acked: set[str] = set()
        self.ws: ClientConnection | None = None
        self.connected = False
        self.got_data = False
        self.connections = 0
        self.reconnects = 0
        self.last_error = ""  # why the last connection ended
        self.last_status = ""  # the last notable vendor status (max_connections, slow_consumer, ...)
        self.evictions = 0  # max_connections received
        #: called when a raw frame of a stream is dropped because the queue is full
        self.on_overflow: Callable[[MassiveStream, int], None] | None = None
        self.fatal: str = ""
        self._down_since_ns: int | None = None
        #: arrival of the newest frame (or of the handshake): where a gap can begin. A connection that
        #: timed out on a stalled server keeps waiting for the close handshake (``close_timeout``) and
        #: drops what arrives meanwhile, so the loss starts here, not when the session ended.
        self._last_recv_ns = 0
        self._evicted = False
        self._closing = False

    # ------------------------------------------------------------------ subscriptions

    async def set_topics(self, topics: set[str]) -> None:
        """Change the subscribed set; sends only the difference when connected."""
        add, remove = topics - self.topics, self.topics - topics
        self.topics = set(topics)
        ws = self.ws
        if ws is None or not self.connected:
            return
        try:
            if remove:
                await ws.send(_text({"action": "unsubscribe", "params": ",".join(sorted(remove))}))
                self.acked -= remove
            if add:
                await ws.send(_text({"action": "subscribe", "params": ",".join(sorted(add))}))
        except websockets.ConnectionClosed:
            pass  # the reconnect re-subscribes self.topics

    def on_status(self, st: Status) -> None:
        """Status messages that arrive after the handshake (acks, errors, evictions)."""
        self.count("feed_vendor_status_total", st.status)
        if st.status == "success":
            msg = st.message
            if msg.startswith("subscribed to: "):
                self.acked.add(msg[len("subscribed to: "):].strip())
            elif msg.startswith("unsubscribed to: "):
                self.acked.discard(msg[len("unsubscribed to: "):].strip())
        elif st.status in ("max_connections", "slow_consumer", "force_disconnect", "error", "auth_timeout"):
            self.last_status = f"{st.status}: {st.message}"

    # ------------------------------------------------------------------ connection loop

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and reconnect until ``stop`` is set; raises :class:`AuthFailed`."""
        while not stop.is_set():
            now = time.monotonic()
            wait = self.limiter.wait_s(now)
            if wait > 0:
                self.count("feed_connect_throttled_total", self.market)
                if await _sleep_or_stop(stop, wait):
                    return
                continue
            self.limiter.record(time.monotonic())
            started = time.monotonic()
            self.got_data = False
            try:
                await self._session(stop)
            except AuthFailed:
                self.fatal = self.last_error
                raise
            except (TimeoutError, OSError, websockets.WebSocketException, msgspec.DecodeError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                if self.connected:
                    self._down_since_ns = min(time.time_ns(), self._last_recv_ns or time.time_ns())
                self.connected = False
                self.ws = None
            if stop.is_set():
                return
            if self.got_data and time.monotonic() - started >= self.cfg.backoff_stable_s:
                self.backoff.reset()
            if self._evicted:
                self._evicted = False
                self.backoff.attempt = 64  # max backoff only: never fight another client for the slot
            delay = self.backoff.next_delay()
            self.count("feed_disconnects_total", self.market)
            if await _sleep_or_stop(stop, delay):
                return

    async def _session(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        async with connect(self.url, open_timeout=cfg.connect_timeout_s, ping_interval=cfg.ping_interval_s,
                           ping_timeout=cfg.ping_timeout_s, close_timeout=2, max_size=2**24, max_queue=64,
                           user_agent_header="spx-command-center-feed") as ws:
            await asyncio.wait_for(self._handshake(ws), cfg.connect_timeout_s)
            self.ws = ws
            self._last_recv_ns = time.time_ns()
            self.connected = True
            self.connections += 1
            reconnected = self.connections > 1
            if reconnected:
                self.reconnects += 1
                self.count("feed_reconnects_total", self.market)
            self.acked = set()
            # read before anything else is sent: a status the server sends right before closing
            # (max_connections, slow_consumer) must reach the consumer even if our send fails
            reader = asyncio.ensure_future(self._read(ws, self.sink, self.wake))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                if self.topics:
                    try:
                        await ws.send(_text({"action": "subscribe",
                                                           "params": ",".join(sorted(self.topics))}))
                    except websockets.ConnectionClosed:
                        pass  # the reader sees the close and ends the session
                if self.on_connected is not None:
                    self.on_connected(self)
                if reconnected and self._down_since_ns is not None and self.on_reconnect is not None:
                    self.on_reconnect(self, self._down_since_ns)
                self._down_since_ns = None
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not reader.done():
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                    await ws.close()
                elif (exc := reader.exception()) is not None:
                    raise exc

    async def _read(self, ws: ClientConnection, sink: deque, wake: asyncio.Event) -> None:
        maxlen = sink.maxlen
        async for raw in ws:
            if isinstance(raw, str) and '"max_connections"' in raw:
                # seen here, not in the consumer: the backoff decision right after the close needs it
                self._evicted = True
                self.evictions += 1
            if maxlen is not None and len(sink) >= maxlen:
                self.count("tick_drop_count", "queue_overflow")
                if self.on_overflow is not None:
                    self.on_overflow(sink[0][0], sink[0][2])  # stream and receive time of the dropped frame
            now = self._last_recv_ns = time.time_ns()
            sink.append((self, raw, now))
            wake.set()

    async def _handshake(self, ws: ClientConnection) -> None:
        got_connected = False
        while True:
            raw = await ws.recv()
            for item in _STATUS.decode(raw):
                if item.get("ev") != "status":
                    continue
                status, message = str(item.get("status", "")), str(item.get("message", ""))
                self.count("feed_vendor_status_total", status)
                if status in ("connected", "success") and not got_connected:
                    got_connected = True
                    await ws.send(_text({"action": "auth", "params": self.cfg.api_key}))
                elif status == "auth_success":
                    return
                elif status == "auth_failed":
                    self.last_error = f"auth_failed: {message}"
                    raise AuthFailed(f"Massive refused the API key on {self.url}: {message!r}. "
                                     "Check MASSIVE_API_KEY and that the plan includes WebSocket access.")
                elif status == "max_connections":
                    self._evicted = True
                    self.evictions += 1
                    self.last_status = f"max_connections: {message}"
                elif status in ("auth_timeout", "error"):
                    self.last_status = f"{status}: {message}"

    async def close(self) -> None:
        ws = self.ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except (TimeoutError, websockets.WebSocketException, OSError):
                pass


def _text(msg: dict) -> str:
    """Client messages are single JSON objects sent as text frames."""
    return msgspec.json.encode(msg).decode()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
        return True
    except TimeoutError:
        return stop.is_set()
