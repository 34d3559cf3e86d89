"""Tradier REST client (httpx, async) and the account-events stream reader.

Wire facts: ``docs/vendor/tradier.md`` (with the vendor's pages).  In short: Bearer token, ``Accept:
application/json``, form-encoded POST/PUT bodies, collections that are an object when single and
the string ``"null"`` when empty, money with long decimals (parsed as Decimal), rejections that
arrive as HTTP 200 with an ``errors`` body, gateway ``fault`` bodies, and rate-limit headers.

Error tree (translated at the boundary, ``raise ... from``)::

    TradierError                       .retryable
     +-- TradierTransportError         connect/read failure, timeouts    (retryable for reads)
     +-- TradierHTTPError              .status, .messages
     |    +-- TradierBadRequest        400                              (never retried)
     |    +-- TradierAuthError         401 / fault                      (never retried)
     |    |    +-- TradierTokenExpired  fault ``access_token_expired`` with HTTP 5xx, or
     |    |                             "Access Token expired" (never retried: Tradier answers it 500)
     |    +-- TradierNotFound          404
     |    +-- TradierRateLimited       429, .reset_at                   (retried after the window)
     |    +-- TradierServerError       5xx                              (retryable for reads)
     +-- TradierRejected               HTTP 200 carrying ``errors`` (top level or inside
     |                                 ``order``), .messages = the broker's own text (never retried)
     +-- TradierBadResponse            not JSON / unexpected shape
     +-- PlacementUnresolved           placement outcome unknown and no order with its tag found

Retry policy: reads (GET) and cancels (DELETE, idempotent: a second cancel answers "already
finalized") are retried up to ``max_retries`` on transport errors, 429 and 5xx.  A modify (PUT)
is retried only on 429 (the request was refused before processing).  An order placement (POST)
is retried only on 429; on a timeout, transport error or 5xx the order may exist, so it is NEVER
sent again (the same holds for an answer that is not JSON, e.g. an HTML page with status 200): the
client looks the order up by its ``tag`` (:meth:`TradierClient.find_order_by_tag`)
and returns it when found, else raises :class:`PlacementUnresolved` (the caller keeps the order as
``unknown`` and reconciliation resolves it later by the same tag).

Placement answers (docs/broker.md has the table): the order's ``status`` is compared without
regard to case (``"OK"`` is ``"ok"``); ``errors`` inside ``order`` is a rejection carrying the
broker's reason; an answer with an order ``id`` and no error is accepted, and one whose status is
not a known one is confirmed by ``GET /orders/{id}`` (a rejection found there keeps its
``reason_description``); an answer with neither id nor error is looked up by tag like a lost one.

Every placement goes through :func:`services.broker.router.check_payload` with the broker's own
positions and open orders fetched first: the client refuses ``sell_to_open`` and anything that
could leave a short option, whatever its caller asks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from decimal import Decimal
from typing import Any
from collections.abc import AsyncIterator, Callable

import httpx

from services.broker import router
from spx_common.errors import Fatal, RateLimited, Refused, Retryable, SpxError
from spx_common.retry import Backoff, RateLimiter

log = logging.getLogger("spx.broker.tradier")

#: the gateway fault of an expired access token (answered with HTTP 500, not 401)
TOKEN_EXPIRED = "keymanagement.service.access_token_expired"
OPEN_STATUSES = ("open", "partially_filled", "pending", "calculated", "accepted_for_bidding", "held", "submitted")
FINAL_STATUSES = ("filled", "expired", "canceled", "rejected", "error")


class TradierError(SpxError):
    """Base of every Tradier failure; its kind in the mesh's :mod:`~spx_common.errors` tree says whether the
    same request may be sent again (``retryable``: transport, 429, 5xx)."""


class TradierTransportError(TradierError, Retryable):
    pass


class TradierHTTPError(TradierError):
    def __init__(self, status: int, messages: list[str], body: str = "") -> None:
        super().__init__(f"HTTP {status}: {'; '.join(messages) or body[:200]}")
        self.status = status
        self.messages = messages


class TradierBadRequest(TradierHTTPError, Refused):
    pass


class TradierAuthError(TradierHTTPError, Fatal):
    pass


class TradierTokenExpired(TradierAuthError):
    """The access token expired (fault ``keymanagement.service.access_token_expired``, sent with HTTP 500):
    nothing was done; nothing will work for this account until a new token is stored."""


class TradierNotFound(TradierHTTPError, Refused):
    pass


class TradierRateLimited(TradierHTTPError, RateLimited):
    def __init__(self, status: int, messages: list[str], body: str = "", reset_at: float | None = None) -> None:
        super().__init__(status, messages, body)
        self.reset_at = reset_at


class TradierServerError(TradierHTTPError, Retryable):
    pass


class TradierRejected(TradierError, Refused):
    """HTTP 200 whose body carries ``errors``: the broker refused the request."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("rejected: " + "; ".join(messages))
        self.messages = messages


class TradierBadResponse(TradierError):
    pass


class PlacementUnresolved(TradierError):
    """A placement whose answer was lost and whose tag is not (yet) found: do not re-send."""

    def __init__(self, tag: str, cause: Exception) -> None:
        super().__init__(f"placement with tag {tag} unresolved after {cause!r}")
        self.tag = tag
        self.cause = cause


# ----------------------------------------------------------------------------- parsing (pure)


def as_list(value: Any) -> list:
    """Tradier collections: a list, a single object, ``"null"``/None/empty -> a list."""
    if value is None or value == "null" or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def collection(body: dict, outer: str, inner: str) -> list[dict]:
    """``{"orders": {"order": [...]}}`` (or an object, or ``"null"``) -> list of dicts."""
    wrapper = body.get(outer)
    if wrapper is None or wrapper == "null" or wrapper == "":
        return []
    if not isinstance(wrapper, dict):
        raise TradierBadResponse(f"{outer} is {type(wrapper).__name__}, expected an object")
    return [x for x in as_list(wrapper.get(inner)) if isinstance(x, dict)]


def error_messages(body: Any) -> list[str]:
    """Messages of an ``errors`` or ``fault`` body (``error`` may be one string or a list)."""
    if not isinstance(body, dict):
        return []
    errs = body.get("errors")
    if isinstance(errs, dict):
        return [str(e) for e in as_list(errs.get("error"))]
    if isinstance(errs, (list, str)):
        return [str(e) for e in as_list(errs)]
    order = body.get("order")
    if isinstance(order, dict) and order_errors(order):  # a placement refused inside ``order`` (any status)
        return order_errors(order)
    fault = body.get("fault")
    if isinstance(fault, dict):
        msg = [str(fault.get("faultstring", "fault"))]
        detail = fault.get("detail")
        if isinstance(detail, dict) and detail.get("errorcode"):
            msg.append(str(detail["errorcode"]))
        return msg
    return []


def token_fingerprint(token: str) -> str:
    """A short one-way digest of an access token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def fault_code(body: Any) -> str:
    """``fault.detail.errorcode`` of a gateway fault body ("" when none)."""
    fault = body.get("fault") if isinstance(body, dict) else None
    detail = fault.get("detail") if isinstance(fault, dict) else None
    return str(detail.get("errorcode") or "") if isinstance(detail, dict) else ""


def token_expired(body: Any, status: int) -> bool:
    """The gateway's expired-token answer: HTTP 5xx with the fault code ``access_token_expired`` (how Tradier
    sends it), or a fault whose text says "Access Token expired" at any status. A 401 is a refusal of that
    request (:class:`TradierAuthError`, handled as before: an exit is retried)."""
    fault = body.get("fault") if isinstance(body, dict) else None
    if not isinstance(fault, dict):
        return False
    return (status >= 500 and fault_code(body) == TOKEN_EXPIRED) or \
        "access token expired" in str(fault.get("faultstring", "")).lower()


def order_errors(order: dict) -> list[str]:
    """The broker's reasons inside an order answer: ``errors`` (``{"error": str | [str]}``, a list or a
    string), else a rejected order's ``reason_description``."""
    errs = order.get("errors")
    if isinstance(errs, dict):
        return [str(e) for e in as_list(errs.get("error"))] or ["rejected without message"]
    if isinstance(errs, (list, str)) and errs:
        return [str(e) for e in as_list(errs)]
    return []


#: placement answer statuses that mean accepted (compared in lower case)
ACCEPTED_STATUSES = ("ok",) + OPEN_STATUSES + ("filled",)


_DEC_MAX = Decimal("1e15")


def dec(value: Any, default: Decimal | None = None) -> Decimal | None:
    """A Tradier number (string or number) as Decimal; ``default`` when absent, malformed, not finite
    (``NaN``, ``sNaN``, ``Infinity``: ``float()`` of a signalling NaN raises) or absurdly large."""
    if value is None or value == "" or value == "null":
        return default
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return default
    if not d.is_finite() or abs(d) >= _DEC_MAX:
        return default
    return d


def exec_quantity(order: dict) -> Decimal:
    """Filled quantity of an order or stream event (``exec_quantity``, old ``executed_quantity``)."""
    return dec(order.get("exec_quantity", order.get("executed_quantity")), Decimal(0)) or Decimal(0)


class RateLimit(RateLimiter):
    """The last rate-limit headers seen for one endpoint class; tells how long to wait before a call
    (:class:`spx_common.retry.RateLimiter` told the server's window)."""

    def __init__(self) -> None:
        super().__init__()
        self.allowed: int | None = None
        self.used: int | None = None
        self.available: int | None = None
        self.expiry_ms: int | None = None

    def update(self, headers: httpx.Headers) -> None:
        def num(name: str) -> int | None:
            try:
                return int(headers[name])
            except (KeyError, ValueError):
                return None

        if "x-ratelimit-available" in headers or "x-ratelimit-expiry" in headers:
            self.allowed = num("x-ratelimit-allowed")
            self.used = num("x-ratelimit-used")
            self.available = num("x-ratelimit-available")
            self.expiry_ms = num("x-ratelimit-expiry")
            self.told(self.available, None if self.expiry_ms is None else self.expiry_ms / 1000)

    def as_dict(self) -> dict:
        return {"allowed": self.allowed, "used": self.used, "available": self.available, "expiry_ms": self.expiry_ms}


def endpoint_class(method: str, path: str) -> str:
    if "/markets/" in path:
        return "market_data"
    if "/orders" in path and method != "GET":
        return "trading"
    return "standard"


# ----------------------------------------------------------------------------- client


class TradierClient:
    """Async Tradier REST client for one account (a :class:`services.broker.client.BrokerClient`). See the
    module docstring for the policies."""

    kind = "tradier"

    def __init__(
        self,
        base_url: str,
        token: str,
        account_id: str,
        *,
        timeout_s: float = 5.0,
        place_timeout_s: float = 5.0,
        max_retries: int = 3,
        max_rate_wait_s: float = 65.0,
        backoff_s: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("TradierClient needs an access token")
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        #: identifies the token without holding it (a renewed token is told apart from the expired one)
        self.token_fingerprint = token_fingerprint(token)
        self.max_retries = max_retries
        self.max_rate_wait_s = max_rate_wait_s
        self.backoff_s = backoff_s
        self._backoff = Backoff(backoff_s, jitter="spread")
        self.place_timeout_s = place_timeout_s
        self.clock = clock
        self.limits: dict[str, RateLimit] = {"standard": RateLimit(), "market_data": RateLimit(), "trading": RateLimit()}
        self.calls: dict[str, int] = {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the token
        return f"TradierClient({self.base_url!r}, account={self.account_id!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- transport

    async def _once(self, method: str, path: str, *, params=None, data=None, timeout: float | None = None) -> dict:
        cls = endpoint_class(method, path)
        limit = self.limits[cls]
        wait = limit.wait_s(self.clock())
        if wait > 0:
            if wait > self.max_rate_wait_s:
                raise TradierRateLimited(429, [f"rate limit window resets in {wait:.0f}s"], reset_at=limit.expiry_ms)
            await asyncio.sleep(wait)
        self.calls[cls] = self.calls.get(cls, 0) + 1
        try:
            resp = await self._http.request(method, path, params=params, data=data,
                                            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as exc:
            raise TradierTransportError(f"{method} {path}: timeout ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TradierTransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        limit.update(resp.headers)
        text = resp.text
        try:
            body = json.loads(text, parse_float=Decimal) if text.strip() else {}
        except json.JSONDecodeError:
            body = None
        status = resp.status_code
        msgs = error_messages(body)
        if status == 429:
            reset = limit.expiry_ms
            raise TradierRateLimited(status, msgs or ["rate limited"], text, reset_at=reset)
        if token_expired(body, status):  # HTTP 500 from the gateway, but nothing a retry can cure
            raise TradierTokenExpired(status, msgs, text)
        if status == 401 or (isinstance(body, dict) and "fault" in body and status < 500):
            raise TradierAuthError(status, msgs, text)
        if status == 400:
            raise TradierBadRequest(status, msgs, text)
        if status == 404:
            raise TradierNotFound(status, msgs, text)
        if status >= 500:
            raise TradierServerError(status, msgs, text)
        if status >= 300:
            raise TradierHTTPError(status, msgs, text)
        if not isinstance(body, dict):
            raise TradierBadResponse(f"{method} {path}: HTTP {status} body is not a JSON object: {text[:120]!r}")
        if "errors" in body:
            raise TradierRejected(msgs or ["rejected without message"])
        return body

    async def _request(self, method: str, path: str, *, params=None, data=None, retry: str = "safe") -> dict:
        """``retry``: ``safe`` (transport, 429, 5xx), ``rate`` (429 only) or ``never``."""
        attempt = 0
        while True:
            try:
                return await self._once(method, path, params=params, data=data)
            except TradierError as exc:
                attempt += 1
                retry_ok = (retry == "safe" and exc.retryable) or (retry == "rate" and isinstance(exc, TradierRateLimited))
                if not retry_ok or attempt > self.max_retries:
                    raise
                backoff = self._backoff.delay(attempt - 1)
                if isinstance(exc, TradierRateLimited):
                    # wait for the window to reset when the headers say when; else back off exponentially
                    delay = self.limits[endpoint_class(method, path)].wait_s(self.clock())
                    if delay > self.max_rate_wait_s:
                        raise
                    delay = delay or backoff
                else:
                    delay = backoff
                log.warning("tradier %s %s failed (%s); retry %d in %.2fs", method, path, exc, attempt, delay)
                await asyncio.sleep(delay)

    # ---------------------------------------------------------------- account

    @property
    def _acct(self) -> str:
        return f"/accounts/{self.account_id}"

    async def balances(self) -> dict:
        body = await self._request("GET", f"{self._acct}/balances")
        bal = body.get("balances")
        if not isinstance(bal, dict):
            raise TradierBadResponse("balances missing")
        return bal

    async def positions(self) -> list[dict]:
        return collection(await self._request("GET", f"{self._acct}/positions"), "positions", "position")

    async def orders(self, *, filter_: str = "intraday", page: int | None = None, limit: int | None = None) -> list[dict]:
        params: dict[str, Any] = {"includeTags": "true", "filter": filter_}
        if page is not None:
            params["page"] = page
        if limit is not None:
            params["limit"] = limit
        return collection(await self._request("GET", f"{self._acct}/orders", params=params), "orders", "order")

    async def order(self, order_id: str | int) -> dict:
        body = await self._request("GET", f"{self._acct}/orders/{order_id}", params={"includeTags": "true"})
        o = body.get("order")
        if not isinstance(o, dict):
            raise TradierBadResponse(f"order {order_id} missing")
        return o

    async def find_order_by_tag(self, tag: str) -> dict | None:
        for o in await self.orders():
            if o.get("tag") == tag:
                return o
        return None

    async def long_and_working(self, option_symbol: str) -> tuple[float, float]:
        """Quantity held on ``option_symbol`` and unfilled quantity of working sell orders on it."""
        held = sum(float(dec(p.get("quantity"), Decimal(0))) for p in await self.positions()
                   if p.get("symbol") == option_symbol)
        working = 0.0
        for o in await self.orders():
            if o.get("option_symbol") == option_symbol and str(o.get("side", "")).startswith("sell") \
                    and o.get("status") in OPEN_STATUSES:
                rem = dec(o.get("remaining_quantity"))
                working += float(rem if rem is not None else dec(o.get("quantity"), Decimal(0)) - exec_quantity(o))
        return held, working

    # ---------------------------------------------------------------- trading

    async def place_order(self, payload: dict[str, str], *, preview: bool = False, ts: int = 0) -> dict:
        """Place (or preview) a single-leg option order; returns ``{"id", "status", "events", ...}``
        (``events``: the order found when the placement was resolved by tag or confirmed by id; see
        :class:`services.broker.client.BrokerClient`).

        Guarded by :func:`router.check_payload` against the broker's own positions and working
        orders.  Never sent twice: see the module docstring.
        """
        res = await self._place(payload, preview)
        if not preview:
            found = res.get("order")
            res["events"] = [found] if (res.get("resolved_by_tag") or res.get("confirmed_by_id")) \
                and isinstance(found, dict) else []
        return res

    async def _place(self, payload: dict[str, str], preview: bool) -> dict:
        held, working = (0.0, 0.0)
        if payload.get("side") == "sell_to_close":
            held, working = await self.long_and_working(payload.get("option_symbol", ""))
        router.check_payload(payload, held, working)
        data = dict(payload)
        if preview:
            data["preview"] = "true"
        path = f"{self._acct}/orders"
        attempt = 0
        while True:
            try:
                body = await self._once("POST", path, data=data, timeout=self.place_timeout_s)
                break
            except TradierRateLimited as exc:
                attempt += 1
                delay = self.limits["trading"].wait_s(self.clock())
                if attempt > self.max_retries or delay > self.max_rate_wait_s:
                    raise
                delay = delay or self._backoff.delay(attempt - 1)
                log.warning("placement rate limited (not accepted); retry %d in %.2fs (%s)", attempt, delay, exc)
                await asyncio.sleep(delay)
            except (TradierTransportError, TradierServerError, TradierBadResponse) as exc:
                # no usable answer (timeout, 5xx, an HTML page with 200): the order may exist
                if preview:
                    raise
                log.warning("placement of tag %s has no answer (%s): looking it up by tag", payload["tag"], exc)
                return await self._resolve_by_tag(payload["tag"], exc)
        o = body.get("order")
        if not isinstance(o, dict):
            raise TradierBadResponse(f"placement answer without order: {str(body)[:200]}")
        return await self._placed(o, payload.get("tag", ""), preview)

    async def _placed(self, o: dict, tag: str, preview: bool) -> dict:
        """The outcome of a placement answer ``{"order": o}`` (see the module docstring)."""
        errs = order_errors(o)
        if errs:
            raise TradierRejected(errs)
        status = str(o.get("status") or "ok").strip().lower()
        if preview:
            return o
        if status in ACCEPTED_STATUSES and o.get("id") not in (None, ""):
            return {**o, "status": status}
        if o.get("id") in (None, ""):
            if status in ("rejected", "error"):
                raise TradierRejected([str(o.get("reason_description") or f"order status {o.get('status')}")])
            # neither an id nor an error: whether it exists is unknown, as for a lost answer
            log.warning("placement of tag %s answered %s without an id: looking it up by tag", tag, o)
            return await self._resolve_by_tag(tag, TradierBadResponse(f"placement answer without id: {o}"))
        try:
            found = await self.order(o["id"])
        except TradierError as exc:
            log.warning("placement %s answered status %r; not confirmed by id (%s): taken as accepted",
                        o["id"], o.get("status"), exc)
            return {**o, "status": "ok"}
        found_status = str(found.get("status") or "").lower()
        if found_status in ("rejected", "error"):
            raise TradierRejected(order_errors(found) or [str(found.get("reason_description")
                                                              or f"order status {found.get('status')}")])
        return {"id": o["id"], "status": "ok", "confirmed_by_id": True, "order": found}

    async def _resolve_by_tag(self, tag: str, cause: Exception) -> dict:
        for attempt in range(1 + self.max_retries):
            try:
                found = await self.find_order_by_tag(tag)
            except TradierError as exc:
                log.warning("tag lookup %s failed: %s", tag, exc)
                found = None
            if found is not None:
                return {"id": found.get("id"), "status": "ok", "resolved_by_tag": True, "order": found}
            await asyncio.sleep(self.backoff_s * (attempt + 1))
        raise PlacementUnresolved(tag, cause)

    async def modify_order(self, order_id: str | int, *, ts: int = 0, **fields: str) -> dict:
        """Modify a working order; its answer's ``order`` with ``events`` = [] (they come on the stream)."""
        allowed = {"type", "duration", "price", "stop"}
        bad = set(fields) - allowed
        if bad:
            raise router.OrderRefused("modify_fields", f"cannot modify {sorted(bad)} (quantity: cancel and replace)")
        for key in ("price", "stop"):
            if key in fields and not router.on_grid(Decimal(fields[key])):
                raise router.OrderRefused("off_grid", f"{key} {fields[key]} is not on the SPX tick grid")
        body = await self._request("PUT", f"{self._acct}/orders/{order_id}", data=fields, retry="rate")
        o = body.get("order")
        return {**(o if isinstance(o, dict) else {}), "events": []}

    async def cancel_order(self, order_id: str | int, *, ts: int = 0) -> dict:
        """Cancel a working order; its answer's ``order`` with ``events`` = [] (read the order back)."""
        body = await self._request("DELETE", f"{self._acct}/orders/{order_id}", retry="safe")
        o = body.get("order")
        return {**(o if isinstance(o, dict) else {}), "events": []}

    # ---------------------------------------------------------------- market data

    async def quotes(self, symbols: list[str], greeks: bool = False) -> list[dict]:
        params = {"symbols": ",".join(symbols), "greeks": "true" if greeks else "false"}
        return collection(await self._request("GET", "/markets/quotes", params=params), "quotes", "quote")

    async def option_chain(self, symbol: str, expiration: str, greeks: bool = True) -> list[dict]:
        params = {"symbol": symbol, "expiration": expiration, "greeks": "true" if greeks else "false"}
        return collection(await self._request("GET", "/markets/options/chains", params=params), "options", "option")

    async def expirations(self, symbol: str, include_all_roots: bool = True) -> list[str]:
        params = {"symbol": symbol, "includeAllRoots": "true" if include_all_roots else "false"}
        body = await self._request("GET", "/markets/options/expirations", params=params)
        exp = body.get("expirations")
        if not isinstance(exp, dict):
            return []
        return [str(d) for d in as_list(exp.get("date"))]

    # ---------------------------------------------------------------- account events

    async def create_events_session(self) -> tuple[str, str]:
        """``POST /accounts/events/session`` -> (websocket url, session id); never retried past 429."""
        body = await self._request("POST", "/accounts/events/session", retry="rate")
        stream = body.get("stream")
        if not isinstance(stream, dict) or not stream.get("sessionid") or not stream.get("url"):
            raise TradierBadResponse("events session answer without stream.url/sessionid")
        return str(stream["url"]), str(stream["sessionid"])


async def account_events(client: TradierClient, *, ws_url: str | None = None,
                         open_timeout_s: float = 5.0, idle_timeout_s: float = 90.0) -> AsyncIterator[dict]:
    """Yield order events from one account-events websocket session until it ends.

    Heartbeats are consumed here (they keep ``idle_timeout_s`` from expiring); a silent socket
    raises ``TimeoutError`` so the caller falls back to polling and reconnects.
    """
    from websockets.asyncio.client import connect

    url, session = await client.create_events_session()
    async with connect(ws_url or url, open_timeout=open_timeout_s, max_size=2**20) as ws:
        await ws.send(json.dumps({"events": ["order"], "sessionid": session, "excludeAccounts": []}))
        while True:
            raw = await asyncio.wait_for(ws.recv(), idle_timeout_s)
            try:
                event = json.loads(raw, parse_float=Decimal)
            except (json.JSONDecodeError, TypeError):
                log.warning("account events: non-JSON message dropped")
                continue
            if not isinstance(event, dict) or event.get("event") == "heartbeat":
                continue
            if event.get("event") == "order":
                yield event
