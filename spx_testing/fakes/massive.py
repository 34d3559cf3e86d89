"""A fake Massive (formerly Polygon.io) server: WebSocket streams and REST, on loopback port 0.

It speaks the documented wire protocol (``docs/vendor/massive.md``): every server frame
is a JSON array; the handshake is ``connected`` -> ``auth`` -> ``auth_success``/``auth_failed``
-> ``subscribe`` with one ``success`` ack per topic.  REST answers the endpoints the feed and
backfill use, with the vendor's JSON shapes, ``next_url`` pagination (cursor only, no key) and
scriptable failures (429 JSON, 500 nginx HTML, stalls).

Usage (synchronous tests; the server runs its own event loop on a thread)::

    with FakeMassive(api_key="k") as fake:
        fake.ws_url      # "ws://127.0.0.1:PORT"   (markets: /stocks /options /indices)
        fake.rest_url    # "http://127.0.0.1:PORT2"
        fake.wait_subscribed("stocks", "T.SPY")
        fake.push("stocks", [Trade(...), Quote(...)])      # models or raw dicts, one array
        fake.push_raw("stocks", '[{"ev":"T", ...}, garbage]')
        fake.status("stocks", "slow_consumer", "...", close=True)
        fake.drop("stocks")                                # abrupt TCP close, no close frame
        fake.refuse_connections = True                     # new connections closed at once (1013)
        fake.stall("stocks", 5.0)                          # stop reading (no pongs) and sending
        fake.trades["SPY"] = [Trade(...), ...]            # /v3/trades, /v2/last/trade
        fake.quotes["SPY"] = [Quote(...), ...]            # /v3/quotes, /v2/last/nbbo
        fake.quotes["O:SPXW..."] = [Quote(...), ...]      # /v3/quotes of an option (the 8 documented fields)
        fake.option_quotes_entitled = False               # option /v3/quotes -> 403 NOT_AUTHORIZED
        fake.index_values["I:SPX"] = IndexValue(...)      # /v3/snapshot/indices
        fake.index_untimed = {"I:SPX"}                    # ... its row without last_updated (recorded shape)
        fake.next_url_base = other.rest_url               # next_url names another host (the vendor's own
                                                          # answers name https://api.massive.com, whatever
                                                          # host was asked)
        fake.aggs[("SPY", "minute")] = [{"o":..,"h":..,"l":..,"c":..,"v":..,"t": ms}]
        fake.fail_next("/v3/trades", 429, 500)             # next matching requests fail
        fake.requests                                      # [(path, query dict, headers dict)]
        h = fake.stream("stocks", make, rate=20_000, duration_s=30)  # paced load (benchmarks/load.py)
        h.done.wait(40); h.sent, h.frames, h.behind_ms     # make(n, now_ns) -> one JSON array text
        h = fake.stream("stocks", make, 300, 60, history=True)  # also the vendor's REST history of every
        h.missed                                           # trade/quote made, sent or not (no connection)

Answer shapes are the vendor's, as recorded answers show them (the OpenAPI examples, the vendor's
client test mocks; docs/feed.md lists them): ``/v3/trades`` rows of **option** tickers carry no
``sequence_number`` and no ``id`` (``option_trade_seq = True`` adds them back, the old fake's
shape); index aggregates are ``{o,h,l,c,t}`` with ``t`` the bar's start.

Other engineers use it for backfill tests: the REST part alone is ``fake.rest_url``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterable
from urllib.parse import parse_qs, quote, unquote, urlparse

import websockets
from websockets.asyncio.server import ServerConnection, serve

from spx_common.models import IndexValue, MarketEvent, Quote, Trade
from services.feed.parsing import to_wire

MARKETS = ("stocks", "options", "indices")


def _wire(item: Any) -> Any:
    return to_wire(item) if isinstance(item, (Trade, Quote, IndexValue)) else item


class _Conn:
    def __init__(self, ws: ServerConnection, market: str) -> None:
        self.ws = ws
        self.market = market
        self.authed = False
        self.subs: set[str] = set()


class RateStream:
    """Handle of one paced stream started by :meth:`FakeMassive.stream` (counters read live)."""

    def __init__(self, market: str, rate: float, duration_s: float) -> None:
        self.market = market
        self.rate = rate
        self.duration_s = duration_s
        self.sent = 0  # events written to at least one connection
        self.unsent = 0  # events due while no authenticated connection was open (lost, as at the vendor)
        self.frames = 0
        self.behind_ms = 0.0  # longest an event waited past its due time (tick_ms + a slow reader's push-back)
        self.elapsed_s = 0.0
        self.cancelled = False
        self.done = threading.Event()
        #: ``history=True``: (sym, seq) of the trades and quotes made while no connection was open
        self.missed: list[tuple[str, int]] = []

    def cancel(self) -> None:
        self.cancelled = True


class FakeMassive:
    """See module docstring. All public methods are thread-safe and bounded in time."""

    def __init__(self, api_key: str = "test-key", *, page_limit_max: int = 50_000) -> None:
        self.api_key = api_key
        self.page_limit_max = page_limit_max
        self.conns: list[_Conn] = []
        self.connects: dict[str, int] = defaultdict(int)  # market -> connections accepted
        self.connect_times: dict[str, list[float]] = defaultdict(list)
        self.auth_attempts: dict[str, list[str]] = defaultdict(list)
        self.client_messages: list[tuple[str, dict]] = []
        self.subscriptions: dict[str, set[str]] = defaultdict(set)  # market -> current topics (last conn)
        self.reject_auth = False
        self.max_connections_on_auth = False
        self.drop_after_auth = False  # abort right after auth_success (a flapping server)
        self.refuse_connections = False  # close every new connection at once (1013 try again later)
        self.trades: dict[str, list[Trade]] = {}
        self.quotes: dict[str, list[Quote]] = {}
        #: (sym, sequence number) of REST trades answered with ``correction`` != 0 (a corrected print)
        self.corrections: dict[tuple[str, int], int] = {}
        self.index_values: dict[str, IndexValue] = {}
        #: index tickers whose snapshot row has a value and no ``last_updated``
        self.index_untimed: set[str] = set()
        #: scheme://host:port put in ``next_url`` ("" = this server), e.g. another fake's ``rest_url``
        self.next_url_base = ""
        #: True: option ``/v3/trades`` rows carry ``sequence_number``/``id`` (the vendor's have none)
        self.option_trade_seq = False
        self.aggs: dict[tuple[str, str], list[dict]] = {}
        self.options_snapshot: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        self._failures: list[tuple[str, int]] = []
        self.rest_stall_s = 0.0
        #: False: /v3/quotes of option tickers answers 403 NOT_AUTHORIZED (a plan without options NBBO history)
        self.option_quotes_entitled = True
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeMassive:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)

            async def boot() -> None:
                self._server = await serve(self._handler, "127.0.0.1", 0, ping_interval=None, max_size=2**20)
                self.ws_port = self._server.sockets[0].getsockname()[1]
                ready.set()

            self.loop.run_until_complete(boot())
            self.loop.run_forever()
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="fake-massive-ws", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Massive WebSocket server did not start")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._http.daemon_threads = True
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                             name="fake-massive-rest", daemon=True)
        self._http_thread.start()

    async def _shutdown(self) -> None:
        for c in list(self.conns):
            c.ws.transport.abort()
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), 3)
        except TimeoutError:
            pass

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    # ------------------------------------------------------------------ WebSocket protocol

    async def _handler(self, ws: ServerConnection) -> None:
        market = (ws.request.path if ws.request else "/").strip("/")
        if market not in MARKETS:
            await ws.close(1008, "unknown market")
            return
        if self.refuse_connections:
            await ws.close(1013, "try again later")
            return
        conn = _Conn(ws, market)
        with self._lock:
            self.conns.append(conn)
            self.connects[market] += 1
            self.connect_times[market].append(time.monotonic())
        try:
            await ws.send(json.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]))
            async for raw in ws:
                if isinstance(raw, bytes):  # the protocol is JSON text frames
                    await ws.send(json.dumps([{"ev": "status", "status": "error", "message": "invalid message"}]))
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    await ws.send(json.dumps([{"ev": "status", "status": "error", "message": "invalid json"}]))
                    continue
                with self._lock:
                    self.client_messages.append((market, msg))
                action, params = msg.get("action"), str(msg.get("params", ""))
                if action == "auth":
                    with self._lock:
                        self.auth_attempts[market].append(params)
                    if params != self.api_key or self.reject_auth:
                        await ws.send(json.dumps([{"ev": "status", "status": "auth_failed",
                                                   "message": "authentication failed"}]))
                        ws.transport.abort()  # the vendor closes without a close handshake
                        return
                    conn.authed = True
                    await ws.send(json.dumps([{"ev": "status", "status": "auth_success",
                                               "message": "authenticated"}]))
                    if self.drop_after_auth:
                        ws.transport.abort()
                        return
                    if self.max_connections_on_auth:
                        await ws.send(json.dumps([{"ev": "status", "status": "max_connections",
                                                   "message": "Maximum number of websocket connections exceeded. "
                                                   "You have reached the connection limit for your account."}]))
                        await ws.close(1008, "max connections")
                        return
                elif not conn.authed:
                    await ws.send(json.dumps([{"ev": "status", "status": "error", "message": "not authorized"}]))
                elif action in ("subscribe", "unsubscribe"):
                    topics = [p.strip() for p in params.split(",") if p.strip()]
                    acks = []
                    for t in topics:
                        if action == "subscribe":
                            conn.subs.add(t)
                        else:
                            conn.subs.discard(t)
                        word = "subscribed to" if action == "subscribe" else "unsubscribed to"
                        acks.append({"ev": "status", "status": "success", "message": f"{word}: {t}"})
                    with self._lock:
                        self.subscriptions[market] = set(conn.subs)
                    if acks:
                        await ws.send(json.dumps(acks))
        except websockets.ConnectionClosed:
            pass
        finally:
            with self._lock:
                if conn in self.conns:
                    self.conns.remove(conn)

    def _call(self, coro_fn, timeout_s: float = 5.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout_s)

    def _live(self, market: str) -> list[_Conn]:
        with self._lock:
            return [c for c in self.conns if c.market == market and c.authed]

    def connected(self, market: str) -> int:
        """Authenticated connections currently open on ``market``."""
        return len(self._live(market))

    def push(self, market: str, items: Iterable[MarketEvent | dict]) -> int:
        """Send one JSON array (models are converted to the vendor's objects). Returns connections sent to."""
        return self.push_raw(market, json.dumps([_wire(i) for i in items]))

    def push_raw(self, market: str, text: str) -> int:
        conns = self._live(market)

        async def go() -> int:
            n = 0
            for c in conns:
                try:
                    await c.ws.send(text)
                    n += 1
                except websockets.ConnectionClosed:
                    pass
            return n

        return self._call(go)

    def status(self, market: str, status: str, message: str = "", *, close: bool = False, code: int = 1000) -> None:
        """Send a status message; ``close`` then ends the connection (``code``, e.g. 1008)."""
        conns = self._live(market)

        async def go() -> None:
            for c in conns:
                try:
                    await c.ws.send(json.dumps([{"ev": "status", "status": status, "message": message}]))
                    if close:
                        await c.ws.close(code, status)
                except websockets.ConnectionClosed:
                    pass

        self._call(go)

    def drop(self, market: str) -> int:
        """Abort every connection of ``market`` (TCP close, no WebSocket close frame)."""
        conns = self._live(market)

        async def go() -> int:
            for c in conns:
                c.ws.transport.abort()
            return len(conns)

        return self._call(go)

    def stall(self, market: str, seconds: float) -> None:
        """Stop reading (so no pongs) on ``market``'s connections for ``seconds``; sends nothing meanwhile."""
        conns = self._live(market)

        async def go() -> None:
            for c in conns:
                c.ws.transport.pause_reading()

            def resume() -> None:
                for c in conns:
                    try:
                        c.ws.transport.resume_reading()
                    except (RuntimeError, AttributeError):
                        pass

            self.loop.call_later(seconds, resume)  # type: ignore[union-attr]  # set once the server thread runs

        self._call(go)

    def stream(self, market: str, make, rate: float, duration_s: float, *, tick_ms: float = 5.0,
               max_batch: int = 2_000, history: bool = False) -> RateStream:
        """Send ``rate`` events/s to every authenticated ``market`` connection for ``duration_s``.

        Every ``tick_ms`` the events due by then (at most ``max_batch``) are built by ``make(n, now_ns)``,
        which returns one JSON array text, and sent as one WebSocket message - the vendor batches the
        same way. A slow reader pushes back through TCP: the schedule then falls behind (``behind_ms``)
        instead of queueing without bound. Returns at once; ``handle.done`` is set at the end.

        ``history``: the events are made whether or not a connection is open (the vendor's market does
        not stop for a client) and every trade and quote is added to ``trades``/``quotes``, so REST
        answers what the stream carried or would have carried; those made while no connection was open
        are listed in ``handle.missed``.
        """
        h = RateStream(market, rate, duration_s)

        async def run() -> None:
            start = time.perf_counter()
            due_total = 0
            try:
                while not h.cancelled:
                    el = time.perf_counter() - start
                    if el >= duration_s:
                        break
                    want = int(rate * el) - due_total
                    if want > 0:
                        n = min(want, max_batch)
                        due_total += n
                        h.behind_ms = max(h.behind_ms, want / rate * 1000)
                        conns = self._live(market)
                        text = make(n, time.time_ns()) if history or conns else ""
                        if history:
                            made = self._record(text)
                            if not conns:
                                h.missed += made
                        if not conns:
                            h.unsent += n
                        else:
                            ok = False
                            for c in conns:
                                try:
                                    await c.ws.send(text)
                                    ok = True
                                except websockets.ConnectionClosed:
                                    pass
                            if ok:
                                h.sent += n
                                h.frames += 1
                            else:
                                h.unsent += n
                                if history:
                                    h.missed += made
                    await asyncio.sleep(tick_ms / 1000)
            finally:
                h.elapsed_s = time.perf_counter() - start
                h.done.set()

        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(run(), self.loop)
        return h

    def _record(self, text: str) -> list[tuple[str, int]]:
        """Add the trades and quotes of one stream message to the REST history; their (sym, seq)."""
        made = []
        with self._lock:
            for d in json.loads(text):
                ts = int(d["t"]) * 1_000_000
                if d.get("ev") == "T":
                    self.trades.setdefault(d["sym"], []).append(Trade(
                        sym=d["sym"], price=d["p"], size=d["s"], ts=ts, seq=d["q"], exch=d.get("x", 0),
                        cond=list(d.get("c", []))))
                elif d.get("ev") == "Q":
                    self.quotes.setdefault(d["sym"], []).append(Quote(
                        sym=d["sym"], bid=d["bp"], ask=d["ap"], bid_size=d["bs"], ask_size=d["as"], ts=ts,
                        seq=d["q"], bid_exch=d.get("bx", 0), ask_exch=d.get("ax", 0)))
                else:
                    continue
                made.append((d["sym"], d["q"]))
        return made

    def subscribed(self, market: str, topic: str) -> bool:
        """Whether an authenticated connection of ``market`` is subscribed to ``topic`` now."""
        return any(topic in c.subs for c in self._live(market))

    def wait_subscribed(self, market: str, topic: str, timeout_s: float = 10.0) -> None:
        """Block until an authenticated connection of ``market`` is subscribed to ``topic``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.subscribed(market, topic):
                return
            time.sleep(0.02)
        raise AssertionError(f"no {market} connection subscribed to {topic} within {timeout_s}s "
                             f"(subscriptions: {dict(self.subscriptions)})")

    # ------------------------------------------------------------------ REST

    def fail_next(self, path_prefix: str, *statuses: int) -> None:
        """The next requests whose path starts with ``path_prefix`` answer these statuses, in order."""
        with self._lock:
            self._failures.extend((path_prefix, s) for s in statuses)

    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for i, (prefix, status) in enumerate(self._failures):
                if path.startswith(prefix):
                    del self._failures[i]
                    return status
        return None


#: share of the event rate per (market, kind): SPY trades and quotes, I:SPX values, SPXW quotes and trades
MIX = {("stocks", "T"): 0.10, ("stocks", "Q"): 0.30, ("indices", "V"): 0.01, ("options", "Q"): 0.50,
       ("options", "T"): 0.09}
SPX_BASE = 5900.0


def spy_price(now_ns: int) -> float:
    """Sawtooth: 0.5 point up over 2.5 s, then down (the probe plugin's setups trigger and resolve)."""
    phase = (now_ns / 1e9) % 5.0
    return round(590.0 + (phase if phase < 2.5 else 5.0 - phase) * 0.2, 2)


class MarketMix:
    """A realistic vendor mix for :meth:`FakeMassive.stream` (``benchmarks/load.py``, mesh chaos test).

    ``stocks``/``indices``/``options`` build one JSON array of ``n`` events stamped ``now_ns`` (ms on the
    wire); sequence numbers are unique (the feed dedupes on them). Shares of the rate: :data:`MIX`.
    """

    def __init__(self, contracts: list[str]) -> None:
        self.contracts = contracts
        self.seq = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def stocks(self, n: int, now_ns: int) -> str:
        t, px = now_ns // 1_000_000, spy_price(now_ns)
        out = []
        share_t = MIX[("stocks", "T")] / (MIX[("stocks", "T")] + MIX[("stocks", "Q")])
        n_t = max(1, round(n * share_t))
        for i in range(n):
            q = self._next()
            if i < n_t:
                out.append(f'{{"ev":"T","sym":"SPY","x":4,"p":{px},"s":{100 + i % 7},"t":{t},"q":{q}}}')
            else:
                out.append(f'{{"ev":"Q","sym":"SPY","bx":4,"bp":{px - 0.01:.2f},"bs":{200 + i % 5},"ax":7,'
                           f'"ap":{px + 0.01:.2f},"as":{300 + i % 3},"t":{t},"q":{q}}}')
        return "[" + ",".join(out) + "]"

    def indices(self, n: int, now_ns: int) -> str:
        t, v = now_ns // 1_000_000, round(spy_price(now_ns) * 10 - 0.0, 2)
        return "[" + ",".join(f'{{"ev":"V","val":{v + i * 0.01:.2f},"T":"I:SPX","t":{t}}}'
                              for i in range(n)) + "]"

    def options(self, n: int, now_ns: int) -> str:
        t = now_ns // 1_000_000
        share_t = MIX[("options", "T")] / (MIX[("options", "T")] + MIX[("options", "Q")])
        n_t = max(1, round(n * share_t))
        cs, k = self.contracts, len(self.contracts)
        out = []
        for i in range(n):
            sym = cs[(self.seq + i) % k]
            q = self._next()
            mid = 1.0 + (q % 400) * 0.05
            if i < n_t:
                out.append(f'{{"ev":"T","sym":"{sym}","x":65,"p":{mid:.2f},"s":{1 + i % 5},"t":{t},"q":{q}}}')
            else:
                out.append(f'{{"ev":"Q","sym":"{sym}","bx":65,"bp":{mid - 0.05:.2f},"bs":{10 + i % 9},"ax":65,'
                           f'"ap":{mid + 0.05:.2f},"as":{12 + i % 4},"t":{t},"q":{q}}}')
        return "[" + ",".join(out) + "]"



def chain_rows(contracts: list[str], underlying: float = SPX_BASE) -> list[dict]:
    """``/v3/snapshot/options`` rows for ``contracts`` (``O:SPXW...`` symbols) around ``underlying``."""
    rows = []
    for sym in contracts:
        call, strike = sym[-9] == "C", int(sym[-8:]) / 1000
        intrinsic = max(0.0, (underlying - strike) if call else (strike - underlying))
        mid = round(intrinsic + 2.0, 2)
        delta = max(0.02, min(0.98, 0.5 + ((underlying - strike) if call else (strike - underlying)) / 100))
        exp = f"20{sym[-15:-13]}-{sym[-13:-11]}-{sym[-11:-9]}"
        rows.append(option_snapshot_row(sym, strike, call, exp, mid - 0.05, mid + 0.05, underlying, oi=500,
                                        delta=delta if call else -delta))
    return rows


def prime_options(fake: FakeMassive, timeout_s: float = 30.0) -> list[str]:
    """Send I:SPX values until the feed subscribed option contracts around the money; return them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        contracts = sorted({t[2:] for t in fake.subscriptions.get("options", set()) if t.startswith("Q.")})
        if contracts:
            return contracts
        fake.push_raw("indices", MarketMix([]).indices(1, time.time_ns()))
        time.sleep(0.3)
    raise AssertionError(f"the feed subscribed no option contracts within {timeout_s}s")


def _encode_cursor(offset: int, query: dict) -> str:
    """Like the vendor's: an opaque base64url string holding the whole query and the position."""
    q = {k: v for k, v in query.items() if k not in ("cursor", "apiKey")}
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": q}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, dict]:
    pad = "=" * (-len(cursor) % 4)
    d = json.loads(base64.urlsafe_b64decode(cursor + pad))
    return int(d["o"]), dict(d["q"])


def _ts_filter(items: list, q: dict) -> list:
    def val(k: str) -> int | None:
        v = q.get(k)
        return int(v) if v is not None and v.isdigit() else None

    out = items
    for key, op in (("timestamp.gte", "ge"), ("timestamp.gt", "gt"), ("timestamp.lte", "le"), ("timestamp.lt", "lt"),
                    ("timestamp", "eq")):
        v = val(key)
        if v is None:
            continue
        out = [e for e in out if {"ge": e.ts >= v, "gt": e.ts > v, "le": e.ts <= v, "lt": e.ts < v,
                                  "eq": e.ts == v}[op]]
    return out


def _chain_filter(rows: list[dict], q: dict) -> list[dict]:
    """The option snapshot filters: expiration_date, contract_type, strike_price.gte/lte."""
    out = []
    for r in rows:
        d = r.get("details", {})
        if "expiration_date" in q and d.get("expiration_date") != q["expiration_date"]:
            continue
        if "contract_type" in q and d.get("contract_type") != q["contract_type"]:
            continue
        k = float(d.get("strike_price", 0))
        if "strike_price.gte" in q and k < float(q["strike_price.gte"]):
            continue
        if "strike_price.lte" in q and k > float(q["strike_price.lte"]):
            continue
        out.append(r)
    return out


def option_snapshot_row(symbol: str, strike: float, call: bool, expiration: str, bid: float, ask: float,
                        underlying: float, oi: int = 100, iv: float | None = 0.15, delta: float | None = 0.5) -> dict:
    """One ``/v3/snapshot/options`` result in the vendor's shape (greeks and IV may be absent)."""
    row = {"details": {"contract_type": "call" if call else "put", "exercise_style": "european",
                       "expiration_date": expiration, "shares_per_contract": 100, "strike_price": strike,
                       "ticker": symbol},
           "last_quote": {"ask": ask, "ask_size": 10, "bid": bid, "bid_size": 12, "midpoint": (bid + ask) / 2,
                          "last_updated": 0, "timeframe": "REAL-TIME"},
           "open_interest": oi, "day": {"volume": 7},
           "underlying_asset": {"ticker": "I:SPX", "value": underlying}}
    if iv is not None:
        row["implied_volatility"] = iv
    if delta is not None:
        row["greeks"] = {"delta": delta, "gamma": 0.01, "theta": -1.0, "vega": 0.5}
    return row


def _trade_json(t: Trade, correction: int = 0) -> dict:
    row = {"conditions": list(t.cond), "exchange": t.exch, "id": str(t.seq), "participant_timestamp": t.ts - 1000,
           "price": t.price, "sequence_number": t.seq, "sip_timestamp": t.ts, "size": t.size, "tape": 3}
    if not row["conditions"]:
        del row["conditions"]  # the vendor leaves the key out when there is none
    if correction:
        row["correction"] = correction
    return row


def _option_trade_json(t: Trade) -> dict:
    """The options trades endpoint's row: no sequence_number, no id, no tape (conditions when any)."""
    row = {"exchange": t.exch, "participant_timestamp": t.ts, "price": t.price, "sip_timestamp": t.ts,
           "size": t.size}
    if t.cond:
        row["conditions"] = list(t.cond)
    return row


def _quote_json(q: Quote) -> dict:
    if q.sym.startswith("O:"):  # the options quotes endpoint's documented row: no participant time, no tape
        return {"ask_exchange": q.ask_exch, "ask_price": q.ask, "ask_size": q.ask_size, "bid_exchange": q.bid_exch,
                "bid_price": q.bid, "bid_size": q.bid_size, "sequence_number": q.seq, "sip_timestamp": q.ts}
    return {"ask_exchange": q.ask_exch, "ask_price": q.ask, "ask_size": q.ask_size, "bid_exchange": q.bid_exch,
            "bid_price": q.bid, "bid_size": q.bid_size, "participant_timestamp": q.ts - 1000,
            "sequence_number": q.seq, "sip_timestamp": q.ts, "tape": 3}


def _make_handler(fake: FakeMassive):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            url = urlparse(self.path)
            path = unquote(url.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if "cursor" in q:  # the cursor carries the original query (the vendor's next_url does too)
                try:
                    offset, q0 = _decode_cursor(q["cursor"])
                except (ValueError, KeyError):
                    return self._send(400, {"status": "ERROR", "request_id": "rc", "error": "bad cursor"})
                q = {**q0, "cursor": q["cursor"], "_offset": str(offset)}
            with fake._lock:
                fake.requests.append((path, q, dict(self.headers)))
            if fake.rest_stall_s:
                time.sleep(fake.rest_stall_s)
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {fake.api_key}" and q.get("apiKey") != fake.api_key:
                return self._send(401, {"status": "ERROR", "request_id": "r1", "error": "Unknown API Key"})
            failure = fake._take_failure(path)
            if failure == 429:
                return self._send(429, {"status": "ERROR", "request_id": "r429",
                                        "error": "You've exceeded the maximum requests per minute, please wait or "
                                                 "upgrade your subscription to continue."})
            if failure is not None and failure >= 500:
                return self._send(failure, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                                  "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                                  "</body>\r\n</html>\r\n", "text/html")
            if failure is not None:
                return self._send(failure, {"status": "ERROR", "request_id": "rx", "error": f"status {failure}"})
            parts = path.strip("/").split("/")
            try:
                if parts[:3] == ["v2", "last", "trade"]:
                    return self._last_trade(parts[3])
                if parts[:3] == ["v2", "last", "nbbo"]:
                    return self._last_nbbo(parts[3])
                if parts[:3] == ["v3", "snapshot", "indices"]:
                    return self._indices(q)
                if parts[:3] == ["v3", "snapshot", "options"]:
                    return self._page(path, q, _chain_filter(fake.options_snapshot.get(parts[3], []), q),
                                      lambda d: d, 250)
                if parts[:2] == ["v3", "trades"]:
                    items = sorted(_ts_filter(fake.trades.get(parts[2], []), q), key=lambda e: e.ts,
                                   reverse=q.get("order", "desc") == "desc")
                    fix = dict(fake.corrections)
                    if fake.option_trade_seq or not parts[2].startswith("O:"):
                        return self._page(path, q, items, lambda t: _trade_json(t, fix.get((t.sym, t.seq), 0)),
                                          50_000)
                    return self._page(path, q, items, _option_trade_json, 50_000)
                if parts[:2] == ["v3", "quotes"] and parts[2].startswith("O:") and not fake.option_quotes_entitled:
                    return self._send(403, {"status": "NOT_AUTHORIZED", "request_id": "r403",
                                            "message": "You are not entitled to this data. Please upgrade your "
                                                       "plan at https://massive.com/pricing"})
                if parts[:2] == ["v3", "quotes"]:
                    items = sorted(_ts_filter(fake.quotes.get(parts[2], []), q), key=lambda e: e.ts,
                                   reverse=q.get("order", "desc") == "desc")
                    return self._page(path, q, items, _quote_json, 50_000)
                if parts[:3] == ["v2", "aggs", "ticker"] and len(parts) == 9:
                    return self._aggs(parts, q)
            except (KeyError, ValueError, IndexError) as exc:
                return self._send(400, {"status": "ERROR", "request_id": "r400", "error": f"bad request: {exc}"})
            return self._send(404, {"status": "NOT_FOUND", "request_id": "r404", "message": "Not found"})

        def _last_trade(self, ticker: str) -> None:
            items = fake.trades.get(ticker)
            if not items:
                return self._send(404, {"status": "NOT_FOUND", "request_id": "r", "message": "no trades"})
            t = max(items, key=lambda e: e.ts)
            return self._send(200, {"status": "OK", "request_id": "r", "results": {
                "T": ticker, "c": list(t.cond), "i": str(t.seq), "p": t.price, "q": t.seq, "s": t.size,
                "t": t.ts, "x": t.exch, "y": t.ts - 1000, "z": 3}})

        def _last_nbbo(self, ticker: str) -> None:
            items = fake.quotes.get(ticker)
            if not items:
                return self._send(404, {"status": "NOT_FOUND", "request_id": "r", "message": "no quotes"})
            x = max(items, key=lambda e: e.ts)
            return self._send(200, {"status": "OK", "request_id": "r", "results": {
                "T": ticker, "P": x.ask, "S": x.ask_size, "X": x.ask_exch, "p": x.bid, "s": x.bid_size,
                "x": x.bid_exch, "q": x.seq, "t": x.ts, "y": x.ts - 1000, "z": 3}})

        def _indices(self, q: dict) -> None:
            results = []
            for t in q.get("ticker.any_of", "").split(","):
                v = fake.index_values.get(t)
                if v is None:
                    results.append({"error": "NOT_FOUND", "message": "Ticker not found.", "ticker": t})
                else:
                    row = {"ticker": t, "value": v.value, "last_updated": v.ts, "timeframe": "REAL-TIME",
                           "type": "indices", "market_status": "open"}
                    if t in fake.index_untimed:  # as in the vendor's recorded mocks: name, value, session only
                        row = {"ticker": t, "name": "S&P 500", "value": v.value,
                               "session": {"change": 0.0, "change_percent": 0.0}}
                    results.append(row)
            return self._send(200, {"status": "OK", "request_id": "r", "results": results})

        def _aggs(self, parts: list[str], q: dict) -> None:
            ticker, span, frm, to = parts[3], parts[6], parts[7], parts[8]
            bars = fake.aggs.get((ticker, span), [])
            lo, hi = _ms(frm), _ms(to, end=True)
            items = [b for b in bars if lo <= b["t"] <= hi]
            return self._page(self.path.split("?")[0], q, items, lambda b: b, 50_000, aggs=(ticker, len(items)))

        def _page(self, path: str, q: dict, items: list, conv, max_limit: int, aggs: tuple | None = None) -> None:
            limit = min(int(q.get("limit", 1000 if aggs is None else 5000)), fake.page_limit_max, max_limit)
            start = int(q.get("_offset", 0))
            page = items[start:start + limit]
            body: dict[str, Any] = {"status": "OK", "request_id": "r", "results": [conv(x) for x in page]}
            if aggs is not None:
                body.update({"ticker": aggs[0], "adjusted": True, "queryCount": aggs[1], "resultsCount": len(page),
                             "count": len(page)})
            if start + limit < len(items):
                body["next_url"] = (f"{fake.next_url_base or fake.rest_url}{quote(path)}"
                                    f"?cursor={_encode_cursor(start + limit, q)}")
            return self._send(200, body)

    return Handler


def _ms(value: str, end: bool = False) -> int:
    """An aggregates ``from``/``to`` segment: a date (YYYY-MM-DD) or Unix ms."""
    if value.isdigit():
        return int(value)
    import datetime as dt

    d = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    ms = int(d.timestamp() * 1000)
    return ms + 86_400_000 - 1 if end else ms
