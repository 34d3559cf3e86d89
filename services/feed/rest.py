"""Massive REST client (async, httpx): history for backfill, last trade/NBBO for polling, chain snapshots.

::

    async with MassiveRest("https://api.massive.com", key) as rest:
        bars = await rest.aggregates("SPY", 1, "minute", "2026-11-20", "2026-11-20")
        async for t in rest.trades("SPY", gte_ns=a, lt_ns=b):   # Trade(source="backfill", backfilled=True)
            ...
        quotes, truncated = await rest.recent_quotes("O:SPXW261120C05900000", gte_ns=a, lt_ns=b, max_rows=5000)
        q = await rest.last_quote("SPY")                         # Quote(source="poll") or None

Behaviour:

* Auth by ``Authorization: Bearer <key>`` on every request, including when following
  ``next_url`` (the vendor never puts the key in it).  Only the path and query of a ``next_url``
  are kept and sent to the configured base URL (as the vendor's own client does): whatever host
  an answer names, the key goes nowhere else.
* Retry taxonomy (:class:`RestError`: :class:`RestRetryable` or :class:`RestFatal`, kinds of the mesh's
  :mod:`~spx_common.errors` tree; each outcome counted in ``rest_requests_total``): *retryable* - 413, 429, 499, 500, 502, 503, 504 (the official client's list), timeouts and
  connection errors: retried up to ``retries`` times with capped exponential backoff and full
  jitter (a 429 waits at least ``rate_limit_wait_s``, or ``Retry-After`` when sent);
  *fatal* - every other 4xx (401 unknown key, 403 not entitled, 404, 400) and bodies that are not
  the documented JSON: raised at once.  5xx bodies are often nginx HTML; they are never parsed.
* Rate limiting: at most ``requests_per_s`` requests in any second (:class:`spx_common.retry.RateLimiter`;
  default 50; the vendor asks paid plans to stay under ~100/s and documents no rate-limit headers).
* Units: REST times are already ns; quote sizes follow the same shares rule as the stream and the
  flat files (:func:`spx_common.marketrules.quote_size_factor`). A trade with ``correction`` != 0 is
  flagged ``excl=2`` (out of bars, docs/microbars.md).
* Answer shapes the vendor really sends (docs/feed.md has the table): option trades without
  ``sequence_number`` (the options ``/v3/trades`` answer has none: the dedupe keys them by print,
  :mod:`services.feed.pipeline`); index snapshot rows without ``last_updated`` (stamped with the
  answer's arrival time); index aggregates, whose ``t`` is the bar's *start*, become index values
  stamped at the bar's end (:meth:`MassiveRest.index_closes`).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from spx_common.errors import Fatal, Retryable, SpxError
from spx_common.retry import Backoff, RateLimiter
from spx_common.marketrules import EXCL_CORRECTION, quote_size_factor
from spx_common.metrics import Registry
from spx_common.models import IndexValue, Quote, Source, Trade

RETRYABLE_STATUS = frozenset({413, 429, 499, 500, 502, 503, 504})


class RestError(SpxError):
    """A REST failure, raised as :class:`RestRetryable` or :class:`RestFatal`; ``status`` the HTTP status
    (0: none)."""

    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(f"{self.kind} REST error {status or ''} {message} ({url})".replace("  ", " "))
        self.status = status
        self.message = message
        self.url = url

    @property
    def kind(self) -> str:
        """``retryable`` or ``fatal`` (the taxonomy in the module docstring)."""
        return "retryable" if self.retryable else "fatal"


class RestRetryable(RestError, Retryable):
    """413, 429, 499, 5xx, a timeout or a connection error: retried, then raised."""


class RestFatal(RestError, Fatal):
    """Any other 4xx (key, entitlement), or a body that is not the documented JSON: raised at once."""


class MassiveRest:
    """See module docstring. One instance per process; close with ``aclose()`` or ``async with``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 4,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 20.0,
        rate_limit_wait_s: float = 1.0,
        requests_per_s: float = 50.0,
        registry: Registry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.rate_limit_wait_s = rate_limit_wait_s
        self.requests_per_s = requests_per_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            transport=transport, limits=httpx.Limits(max_connections=8, max_keepalive_connections=4))
        reg = registry or Registry()
        self.m_requests = reg.counter("rest_requests_total", "REST requests by outcome "
                                      "(ok, retryable_<status|timeout|connect>, fatal_<status|body>).", ["outcome"])
        self.m_retries = reg.counter("rest_retries_total", "REST retries after a retryable failure.")
        self.m_refused = reg.counter("rest_rows_refused_total", "Rows of an answer refused (malformed, out of "
                                     "range); the good rows around them are kept.", ["kind"])
        self._limiter = RateLimiter.per_second(requests_per_s)
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._limit_lock = asyncio.Lock()

    async def __aenter__(self) -> MassiveRest:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ transport with retries

    async def _acquire(self) -> None:
        async with self._limit_lock:
            while (wait := self._limiter.wait_s(time.monotonic())) > 0:
                await asyncio.sleep(wait)
            self._limiter.record(time.monotonic())

    def _delay(self, attempt: int) -> float:
        return self._backoff.delay(attempt)

    async def get_json(self, path_or_url: str, params: dict[str, Any] | None = None) -> dict:
        """GET with the retry policy; ``path_or_url`` is a path under the base URL or a full ``next_url``,
        of which only the path and query are used (:func:`same_host_path`)."""
        url = f"{self.base_url}{same_host_path(path_or_url)}"
        attempt = 0
        while True:
            await self._acquire()
            try:
                resp = await self._client.get(url, params=params)
            except httpx.TimeoutException as exc:
                err = RestRetryable(0, f"timeout: {exc!r}", url)
                outcome = "retryable_timeout"
            except httpx.TransportError as exc:
                err = RestRetryable(0, f"connection: {exc!r}", url)
                outcome = "retryable_connect"
            else:
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                    except ValueError:
                        self.m_requests.inc(outcome="fatal_body")
                        raise RestFatal(200, f"not JSON: {resp.text[:120]!r}", url) from None
                    if not isinstance(body, dict):
                        self.m_requests.inc(outcome="fatal_body")
                        raise RestFatal(200, "JSON body is not an object", url)
                    self.m_requests.inc(outcome="ok")
                    return body
                message = _error_message(resp)
                if resp.status_code in RETRYABLE_STATUS:
                    err = RestRetryable(resp.status_code, message, url)
                    outcome = f"retryable_{resp.status_code}"
                else:
                    self.m_requests.inc(outcome=f"fatal_{resp.status_code}")
                    raise RestFatal(resp.status_code, message, url)
            self.m_requests.inc(outcome=outcome)
            if attempt >= self.retries:
                raise err
            delay = self._delay(attempt)
            if err.status == 429:
                retry_after = resp.headers.get("Retry-After", "")
                delay = max(delay, float(retry_after) if retry_after.isdigit() else self.rate_limit_wait_s)
            attempt += 1
            self.m_retries.inc()
            await asyncio.sleep(delay)

    async def paginate(self, path: str, params: dict[str, Any], max_pages: int = 10_000) -> AsyncIterator[dict]:
        """Yield each result of a paged endpoint, following ``next_url`` (bounded by ``max_pages``)."""
        body = await self.get_json(path, params)
        pages = 1
        while True:
            for r in self._rows(body, path):
                yield r
            nxt = body.get("next_url")
            if not nxt or pages >= max_pages:
                return
            if not isinstance(nxt, str):
                self.m_refused.inc(kind="next_url")
                raise RestFatal(200, f"next_url is not a string: {nxt!r:.60}", path)
            body = await self.get_json(nxt)
            pages += 1

    def _rows(self, body: dict, where: str) -> list:
        """``results`` of an answer: a list (absent/null = none); anything else is refused with an error."""
        rows = body.get("results")
        if rows is None:
            return []
        if not isinstance(rows, list):
            self.m_refused.inc(kind="results")
            raise RestFatal(200, f"'results' is not a list: {type(rows).__name__}", where)
        return rows

    # ------------------------------------------------------------------ endpoints

    async def aggregates(self, ticker: str, multiplier: int, timespan: str, frm: str | int, to: str | int,
                         *, adjusted: bool = True, limit: int = 50_000) -> list[dict]:
        """Bars ``{o,h,l,c,v,vw,t (ms),n}`` (indices: ``o,h,l,c,t``) ascending; ``timespan`` second/minute/..."""
        path = f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{frm}/{to}"
        params = {"adjusted": str(adjusted).lower(), "sort": "asc", "limit": limit}
        return [r async for r in self.paginate(path, params)]

    async def trades(self, ticker: str, *, gte_ns: int, lt_ns: int, limit: int = 50_000,
                     source: Source = "backfill") -> AsyncIterator[Trade]:
        """Trades in ``[gte_ns, lt_ns)`` ascending, as ``Trade`` (backfilled=True). Malformed rows skipped."""
        params = {"timestamp.gte": gte_ns, "timestamp.lt": lt_ns, "order": "asc", "sort": "timestamp",
                  "limit": limit}
        async for r in self.paginate(f"/v3/trades/{ticker}", params):
            t = trade_from_rest(ticker, r, source)
            if t is not None:
                yield t
            else:
                self.m_refused.inc(kind="trade")

    async def quotes(self, ticker: str, *, gte_ns: int, lt_ns: int, limit: int = 50_000,
                     source: Source = "backfill") -> AsyncIterator[Quote]:
        """Quotes in ``[gte_ns, lt_ns)`` ascending, as ``Quote`` (backfilled=True). Malformed rows skipped."""
        params = {"timestamp.gte": gte_ns, "timestamp.lt": lt_ns, "order": "asc", "sort": "timestamp",
                  "limit": limit}
        async for r in self.paginate(f"/v3/quotes/{ticker}", params):
            q = quote_from_rest(ticker, r, source)
            if q is not None:
                yield q
            else:
                self.m_refused.inc(kind="quote")

    async def recent_quotes(self, ticker: str, *, gte_ns: int, lt_ns: int, max_rows: int,
                            source: Source = "backfill") -> tuple[list[Quote], bool]:
        """The newest ``max_rows`` quotes in ``[gte_ns, lt_ns)``, returned ascending, and ``truncated``.

        For tickers whose quotes are too many to fetch whole (option contracts): the vendor is asked
        newest first (``order=desc``) in pages of ``min(max_rows, 50_000)``, at most
        ``ceil(max_rows / page) + 1`` pages (a short page still moves on), so the latest part of
        the window is complete and ``truncated`` tells that older quotes were left unfetched.
        Malformed rows are skipped and counted like in :meth:`quotes`.
        """
        limit = max(1, min(max_rows, 50_000))
        max_pages = -(-max_rows // limit) + 1
        path = f"/v3/quotes/{ticker}"
        body = await self.get_json(path, {"timestamp.gte": gte_ns, "timestamp.lt": lt_ns, "order": "desc",
                                          "sort": "timestamp", "limit": limit})
        out: list[Quote] = []
        rows_seen, pages = 0, 1
        while True:
            rows = self._rows(body, path)
            for r in rows:
                if rows_seen >= max_rows:
                    out.reverse()
                    return out, True
                rows_seen += 1
                q = quote_from_rest(ticker, r, source)
                if q is not None:
                    out.append(q)
                else:
                    self.m_refused.inc(kind="quote")
            nxt = body.get("next_url")
            if not nxt:
                break
            if rows_seen >= max_rows or pages >= max_pages:
                out.reverse()
                return out, True
            if not isinstance(nxt, str):
                self.m_refused.inc(kind="next_url")
                raise RestFatal(200, f"next_url is not a string: {nxt!r:.60}", path)
            body = await self.get_json(nxt)
            pages += 1
        out.reverse()
        return out, False

    async def _last_results(self, path: str) -> dict | None:
        """The ``results`` object of a last-trade/NBBO answer; None when the vendor has none (404)."""
        try:
            body = await self.get_json(path)
        except RestError as exc:
            if exc.status == 404:
                return None
            raise
        return body.get("results") or {}

    async def last_trade(self, ticker: str) -> Trade | None:
        """``/v2/last/trade``: the latest trade as ``Trade(source="poll")``; None when there is none (404)."""
        r = await self._last_results(f"/v2/last/trade/{ticker}")
        if r is None:
            return None
        try:
            return Trade(sym=ticker, price=_nonneg(r["p"]), size=_nonneg(r.get("s", 0)), ts=_ns(r["t"]),
                         seq=_int(r.get("q", 0)), exch=_int(r.get("x", 0)), cond=_ints(r.get("c")),
                         source="poll")
        except _BAD_ROW:
            self.m_refused.inc(kind="last_trade")
            return None

    async def last_quote(self, ticker: str) -> Quote | None:
        """``/v2/last/nbbo``: the latest NBBO as ``Quote(source="poll")``; None when there is none (404)."""
        r = await self._last_results(f"/v2/last/nbbo/{ticker}")
        if r is None:
            return None
        try:
            ts = _ns(r["t"])
            mult = quote_size_factor(ticker, ts)
            return Quote(sym=ticker, bid=_nonneg(r["p"]), ask=_nonneg(r["P"]), bid_size=_nonneg(r.get("s", 0)) * mult,
                         ask_size=_nonneg(r.get("S", 0)) * mult, ts=ts, seq=_int(r.get("q", 0)),
                         bid_exch=_int(r.get("x", 0)), ask_exch=_int(r.get("X", 0)), source="poll")
        except _BAD_ROW:
            self.m_refused.inc(kind="last_quote")
            return None

    async def index_values(self, tickers: list[str]) -> list[IndexValue]:
        """``/v3/snapshot/indices``: current values as ``IndexValue(source="poll")`` (missing tickers skipped).

        ``last_updated`` is optional in the vendor's answers (its own client treats it so; recorded
        answers carry an ``I:SPX`` row with a ``value`` and no time): such a row is stamped with the
        wall time the answer arrived, the time its value is known to hold.
        """
        body = await self.get_json("/v3/snapshot/indices", {"ticker.any_of": ",".join(tickers)})
        arrived_ns = time.time_ns()
        out = []
        for r in self._rows(body, "/v3/snapshot/indices"):
            ev = index_from_snapshot(r, arrived_ns)
            if ev is not None:
                out.append(ev)
            elif not (isinstance(r, dict) and "error" in r):
                self.m_refused.inc(kind="index_value")
        return out

    async def index_closes(self, ticker: str, *, gte_ns: int, lt_ns: int) -> list[IndexValue]:
        """1-second index aggregates over ``[gte_ns, lt_ns)`` as the closes they are: ``IndexValue``
        (backfilled) stamped at the **end** of each bar, ``t + 999 ms`` (``t`` is the bar's start; the
        close is the last value inside the bar, so it stays in its own 1 s bucket and never opens it).
        Bars ending before ``gte_ns`` or without a close are skipped; malformed ones counted."""
        # from the start of the bar holding gte_ns (the vendor returns bars by their start time)
        bars = await self.aggregates(ticker, 1, "second", gte_ns // 1_000_000_000 * 1_000, lt_ns // 1_000_000)
        out: list[IndexValue] = []
        for b in bars:
            ev = index_close_from_bar(ticker, b, 1_000)
            if ev is None:
                if not (isinstance(b, dict) and b.get("c") is None and "t" in b):
                    self.m_refused.inc(kind="aggregate")
                continue
            if gte_ns <= ev.ts < lt_ns:
                out.append(ev)
        return out

    async def option_chain(self, underlying: str, *, expiration: str | None = None, strike_gte: float | None = None,
                           strike_lte: float | None = None, limit: int = 250) -> list[dict]:
        """``/v3/snapshot/options/{underlying}`` results (all pages), filtered as asked."""
        params: dict[str, Any] = {"limit": limit}
        if expiration:
            params["expiration_date"] = expiration
        if strike_gte is not None:
            params["strike_price.gte"] = strike_gte
        if strike_lte is not None:
            params["strike_price.lte"] = strike_lte
        return [r async for r in self.paginate(f"/v3/snapshot/options/{underlying}", params)]


#: what a malformed row raises in the converters below (OverflowError: int() of an infinite float)
_BAD_ROW = (KeyError, TypeError, ValueError, OverflowError)
_I64 = 2**63
_MS_MAX = 9_999_999_999_999  # ms; as the stream parser's bound, so the ns time fits int64


def _nonneg(x: Any) -> float:
    v = float(x)
    if not 0 <= v < math.inf:  # also refuses NaN and infinities
        raise ValueError(f"negative, infinite or NaN value {x!r}")
    return v


def _int(x: Any) -> int:
    """An integer field; must fit the wire's int64 (a larger one would make the whole frame unpublishable)."""
    v = int(x)
    if not -_I64 <= v < _I64:
        raise ValueError(f"integer out of range {x!r:.40}")
    return v


def _ns(x: Any) -> int:
    v = _int(x)
    if v < 0:
        raise ValueError(f"negative timestamp {x!r}")
    return v


def _ints(x: Any) -> list[int]:
    if x is None:
        return []
    if not isinstance(x, list):
        raise TypeError("conditions must be a list")
    return [_int(c) for c in x]


def same_host_path(url: str) -> str:
    """The path and query of ``url`` (a ``next_url`` or a path): what is sent to the configured base URL."""
    if not url.startswith(("http://", "https://", "//")):
        return url if url.startswith("/") else f"/{url}"
    u = urlsplit(url)
    return (u.path or "/") + (f"?{u.query}" if u.query else "")


def index_from_snapshot(r: Any, arrived_ns: int) -> IndexValue | None:
    """A ``/v3/snapshot/indices`` row -> ``IndexValue(source="poll")``; None for an error row or a
    malformed one.  ``last_updated`` (ns) when given, else ``arrived_ns``."""
    if not isinstance(r, dict) or "error" in r:
        return None
    try:
        ts = _ns(r["last_updated"]) if r.get("last_updated") is not None else arrived_ns
        return IndexValue(sym=str(r["ticker"]), value=_nonneg(r["value"]), ts=ts, source="poll")
    except _BAD_ROW:
        return None


def index_close_from_bar(ticker: str, b: Any, span_ms: int) -> IndexValue | None:
    """An aggregate bar ``{o,h,l,c,t}`` (``t``: the bar's start, ms) -> its close as a backfilled
    ``IndexValue`` stamped at the bar's last millisecond, ``t + span_ms - 1``; None without a close."""
    try:
        if b.get("c") is None:
            return None
        t = _ns(b["t"])
        if t > _MS_MAX:
            raise ValueError(f"bar time out of range {t}")
        return IndexValue(sym=ticker, value=_nonneg(b["c"]), ts=(t + span_ms - 1) * 1_000_000,
                          source="backfill", backfilled=True)
    except (*_BAD_ROW, AttributeError):
        return None


def trade_from_rest(ticker: str, r: dict, source: Source = "backfill") -> Trade | None:
    """A ``/v3/trades`` result -> Trade (None when malformed).  Option trades come without
    ``sequence_number`` (seq 0): the dedupe then matches them to the streamed print by content."""
    try:
        return Trade(sym=ticker, price=_nonneg(r["price"]), size=_nonneg(r.get("size", 0)), ts=_ns(r["sip_timestamp"]),
                     seq=_int(r.get("sequence_number", 0)), exch=_int(r.get("exchange", 0)),
                     cond=_ints(r.get("conditions")), source=source, backfilled=True,
                     excl=EXCL_CORRECTION if _int(r.get("correction") or 0) else 0)
    except _BAD_ROW:
        return None


def quote_from_rest(ticker: str, r: dict, source: Source = "backfill") -> Quote | None:
    """A ``/v3/quotes`` result -> Quote (None when malformed); sizes in shares (see module docstring)."""
    try:
        ts = _ns(r["sip_timestamp"])
        mult = quote_size_factor(ticker, ts)
        return Quote(sym=ticker, bid=_nonneg(r.get("bid_price", 0)), ask=_nonneg(r.get("ask_price", 0)),
                     bid_size=_nonneg(r.get("bid_size", 0)) * mult, ask_size=_nonneg(r.get("ask_size", 0)) * mult,
                     ts=ts, seq=_int(r.get("sequence_number", 0)), bid_exch=_int(r.get("bid_exchange", 0)),
                     ask_exch=_int(r.get("ask_exchange", 0)), source=source, backfilled=True)
    except _BAD_ROW:
        return None


def _error_message(resp: httpx.Response) -> str:
    ctype = resp.headers.get("content-type", "")
    if "json" in ctype:
        try:
            body = resp.json()
            if isinstance(body, dict):
                return str(body.get("error") or body.get("message") or body.get("status") or "")[:300]
        except ValueError:
            pass
    return f"non-JSON {ctype or 'body'} ({len(resp.content)} bytes)"
