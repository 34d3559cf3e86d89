"""A faithful fake Tradier: REST (real HTTP on loopback port 0) + the account-events websocket.

It speaks the documented wire protocol (``docs/vendor/tradier.md``) and CHECKS every
request it receives; anything off is appended to ``violations`` (tests assert it stays empty):

* path and method are one of the documented endpoints;
* ``Authorization: Bearer <token>`` with the expected token and ``Accept: application/json``;
* POST/PUT bodies form-encoded (``application/x-www-form-urlencoded``), never JSON;
* order form fields: ``class=option``, ``symbol`` the underlying, a valid ``option_symbol``,
  ``side``/``type``/``duration`` from the documented sets, positive integer ``quantity``,
  ``price``/``stop`` present as the type requires, ``tag`` letters/digits/``-`` up to 255.

Behaviour is scriptable per request kind with :meth:`FakeTradier.script`: ``reject`` (HTTP 200 with
``errors``), ``400``, ``401`` (an expired token), ``429`` (with rate-limit headers and an expiry), ``500``, ``hang`` (the order is
created, the answer never arrives within the client's timeout), ``html`` (the work is done, the answer
is an HTML page with status 200), ``expired`` (HTTP 500 with the gateway fault
``keymanagement.service.access_token_expired``, nothing done), ``order_errors`` / ``order_errors_400``
(placement refused with ``errors`` *inside* ``order``: "You do not have enough buying power for this
trade.", HTTP 200 / 400), ``status:<S>`` (placement done, answered ``{"order": {"id", "status": S}}``,
e.g. ``status:OK``), ``no_id`` (placement done, answered ``{"order": {"status": "ok"}}``).

``expired_tokens``: every request bearing one of these tokens is answered the expired-token fault
(a token that worked and then expired; store another one and set ``token`` to it to renew).
``balances = BALANCES["margin_pdt"]`` (or ``margin``, ``margin_cash``, ``pdt``, ``cash``) answers
balances in the shapes recorded answers show.  :meth:`fill` executes (part of) an
order, updates positions and pushes an order event on every connected account-events socket.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from websockets.sync.server import serve as ws_serve

from spx_common import occ

SIDES = {"buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"}
TYPES = {"market", "limit", "stop", "stop_limit"}
DURATIONS = {"day", "gtc", "pre", "post"}
TAG_RE = re.compile(r"^[A-Za-z0-9-]{1,255}$")
EXPIRED = {"fault": {"faultstring": "Access Token expired",
                     "detail": {"errorcode": "keymanagement.service.access_token_expired"}}}
BUYING_POWER_TEXT = "You do not have enough buying power for this trade."
_TOP = {"total_equity": 50000.12345, "total_cash": 50000.0, "open_pl": 0.0, "close_pl": 0.0, "market_value": 0.0,
        "pending_orders_count": 0, "current_requirement": 0.0, "option_requirement": 0.0}
#: balances answers by shape: the documented one (one sub-object named after account_type) and the ones
#: recorded answers show (a margin account answered with a ``pdt`` or ``cash`` sub-object)
BALANCES: dict[str, dict] = {
    "margin": {**_TOP, "account_type": "margin",
               "margin": {"option_buying_power": 40000.0, "stock_buying_power": 80000.0, "fed_call": 0,
                          "maintenance_call": 0, "option_short_value": 0, "stock_short_value": 0, "sweep": 0}},
    "margin_pdt": {**_TOP, "account_type": "margin",
                   "pdt": {"option_buying_power": 31000.5, "stock_buying_power": 62001.0,
                           "day_trade_buying_power": 124002.0, "fed_call": 0, "maintenance_call": 0}},
    "margin_cash": {**_TOP, "account_type": "margin",
                    "cash": {"cash_available": 27000.25, "sweep": 0, "unsettled_funds": 0.0}},
    "pdt": {**_TOP, "account_type": "pdt",
            "pdt": {"option_buying_power": 15000.0, "stock_buying_power": 30000.0, "day_trade_buying_power": 60000.0}},
    "cash": {**_TOP, "account_type": "cash", "cash": {"cash_available": 9000.0, "sweep": 0, "unsettled_funds": 250.0}},
}


@dataclass
class Scripted:
    kind: str  # reject | 400 | 401 | 429 | 500 | hang | html
    times: int = 1
    delay_s: float = 3.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeTradier:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    token: str = "test-token"
    account: str = "VA000001"
    violations: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    orders: dict[int, dict] = field(default_factory=dict)
    positions: dict[str, dict] = field(default_factory=dict)
    balances: dict[str, Any] = field(default_factory=lambda: {
        "account_type": "margin", "total_equity": 50000.12345, "total_cash": 50000.0, "open_pl": 0.0,
        "close_pl": 0.0, "market_value": 0.0, "pending_orders_count": 0,
        "margin": {"option_buying_power": 40000.0, "stock_buying_power": 80000.0}})
    rate_allowed: int = 60
    stream_tags: bool = True  # the docs list ``tag`` as optional in stream events: tests can leave it out
    expired_tokens: set[str] = field(default_factory=set)  # answered the expired-token fault (HTTP 500)
    truncated: int = 0  # requests whose body never fully arrived (the client gave up): dropped, not answered

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Scripted]] = {}
        self._next_id = 1000
        self._sessions: set[str] = set()
        self._sockets: list[Any] = []
        self._used = 0
        self._released = threading.Event()

    # ------------------------------------------------------------------ control

    def start(self) -> FakeTradier:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def do_DELETE(self):
                fake._handle(self, "DELETE")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self._http_thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._http_thread.start()
        self.ws = ws_serve(self._ws_handler, "127.0.0.1", 0)
        self._ws_thread = threading.Thread(target=self.ws.serve_forever, daemon=True)
        self._ws_thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self.http.shutdown()
        self.http.server_close()
        self.ws.shutdown()
        self._http_thread.join(5)
        self._ws_thread.join(5)

    def __enter__(self) -> FakeTradier:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws.socket.getsockname()[1]}/v1/accounts/events"

    def script(self, kind: str, what: str, *, times: int = 1, delay_s: float = 3.0) -> None:
        """Make the next ``times`` requests of ``what`` (place, modify, cancel, orders, positions, balances,
        order, quotes, chains, expirations, session) answer as ``kind``."""
        with self._lock:
            self._scripts.setdefault(what, []).append(Scripted(kind, times, delay_s))

    def count(self, method: str, path_suffix: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.endswith(path_suffix))

    def add_position(self, option_symbol: str, quantity: float, cost_basis: float) -> None:
        with self._lock:
            self.positions[option_symbol] = {"cost_basis": cost_basis, "date_acquired": "2026-02-20T15:00:00.000Z",
                                             "id": len(self.positions) + 1, "quantity": float(quantity),
                                             "symbol": option_symbol}

    def fill(self, order_id: int, quantity: float, price: float) -> dict:
        """Execute ``quantity`` of an order at ``price``; updates positions and streams an order event."""
        with self._lock:
            o = self.orders[order_id]
            qty = min(float(quantity), o["remaining_quantity"])
            prev = o["exec_quantity"]
            o["exec_quantity"] = prev + qty
            o["avg_fill_price"] = (o["avg_fill_price"] * prev + price * qty) / o["exec_quantity"]
            o["last_fill_price"] = price
            o["last_fill_quantity"] = qty
            o["remaining_quantity"] = o["quantity"] - o["exec_quantity"]
            o["status"] = "filled" if o["remaining_quantity"] <= 0 else "partially_filled"
            o["transaction_date"] = _now_iso()
            sign = 1 if o["side"].startswith("buy") else -1
            sym = o["option_symbol"]
            pos = self.positions.get(sym)
            qty_now = (pos["quantity"] if pos else 0.0) + sign * qty
            if qty_now == 0:
                self.positions.pop(sym, None)
            else:
                cost = (pos["cost_basis"] if pos else 0.0) + sign * qty * price * 100
                self.positions[sym] = {"cost_basis": round(cost, 2), "date_acquired": _now_iso(), "id": 1,
                                       "quantity": qty_now, "symbol": sym}
            event = self._event(o)
        self._broadcast(event)
        return event

    def set_status(self, order_id: int, status: str) -> None:
        with self._lock:
            self.orders[order_id]["status"] = status
            event = self._event(self.orders[order_id])
        self._broadcast(event)

    def heartbeat(self) -> None:
        self._broadcast({"event": "heartbeat", "status": "active", "timestamp": str(int(time.time()))})

    # ------------------------------------------------------------------ internals

    def _event(self, o: dict) -> dict:
        e = {"id": o["id"], "event": "order", "status": o["status"], "type": o["type"], "price": o.get("price", 0.0),
             "stop_price": o.get("stop_price", 0.0), "avg_fill_price": o["avg_fill_price"],
             "exec_quantity": o["exec_quantity"], "last_fill_quantity": o["last_fill_quantity"],
             "last_fill_price": o["last_fill_price"], "remaining_quantity": o["remaining_quantity"],
             "transaction_date": o["transaction_date"], "create_date": o["create_date"], "account": self.account}
        if o.get("tag") and self.stream_tags:
            e["tag"] = o["tag"]
        return e

    def _broadcast(self, event: dict) -> None:
        for ws in list(self._sockets):
            try:
                ws.send(json.dumps(event))
            except Exception:
                self._sockets.remove(ws)

    def _ws_handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            first = json.loads(ws.recv(timeout=5))
        except ConnectionClosed:
            return  # the client went away before subscribing (a broker stopping right after connecting): legal
        except Exception as exc:
            self.violations.append(f"ws: bad subscribe message ({exc!r})")
            return
        if first.get("sessionid") not in self._sessions or first.get("events") != ["order"]:
            self.violations.append(f"ws: bad subscribe {first}")
            ws.close()
            return
        self._sockets.append(ws)
        try:
            for _ in ws:
                pass
        except Exception:
            pass
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)

    def _take_script(self, what: str) -> Scripted | None:
        with self._lock:
            queue = self._scripts.get(what) or []
            if not queue:
                return None
            s = queue[0]
            s.times -= 1
            if s.times <= 0:
                queue.pop(0)
            return s

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any, extra_headers: dict | None = None) -> None:
        raw = (body if isinstance(body, str) else json.dumps(body)).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(raw)))
            with self._lock:
                self._used += 1
                used = self._used
            h.send_header("X-Ratelimit-Allowed", str(self.rate_allowed))
            h.send_header("X-Ratelimit-Used", str(used))
            h.send_header("X-Ratelimit-Available", str(max(self.rate_allowed - used, 1)))
            h.send_header("X-Ratelimit-Expiry", str(int(time.time() * 1000) + 60_000))
            for k, v in (extra_headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if len(raw) < length:  # the client went away mid-request (its timeout): no server acts on half a body
            self.truncated += 1
            return
        form: dict[str, str] = {}
        if method in ("POST", "PUT") and raw:
            ctype = h.headers.get("Content-Type", "")
            if not ctype.startswith("application/x-www-form-urlencoded"):
                self.violations.append(f"{method} {url.path}: body is {ctype!r}, not form-encoded")
            form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        req = Request(method, url.path, parse_qs(url.query), form, dict(h.headers))
        self.requests.append(req)
        bearer = str(h.headers.get("Authorization") or "")
        if bearer.startswith("Bearer ") and bearer[7:] in self.expired_tokens:
            return self._send(h, 500, EXPIRED)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            self.violations.append(f"{method} {url.path}: Authorization header {h.headers.get('Authorization')!r}")
            return self._send(h, 401, {"fault": {"faultstring": "Invalid Access Token",
                                                 "detail": {"errorcode": "keymanagement.service.invalid_access_token"}}})
        if h.headers.get("Accept") != "application/json":
            self.violations.append(f"{method} {url.path}: Accept header {h.headers.get('Accept')!r}")
        route = self._route(method, url.path)
        if route is None:
            self.violations.append(f"unknown endpoint {method} {url.path}")
            return self._send(h, 404, {"errors": {"error": "not found"}})
        what, arg = route
        s = self._take_script(what)
        if s is not None and s.kind != "hang":
            if s.kind == "reject":
                return self._send(h, 200, {"errors": {"error": ["Backoffice rejected override of the order.",
                                                                "DayTradingBuyingPowerExceeded"]}})
            if s.kind == "400":
                return self._send(h, 400, {"errors": {"error": "Invalid Parameter: price"}})
            if s.kind == "429":
                return self._send(h, 429, "Rate limit exceeded", {
                    "X-Ratelimit-Available": "0", "X-Ratelimit-Expiry": str(int(time.time() * 1000) + 300)})
            if s.kind == "html":  # seen in the wild: an HTML page with status 200 (after doing the work)
                getattr(self, f"_do_{what}")(req, arg)
                return self._send(h, 200, "<html><body>Service temporarily unavailable</body></html>")
            if s.kind == "500":
                return self._send(h, 500, {"fault": {"faultstring": "Datastore Error"}})
            if s.kind == "401":  # an expired / revoked token, as Tradier answers it
                return self._send(h, 401, {"fault": {"faultstring": "Invalid Access Token",
                                                     "detail": {"errorcode": "keymanagement.service.access_token_expired"}}})
            if s.kind == "expired":
                return self._send(h, 500, EXPIRED)
            if s.kind in ("order_errors", "order_errors_400"):
                return self._send(h, 200 if s.kind == "order_errors" else 400,
                                  {"order": {"status": "Bad Request", "errors": {"error": [BUYING_POWER_TEXT]}}})
            if s.kind.startswith("status:") or s.kind == "no_id":  # the order is made; the answer is odd
                _, body = getattr(self, f"_do_{what}")(req, arg)
                order = {"status": "ok"} if s.kind == "no_id" else {"id": body["order"]["id"], "status": s.kind[7:]}
                return self._send(h, 200, {"order": order})
        status, body = getattr(self, f"_do_{what}")(req, arg)
        if s is not None and s.kind == "hang":
            self._released.wait(s.delay_s)  # the order exists; the answer comes too late
        self._send(h, status, body)

    def _route(self, method: str, path: str) -> tuple[str, str] | None:
        acct = f"/v1/accounts/{self.account}"
        table = [
            ("GET", f"{acct}/balances", "balances"), ("GET", f"{acct}/positions", "positions"),
            ("GET", f"{acct}/orders", "orders"), ("POST", f"{acct}/orders", "place"),
            ("POST", "/v1/accounts/events/session", "session"), ("GET", "/v1/markets/quotes", "quotes"),
            ("GET", "/v1/markets/options/chains", "chains"), ("GET", "/v1/markets/options/expirations", "expirations"),
        ]
        for m, p, what in table:
            if m == method and path == p:
                return what, ""
        mo = re.fullmatch(re.escape(f"{acct}/orders/") + r"(\d+)", path)
        if mo:
            return {"GET": "order", "PUT": "modify", "DELETE": "cancel"}.get(method, "?"), mo.group(1)
        return None

    # ------------------------------------------------------------------ endpoints

    def _do_balances(self, req, arg):
        return 200, {"balances": self.balances}

    def _do_positions(self, req, arg):
        with self._lock:
            pos = list(self.positions.values())
        if not pos:
            return 200, {"positions": "null"}
        return 200, {"positions": {"position": pos[0] if len(pos) == 1 else pos}}

    def _do_orders(self, req, arg):
        if req.query.get("includeTags") != ["true"]:
            self.violations.append("GET orders without includeTags=true")
        with self._lock:
            orders = list(self.orders.values())
        if not orders:
            return 200, {"orders": "null"}
        return 200, {"orders": {"order": orders[0] if len(orders) == 1 else orders}}

    def _do_order(self, req, arg):
        o = self.orders.get(int(arg))
        return (200, {"order": o}) if o else (404, {"errors": {"error": "order not found"}})

    def _check_order_form(self, f: dict[str, str]) -> list[str]:
        bad = []
        if f.get("class") != "option":
            bad.append(f"class {f.get('class')!r}")
        try:
            sym = occ.parse(f.get("option_symbol", ""))
            if f.get("symbol") != sym.underlying or f.get("option_symbol") != sym.tradier:
                bad.append(f"symbol {f.get('symbol')!r} / option_symbol {f.get('option_symbol')!r}")
        except occ.OptionSymbolError as exc:
            bad.append(str(exc))
        if f.get("side") not in SIDES:
            bad.append(f"side {f.get('side')!r}")
        if f.get("type") not in TYPES:
            bad.append(f"type {f.get('type')!r}")
        if f.get("duration") not in DURATIONS:
            bad.append(f"duration {f.get('duration')!r}")
        if not re.fullmatch(r"[1-9]\d*", f.get("quantity", "")):
            bad.append(f"quantity {f.get('quantity')!r}")
        if f.get("type") in ("limit", "stop_limit") and "price" not in f:
            bad.append("price missing")
        if f.get("type") in ("stop", "stop_limit") and "stop" not in f:
            bad.append("stop missing")
        if "tag" in f and not TAG_RE.match(f["tag"]):
            bad.append(f"tag {f['tag']!r}")
        return bad

    def _do_place(self, req, arg):
        f = req.form
        bad = self._check_order_form(f)
        if bad:
            self.violations.append("place: " + "; ".join(bad))
            return 400, {"errors": {"error": bad}}
        if f.get("preview") == "true":
            return 200, {"order": {"status": "ok", "commission": 0.35, "cost": 100.35, "margin_change": 0,
                                   "day_trades": 0, "result": True}}
        with self._lock:
            self._next_id += 1
            oid = self._next_id
            qty = float(f["quantity"])
            self.orders[oid] = {
                "id": oid, "type": f["type"], "symbol": f["symbol"], "side": f["side"], "quantity": qty,
                "status": "open", "duration": f["duration"], "price": float(f.get("price", 0) or 0),
                "stop_price": float(f.get("stop", 0) or 0), "avg_fill_price": 0.0, "exec_quantity": 0.0,
                "last_fill_price": 0.0, "last_fill_quantity": 0.0, "remaining_quantity": qty,
                "create_date": _now_iso(), "transaction_date": _now_iso(), "class": "option",
                "option_symbol": f["option_symbol"], "tag": f.get("tag"),
            }
        return 200, {"order": {"id": oid, "status": "ok", "partner_id": "c4998eb7-06e8-4820-a7ab-55d9760065fb"}}

    def _do_modify(self, req, arg):
        o = self.orders.get(int(arg))
        if o is None:
            return 400, {"errors": {"error": "order not found"}}
        extra = set(req.form) - {"type", "duration", "price", "stop"}
        if extra:
            self.violations.append(f"modify with fields {sorted(extra)}")
        if o["status"] in ("filled", "canceled", "rejected", "expired"):
            return 400, {"errors": {"error": "order already in finalized state"}}
        if "price" in req.form:
            o["price"] = float(req.form["price"])
        if "stop" in req.form:
            o["stop_price"] = float(req.form["stop"])
        return 200, {"order": {"id": o["id"], "status": "ok"}}

    def _do_cancel(self, req, arg):
        o = self.orders.get(int(arg))
        if o is None:
            return 400, {"errors": {"error": "order not found"}}
        if o["status"] in ("filled", "canceled", "rejected", "expired"):
            return 400, {"errors": {"error": "order already in finalized state"}}
        o["status"] = "canceled"
        self._broadcast(self._event(o))
        return 200, {"order": {"id": o["id"], "status": "ok"}}

    def _do_session(self, req, arg):
        sid = f"sess-{len(self._sessions) + 1}"
        self._sessions.add(sid)
        return 200, {"stream": {"url": self.ws_url, "sessionid": sid}}

    def _do_quotes(self, req, arg):
        syms = (req.query.get("symbols") or [""])[0].split(",")
        quotes = [{"symbol": s, "bid": 1.0, "ask": 1.1, "last": 1.05} for s in syms if s]
        return 200, {"quotes": {"quote": quotes[0] if len(quotes) == 1 else quotes}}

    def _do_chains(self, req, arg):
        exp = (req.query.get("expiration") or ["2026-02-20"])[0]
        ymd = exp[2:].replace("-", "")
        opts = [{"symbol": f"SPXW{ymd}{r}0{k}000", "root_symbol": "SPXW", "strike": float(k),
                 "option_type": "call" if r == "C" else "put", "bid": 1.2, "ask": 1.3,
                 "greeks": {"delta": 0.3 if r == "C" else -0.3}} for k in (5000, 5005) for r in "CP"]
        return 200, {"options": {"option": opts}}

    def _do_expirations(self, req, arg):
        return 200, {"expirations": {"date": ["2026-02-20", "2026-02-23"]}}


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
