"""The gateway process: bus frames in, websocket JSON out, dashboard and /metrics over HTTP.

A :class:`~spx_common.service.BusService` whose ``main()`` runs a ``websockets`` server on one
port: ``/ws`` upgrades to the protocol of ``docs/gateway.md``; plain GETs are answered by
``process_request`` (``/`` the dashboard, ``/static/*``, ``/metrics``, ``/healthz``). Channel state,
sequencing, throttling and queues live in the pure :mod:`services.gateway.hub`; this shell only
decodes, authenticates, rate-limits and writes.
"""

from __future__ import annotations

import asyncio
import gc
import http
import ipaddress
import itertools
import logging
import mimetypes
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pydantic
import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from services.gateway import auth
from services.gateway.config import GatewayConfig
from services.gateway.hub import Client, Hub, encode
from services.gateway.protocol import (
    CLIENT_ADAPTER, CREDENTIAL_REQUESTS, MAX_JSON_DEPTH, PROTOCOL, SIMPLE_CHANNELS, USER_CHANNELS, Auth, ChannelError,
    Ack, CredentialsSet, Dismiss, Flatten, Ping, Subscribe, Unsubscribe, json_depth_ok, parse_channel,
)
from spx_common import health
from spx_common import models as m
from spx_common import provenance
from spx_common.bus import RpcError
from spx_common.codec import Frame
from spx_common.config import BusConfig, RuntimeConfig, load
from spx_common.service import BusService
from spx_common.topics import (BAR, CHAIN, COACH, FEEDBACK_COACH, FILL, ORDER, POSITION, SETUP_TRANSITION,
                               STATE_MARKET, STATUS, STATUS_FEED, TICK, group_by_symbol, is_one_symbol)

STATIC_DIR = Path(__file__).with_name("static")


def _libc():
    """glibc's malloc controls, or None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3
CLOSE_TOO_SLOW = 4008
CLOSE_ABUSE = 1008
_json_decode = msgspec.json.Decoder().decode


class TokenBucket:
    """Client message rate limit: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self, now: float, n: float = 1) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class Connection:
    """Shell-side state of one websocket: the hub client, its writer task and its limits."""

    def __init__(self, ws: ServerConnection, client: Client, bucket: TokenBucket, expires_s: int | None) -> None:
        self.ws = ws
        self.client = client
        self.bucket = bucket
        self.expires_s = expires_s
        self.event = asyncio.Event()
        self.refused = 0
        self.closing = False
        self.writing = False
        self.close_code, self.close_reason = 1000, ""
        self.credentials_busy = False  # one credentials.* request in flight per connection


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def write_now(ws: ServerConnection, data: bytes, write_limit: int) -> bool:
    """Write one text message at once through ``websockets``' supported synchronous write,
    :func:`~websockets.asyncio.server.broadcast` for this one connection (the library's protocol state
    machine and frame serializer, no task switch): what makes a fan-out to 1,000 clients one loop
    instead of 1,000 task wake-ups (docs/performance.md, benchmarks/gateway_frames.py).

    ``broadcast`` applies no backpressure, so a connection whose transport already buffers more than
    ``write_limit`` bytes (read as the library's broadcast guide does, ``transport.get_write_buffer_size()``)
    is refused, as is one that is not open or is in the middle of a fragmented send: False, and the
    caller queues the message for its writer task, which awaits ``send()`` and its backpressure.
    """
    if ws.state is not State.OPEN or ws.transport.get_write_buffer_size() > write_limit:
        return False
    try:
        broadcast((ws,), data, text=True, raise_exceptions=True)
    except ExceptionGroup:  # a fragmented send in progress, or the transport refused the write
        return False
    return True


class GatewayService(BusService):
    """Websocket gateway and dashboard server for browsers and UI clients."""

    name = "gateway"
    handler_budget_ms = 250.0  # a handler fans out to every subscriber
    subscriptions = {
        "feed": [TICK, STATUS, CHAIN],
        "aggregator": [BAR],
        "detector": [SETUP_TRANSITION, STATE_MARKET],
        "selector": [],
        "broker": [POSITION, ORDER, FILL],
        "coach": [COACH],
        "recorder": [],
    }

    def __init__(self, runtime: RuntimeConfig | None = None, bus: BusConfig | None = None, *,
                 instance: str | None = None, config: GatewayConfig | None = None) -> None:
        super().__init__(runtime, bus, instance=instance)
        self.config = config or load(GatewayConfig)
        self.port: int | None = None
        self.static_dir = self.config.static_dir or STATIC_DIR
        self.conns: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._flush_handle: asyncio.TimerHandle | None = None
        self.feed_status: m.FeedStatus | None = None
        self.greeks: dict[str, dict[str, float]] = {}  # option symbol -> delta, gamma, iv (newest chain)
        self._rate_prev = (0, time.monotonic())
        self._out_prev = 0
        self.ready = asyncio.Event()
        reg = self.metrics
        self.m_clients = reg.gauge("ws_clients", "Open websocket connections.")
        self.m_price_rate = reg.gauge("ws_price_broadcast_rate", "Price updates broadcast per second (after throttling).")
        self.m_price_total = reg.counter("ws_price_broadcasts_total", "Price updates broadcast (after throttling).")
        self.m_poll = reg.counter("ws_poll_price_broadcasts_total", "Prices broadcast on the poll-cadence stream "
                                  "(tick_fanout leaves the subscriber out).")
        self._poll_prev = 0
        self.m_out = reg.counter("ws_messages_out_total", "Channel updates fanned out to websocket clients.")
        self.m_conflated = reg.counter("ws_conflated_total", "Price/in-progress bar updates folded in slow client queues.")
        self.m_disconnects = reg.counter("ws_disconnects_total", "Connections closed by the gateway, by reason.", ["reason"])
        self.m_errors = reg.counter("ws_client_errors_total", "Error messages sent to clients, by code.", ["code"])
        self.m_cred = reg.counter("ws_credentials_requests_total", "credentials.* requests forwarded to the broker, "
                                  "by op and outcome (ok, a refusal code, broker_unavailable).", ["op", "outcome"])
        self.m_auth = reg.counter("ws_auth_refused_total", "Connections whose token was refused, by code.", ["code"])
        self.m_http = reg.counter("http_requests_total", "Plain HTTP requests, by status.", ["status"])
        self.m_seed = reg.counter("ws_snapshot_rpc_total", "Bar history asked from the aggregator for a snapshot, "
                                  "by result (skipped: max_seeding requests already in flight).", ["result"])
        self.m_series = reg.gauge("ws_series", "Bar series held (symbol and interval) for snapshots.")
        self.m_channels = reg.gauge("ws_channels", "Channels held (with subscribers or data).")
        self.m_queued = reg.gauge("ws_queued_bytes", "Bytes queued for all websocket clients.")
        self._closed_since_trim = 0
        self._seeded: dict[str, tuple[bool, float]] = {}  # series -> (answered, when)
        self._seeding: dict[str, asyncio.Future] = {}
        self._client_tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ bus side

    def setup(self) -> None:
        cfg = self.config
        self.secret = auth.load_secret(cfg.token_secret, cfg.secret_path(self.runtime))
        self.hub = Hub(price_throttle_s=cfg.price_throttle_ms / 1000, history_bars=cfg.history_bars,
                       max_symbols=cfg.max_symbols, max_channels_per_client=cfg.max_channels,
                       poll_cadence_s=cfg.poll_cadence_ms / 1000, fanout=self.flags["tick_fanout"])
        self.on(TICK, self._on_ticks)
        self.on(BAR, self._on_bar)
        self.on(SETUP_TRANSITION, lambda f, b: self.hub.on_transition(b, f.pub_ns))
        self.on(STATE_MARKET, lambda f, b: self.hub.on_market(b, f.event_ns, f.pub_ns))
        self.on(STATUS_FEED, self._on_feed_status)
        self.on(CHAIN, self._on_chain)
        for prefix, kind in ((COACH, "coach"), (POSITION, "positions"), (ORDER, "orders"),
                             (FILL, "fills")):
            self.on(prefix, self._user_handler(kind, prefix))

    def _on_ticks(self, frame: Frame, events: list) -> None:
        # The throttle runs on the monotonic wall clock on purpose: it protects browsers, which live in
        # wall time, and never changes which price is delivered last (event time stays in the data).
        now, on_ticks = time.monotonic(), self.hub.on_ticks
        if is_one_symbol(frame.topic, events):
            held = on_ticks(events[0].sym, events, frame.pub_ns, now)
        else:  # an option root's batch (tick.O:<root>): each contract's events in order
            held = False
            for sym, evs in group_by_symbol(events).items():
                held = on_ticks(sym, evs, frame.pub_ns, now) or held
        if held:
            self._schedule_flush()

    def on_flags(self, changed: dict[str, Any]) -> None:
        if "tick_fanout" in changed:
            moved = self.hub.set_fanout(changed["tick_fanout"])
            self.log.info("tick_fanout -> %r: %d price subscriptions changed stream", changed["tick_fanout"], moved)

    async def _poll_loop(self) -> None:
        """The poll-cadence price stream (users the tick_fanout switch leaves out; wall clock, like the
        throttle: it paces browsers and never changes which price is delivered)."""
        period = self.config.poll_cadence_ms / 1000
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), period)
            except TimeoutError:
                pass
            try:
                self.hub.poll_prices()
            except Exception as exc:  # one bad pass must not stop the stream (nor the gateway)
                self.handler_errors.inc(topic="poll-cadence")
                self._rate_log.warning("poll-cadence", f"poll-cadence pass failed: {exc!r}")

    def _on_bar(self, frame: Frame, bar: m.MicroBar) -> None:
        self.hub.on_bar(bar, frame.pub_ns)

    def _on_feed_status(self, frame: Frame, body: m.FeedStatus) -> None:
        self.feed_status = body
        self.feed_event_ns = frame.event_ns
        self.hub.mode = body.mode

    def _on_chain(self, frame: Frame, doc: Any) -> None:
        """Keep each contract's greeks from the newest chain document (positions show them)."""
        contracts = doc.get("contracts") if isinstance(doc, dict) else None
        if not isinstance(contracts, list):
            return
        greeks = {}
        for c in contracts[:20_000]:
            if isinstance(c, dict) and isinstance(c.get("symbol"), str):
                g = {k: c.get(k) for k in ("delta", "gamma", "iv")
                     if isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool)}
                # the chain names contracts as the vendor does (O:SPXW...), the broker without the prefix
                greeks[c["symbol"]] = greeks[c["symbol"].removeprefix("O:")] = g
        self.greeks.update(greeks)
        while len(self.greeks) > 50_000:
            self.greeks.pop(next(iter(self.greeks)))

    def _user_handler(self, kind: str, prefix: str):
        def handle(frame: Frame, body: Any) -> None:
            user = frame.topic[len(prefix):]
            if getattr(body, "user", user) != user:
                raise ValueError(f"{frame.topic} carries a body for user {body.user!r}")
            extra = self.greeks.get(body.option_symbol) if kind == "positions" else None
            self.hub.on_user(kind, user, body, frame.pub_ns, extra)
        return handle

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None:
            return
        due = self.hub.next_price_due()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_later(max(0.0, due - time.monotonic()), self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.hub.flush_prices(time.monotonic())
        self._schedule_flush()

    def periodic(self) -> None:
        now = time.monotonic()
        total = self.hub.price_broadcasts
        prev_total, prev_at = self._rate_prev
        rate = (total - prev_total) / max(now - prev_at, 1e-3)
        self._rate_prev = (total, now)
        self.m_price_rate.set(round(rate, 2))
        self.m_price_total.inc(total - prev_total)
        self.m_clients.set(len(self.conns))
        if self.port:  # shown by 'spx status' (heartbeat detail)
            self.detail = (f"ws://{self.config.host}:{self.port}/ws clients={len(self.conns)} "
                           f"price/s={rate:.1f} users={len({c.client.user for c in self.conns.values()} - {None})}")
        out = self.hub.messages_out
        self.m_out.inc(out - self._out_prev)
        self.m_poll.inc(self.hub.poll_broadcasts - self._poll_prev)
        self._poll_prev = self.hub.poll_broadcasts
        self._out_prev = out
        self.hub.on_status(self.status_doc(rate))
        self.m_series.set(len(self.hub.series))
        self.m_channels.set(len(self.hub.channels))
        queued = sum(c.client.queued_bytes for c in self.conns.values())
        if queued > self.config.queues_max_bytes:  # many slow clients, each under its own bound
            for conn in sorted(self.conns.values(), key=lambda c: c.client.queued_bytes, reverse=True):
                if queued <= self.config.queues_max_bytes:
                    break
                queued -= conn.client.queued_bytes
                self._close(conn, CLOSE_TOO_SLOW, "too slow: the gateway's queues are full", "queues_full")
        self.m_queued.set(queued)
        if self._closed_since_trim and _LIBC is not None:
            # give the freed queues' pages back to the system once clients have gone
            self._closed_since_trim = 0
            _LIBC.malloc_trim(0)
        wall = time.time()
        for conn in list(self.conns.values()):
            c = conn.client
            if c.overflowed:  # its writer may be stuck in a send to a client that does not read
                self._close(conn, CLOSE_TOO_SLOW, "too slow: outbound queue overflowed", "overflow")
            elif c.check_slow(now, self.config.slow_timeout_s):
                self._close(conn, CLOSE_TOO_SLOW, "too slow: queue stayed above half its bound", "slow")
            else:
                self._check_expiry(conn, wall)

    def _check_expiry(self, conn: Connection, wall: float) -> bool:
        """Drop the user of a connection whose token expired, for good: its user channels are
        unsubscribed and need a new token (``op: auth``), like credentials requests. True if dropped."""
        if conn.expires_s is None or conn.expires_s > wall:
            return False
        conn.expires_s = None
        dropped = self.hub.drop_user_channels(conn.client)
        conn.client.user = None
        msg = "token expired; send a new one ({\"op\": \"auth\"}) for user channels"
        self._error(conn, "token_expired", f"{msg}; unsubscribed from {', '.join(dropped)}" if dropped else msg)
        return True

    def status_doc(self, price_rate: float = 0.0) -> dict:
        """The ``status`` channel payload: every service's health (each one this gateway expects, heard
        or not, with the reason when it is not healthy), the feed mode, gateway counters."""
        now = time.monotonic()
        services = {self.instance: {"alive": True, "state": self.state, "detail": self.detail,
                                    "heartbeatAgeS": 0.0, "healthy": True, "reason": ""}}
        expected = [i for s in self.subscriptions for i in self.bus.instances_of(s)]
        run_dir = self.runtime.path()
        for name in [*expected, *sorted(set(self.core.peers) - set(expected))]:
            peer = self.core.peers.get(name)
            hb = peer.heartbeat if peer else None
            age = round(now - peer.last_seen, 2) if peer else None
            if peer is None or not peer.alive:
                fatal = health.read_fatal(run_dir, name)
                healthy, state = False, "fatal" if fatal else "down"
                reason = fatal or (f"no heartbeat for {age:.0f}s" if peer else "no heartbeat yet")
            else:
                healthy, reason = health.assess(name, None, hb, age, run_dir, supervised=False,
                                                peer_timeout_s=self.core.peer_timeout_s)
                state = hb.state if hb else "unknown"
            services[name] = {"alive": bool(peer and peer.alive), "state": state,
                              "detail": hb.detail if hb else "", "heartbeatAgeS": age,
                              "healthy": healthy, "reason": reason}
        feed = None
        if self.feed_status is not None:
            f = self.feed_status
            feed = {"mode": f.mode, "connected": f.connected, "eventsPerS": f.events_per_s,
                    "lastEventAgeMs": f.last_event_age_ms, "detail": f.detail or "",
                    "eventTs": getattr(self, "feed_event_ns", None) or None,
                    "availabilityPct": f.availability_pct, "availabilityDay": f.availability_day,
                    "longestGapS": f.longest_gap_s, "longestGapStartNs": f.longest_gap_start_ns,
                    "source": f.source, "badge": provenance.badge(f), "replayDate": f.replay_date, "speed": f.speed,
                    "runId": f.run_id}
        switches = {peer.service: dict(peer.heartbeat.flags) for peer in self.core.peers.values()
                    if peer.alive and peer.heartbeat is not None}
        switches[self.instance] = self.flags
        return {"services": services, "feed": feed, "clients": len(self.conns),
                "priceBroadcastRate": round(price_rate, 2), "switches": switches}

    def status(self) -> dict[str, Any]:
        doc = super().status()
        doc["gateway"] = {
            "url": f"ws://{self.config.host}:{self.port}/ws", "clients": len(self.conns),
            "users": sorted({c.client.user for c in self.conns.values() if c.client.user}),
            "price_broadcast_rate": self.m_price_rate.value(), "messages_out": self.hub.messages_out,
            "conflated": sum(c.client.conflated for c in self.conns.values()),
            "disconnects": {"slow": self.m_disconnects.value(reason="slow")},
            "fanout": {"policy": self.hub.fanout.value, "subscriptions": self.hub.fanout_counts(),
                       "poll_cadence_ms": self.config.poll_cadence_ms, "poll_broadcasts": self.hub.poll_broadcasts},
        }
        return doc

    # ------------------------------------------------------------------ HTTP side

    def _origins(self) -> list[str | None]:
        port = self.port or self.config.port
        return [None, f"http://127.0.0.1:{port}", f"http://localhost:{port}", *self.config.allowed_origins]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer a plain HTTP request, or None to upgrade ``/ws``. Malformed requests get 400 and
        nothing else (no traceback): control characters in the path, a repeated Origin."""
        try:
            return self._route(connection, request)
        except Exception as exc:  # a request this code did not foresee: 400, counted, never a 500 + traceback
            self._rate_log.warning("http", f"malformed HTTP request refused: {type(exc).__name__}")
            return self._respond(400, b"bad request\n", "text/plain")

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        raw_path = request.path
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw_path):
            return self._respond(400, b"bad request: control character in path\n", "text/plain")
        path = urlsplit(raw_path).path
        if path == "/ws":
            if len(self.conns) >= self.config.max_clients:
                self.m_http.inc(status="503")
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            origins = request.headers.get_all("Origin")
            if len(origins) > 1:
                return self._respond(400, b"bad request: more than one Origin header\n", "text/plain")
            origin = origins[0] if origins else None
            if origin not in self._origins():
                self.m_auth.inc(code="origin")
                self.m_http.inc(status="403")
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
            return None
        if path == "/metrics":
            return self._respond(200, self.metrics.render().encode(), "text/plain; version=0.0.4")
        if path == "/healthz":
            return self._respond(200, b'{"ok":true}', "application/json")
        if path == "/":
            path = "/index.html"
        elif path.startswith("/static/"):
            path = path[len("/static"):]
        target = (self.static_dir / path.lstrip("/")).resolve()
        if self.static_dir.resolve() not in target.parents or not target.is_file():
            return self._respond(404, b"not found\n", "text/plain")
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return self._respond(200, target.read_bytes(), ctype)

    def _respond(self, status: int, body: bytes, ctype: str) -> Response:
        self.m_http.inc(status=str(status))
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store"), ("Connection", "close")])
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    # ------------------------------------------------------------------ websocket side

    async def main(self) -> None:
        cfg = self.config
        if _LIBC is not None:
            # a fixed mmap threshold: snapshots and queued messages of 128 KiB and more are mapped and
            # unmapped when freed; glibc's moving threshold would serve them from the heap, which kept them
            _LIBC.mallopt(_M_MMAP_THRESHOLD, 131072)
        self.spawn(self._poll_loop(), "poll-cadence")
        logging.getLogger("websockets.server").setLevel(logging.WARNING)  # no line per connection
        async with serve(self._serve_ws, cfg.host, cfg.port, process_request=self._process_request,
                         compression=None, max_size=cfg.max_frame_bytes, max_queue=16,
                         write_limit=cfg.write_limit_bytes, ping_interval=20, close_timeout=2,
                         server_header="spx-gateway") as server:
            self.port = server.sockets[0].getsockname()[1]
            self.detail = f"ws://{cfg.host}:{self.port}/ws"
            self.log.info("gateway listening", extra={"url": self.detail})
            self.ready.set()
            gc.freeze()  # start-up objects (models, schemas, libraries) leave the collector's scans
            await self.stop_event.wait()
            for conn in list(self.conns.values()):
                self._close(conn, 1001, "gateway shutting down", "shutdown")

    def _close(self, conn: Connection, code: int, reason: str, label: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.close_code, conn.close_reason = code, reason
        self.m_disconnects.inc(reason=label)
        self.hub.remove(conn.client)
        conn.client.clear()  # its queue's memory goes now, not after the close handshake
        conn.event.set()
        task = asyncio.ensure_future(conn.ws.close(code, reason))
        self._client_tasks.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self._client_tasks.discard)

    def _send_now(self, conn: Connection, msg: dict) -> None:
        conn.client.push(encode(msg))

    def _error(self, conn: Connection, code: str, message: str, channel: str | None = None,
               rid: str | None = None) -> None:
        self.m_errors.inc(code=code)
        data = {"code": code, "message": message}
        if rid is not None:
            data["id"] = rid
        self._send_now(conn, {"channel": channel, "type": "error", "seq": 0, "source": "tick", "data": data})

    async def _serve_ws(self, ws: ServerConnection) -> None:
        cfg = self.config
        query = parse_qs(urlsplit(ws.request.path).query) if ws.request else {}
        token = (query.get("token") or [None])[0]
        if token is None and ws.request is not None:
            header = ws.request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                token = header[7:].strip()
        user, expires = None, None
        token_error = None
        if token:
            try:
                user, expires = auth.verify(token, self.secret, time.time())
            except auth.TokenError as exc:
                self.m_auth.inc(code=exc.code)
                token_error = exc
        elif self._loopback_user(ws):
            user = cfg.loopback_user
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        if cfg.send_buffer_bytes and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.send_buffer_bytes)
        cid = next(self._ids)
        conn: Connection
        client = Client(cid, user, cfg.queue_max, wake=lambda: conn.event.set(),
                        direct=lambda data: self._direct(conn, data), queue_max_bytes=cfg.queue_max_bytes)
        conn = Connection(ws, client, TokenBucket(cfg.client_msgs_per_s, 2 * cfg.client_msgs_per_s), expires)
        conn.channel_bucket = TokenBucket(cfg.client_channels_per_s, max(2 * cfg.client_channels_per_s, 64))
        self.conns[cid] = conn
        self.m_clients.set(len(self.conns))
        self._send_now(conn, {"channel": None, "type": "welcome", "seq": 0, "source": "tick", "data": {
            "user": user, "priceThrottleMs": cfg.price_throttle_ms, "protocol": PROTOCOL,
            "channels": ["price:<symbol>", "microbar:<symbol>:<interval>", *SIMPLE_CHANNELS, *USER_CHANNELS]}})
        if token_error is not None:
            self._error(conn, token_error.code, str(token_error))
        writer = asyncio.ensure_future(self._writer(conn))
        try:
            async for raw in ws:
                if conn.closing:
                    break
                self._on_message(conn, raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.conns.pop(cid, None)
            self.hub.remove(client)
            self._closed_since_trim += 1
            self.m_clients.set(len(self.conns))
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if conn.closing:  # our close code must win over the library's normal close on return
                await ws.close(conn.close_code, conn.close_reason)

    async def _writer(self, conn: Connection) -> None:
        client, ws = conn.client, conn.ws
        seen = 0
        try:
            while not conn.closing:
                await conn.event.wait()
                conn.event.clear()
                if client.overflowed:
                    self._close(conn, CLOSE_TOO_SLOW, "too slow: outbound queue overflowed", "overflow")
                    return
                while not conn.closing:
                    text = client.pop(time.time_ns())
                    if text is None:
                        break
                    conn.writing = True
                    try:
                        await ws.send(text, text=True)  # waits while the kernel-side buffer is over write_limit
                    finally:
                        conn.writing = False
                    if client.conflated != seen:
                        self.m_conflated.inc(client.conflated - seen)
                        seen = client.conflated
        except websockets.ConnectionClosed:
            pass

    def _subscribe(self, conn: Connection, req: Subscribe) -> None:
        if conn.closing or self.conns.get(conn.client.id) is not conn:  # gone while history was fetched
            return
        ok = []
        for name in req.channels:
            try:
                self.hub.subscribe(conn.client, name)
                ok.append(name)
            except ChannelError as exc:
                self._error(conn, exc.code, str(exc), channel=name, rid=req.id)
        self._send_now(conn, {"channel": None, "type": "subscribed", "seq": 0, "source": "tick",
                              "data": {"channels": ok, "id": req.id}})

    def _needs_seed(self, name: str) -> bool:
        """A bar series without closed history in the gateway (e.g. after a gateway restart), not yet
        asked from the aggregator (or asked and failed more than 5 s ago)."""
        try:
            kind, _ = parse_channel(name)
        except ChannelError:
            return False
        if kind != "microbar" or self.hub.has_history(name):
            return False
        if name not in self._seeding and len(self._seeding) >= self.config.max_seeding:
            self.m_seed.inc(result="skipped")  # a flood of names: served from the gateway's own history
            return False
        done = self._seeded.get(name)
        return done is None or (not done[0] and done[1] < time.monotonic() - 5.0) or name in self._seeding

    def spawn_client_task(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._client_tasks.add(task)
        task.add_done_callback(self._client_tasks.discard)

    async def _seed_then_subscribe(self, conn: Connection, req: Subscribe, names: list[str]) -> None:
        """Merge history from the aggregator into the hub, then subscribe: the snapshot includes it and
        the stream continues from there. Concurrent subscribers share one request per series."""
        tasks = []
        for name in names:
            task = self._seeding.get(name)
            if task is None:
                task = self._seeding[name] = asyncio.ensure_future(self._seed(name))
                task.add_done_callback(lambda t, n=name: self._seeding.pop(n, None))
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscribe(conn, req)

    async def _seed(self, name: str) -> None:
        """One ``bars_since`` request (1 s timeout, no retry). Without an answer the gateway's own
        history is used; results are counted in ``ws_snapshot_rpc_total``."""
        sym, interval = name[len("microbar:"):].rsplit(":", 1)  # symbols may hold a colon (I:SPX)
        ok = False
        try:
            res = await self.client("aggregator", timeout_s=1.0, retries=0).call(
                "bars_since", {"sym": sym, "interval": interval, "limit": self.config.history_bars})
            bars = [msgspec.convert(b, m.MicroBar) for b in res.get("bars", [])]
            cur = res.get("current")
            added = self.hub.seed_bars(name, bars, msgspec.convert(cur, m.MicroBar) if cur else None)
            ok = True
            self.log.debug("seeded %s with %d bars from the aggregator", name, added)
        except (RpcError, msgspec.ValidationError, AttributeError, TypeError) as exc:
            self._rate_log.warning("seed", f"no aggregator history for {name}: {exc}")
        self.m_seed.inc(result="ok" if ok else "error")
        if len(self._seeded) > 10_000:
            self._seeded.clear()
        self._seeded[name] = (ok, time.monotonic())

    def _direct(self, conn: Connection, data: bytes) -> bool:
        """Write now, without a task switch, when nothing is queued and the socket keeps up; otherwise
        (False) the message is queued for the writer task. See :func:`write_now`."""
        return not (conn.closing or conn.writing) and write_now(conn.ws, data, self.config.write_limit_bytes)

    def _on_message(self, conn: Connection, raw: str | bytes) -> None:
        cfg = self.config
        if not conn.bucket.take(time.monotonic()):
            conn.refused += 1
            if conn.refused > 10 * cfg.client_msgs_per_s:
                self._close(conn, CLOSE_ABUSE, "message rate far above the limit", "abuse")
            elif conn.refused == 1 or conn.refused % 10 == 0:
                self._error(conn, "rate_limited", f"more than {cfg.client_msgs_per_s:g} messages/s; message dropped")
            return
        conn.refused = 0
        if len(raw) > cfg.max_message_bytes:
            self._error(conn, "too_large", f"message of {len(raw)} bytes exceeds {cfg.max_message_bytes}")
            return
        if not json_depth_ok(raw):
            self._error(conn, "bad_json", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            return
        try:
            doc = _json_decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            self._error(conn, "bad_json", f"not JSON: {exc}")
            return
        self._check_expiry(conn, time.time())
        try:
            req = CLIENT_ADAPTER.validate_python(doc)
        except pydantic.ValidationError as exc:
            detail = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['msg']}"
                               for e in exc.errors()[:5])
            rid = doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None
            self._error(conn, "bad_request", detail, rid=rid)
            return
        if isinstance(req, Subscribe) and not conn.channel_bucket.take(time.monotonic(), len(req.channels)):
            # each name costs a snapshot (and perhaps a history request): a budget of names, not messages
            self._error(conn, "rate_limited", f"more than {cfg.client_channels_per_s:g} channel subscriptions/s; "
                        "message dropped", rid=req.id)
            return
        if isinstance(req, Subscribe):
            conn.client.latency = conn.client.latency or req.latency
            unseeded = [name for name in req.channels if self._needs_seed(name)]
            if unseeded and self.config.snapshot_rpc:
                self.spawn_client_task(self._seed_then_subscribe(conn, req, unseeded))
            else:
                self._subscribe(conn, req)
        elif isinstance(req, Unsubscribe):

            done = [name for name in req.channels if self.hub.unsubscribe(conn.client, name)]
            self._send_now(conn, {"channel": None, "type": "unsubscribed", "seq": 0, "source": "tick",
                                  "data": {"channels": done, "id": req.id}})
        elif isinstance(req, Auth):
            self._auth(conn, req)
        elif isinstance(req, Ping):
            self._send_now(conn, {"channel": None, "type": "pong", "seq": 0, "source": "tick",
                                  "data": {"id": req.id, "ts": time.time_ns()}})
        elif isinstance(req, Flatten):
            if conn.client.user is None:
                self._error(conn, "unauthorized", "flatten needs a token (the user whose positions close)", rid=req.id)
            elif conn.credentials_busy:
                self._error(conn, "busy", "one broker request at a time; wait for the answer", rid=req.id)
            else:
                conn.credentials_busy = True
                self.spawn_client_task(self._flatten(conn, req))
        elif isinstance(req, (Ack, Dismiss)):
            self._feedback(conn, req)
        elif isinstance(req, CREDENTIAL_REQUESTS):
            if conn.client.user is None:
                self._error(conn, "unauthorized", f"{req.op} needs a token (the user it acts for)", rid=req.id)
            elif conn.credentials_busy:
                self._error(conn, "busy", "one credentials request at a time; wait for the answer", rid=req.id)
            else:
                conn.credentials_busy = True
                self.spawn_client_task(self._credentials(conn, req))

    def _feedback(self, conn: Connection, req: Ack | Dismiss) -> None:
        """``op: ack`` / ``op: dismiss``: the connection's user answers one of their own recent coach
        alerts; the first answer is recorded (published on ``feedback.coach`` for the coach's rates and
        the recorder) and every later one is answered with it."""
        user = conn.client.user
        if user is None:
            self._error(conn, "unauthorized", f"{req.op} needs a token (the user whose alert it is)", rid=req.id)
            return
        found = self.hub.coach_feedback(user, req.eventId, req.op)
        if found is None:
            self._error(conn, "unknown_event", f"no recent coach alert {req.eventId!r} of yours", rid=req.id)
            return
        event, action, first = found
        if first:
            fb = m.CoachFeedback(user=user, event_id=req.eventId, action=action, kind=str(event.get("kind", "")),
                                 event_ts=int(event.get("ts") or 0), ts=time.time_ns())
            self.publish(FEEDBACK_COACH, "coach_feedback", fb, fb.event_ts)
        self._send_now(conn, {"channel": None, "type": "feedback", "seq": 0, "source": "tick",
                              "data": {"eventId": req.eventId, "action": action, "kind": event.get("kind", ""),
                                       "first": first, "id": req.id}})

    def _loopback_user(self, ws: ServerConnection) -> bool:
        """Whether a connection without a token acts for ``[gateway] loopback_user``: only when it is set,
        the gateway is bound to a loopback address and the peer is on loopback too."""
        if not self.config.loopback_user or not _is_loopback(self.config.host):
            return False
        peer = ws.remote_address[0] if ws.remote_address else None
        return peer is not None and _is_loopback(str(peer))

    async def _flatten(self, conn: Connection, req: Flatten) -> None:
        """Forward ``op: flatten`` to the broker's flatten for the connection's own user (the broker gates it
        like ``spx broker flatten``) and answer with a ``flatten`` message."""
        user = conn.client.user
        params: dict[str, Any] = {"user": user, "reason": f"dashboard flatten ({user})"}
        if req.symbol is not None:
            params["symbol"] = req.symbol
        try:
            res = await self.client("broker", timeout_s=5.0, retries=0).call("flatten", params)
            if not isinstance(res, dict):
                raise RpcError("bad_reply", "not a map")
        except RpcError as exc:
            self._rate_log.warning("flatten", f"flatten for {user}: broker did not answer ({exc.code}: {exc})")
            if not conn.closing:
                code = "bad_request" if exc.code == "bad_request" else "broker_unavailable"
                self._error(conn, code, f"flatten failed: {exc}", rid=req.id)
            return
        finally:
            conn.credentials_busy = False
        blocked = [str(b) for b in res.get("blocked") or []]
        closing = [str(c.get("symbol")) for c in res.get("closing") or [] if isinstance(c, dict)]
        data = {"ok": not blocked, "user": user, "symbol": req.symbol, "orders": [str(o) for o in res.get("orders") or []],
                "blocked": blocked, "closing": closing, "stopsCancelled": len(res.get("cancels") or []), "id": req.id}
        self.log.info("dashboard flatten", extra={"user": user, "symbol": req.symbol, "orders": len(data["orders"]),
                                                  "blocked": blocked})
        if not conn.closing and self.conns.get(conn.client.id) is conn:
            self._send_now(conn, {"channel": None, "type": "flatten", "seq": 0, "source": "tick", "data": data})

    def _auth(self, conn: Connection, req: Auth) -> None:
        """``op: auth``: take a new token's user (a different user's channels are dropped first)."""
        try:
            user, expires = auth.verify(req.token, self.secret, time.time())
        except auth.TokenError as exc:
            self.m_auth.inc(code=exc.code)
            self._error(conn, exc.code, str(exc), rid=req.id)
            return
        client = conn.client
        if client.user is not None and client.user != user:
            self.hub.drop_user_channels(client)
        client.user, conn.expires_s = user, expires
        self._send_now(conn, {"channel": None, "type": "authenticated", "seq": 0, "source": "tick",
                              "data": {"user": user, "expiresAt": expires, "id": req.id}})

    #: broker RPC timeout per credentials op (test waits for the broker's bounded balances call)
    CREDENTIALS_TIMEOUT_S = {"credentials.test": 12.0}
    _CRED_FIELDS = {"account_id": "accountId", "token_stored": "tokenStored", "account_type": "accountType",
                    "option_buying_power": "optionBuyingPower", "total_equity": "totalEquity",
                    "last_ok_ns": "lastOkNs", "last_error": "lastError", "execution_allowed": "executionAllowed"}
    _CRED_KEEP = ("ok", "code", "message", "stored", "removed", "broker", "environment", "reason")

    async def _credentials(self, conn: Connection, req) -> None:
        """Forward one credentials request to the broker (the broker owns the key ring and the store; the
        gateway keeps no token) for the connection's own user, and answer with a ``credentials`` message."""
        user = conn.client.user
        params: dict[str, Any] = {"user": user}
        if isinstance(req, CredentialsSet):
            params.update(token=req.token, account_id=req.accountId)
        try:
            res = await self.client("broker", timeout_s=self.CREDENTIALS_TIMEOUT_S.get(req.op, 3.0), retries=0).call(
                req.op, params)
            if not isinstance(res, dict):
                raise RpcError("bad_reply", "not a map")
        except RpcError as exc:
            if not exc.retryable and exc.code not in ("bad_reply", "unknown_method"):
                # the broker answered: refused (no_user, test_failed, no_key...) or failed (internal)
                res = {"ok": False, "code": exc.code, "message": exc.message}
            else:
                self.m_cred.inc(op=req.op, outcome="broker_unavailable")
                self._rate_log.warning("credentials", f"{req.op} for {user}: broker did not answer ({exc.code})")
                if not conn.closing:
                    self._error(conn, "broker_unavailable", f"the broker did not answer ({exc.code}); try again",
                                rid=req.id)
                return
        finally:
            conn.credentials_busy = False
            params.clear()
        data = {"op": req.op, "id": req.id, "user": user}
        data.update({k: res[k] for k in self._CRED_KEEP if res.get(k) is not None})
        data.update({c: res[k] for k, c in self._CRED_FIELDS.items() if res.get(k) is not None})
        data["ok"] = bool(res.get("ok"))
        self.m_cred.inc(op=req.op, outcome="ok" if data["ok"] else str(res.get("code") or "refused")[:32])
        if not conn.closing and self.conns.get(conn.client.id) is conn:
            self._send_now(conn, {"channel": None, "type": "credentials", "seq": 0, "source": "tick", "data": data})
