"""Massive WebSocket frames -> mesh models. Pure: bytes in, events and status messages out.

Every server frame is a JSON array that may mix event types, tickers and status messages
(``docs/vendor/massive.md``).  Mapping and units:

=============  =========================================================================
vendor         mesh
=============  =========================================================================
``T`` trade    ``Trade(sym, price=p, size=s, ts=t*1e6, seq=q, exch=x, cond=c)``
``Q`` quote    ``Quote(sym, bid=bp, ask=ap, bid_size=bs, ask_size=as, ts=t*1e6, seq=q,
               bid_exch=bx, ask_exch=ax)``
``V`` index    ``IndexValue(sym=T, value=val, ts=t*1e6)`` (the ticker key of ``V`` is ``T``)
``status``     :class:`Status` (``connected``, ``auth_success``, ``auth_failed``, ``success``,
               ``error``, ``max_connections``, ``force_disconnect``, ``slow_consumer``, ...)
=============  =========================================================================

* Timestamps: the vendor sends Unix **milliseconds** (SIP time ``t``); the mesh uses ns, so
  ``ts = t * 1_000_000`` exactly (integer arithmetic, no float rounding).
* Quote sizes: stock quote sizes are **shares** since 2025-11-03 and were round lots of 100
  before, on the WebSocket, REST and flat files alike; events stamped before :data:`SHARES_SINCE_NS`
  are multiplied by 100 so the mesh always carries shares (replays of old data included): the rule
  of :func:`spx_common.marketrules.quote_size_factor`, which the REST and flat-file readers call.
  Option quote sizes are contracts, unchanged.
  Trade sizes are shares (stocks) or contracts (options), unchanged.
* Unknown or unhandled event types (``A``, ``AM``, ``LULD``, anything new) are counted in
  ``unknown[ev]`` and skipped.  A malformed event (missing field, wrong type, negative price) is
  counted in ``errors[reason]`` and skipped; the good events of the same array are kept.

Speed: the whole array is first decoded in one typed ``msgspec`` pass; only when that fails
(rare) is it re-decoded element by element to isolate the bad ones.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct, field

from spx_common.marketrules import SHARES_SINCE_NS
from spx_common.models import IndexValue, MarketEvent, Quote, Trade, Source

Price = Annotated[float, Meta(ge=0)]
Size = Annotated[float, Meta(ge=0)]
Ms = Annotated[int, Meta(ge=0, le=9_999_999_999_999)]  # ms; bounded so ns fits int64 (year 2286)
Sym = Annotated[str, Meta(min_length=1, max_length=64)]

_MS = 1_000_000


class WTrade(Struct, tag="T", tag_field="ev"):
    sym: Sym
    p: Price
    t: Ms
    s: Size = 0.0
    x: int = 0
    q: int = 0
    c: list[int] = []


class WQuote(Struct, tag="Q", tag_field="ev"):
    sym: Sym
    bp: Price
    ap: Price
    t: Ms
    bs: Size = 0.0
    as_: Size = field(default=0.0, name="as")
    bx: int = 0
    ax: int = 0
    q: int = 0


class WIndex(Struct, tag="V", tag_field="ev"):
    T: Sym
    val: Price
    t: Ms


class Status(Struct, tag="status", tag_field="ev"):
    """A status message (connection, auth, subscription ack, errors, evictions)."""

    status: str
    message: str = ""


_Wire = WTrade | WQuote | WIndex | Status
_ARRAY = msgspec.json.Decoder(list[_Wire])
_ONE = msgspec.json.Decoder(_Wire)
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_EV_ONLY = msgspec.json.Decoder(dict)
KNOWN = {"T", "Q", "V", "status"}


class MassiveParser:
    """Stateless apart from its counters: ``errors[reason]`` and ``unknown[ev]``."""

    def __init__(self, source: Source = "tick") -> None:
        self.source = source
        self.errors: dict[str, int] = {}
        self.unknown: dict[str, int] = {}

    def _err(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def parse(self, raw: bytes | str) -> tuple[list[MarketEvent], list[Status]]:
        """One server frame -> (events in array order, status messages)."""
        try:
            items = _ARRAY.decode(raw)
        except msgspec.ValidationError:
            items = self._slow(raw)
        except (msgspec.DecodeError, RecursionError):  # RecursionError: absurdly deep nesting
            self._err("bad_json")
            return [], []
        events: list[MarketEvent] = []
        statuses: list[Status] = []
        src = self.source
        for w in items:
            cls = type(w)
            if cls is WQuote:
                ts = w.t * _MS
                bs, as_ = w.bs, w.as_
                if ts < SHARES_SINCE_NS and not w.sym.startswith("O:"):  # quote_size_factor, inlined (hot path)
                    bs, as_ = bs * 100, as_ * 100
                events.append(Quote(sym=w.sym, bid=w.bp, ask=w.ap, bid_size=bs, ask_size=as_, ts=ts, seq=w.q,
                                    bid_exch=w.bx, ask_exch=w.ax, source=src))
            elif cls is WTrade:
                events.append(Trade(sym=w.sym, price=w.p, size=w.s, ts=w.t * _MS, seq=w.q, exch=w.x, cond=w.c,
                                    source=src))
            elif cls is WIndex:
                events.append(IndexValue(sym=w.T, value=w.val, ts=w.t * _MS, source=src))
            else:
                statuses.append(w)
        return events, statuses

    def _slow(self, raw: bytes | str) -> list:
        """Element by element: keep the good, count the unknown and the malformed."""
        try:
            parts = _RAWS.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            self._err("not_array")
            return []
        out = []
        for part in parts:
            try:
                out.append(_ONE.decode(part))
                continue
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                pass
            try:
                obj = _EV_ONLY.decode(part)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                self._err("not_object")
                continue
            ev = obj.get("ev")
            if not isinstance(ev, str):
                self._err("no_ev")
            elif ev in KNOWN:
                self._err(f"bad_{ev}")
            else:
                key = ev[:16]
                if key not in self.unknown and len(self.unknown) >= 64:
                    key = "other"  # bounded label set
                self.unknown[key] = self.unknown.get(key, 0) + 1
        return out


def to_wire(ev: MarketEvent) -> dict:
    """The vendor's JSON object for a mesh event (inverse of :meth:`MassiveParser.parse`).

    Used by the fake Massive server and the benchmark; times are truncated to whole ms as the
    vendor sends them.
    """
    t = ev.ts // _MS
    if isinstance(ev, Trade):
        d = {"ev": "T", "sym": ev.sym, "x": ev.exch, "p": ev.price, "s": ev.size, "t": t, "q": ev.seq}
        if ev.cond:
            d["c"] = list(ev.cond)
        return d
    if isinstance(ev, Quote):
        return {"ev": "Q", "sym": ev.sym, "bx": ev.bid_exch, "bp": ev.bid, "bs": ev.bid_size, "ax": ev.ask_exch,
                "ap": ev.ask, "as": ev.ask_size, "t": t, "q": ev.seq}
    return {"ev": "V", "val": ev.value, "T": ev.sym, "t": t}
def chain_contracts(rows: list[dict], root: str) -> tuple[list[dict], float | None]:
    """Massive option chain snapshot rows (REST ``/v3/snapshot/options``) -> the ``chain.<root>`` contract dicts
    the synthetic source also produces, sorted by strike and type, and the underlying's value (None when no
    row carries one). Rows of other roots (``SPX`` for ``SPXW``) and malformed rows are skipped."""
    out, underlying = [], None
    prefix = f"O:{root}"
    for r in rows:
        d = r.get("details") or {}
        sym = str(d.get("ticker", ""))
        if not sym.startswith(prefix) or sym[len(prefix):len(prefix) + 1].isalpha():
            continue
        q = r.get("last_quote") or {}
        g = r.get("greeks") or {}
        try:
            bid, ask = float(q.get("bid", 0) or 0), float(q.get("ask", 0) or 0)
            out.append({"symbol": sym, "strike": float(d["strike_price"]), "type": str(d.get("contract_type")),
                        "expiration": str(d.get("expiration_date")), "bid": bid, "ask": ask,
                        "mid": round((bid + ask) / 2, 3), "open_interest": int(r.get("open_interest") or 0),
                        "volume": int((r.get("day") or {}).get("volume") or 0),
                        "iv": r.get("implied_volatility"), "delta": g.get("delta"), "gamma": g.get("gamma")})
        except (KeyError, TypeError, ValueError):
            continue
        ua = r.get("underlying_asset") or {}
        if underlying is None:
            v = ua.get("value", ua.get("price"))
            underlying = float(v) if isinstance(v, (int, float)) else None
    out.sort(key=lambda c: (c["strike"], c["type"]))
    return out, underlying


