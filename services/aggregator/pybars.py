"""Microbars with quote microstructure, in plain Python: the specification of the bar maths.

No I/O, no wall clock, no optimisation: :class:`PyBarAggregator` takes each event in stream order and, for
each interval, finds its bar and adds to it; it is written to be read. It is one of the two implementations
of ``docs/microbars.md``: the other is the compiled core (``fastcore.pyx``, ``TickCore``), which must give the
same bars to the last bit (tests/aggregator/test_aggregator_compiled.py compares them on random streams), and
this one is what ``services.aggregator.bars.BarAggregator`` is when the compiled core is not built.
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

from collections.abc import Callable, Iterable

import msgspec

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


class _Bar:
    """The sums of one open bar of one interval (an accumulator; :meth:`PyBarAggregator._bar` makes the
    :class:`MicroBar`)."""

    __slots__ = ("bucket", "index", "open", "high", "low", "close", "trades", "volume", "pv", "buy", "sell",
                 "neutral", "vonly", "covered", "obs", "sum_bid", "sum_ask", "spread_sum", "spread_n")

    def __init__(self, bucket: int, index: bool, in_force: Quote | None) -> None:
        self.bucket = bucket
        self.index = index  # an index symbol's bar: OHLC and count only
        self.open = self.high = self.low = self.close = None  # no price yet: a quotes-only bucket makes no bar
        self.trades = self.covered = self.obs = self.spread_n = 0
        self.volume = self.pv = self.buy = self.sell = self.neutral = 0.0
        self.vonly = 0.0  # sizes of volume-only trades: added to volume and neutral volume when the bar is made
        self.sum_bid = self.sum_ask = self.spread_sum = 0.0
        if in_force is not None:  # the quote in force at the bar's start is its first observation
            self.observe(in_force)

    def observe(self, q: Quote) -> None:
        """A quote observation: its sizes, and its spread when the quote is two-sided and not crossed."""
        self.sum_bid += q.bid_size
        self.sum_ask += q.ask_size
        self.obs += 1
        if q.bid > 0 and q.ask > 0 and q.ask >= q.bid:
            self.spread_sum += (q.ask - q.bid) / ((q.ask + q.bid) / 2) * 10_000
            self.spread_n += 1

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
    __slots__ = ("quote", "bars", "last_close", "index")

    def __init__(self) -> None:
        self.quote: Quote | None = None  # the quote in force (the latest in stream order, late ones included)
        self.bars: dict[int, _Bar] = {}  # interval ns -> the open bar
        self.last_close: dict[int, tuple[int, float]] = {}  # interval ns -> (bucket, close) of its last bar
        self.index = False  # an index value was seen: the symbol's bars are index bars


class PyBarAggregator:
    """The specification of the microbars: events in stream order, closed bars out (module docstring,
    docs/microbars.md). Each event, for each interval in turn, finds its bar and adds to it: the compiled core
    does the same additions in the same order, so both give the same bars to the last bit.

    ``intervals``: names like ``["1s", "5s"]``. ``allowed_lateness_ns``: how far the watermark must pass a
    bar's end before it closes without a later event of its symbol. ``max_symbols``: symbols tracked at most
    (events of others are counted in ``refused_symbols``). ``fill_gaps``: a bar closed after a gap of at most
    ``max_gap_bars`` buckets is preceded by flat bars at the last close (``gap_fill``); a longer gap is
    counted in ``gaps_unfilled``.
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
        self.max_gap_bars = max_gap_bars
        self.gaps_unfilled = 0
        self.l2 = l2
        self.fill_gaps = fill_gaps
        self.allowed_lateness_ns = allowed_lateness_ns
        self.max_symbols = max_symbols
        self.symbols: dict[str, _SymbolState] = {}  # in the order first seen
        self.watermark = 0  # the newest event time seen
        self.late = 0
        self.refused_symbols = 0
        self.closed: list[MicroBar] = []
        #: earliest watermark at which ``advance`` can close something (callers skip it before)
        self.next_due = 1 << 62

    # ------------------------------------------------------------------ input

    def on_events(self, events: Iterable[Trade | Quote | IndexValue]) -> None:
        """Aggregate events in stream order (the live, replay and offline paths)."""
        event = self._event
        for ev in events:
            event(ev)

    def on_event(self, ev: Trade | Quote | IndexValue) -> None:
        """One event (:meth:`on_events` of one)."""
        self._event(ev)

    def _event(self, ev: Trade | Quote | IndexValue) -> None:
        """One event. An excluded trade (``excl`` not 0, docs/microbars.md) moves the watermark and makes its
        symbol known, nothing else, except a volume-only one (``excl`` 4): its size goes to its bars' volume and
        neutral volume."""
        if ev.ts > self.watermark:
            self.watermark = ev.ts
        st = self.symbols.get(ev.sym)
        if st is None:
            if len(self.symbols) >= self.max_symbols:
                self.refused_symbols += 1
                return
            st = self.symbols[ev.sym] = _SymbolState()
        kind = type(ev)
        if kind is Trade and ev.excl and ev.excl != VOLUME_ONLY:
            return
        if kind is IndexValue:
            st.index = True
        for name, iv in self.intervals:
            bar = self._bar_for(ev.sym, st, name, iv, ev.ts // iv)
            if bar is None:
                continue  # late for this interval: counted
            if kind is Quote:
                bar.observe(ev)
            elif kind is Trade:
                if ev.excl:  # volume only: no price, no count, no side
                    bar.vonly += ev.size
                    continue
                self._trade(bar, ev, st.quote)
            else:
                bar.index = True
                bar.price(ev.value)
                bar.trades += 1
        if kind is Quote:
            st.quote = ev  # in force for what follows, even when it was late for its own bar

    @staticmethod
    def _trade(bar: _Bar, ev: Trade, q: Quote | None) -> None:
        price, size = ev.price, ev.size
        bar.price(price)
        bar.trades += 1
        bar.volume += size
        bar.pv += price * size
        if q is None:
            bar.neutral += size
            return
        if q.ask > 0 and price >= q.ask:
            bar.buy += size
        elif q.bid > 0 and price <= q.bid:
            bar.sell += size
        else:
            bar.neutral += size
        if q.bid > 0 and q.ask > 0:
            bar.covered += 1

    def _bar_for(self, sym: str, st: _SymbolState, name: str, iv: int, bucket: int) -> _Bar | None:
        """The open bar of ``bucket``: the current one, or a new one after closing (or, quotes only, dropping)
        the current one; None when ``bucket`` is before the current bar or the last closed one (late)."""
        bar = st.bars.get(iv)
        if bar is not None:
            if bucket == bar.bucket:
                return bar
            if bucket < bar.bucket:
                self.late += 1
                return None
            self._close(sym, st, name, iv, bar)
        else:
            last = st.last_close.get(iv)
            if last is not None and bucket <= last[0]:
                self.late += 1
                return None
        bar = st.bars[iv] = _Bar(bucket, st.index, st.quote)
        due = (bucket + 1) * iv + self.allowed_lateness_ns
        if due < self.next_due:
            self.next_due = due
        return bar

    def advance(self, watermark_ns: int) -> None:
        """Close every bar whose end plus the allowed lateness is at or before ``watermark_ns``."""
        if watermark_ns > self.watermark:
            self.watermark = watermark_ns
        if self.watermark < self.next_due:
            return
        limit = self.watermark - self.allowed_lateness_ns
        next_due = 1 << 62
        for sym, st in self.symbols.items():
            for name, iv in self.intervals:
                bar = st.bars.get(iv)
                if bar is None:
                    continue
                end = (bar.bucket + 1) * iv
                if end <= limit:
                    self._close(sym, st, name, iv, bar)
                elif end + self.allowed_lateness_ns < next_due:
                    next_due = end + self.allowed_lateness_ns
        self.next_due = next_due

    # ------------------------------------------------------------------ output

    def _close(self, sym: str, st: _SymbolState, name: str, iv: int, bar: _Bar) -> None:
        del st.bars[iv]
        if bar.open is None:
            return  # quotes only: no bar (the bucket had no trade and no index value)
        last = st.last_close.get(iv)
        if self.fill_gaps and last is not None and bar.bucket - last[0] - 1 > self.max_gap_bars:
            self.gaps_unfilled += 1  # a session break, not a quiet market: bounded, counted, not filled
        elif self.fill_gaps and last is not None:
            for b in range(last[0] + 1, bar.bucket):
                self.closed.append(MicroBar(sym=sym, interval=name, start_ns=b * iv, open=last[1], high=last[1],
                                            low=last[1], close=last[1], volume=0.0, trades=0, closed=True,
                                            gap_fill=True))
        st.last_close[iv] = (bar.bucket, bar.close)
        self.closed.append(self._bar(sym, name, iv, bar, st.quote, closed=True))

    def _bar(self, sym: str, name: str, iv: int, bar: _Bar, q_close: Quote | None, closed: bool) -> MicroBar:
        vwap = bar.pv / bar.volume if bar.volume > 0 else None
        volume = bar.volume + bar.vonly
        if bar.index or not self.l2:
            return MicroBar(sym=sym, interval=name, start_ns=bar.bucket * iv, open=bar.open, high=bar.high,
                            low=bar.low, close=bar.close, volume=volume, trades=bar.trades,
                            vwap=None if bar.index else vwap, closed=closed)
        tot = bar.sum_bid + bar.sum_ask
        bsz = q_close.bid_size if q_close is not None else None
        asz = q_close.ask_size if q_close is not None else None
        return MicroBar(
            sym=sym, interval=name, start_ns=bar.bucket * iv, open=bar.open, high=bar.high, low=bar.low,
            close=bar.close, volume=volume, trades=bar.trades, vwap=vwap,
            buy_volume=bar.buy, sell_volume=bar.sell, neutral_volume=bar.neutral + bar.vonly,
            delta_volume=bar.buy - bar.sell,
            bid_ask_imbalance=(bar.sum_bid - bar.sum_ask) / tot if bar.obs and tot > 0 else None,
            ask_bid_size_ratio=asz / bsz if bsz else None,
            quote_coverage_pct=100.0 * bar.covered / bar.trades if bar.trades else None,
            avg_spread_bps=bar.spread_sum / bar.spread_n if bar.spread_n else None,
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
        bar = st.bars.get(iv)
        if bar is None or bar.open is None:
            return None
        return self._bar(sym, interval, iv, bar, st.quote, closed=False)

    def flush(self) -> list[MicroBar]:
        """Close every open bar (end of an offline run) and return all closed bars."""
        for sym, st in self.symbols.items():
            for name, iv in self.intervals:
                bar = st.bars.get(iv)
                if bar is not None:
                    self._close(sym, st, name, iv, bar)
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
