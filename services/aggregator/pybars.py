"""Microbars with quote microstructure, in plain Python: the pure, event-time core.

No I/O, no wall clock. This is the reference implementation of ``docs/microbars.md`` and what
``services.aggregator.bars.BarAggregator`` is when the compiled core (``fastcore.pyx``) is not built;
the compiled ``TickCore`` gives the same bars to the last bit (tests/aggregator/test_aggregator_compiled.py).
The formulas, in short, per symbol and interval:

* bucket = ``floor(ts / interval)``; a bar's time is its bucket start;
* OHLC, ``volume`` (Σ size), ``trades`` (count, zero-size trades included), ``vwap``
  (Σ price·size / Σ size, null when Σ size is 0);
* the quote in force for a trade is the latest quote of the symbol at or before it in
  stream order; aggressor ``buyer`` if ask > 0 and price >= ask, else ``seller`` if
  bid > 0 and price <= bid, else ``neutral`` (also with no quote in force);
* quote observations of a bar: the quote in force at the bar start (the last quote strictly
  before the start) plus every quote update inside the bar (a quote stamped exactly at the
  start is inside); every quote row counts;
* ``bid_ask_imbalance``, ``avg_spread_bps``, ``bid_size_at_close``, ``ask_size_at_close``,
  ``ask_bid_size_ratio``, ``quote_coverage_pct`` as documented;
* index values make OHLC bars with volume 0, ``trades`` = number of values, microstructure null;
* ``l2=False`` (``ENABLE_L2_MICROSTRUCTURE=false``) nulls every microstructure field.

Closing: a bar closes when an event of a later bucket arrives for its symbol, or when the
event-time watermark passes its end plus the allowed lateness. Events for an already closed
bucket are late: counted in :attr:`PyBarAggregator.late` and dropped (a late quote still becomes
the quote in force for later trades, since that is defined in stream order).

:class:`PyTickCore` adds the byte and hold API of the compiled core (``feed``, ``on_hold``,
``hold_flush``, ``newest``, ``take_dirty``), built on msgspec decoding and the same bar code.
"""

from __future__ import annotations

from itertools import chain
from collections.abc import Callable, Iterable

import msgspec

from spx_common.clock import NS_PER_S
from spx_common.models import IndexValue, MarketEvent, MicroBar, Quote, Trade, parse_interval

#: event times at or beyond this (2116-02-20) are refused by both cores: bucket ends stay inside int64
MAX_TS = 1 << 62
#: intervals a core aggregates at most (the compiled core's fixed table)
MAX_INTERVALS = 8


def core_intervals(intervals: Iterable[str], max_symbols: int, hold_max: int,
                   max_gap_bars: int) -> list[tuple[str, int]]:
    """The constructor checks both cores (``TickCore``, :class:`PyTickCore`) share; ``[(name, ns), ...]``."""
    ivs = [(name, parse_interval(name)) for name in intervals]
    if not ivs:
        raise ValueError("at least one bar interval is needed")
    if len(ivs) > MAX_INTERVALS:
        raise ValueError(f"at most {MAX_INTERVALS} bar intervals (got {len(ivs)})")
    if max_symbols < 1:
        raise ValueError("max_symbols must be at least 1")
    if hold_max < 1:
        raise ValueError("hold_max must be at least 1")
    if max_gap_bars < 0:
        raise ValueError("max_gap_bars must be >= 0")
    return ivs


#: ``Trade.excl`` of a volume-only print (spx_common.marketrules.EXCL_VOLUME_ONLY)
VOLUME_ONLY = 4

# Positions in ``_Acc.f``: the float sums of a bar, each added in stream order (the contract's sums).
VOL, PV, BUY, SELL, NEUTRAL, SUM_BID, SUM_ASK, SPREAD = range(8)
#: pending quote observations of one bar folded into its sums at this many (bounds ``_Acc.qs``)
MAX_PENDING_QUOTES = 256


class _Acc:
    """Accumulator of one open bar. ``f`` holds the float sums (see ``VOL`` ...) as one list so the hot
    path loads and stores them with one unpack and one list per run of events.

    Quote observations are kept pending in ``qs`` (in stream order) and folded into the quote sums
    (``fold``: the same additions in the same order) only when they are needed: before the next sum
    is added directly, and when the bar is built. Most buckets of a quote-only contract never get a
    trade, so their quotes are never summed at all."""

    __slots__ = ("bucket", "open", "high", "low", "close", "trades", "covered", "obs", "spread_n", "index", "f", "qs",
                 "vonly")

    def __init__(self, bucket: int, in_force: Quote | None, index: bool) -> None:
        self.bucket = bucket
        self.open = self.high = self.low = self.close = None
        self.trades = 0
        self.covered = 0
        self.index = index
        self.f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.obs = self.spread_n = 0
        self.qs = [] if in_force is None else [in_force]  # the quote in force at the start is observed
        self.vonly = 0.0  # sizes of volume-only trades (excl 4): in volume and neutral volume, nothing else

    def requote(self, bucket: int, in_force: Quote | None, index: bool) -> None:
        """Same as ``__init__`` for an accumulator that saw no trade and no index value (its price,
        volume and side fields are still at their initial values): only the quote fields are reset."""
        self.bucket = bucket
        self.index = index
        self.f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.obs = self.spread_n = 0
        self.qs = [] if in_force is None else [in_force]  # the quote in force at the start is observed
        self.vonly = 0.0

    def fold(self) -> None:
        """Add the pending quote observations to the quote sums, in order."""
        f = self.f
        sb, sa, ss = f[SUM_BID], f[SUM_ASK], f[SPREAD]
        nsp = 0
        for q in self.qs:
            bid, ask = q.bid, q.ask
            sb += q.bid_size
            sa += q.ask_size
            if bid > 0 and ask > 0 and ask >= bid:
                ss += (ask - bid) / ((ask + bid) / 2) * 10_000
                nsp += 1
        f[SUM_BID], f[SUM_ASK], f[SPREAD] = sb, sa, ss
        self.obs += len(self.qs)
        self.spread_n += nsp
        self.qs = []

    def price(self, p: float) -> None:
        if self.open is None:
            self.open = self.high = self.low = p
        else:
            if p > self.high:
                self.high = p
            if p < self.low:
                self.low = p
        self.close = p


class _SymbolState:
    """Per-symbol state. ``lo``/``hi``/``pair``: while every interval has an open bar, ``[lo, hi)`` is the
    event-time range inside all of their buckets (an event there goes to every open bar without a bucket
    check) and ``pair`` holds the first two intervals' bars (the same bar twice with one interval);
    ``hi <= lo`` means "find the bars again" (see ``PyBarAggregator._position``)."""

    __slots__ = ("quote", "accs", "last_close", "index", "lo", "hi", "pair")

    def __init__(self) -> None:
        self.quote: Quote | None = None  # the quote in force
        self.accs: dict[int, _Acc] = {}  # interval ns -> open bar
        self.last_close: dict[int, tuple[int, float]] = {}  # interval -> (bucket, close)
        self.index = False
        self.lo = self.hi = 0
        self.pair: tuple[_Acc, _Acc] | None = None


class PyBarAggregator:
    """Feed events in stream order; collect closed bars (see module docstring).

    ``intervals``: names like ``["1s", "5s"]``. ``allowed_lateness_ns``: how far the watermark
    must pass a bar's end before it closes without a later event of its symbol.
    """

    def __init__(
        self,
        intervals: Iterable[str] = ("1s", "5s"),
        *,
        l2: bool = True,
        fill_gaps: bool = False,
        allowed_lateness_ns: int = 250_000_000,
        max_symbols: int = 5000,
        max_gap_bars: int = 3600,
    ) -> None:
        self.intervals = [(name, parse_interval(name)) for name in intervals]
        if max_gap_bars < 0:
            raise ValueError("max_gap_bars must be >= 0")
        #: ``fill_gaps`` fills a gap of at most this many buckets; a longer one (a session break, not a quiet
        #: market) is counted in ``gaps_unfilled`` and not filled, so one event cannot make unbounded bars
        self.max_gap_bars = max_gap_bars
        self.gaps_unfilled = 0
        self.l2 = l2
        self.fill_gaps = fill_gaps
        self.allowed_lateness_ns = allowed_lateness_ns
        self.max_symbols = max_symbols
        self.symbols: dict[str, _SymbolState] = {}
        self.watermark = 0
        self.late = 0
        self.refused_symbols = 0
        self.closed: list[MicroBar] = []
        #: earliest watermark at which ``advance`` can close something (callers skip it before)
        self.next_due = 1 << 62

    # ------------------------------------------------------------------ input

    def _state(self, sym: str) -> _SymbolState | None:
        st = self.symbols.get(sym)
        if st is None:
            if len(self.symbols) >= self.max_symbols:
                self.refused_symbols += 1
                return None
            st = self.symbols[sym] = _SymbolState()
        return st

    def on_event(self, ev: Trade | Quote | IndexValue) -> None:
        """One event (``on_events`` is the batch path; both give the same bars in any mix)."""
        if ev.ts > self.watermark:
            self.watermark = ev.ts
        st = self.symbols.get(ev.sym) or self._state(ev.sym)
        if st is None:
            return
        if type(ev) is Trade and ev.excl:
            if ev.excl == VOLUME_ONLY:
                self._volume_only(ev.sym, st, ev)
            return
        self._single(ev.sym, st, ev)

    def on_events(self, events: Iterable[Trade | Quote | IndexValue]) -> None:
        """Aggregate events in stream order (the live, replay and offline path).

        An excluded trade (``excl`` != 0, docs/microbars.md) moves the watermark and makes its symbol
        known, nothing else; a volume-only one (``excl`` 4) adds its size to its bars' volume and neutral
        volume only. The batch is cut around them (bars do not depend on batch cuts)."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        for ev in events:
            if type(ev) is Trade and ev.excl:
                break
        else:
            return self._on_events(events)
        run: list = []
        for ev in events:
            if type(ev) is Trade and ev.excl:
                if run:
                    self._on_events(run)
                    run = []
                if ev.ts > self.watermark:
                    self.watermark = ev.ts
                st = self.symbols.get(ev.sym) or self._state(ev.sym)
                if st is not None and ev.excl == VOLUME_ONLY:
                    self._volume_only(ev.sym, st, ev)
            else:
                run.append(ev)
        if run:
            self._on_events(run)

    def _on_events(self, events: Iterable[Trade | Quote | IndexValue]) -> None:
        """Aggregate events in stream order, none of them an excluded trade.

        Hot path: consecutive trades and quotes of one symbol inside ``[lo, hi)`` of its state (a "run":
        with the feed's one-symbol batches, usually the whole batch) are summed in local variables and
        stored once per run. Quantities that compose exactly (counts, first/last price, high, low) are
        taken once per run for all intervals; the float sums are added per interval, in stream order,
        exactly as the contract specifies. An event outside the range finds each interval's bar
        (``_position``: close, reuse or late); index values and events late for some interval take
        ``_single``. More than two intervals: every event takes ``_single``.
        """
        symbols = self.symbols
        wm = self.watermark
        ivs = [iv for _, iv in self.intervals]
        iv1, iv2 = ivs[0], ivs[-1]
        lateness = self.allowed_lateness_ns
        if len(ivs) > 2:
            for ev in events:
                if ev.ts > wm:
                    wm = ev.ts
                st = symbols.get(ev.sym) or self._state(ev.sym)
                if st is not None:
                    self._single(ev.sym, st, ev)
            self.watermark = wm
            return
        it = iter(events)
        ev = next(it, None)
        sym = st = None
        while ev is not None:
            ts = ev.ts
            esym = ev.sym
            if ts > wm:
                wm = ts
            if esym != sym or st is None:
                sym = esym
                st = symbols.get(sym) or self._state(sym)
                if st is None:
                    ev = next(it, None)
                    continue
            if type(ev) is IndexValue:
                self._single(sym, st, ev)
                ev = next(it, None)
                continue
            if not st.lo <= ts < st.hi:
                pair = st.pair
                if pair is not None and type(ev) is Quote:
                    # a quote in a later bucket of a quotes-only symbol (option contracts: nearly every quote):
                    # the same as ``_position`` + ``_acc_for`` reusing the bars (``requote``), unrolled
                    a1, a2 = pair
                    if a1.open is None and a2.open is None:
                        nb1 = ts // iv1
                        nb2 = ts // iv2 if a2 is not a1 else nb1
                        if nb1 >= a1.bucket and nb2 >= a2.bucket:
                            q0 = st.quote
                            if nb1 != a1.bucket:
                                a1.bucket = nb1
                                a1.index = st.index
                                a1.vonly = 0.0
                                if a1.obs:  # quotes were folded: reset the sums (else they are all still 0.0)
                                    a1.f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
                                    a1.obs = a1.spread_n = 0
                                a1.qs = [ev] if q0 is None else [q0, ev]
                                due = (nb1 + 1) * iv1 + lateness
                                if due < self.next_due:
                                    self.next_due = due
                            else:
                                a1.qs.append(ev)
                                if len(a1.qs) >= MAX_PENDING_QUOTES:
                                    a1.fold()
                            if a2 is not a1:
                                if nb2 != a2.bucket:
                                    a2.bucket = nb2
                                    a2.index = st.index
                                    a2.vonly = 0.0
                                    if a2.obs:  # quotes were folded: reset the sums (else they are all still 0.0)
                                        a2.f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
                                        a2.obs = a2.spread_n = 0
                                    a2.qs = [ev] if q0 is None else [q0, ev]
                                    due = (nb2 + 1) * iv2 + lateness
                                    if due < self.next_due:
                                        self.next_due = due
                                else:
                                    a2.qs.append(ev)
                                    if len(a2.qs) >= MAX_PENDING_QUOTES:
                                        a2.fold()
                            lo = nb1 * iv1
                            hi = lo + iv1
                            if a2 is not a1:
                                lo2 = nb2 * iv2
                                if lo2 > lo:
                                    lo = lo2
                                if lo2 + iv2 < hi:
                                    hi = lo2 + iv2
                            st.lo = lo
                            st.hi = hi
                            st.quote = ev
                            ev = next(it, None)
                            continue
                took = self._position(sym, st, ts)
                if took is not None:  # late for some interval: only the bars that took it
                    self._single(sym, st, ev, took)
                    ev = next(it, None)
                    continue
            # a run: this event and the following ones of the same symbol inside [lo, hi)
            lo, hi = st.lo, st.hi
            a1, a2 = st.pair
            if a1.qs:
                a1.fold()
            if a2.qs:
                a2.fold()
            v1, pv1, b1, s1, n1, sb1, sa1, ss1 = a1.f
            v2, pv2, b2, s2, n2, sb2, sa2, ss2 = a2.f
            nt = ncov = nq = nsp = 0
            first = high = low = last = 0.0
            q = st.quote
            if q is None:
                qbid = qask = 0.0  # no quote in force: neutral, not covered
                qcov = False
            else:
                qbid, qask = q.bid, q.ask
                qcov = qbid > 0 and qask > 0
            pending = None
            head = ev
            for ev in chain((head,), it):
                t = type(ev)
                ts = ev.ts
                if ts >= hi or ts < lo or ev.sym != sym:
                    pending = ev
                    break
                if ts > wm:
                    wm = ts
                if t is Quote:
                    bid = ev.bid
                    ask = ev.ask
                    bsz = ev.bid_size
                    asz = ev.ask_size
                    sb1 += bsz
                    sa1 += asz
                    sb2 += bsz
                    sa2 += asz
                    nq += 1
                    if bid > 0 and ask >= bid:
                        spread = (ask - bid) / ((ask + bid) / 2) * 10_000
                        ss1 += spread
                        ss2 += spread
                        nsp += 1
                    q = ev
                    qbid = bid
                    qask = ask
                    qcov = bid > 0 and ask > 0
                elif t is Trade:
                    price = ev.price
                    size = ev.size
                    if not nt:
                        first = high = low = price
                    elif price > high:
                        high = price
                    elif price < low:
                        low = price
                    last = price
                    nt += 1
                    v1 += size
                    v2 += size
                    pv = price * size
                    pv1 += pv
                    pv2 += pv
                    if qask > 0 and price >= qask:
                        b1 += size
                        b2 += size
                    elif qbid > 0 and price <= qbid:
                        s1 += size
                        s2 += size
                    else:
                        n1 += size
                        n2 += size
                    if qcov:
                        ncov += 1
                else:  # an index value among trades and quotes
                    pending = ev
                    break
            a1.f = [v1, pv1, b1, s1, n1, sb1, sa1, ss1]
            if a2 is not a1:
                a2.f = [v2, pv2, b2, s2, n2, sb2, sa2, ss2]
            if nq:
                st.quote = q
                a1.obs += nq
                a1.spread_n += nsp
                if a2 is not a1:
                    a2.obs += nq
                    a2.spread_n += nsp
            if nt:
                for acc in (a1, a2) if a2 is not a1 else (a1,):
                    if acc.open is None:
                        acc.open = first
                        acc.high = high
                        acc.low = low
                    else:
                        if high > acc.high:
                            acc.high = high
                        if low < acc.low:
                            acc.low = low
                    acc.close = last
                    acc.trades += nt
                    acc.covered += ncov
            ev = pending if pending is not None else next(it, None)
        self.watermark = wm

    def _position(self, sym: str, st: _SymbolState, ts: int) -> list[_Acc] | None:
        """Find (close, reuse or open) each interval's bar for an event at ``ts`` and set ``[lo, hi)`` and
        ``pair``. An event late for some interval leaves an empty range and returns the bars that took it."""
        accs = st.accs
        lo, hi = 0, -1  # hi -1: no bar yet (not a large sentinel: times up to 2**64 are valid), 0: late
        got = []
        for name, iv in self.intervals:
            b = ts // iv
            acc = accs.get(iv)
            if acc is None or acc.bucket != b:
                acc = self._acc_for(sym, st, name, iv, b)
                if acc is None:
                    hi = 0
                    continue
            start = b * iv
            if start > lo:
                lo = start
            if hi < 0 or start + iv < hi:
                hi = start + iv
            got.append(acc)
        if not hi:
            st.lo = st.hi = 0
            return got
        st.lo, st.hi = lo, hi
        st.pair = (got[0], got[-1])
        return None

    def _single(self, sym: str, st: _SymbolState, ev: Trade | Quote | IndexValue, accs: list | None = None) -> None:
        """One event, interval by interval (index values, events late for some interval, 3+ intervals);
        ``accs``: the bars already found for it (``_position``), else each interval's bar is found here."""
        ts = ev.ts
        kind = type(ev)
        q = st.quote
        if kind is IndexValue:
            st.index = True
        if accs is None:
            accs = [self._acc_for(sym, st, name, iv, ts // iv) for name, iv in self.intervals]
        for acc in accs:
            if acc is None:
                continue
            f = acc.f
            if kind is Quote:
                acc.qs.append(ev)
                if len(acc.qs) >= MAX_PENDING_QUOTES:
                    acc.fold()
            elif kind is Trade:
                price, size = ev.price, ev.size
                acc.price(price)
                acc.trades += 1
                f[VOL] += size
                f[PV] += price * size
                if q is None:
                    f[NEUTRAL] += size
                else:
                    bid, ask = q.bid, q.ask
                    if ask > 0 and price >= ask:
                        f[BUY] += size
                    elif bid > 0 and price <= bid:
                        f[SELL] += size
                    else:
                        f[NEUTRAL] += size
                    if bid > 0 and ask > 0:
                        acc.covered += 1
            else:
                acc.index = True
                acc.price(ev.value)
                acc.trades += 1
        if kind is Quote:
            st.quote = ev

    def _volume_only(self, sym: str, st: _SymbolState, ev: Trade) -> None:
        """A volume-only trade: each interval's bar found (closed, reused or late) as for any event, then
        only its size is kept (``vonly``)."""
        ts = ev.ts
        for name, iv in self.intervals:
            acc = self._acc_for(sym, st, name, iv, ts // iv)
            if acc is not None:
                acc.vonly += ev.size

    def _acc_for(self, sym: str, st: _SymbolState, name: str, iv: int, bucket: int) -> _Acc | None:
        acc = st.accs.get(iv)
        if acc is not None:
            if bucket == acc.bucket:
                return acc
            if bucket < acc.bucket:
                self.late += 1
                return None
            if acc.open is None:
                # a quotes-only bucket ends: no bar; reuse the accumulator for the new bucket (quote-only
                # symbols such as option contracts do this on every quote, so it is worth no allocation)
                acc.requote(bucket, st.quote, st.index)
                st.hi = 0
                due = (bucket + 1) * iv + self.allowed_lateness_ns
                if due < self.next_due:
                    self.next_due = due
                return acc
            self._close(sym, st, name, iv, acc)
        else:
            last = st.last_close.get(iv)
            if last is not None and bucket <= last[0]:
                self.late += 1
                return None
        acc = st.accs[iv] = _Acc(bucket, st.quote, st.index)
        st.hi = 0
        due = (bucket + 1) * iv + self.allowed_lateness_ns
        if due < self.next_due:
            self.next_due = due
        return acc

    def advance(self, watermark_ns: int) -> None:
        """Close every bar whose end plus the allowed lateness is at or before ``watermark_ns``."""
        if watermark_ns > self.watermark:
            self.watermark = watermark_ns
        limit = self.watermark - self.allowed_lateness_ns
        if limit + self.allowed_lateness_ns < self.next_due:
            return
        next_due = 1 << 62
        lateness = self.allowed_lateness_ns
        for sym, st in self.symbols.items():
            accs = st.accs
            if not accs:
                continue  # e.g. a quote-only contract whose buckets were all closed
            hi = st.hi
            if hi > limit and st.lo < hi:  # a valid range: its bars end at hi at the earliest, none closes
                if hi + lateness < next_due:
                    next_due = hi + lateness
                continue
            for name, iv in self.intervals:
                acc = accs.get(iv)
                if acc is None:
                    continue
                end = (acc.bucket + 1) * iv
                if end <= limit:
                    self._close(sym, st, name, iv, acc)
                elif end + lateness < next_due:
                    next_due = end + lateness
        self.next_due = next_due

    # ------------------------------------------------------------------ output

    def _close(self, sym: str, st: _SymbolState, name: str, iv: int, acc: _Acc) -> None:
        del st.accs[iv]
        st.hi = 0
        st.pair = None
        if acc.open is None:
            return  # quotes only: no bar (the bucket had no trade)
        last = st.last_close.get(iv)
        if self.fill_gaps and last is not None and acc.bucket - last[0] - 1 > self.max_gap_bars:
            self.gaps_unfilled += 1
        elif self.fill_gaps and last is not None:
            for b in range(last[0] + 1, acc.bucket):
                self.closed.append(MicroBar(sym=sym, interval=name, start_ns=b * iv, open=last[1], high=last[1],
                                            low=last[1], close=last[1], volume=0.0, trades=0, closed=True,
                                            gap_fill=True))
        st.last_close[iv] = (acc.bucket, acc.close)
        self.closed.append(self._bar(sym, name, iv, acc, st.quote, closed=True))

    def _bar(self, sym: str, name: str, iv: int, acc: _Acc, q_close: Quote | None, closed: bool) -> MicroBar:
        if acc.qs:
            acc.fold()
        volume, pv, buy, sell, neutral, sum_bid, sum_ask, spread_sum = acc.f
        vwap = pv / volume if volume > 0 else None
        volume = volume + acc.vonly
        neutral = neutral + acc.vonly
        if acc.index or not self.l2:
            return MicroBar(sym=sym, interval=name, start_ns=acc.bucket * iv, open=acc.open, high=acc.high,
                            low=acc.low, close=acc.close, volume=volume, trades=acc.trades,
                            vwap=None if acc.index else vwap, closed=closed)
        tot = sum_bid + sum_ask
        bsz = q_close.bid_size if q_close is not None else None
        asz = q_close.ask_size if q_close is not None else None
        return MicroBar(
            sym=sym, interval=name, start_ns=acc.bucket * iv, open=acc.open, high=acc.high, low=acc.low,
            close=acc.close, volume=volume, trades=acc.trades, vwap=vwap,
            buy_volume=buy, sell_volume=sell, neutral_volume=neutral, delta_volume=buy - sell,
            bid_ask_imbalance=(sum_bid - sum_ask) / tot if acc.obs and tot > 0 else None,
            ask_bid_size_ratio=asz / bsz if bsz else None,
            quote_coverage_pct=100.0 * acc.covered / acc.trades if acc.trades else None,
            avg_spread_bps=spread_sum / acc.spread_n if acc.spread_n else None,
            bid_size_at_close=bsz, ask_size_at_close=asz, closed=closed,
        )

    def drain(self) -> list[MicroBar]:
        """Closed bars since the last call, in closing order."""
        out, self.closed = self.closed, []
        return out

    def current(self, sym: str, interval: str) -> MicroBar | None:
        """The in-progress bar of ``sym`` (closed=False), or None."""
        st = self.symbols.get(sym)
        iv = dict(self.intervals).get(interval)
        if st is None or iv is None:
            return None
        acc = st.accs.get(iv)
        if acc is None or acc.open is None:
            return None
        return self._bar(sym, interval, iv, acc, st.quote, closed=False)

    def flush(self) -> list[MicroBar]:
        """Close every open bar (end of an offline run) and return all closed bars."""
        for sym, st in self.symbols.items():
            for name, iv in self.intervals:
                acc = st.accs.get(iv)
                if acc is not None:
                    self._close(sym, st, name, iv, acc)
        return self.drain()


def newest_by_kind(events: list) -> tuple[Trade | None, Quote | None, IndexValue | None]:
    """The last trade, quote and index value of a batch (``None`` for a kind it lacks).

    For the tick cache's last-event fields: the batch scanned back to front, stopping once every kind is found."""
    trade = quote = value = None
    i = len(events) - 1
    while i >= 0:
        ev = events[i]
        t = type(ev)
        if t is Quote:
            if quote is None:
                quote = ev
                if trade is not None and value is not None:
                    break
        elif t is Trade:
            if trade is None:
                trade = ev
                if quote is not None and value is not None:
                    break
        elif value is None:
            value = ev
            if trade is not None and quote is not None:
                break
        i -= 1
    return trade, quote, value




#: alias: the plain-Python bar aggregator under its historical name
BarAggregator = PyBarAggregator

_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
_ENCODER = msgspec.msgpack.Encoder()


class PyTickCore(PyBarAggregator):
    """:class:`PyBarAggregator` with the compiled ``TickCore``'s byte and hold API, in Python.

    ``feed(buf, start)`` decodes a ``ticks`` body with msgspec and aggregates it. With ``on_hold`` set,
    every event of a tracked symbol (late ones included; events of refused symbols are not) is held per
    symbol and handed to ``on_hold(sym, body, count, last_ts)`` ``hold_max`` events at a time, ``body``
    being the msgpack array of the held events (msgspec's encoding: the canonical maps the compiled core
    copies). ``newest`` answers from what was held; symbols with events since the last ``take_dirty``
    are tracked always.

    Unlike the compiled core, ``on_hold`` is called after the whole batch was aggregated (the compiled
    core calls it as the batch is read), and events are held as objects and encoded when emitted.
    """

    def __init__(
        self,
        intervals: Iterable[str] = ("1s", "5s"),
        *,
        l2: bool = True,
        fill_gaps: bool = False,
        allowed_lateness_ns: int = 250_000_000,
        max_symbols: int = 5000,
        hold_max: int = 64,
        on_hold: Callable[[str, bytes, int, int], object] | None = None,
        max_gap_bars: int = 3600,
    ) -> None:
        core_intervals(intervals, max_symbols, hold_max, max_gap_bars)  # the compiled core's checks
        super().__init__(intervals, l2=l2, fill_gaps=fill_gaps, allowed_lateness_ns=allowed_lateness_ns,
                         max_symbols=max_symbols, max_gap_bars=max_gap_bars)
        self.hold_max = hold_max
        self.on_hold = on_hold
        self._held: dict[str, list] = {}  # sym -> events held, in stream order
        self._newest: dict[str, list] = {}  # sym -> [trade, quote, value] last held (emitted or not)
        self._dirty: dict[str, None] = {}  # symbols with an event since take_dirty, first-event order

    # ------------------------------------------------------------------ input

    def feed(self, buf: bytes, start: int = 0) -> int:
        """Aggregate the ``ticks`` body ``buf[start:]``; the number of events in it (those of refused symbols
        included, as the compiled core counts), or -1 when msgspec refuses the body (then nothing changed)."""
        if start < 0 or start > len(buf):
            return -1
        try:
            events = _DECODER.decode(memoryview(buf)[start:])
        except msgspec.DecodeError:  # ValidationError included
            return -1
        if any(ev.ts >= MAX_TS for ev in events):
            return -1  # as the compiled core: times stay inside int64
        self.on_events(events)
        return len(events)

    def on_event(self, ev: Trade | Quote | IndexValue) -> None:
        if ev.ts >= MAX_TS:
            raise ValueError(f"tick events not accepted: an event time at or beyond {MAX_TS} (2116-02-20)")
        super().on_event(ev)
        self._after((ev,))

    def on_events(self, events: Iterable[Trade | Quote | IndexValue]) -> None:
        if not isinstance(events, (list, tuple)):
            events = list(events)
        if any(ev.ts >= MAX_TS for ev in events):
            raise ValueError(f"tick events not accepted: an event time at or beyond {MAX_TS} (2116-02-20)")
        super().on_events(events)
        self._after(events)

    def _after(self, events) -> None:
        """Dirty symbols, and with ``on_hold`` the hold, of a batch just aggregated. An event's symbol is
        tracked after the batch iff it was tracked when the event came (the table only grows)."""
        symbols, dirty = self.symbols, self._dirty
        if self.on_hold is None:
            for sym in dict.fromkeys([ev.sym for ev in events
                                      if not (type(ev) is Trade and ev.excl and ev.excl != VOLUME_ONLY)]):
                if sym in symbols:
                    dirty[sym] = None
            return
        held, newest, hold_max = self._held, self._newest, self.hold_max
        for ev in events:
            sym = ev.sym
            if sym not in symbols:
                continue  # refused
            t = type(ev)
            if not (t is Trade and ev.excl and ev.excl != VOLUME_ONLY):  # an excluded trade is held, not aggregated
                dirty[sym] = None
            h = held.get(sym)
            if h is None:
                h = held[sym] = []
                newest[sym] = [None, None, None]
            newest[sym][0 if t is Trade else 1 if t is Quote else 2] = ev
            h.append(ev)
            if len(h) >= hold_max:
                self._emit(sym, h)

    def _emit(self, sym: str, h: list) -> None:
        body, count, last_ts = _ENCODER.encode(h), len(h), h[-1].ts
        h.clear()
        if self.on_hold is not None:
            self.on_hold(sym, body, count, last_ts)

    # ------------------------------------------------------------------ hold and queries

    def hold_flush(self, sym: str | None = None) -> None:
        """Emit what is held, for ``sym`` or for every symbol (in the order symbols were first seen)."""
        if self.on_hold is None:
            return
        held = self._held
        for s in (self.symbols if sym is None else (sym,)):
            h = held.get(s)
            if h:
                self._emit(s, h)

    def newest(self, sym: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        """msgpack of the newest trade, quote and index value map of ``sym`` (None for a kind never seen);
        tracked while ``on_hold`` is set."""
        n = self._newest.get(sym)
        if n is None:
            return (None, None, None)
        return tuple(None if ev is None else _ENCODER.encode(ev) for ev in n)

    def take_dirty(self) -> list[str]:
        """Symbols with an aggregated event since the last call, in the order they first had one."""
        out = list(self._dirty)
        self._dirty = {}
        return out

    def symbol_ids(self, names: Iterable[str]) -> list[int]:
        """The symbol id (first-seen index) of each name, adding new names in the given order; -1 for a
        name refused (``max_symbols`` tracked). For :meth:`feed_columns`."""
        names = list(names)
        for name in names:
            if name not in self.symbols and len(self.symbols) < self.max_symbols:
                self.symbols[name] = _SymbolState()
        ids = {name: i for i, name in enumerate(self.symbols)}
        return [ids.get(name, -1) for name in names]

    def feed_columns(self, sids, kinds, ts, a, b, c, d, excl) -> int:
        """The compiled core's column input (same arguments, same bars): events rebuilt as objects and
        aggregated by :meth:`on_events`, in the given order; refused symbols (-1) are counted."""
        n = len(sids)
        if not all(len(x) == n for x in (kinds, ts, a, b, c, d, excl)):
            raise ValueError("feed_columns: columns of different lengths")
        if self.on_hold is not None:
            raise ValueError("feed_columns does not hold events: use feed() when on_hold is set")
        names = list(self.symbols)
        cols = [x.tolist() if hasattr(x, "tolist") else list(x) for x in (sids, kinds, ts, a, b, c, d, excl)]
        for e, (sid, k, t, va, vb, vc, vd) in enumerate(zip(*cols[:7], strict=True)):
            if not (0 <= t < MAX_TS and k in (0, 1, 2) and -1 <= sid < len(names)
                    and va >= 0 and vb >= 0 and vc >= 0 and vd >= 0):
                raise ValueError(f"feed_columns: event {e} not accepted (time, kind, symbol id or a value)")
        events: list = []
        for sid, k, t, va, vb, vc, vd, x in zip(*cols, strict=True):
            if sid < 0:
                self.refused_symbols += 1
                if t > self.watermark:
                    self.watermark = t
            elif k == 0:
                events.append(Trade(sym=names[sid], price=va, size=vb, ts=t, excl=x))
            elif k == 1:
                events.append(Quote(sym=names[sid], bid=va, ask=vb, bid_size=vc, ask_size=vd, ts=t))
            else:
                events.append(IndexValue(sym=names[sid], value=va, ts=t))
        self.on_events(events)
        return n

    def symbol_count(self) -> int:
        return len(self.symbols)

    def symbol_names(self) -> list[str]:
        """Tracked symbols in the order they were first seen."""
        return list(self.symbols)
