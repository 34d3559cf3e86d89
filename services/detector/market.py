"""Market-state snapshot: pure functions of closed bars and the option chain (event time).

Recomputed on a cadence (not per tick) by the detector host and published on ``state.market``:
prior-day high/low/close and floor pivots, opening range, session VWAP with 1σ/2σ bands,
GEX from the chain (per-strike gamma exposure, call wall, put wall, zero-gamma flip), regime
(``trending``, ``ranging``, ``compression``, ``breakout``) and the SPX–SPY basis.

**The regular session bounds them.** Session high/low, opening range, VWAP, the regime's closes and
the prior day's high/low/close are taken over bars starting inside the regular session of their New
York date (09:30-16:00, 13:00 on early closes, none on holidays and weekends: the exchange calendar,
``spx_common/calendar.py``). Extended-hours bars (pre-market from 04:00, post-market to 20:00) are
folded into ``extended`` (high, low, VWAP over every bar of the date) and ``last``; the snapshot's
``session`` says which session the latest bar was in (``pre``, ``regular``, ``post``, ``closed``) and
that the top-level values are ``regular`` ones. Setup formation outside the session is the
detector host's rule (``[detector] extended_hours``, services/detector/core.py).

VWAP is the volume-weighted price of the trades: each bar adds ``vwap × volume`` (Σ price·size of its
trades) and its volume; a bar without a VWAP (index values, zero volume) adds its typical price
``(high + low + close) / 3`` with weight ``volume`` or 1 (time-weighted for the index).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType

from spx_common import calendar as mcal
from spx_common.calendar import ET
from spx_common.clock import NS_PER_S
from spx_common.models import MicroBar



def session_open_ns(ts_ns: int) -> int:
    d = dt.datetime.fromtimestamp(ts_ns / 1e9, ET).date()
    return int(dt.datetime(d.year, d.month, d.day, 9, 30, tzinfo=ET).timestamp() * 1e9)


def _session_bounds(day_open_ns: int) -> tuple[int, int, bool]:
    """(open_ns, close_ns, early) of the regular session of the date whose 09:30 is ``day_open_ns``;
    (0, 0, False) when the market is closed all day."""
    s = mcal.session(mcal.et_date(day_open_ns))
    return (0, 0, False) if s is None else (s.open_ns, s.close_ns, s.early)


def _bar_vwap_terms(bar: MicroBar) -> tuple[float, float]:
    """(price, weight) a bar adds to a VWAP: its trades' VWAP and volume, else typical price, volume or 1."""
    if bar.vwap is not None and bar.volume > 0:
        return bar.vwap, bar.volume
    return (bar.high + bar.low + bar.close) / 3, bar.volume if bar.volume > 0 else 1.0


class WindowExtremes:
    """Max and min of the last ``size`` values pushed, O(1) amortised: ``hi[0][1]`` and ``lo[0][1]``
    (monotonic deques of (index, value); the same numbers ``max``/``min`` of the window give)."""

    __slots__ = ("size", "i", "hi", "lo")

    def __init__(self, size: int) -> None:
        self.size, self.i = size, 0
        self.hi: deque[tuple[int, float]] = deque()
        self.lo: deque[tuple[int, float]] = deque()

    def push(self, v: float) -> None:
        i = self.i = self.i + 1
        hi, lo = self.hi, self.lo
        while hi and hi[-1][1] <= v:
            hi.pop()
        hi.append((i, v))
        if hi[0][0] <= i - self.size:
            hi.popleft()
        while lo and lo[-1][1] >= v:
            lo.pop()
        lo.append((i, v))
        if lo[0][0] <= i - self.size:
            lo.popleft()

    def clear(self) -> None:
        self.hi.clear()
        self.lo.clear()


@dataclass
class SessionState:
    """Running session statistics of one symbol (bounded: scalars only); see the module docstring."""

    opening_range_min: float = 15.0
    day_open_ns: int = 0
    #: the regular session of the current date: [open_ns, close_ns); both 0 when closed all day
    open_ns: int = 0
    close_ns: int = 0
    early_close: bool = False
    #: where the latest bar was: pre, regular, post or closed (a day without a session)
    now: str = "closed"
    x_high: float = -math.inf  # extended: every bar of the date
    x_low: float = math.inf
    x_pv: float = 0.0
    x_vol: float = 0.0
    x_p2v: float = 0.0
    high: float = -math.inf
    low: float = math.inf
    close: float | None = None  # the latest bar's close, any session ("last")
    reg_close: float | None = None  # the latest regular-session close (the prior day's close tomorrow)
    prior: dict | None = None
    or_high: float | None = None
    or_low: float | None = None
    pv: float = 0.0
    vol: float = 0.0
    p2v: float = 0.0
    n: int = 0
    last_ns: int = 0
    closes: list = field(default_factory=list)  # last 120 closes for the regime
    _w30: WindowExtremes = field(default_factory=lambda: WindowExtremes(30), repr=False, compare=False)
    _w120: WindowExtremes = field(default_factory=lambda: WindowExtremes(120), repr=False, compare=False)
    # frozen_snapshot()'s read-only maps of the previous bar, each with what it was built from
    _frozen_prior: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _frozen_session: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _frozen_or: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def on_bar(self, bar: MicroBar) -> None:
        t = bar.start_ns
        # the session open only changes with the New York date: recompute it only off today's window
        if self.day_open_ns <= t < self.day_open_ns + 14 * 3600 * NS_PER_S:
            start = self.day_open_ns
        else:
            start = session_open_ns(t)
        if start != self.day_open_ns:
            if self.reg_close is not None and self.high > -math.inf:
                self.prior = {"high": self.high, "low": self.low, "close": self.reg_close}
            self.day_open_ns = start
            self.open_ns, self.close_ns, self.early_close = _session_bounds(start)
            self.high, self.low, self.reg_close = -math.inf, math.inf, None
            self.x_high, self.x_low = -math.inf, math.inf
            self.or_high = self.or_low = None
            self.pv = self.vol = self.p2v = 0.0
            self.x_pv = self.x_vol = self.x_p2v = 0.0
            self.n = 0
            self.closes = []
            self._w30.clear()
            self._w120.clear()
        self.last_ns = bar.start_ns
        self.close = bar.close
        price, w = _bar_vwap_terms(bar)
        self.x_high = max(self.x_high, bar.high)
        self.x_low = min(self.x_low, bar.low)
        self.x_pv += price * w
        self.x_p2v += price * price * w
        self.x_vol += w
        if not self.open_ns:
            self.now = "closed"
            return
        if t < self.open_ns:
            self.now = "pre"
            return
        if t >= self.close_ns:
            self.now = "post"
            return
        self.now = "regular"
        self.high = max(self.high, bar.high)
        self.low = min(self.low, bar.low)
        self.reg_close = bar.close
        if t < self.open_ns + self.opening_range_min * 60e9:
            self.or_high = bar.high if self.or_high is None else max(self.or_high, bar.high)
            self.or_low = bar.low if self.or_low is None else min(self.or_low, bar.low)
        self.pv += price * w
        self.p2v += price * price * w
        self.vol += w
        self.n += 1
        self.closes.append(bar.close)
        if len(self.closes) > 120:
            del self.closes[0]
        self._w30.push(bar.close)
        self._w120.push(bar.close)

    def in_session(self, ts_ns: int) -> bool:
        """``ts_ns`` is inside the regular session of the current date."""
        return self.open_ns <= ts_ns < self.close_ns

    def or_complete(self, now_ns: int) -> bool:
        return now_ns >= self.day_open_ns + self.opening_range_min * 60e9 and self.or_high is not None

    def vwap(self) -> tuple[float | None, float | None]:
        """Regular-session VWAP and the volume-weighted standard deviation around it."""
        return _vwap(self.pv, self.p2v, self.vol)

    def session_doc(self) -> dict:
        return {"now": self.now, "values": "regular", "open_ns": self.open_ns or None,
                "close_ns": self.close_ns or None, "early_close": self.early_close}

    def extended_doc(self) -> dict:
        xv, _ = _vwap(self.x_pv, self.x_p2v, self.x_vol)
        return {"high": _f(self.x_high), "low": _f(self.x_low), "vwap": xv}

    def regime(self) -> str:
        c = self.closes
        if len(c) < 30:
            return "ranging"
        w, f = self._w30, self._w120  # max(c[-30:]), min(c[-30:]), max(c), min(c) without a scan
        rng = w.hi[0][1] - w.lo[0][1]
        full = f.hi[0][1] - f.lo[0][1]
        drift = c[-1] - c[-30]
        if self.or_high is not None and (c[-1] > self.or_high or c[-1] < self.or_low) and \
                abs(c[-1] - c[-2]) > 0.3 * rng:
            return "breakout"
        if full > 0 and rng < 0.25 * full:
            return "compression"
        if rng > 0 and abs(drift) > 0.6 * rng:
            return "trending"
        return "ranging"

    def frozen_snapshot(self) -> dict:
        """:meth:`snapshot` with read-only nested maps. A map whose values did not change since the previous
        bar is the same read-only map again: prior day and pivots change once per session, the session
        document at its boundaries, the opening range during its first minutes; only the extended values
        and the VWAP bands are new on every bar."""
        prior = self.prior
        cache = self._frozen_prior
        if cache is None or cache[0] is not prior:
            cache = self._frozen_prior = (prior, None if prior is None else MappingProxyType(dict(prior)),
                                          None if prior is None else MappingProxyType(pivots(prior)))
        key = (self.now, self.open_ns, self.close_ns, self.early_close)
        sess = self._frozen_session
        if sess is None or sess[0] != key:
            sess = self._frozen_session = (key, MappingProxyType(self.session_doc()))
        hi, lo = self.or_high, self.or_low
        done = hi is not None and self.last_ns >= self.day_open_ns + self.opening_range_min * 60e9
        orng = self._frozen_or
        if orng is None or orng[0] is not hi or orng[1] is not lo or orng[2] is not done:  # the very values
            orng = self._frozen_or = (hi, lo, done, MappingProxyType({"high": hi, "low": lo, "complete": done}))
        v, sd = self.vwap()
        return {"open_ns": self.day_open_ns, "high": _f(self.high), "low": _f(self.low), "last": self.close,
                "session": sess[1], "extended": MappingProxyType(self.extended_doc()), "opening_range": orng[3],
                "vwap": v, "vwap_bands": None if v is None else MappingProxyType(
                    {"upper1": v + sd, "lower1": v - sd, "upper2": v + 2 * sd, "lower2": v - 2 * sd}),
                "prior_day": cache[1], "pivots": cache[2], "regime": self.regime()}

    def snapshot(self) -> dict:
        v, sd = self.vwap()
        doc = {"open_ns": self.day_open_ns, "high": _f(self.high), "low": _f(self.low), "last": self.close,
               "session": self.session_doc(), "extended": self.extended_doc(),
               "opening_range": {"high": self.or_high, "low": self.or_low,
                                 "complete": self.or_high is not None and
                                 self.last_ns >= self.day_open_ns + self.opening_range_min * 60e9},
               "vwap": v, "vwap_bands": None if v is None else
               {"upper1": v + sd, "lower1": v - sd, "upper2": v + 2 * sd, "lower2": v - 2 * sd},
               "prior_day": self.prior, "pivots": pivots(self.prior), "regime": self.regime()}
        return doc


def _f(x: float) -> float | None:
    return None if math.isinf(x) else x


def _vwap(pv: float, p2v: float, vol: float) -> tuple[float | None, float | None]:
    if vol <= 0:
        return None, None
    v = pv / vol
    return v, math.sqrt(max(p2v / vol - v * v, 0.0))


def pivots(prior: dict | None) -> dict | None:
    """Classic floor pivots from the prior day's high, low and close."""
    if not prior:
        return None
    h, lo, c = prior["high"], prior["low"], prior["close"]
    p = (h + lo + c) / 3
    return {"P": p, "R1": 2 * p - lo, "S1": 2 * p - h, "R2": p + (h - lo), "S2": p - (h - lo)}


def gex(contracts: list[dict], spot: float) -> dict | None:
    """Dealer gamma exposure per strike (calls +, puts -), call wall, put wall and zero-gamma flip.

    GEX per contract = gamma × open interest × 100 × spot² × 1% (dollars per 1% move).
    """
    per: dict[float, float] = {}
    calls: dict[float, float] = {}
    puts: dict[float, float] = {}
    for c in contracts:
        g, oi, k = c.get("gamma"), c.get("open_interest"), c.get("strike")
        if not isinstance(g, (int, float)) or not isinstance(oi, (int, float)) or not isinstance(k, (int, float)):
            continue
        if math.isnan(g) or g < 0 or oi < 0:
            continue
        value = g * oi * 100 * spot * spot * 0.01
        if c.get("type") == "put":
            puts[k] = puts.get(k, 0.0) + value
            per[k] = per.get(k, 0.0) - value
        else:
            calls[k] = calls.get(k, 0.0) + value
            per[k] = per.get(k, 0.0) + value
    if not per:
        return None
    strikes = sorted(per)
    flip, cum, prev = None, 0.0, None
    for k in strikes:
        before = cum
        cum += per[k]
        if prev is not None and before < 0 <= cum or prev is not None and before > 0 >= cum:
            flip = k
        prev = k
    return {"per_strike": {str(k): per[k] for k in strikes}, "total": sum(per.values()),
            "call_wall": max(calls, key=calls.get) if calls else None,
            "put_wall": max(puts, key=puts.get) if puts else None, "zero_gamma": flip}
