"""Microbars with quote microstructure: the pure, event-time core.

No I/O, no wall clock. The live service, ``spx bars`` and the backtester feed the same
:class:`BarAggregator` with the same events and get the same bars, to the last digit.
The formulas are the contract in ``docs/microbars.md``; in short, per symbol and interval:

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
bucket are late: counted in :attr:`BarAggregator.late` and dropped (a late quote still becomes
the quote in force for later trades, since that is defined in stream order).
"""

from __future__ import annotations

from typing import Iterable

from spx_common.models import IndexValue, MicroBar, Quote, Trade

NS = 1_000_000_000


def parse_interval(text: str) -> int:
    """'1s' -> 1e9 ns, '5s', '250ms', '1m' are accepted."""
    text = text.strip().lower()
    for suffix, mult in (("ms", 1_000_000), ("s", NS), ("m", 60 * NS)):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            value = int(text[: -len(suffix)]) * mult
            if value <= 0:
                break
            return value
    raise ValueError(f"bad bar interval {text!r}; use e.g. 1s, 5s, 250ms, 1m")


class _Acc:
    """Accumulator of one open bar."""

    __slots__ = (
        "bucket", "open", "high", "low", "close", "volume", "trades", "pv", "buy", "sell", "neutral", "covered",
        "obs", "sum_bid", "sum_ask", "spread_sum", "spread_n", "index",
    )

    def __init__(self, bucket: int, in_force: Quote | None, index: bool) -> None:
        self.bucket = bucket
        self.open = self.high = self.low = self.close = None
        self.volume = 0.0
        self.trades = 0
        self.pv = 0.0
        self.buy = self.sell = self.neutral = 0.0
        self.covered = 0
        self.obs = 0
        self.sum_bid = self.sum_ask = 0.0
        self.spread_sum = 0.0
        self.spread_n = 0
        self.index = index
        if in_force is not None:
            self.observe(in_force)

    def requote(self, bucket: int, in_force: Quote | None, index: bool) -> None:
        """Same as ``__init__`` for an accumulator that saw no trade and no index value (its price,
        volume and side fields are still at their initial values): only the quote fields are reset."""
        self.bucket = bucket
        self.index = index
        if in_force is None:
            self.obs = 0
            self.sum_bid = self.sum_ask = 0.0
            self.spread_sum = 0.0
            self.spread_n = 0
            return
        bid, ask = in_force.bid, in_force.ask
        self.obs = 1
        self.sum_bid = 0.0 + in_force.bid_size
        self.sum_ask = 0.0 + in_force.ask_size
        if bid > 0 and ask > 0 and ask >= bid:
            self.spread_sum = 0.0 + (ask - bid) / ((ask + bid) / 2) * 10_000
            self.spread_n = 1
        else:
            self.spread_sum = 0.0
            self.spread_n = 0

    def observe(self, q: Quote) -> None:
        bid, ask = q.bid, q.ask
        self.obs += 1
        self.sum_bid += q.bid_size
        self.sum_ask += q.ask_size
        if bid > 0 and ask > 0 and ask >= bid:
            self.spread_sum += (ask - bid) / ((ask + bid) / 2) * 10_000
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
    """Per-symbol state. ``lo``/``hi``/``accl``: while every interval has an open bar, ``accl`` lists them
    in interval order and ``[lo, hi)`` is the event-time range inside all of their buckets (an event there
    goes to every open bar without a bucket check); ``hi == 0`` means "recompute" (see ``_refresh``)."""

    __slots__ = ("quote", "accs", "last_close", "index", "lo", "hi", "accl")

    def __init__(self) -> None:
        self.quote: Quote | None = None  # the quote in force
        self.accs: dict[int, _Acc] = {}  # interval ns -> open bar
        self.last_close: dict[int, tuple[int, float]] = {}  # interval -> (bucket, close)
        self.index = False
        self.lo = self.hi = 0
        self.accl: list[_Acc] = []


class BarAggregator:
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
    ) -> None:
        self.intervals = [(name, parse_interval(name)) for name in intervals]
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
        if ev.ts > self.watermark:
            self.watermark = ev.ts
        st = self.symbols.get(ev.sym) or self._state(ev.sym)
        if st is None:
            return
        ts = ev.ts
        if type(ev) is Quote:
            q = ev
            for name, iv in self.intervals:
                acc = self._acc_for(ev.sym, st, name, iv, ts // iv)
                if acc is not None:
                    acc.observe(q)
            st.quote = q
        elif type(ev) is Trade:
            price, size = ev.price, ev.size
            q = st.quote
            for name, iv in self.intervals:
                acc = self._acc_for(ev.sym, st, name, iv, ts // iv)
                if acc is None:
                    continue
                acc.price(price)
                acc.trades += 1
                acc.volume += size
                acc.pv += price * size
                if q is None:
                    acc.neutral += size
                else:
                    bid, ask = q.bid, q.ask
                    if ask > 0 and price >= ask:
                        acc.buy += size
                    elif bid > 0 and price <= bid:
                        acc.sell += size
                    else:
                        acc.neutral += size
                    if bid > 0 and ask > 0:
                        acc.covered += 1
        else:  # IndexValue
            st.index = True
            for name, iv in self.intervals:
                acc = self._acc_for(ev.sym, st, name, iv, ts // iv)
                if acc is not None:
                    acc.index = True
                    acc.price(ev.value)
                    acc.trades += 1

    def on_events(self, events: Iterable[Trade | Quote | IndexValue]) -> None:
        """Same result as ``on_event`` per event (the live, replay and offline path).

        Hot path: an event of a known symbol inside ``[lo, hi)`` of its state (every interval's open
        bar contains it) updates the open bars with no bucket arithmetic; an event outside it finds
        each interval's bar (``_acc_for``: close, reuse or late) and sets the range anew; new symbols
        and index values go through ``on_event``.
        """
        on_event = self.on_event
        symbols = self.symbols
        intervals = self.intervals
        sym = st = None
        lo = hi = 0
        accl: list[_Acc] = []
        wm = self.watermark
        for ev in events:
            if ev.sym != sym:
                sym = ev.sym
                st = symbols.get(sym)
                if st is None:
                    lo = hi = 0
                else:
                    if not st.hi:
                        self._refresh(st)
                    lo, hi, accl = st.lo, st.hi, st.accl
            ts = ev.ts
            if ts >= hi or ts < lo:
                if st is None or type(ev) is IndexValue:
                    self.watermark = wm
                    on_event(ev)
                    wm = self.watermark
                    st = symbols.get(sym)
                    lo = hi = 0
                    continue
                # a bucket changes (or the event is late for some interval): find each interval's bar
                accs = st.accs
                accl = []
                lo, hi = 0, 1 << 62
                for name, iv in intervals:
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
                    if start + iv < hi:
                        hi = start + iv
                    accl.append(acc)
                if hi:
                    st.lo, st.hi, st.accl = lo, hi, accl
                else:
                    st.hi = lo = 0  # late for some interval: this event goes to the bars that took it only
            elif type(ev) is IndexValue:
                self.watermark = wm
                on_event(ev)
                wm = self.watermark
                lo, hi, accl = st.lo, st.hi, st.accl  # on_event keeps them valid or marks them stale (hi 0)
                continue
            if ts > wm:
                wm = ts
            if type(ev) is Quote:
                bid = ev.bid
                ask = ev.ask
                bsz = ev.bid_size
                asz = ev.ask_size
                if bid > 0 and ask >= bid:
                    spread = (ask - bid) / ((ask + bid) / 2) * 10_000
                    for acc in accl:
                        acc.obs += 1
                        acc.sum_bid += bsz
                        acc.sum_ask += asz
                        acc.spread_sum += spread
                        acc.spread_n += 1
                else:
                    for acc in accl:
                        acc.obs += 1
                        acc.sum_bid += bsz
                        acc.sum_ask += asz
                st.quote = ev
            else:
                price = ev.price
                size = ev.size
                pv = price * size
                q = st.quote
                if q is None:
                    side = 0
                    covered = False
                else:
                    bid = q.bid
                    ask = q.ask
                    side = 1 if ask > 0 and price >= ask else (2 if bid > 0 and price <= bid else 0)
                    covered = bid > 0 and ask > 0
                for acc in accl:
                    if acc.open is None:
                        acc.open = acc.high = acc.low = price
                    elif price > acc.high:
                        acc.high = price
                    elif price < acc.low:
                        acc.low = price
                    acc.close = price
                    acc.trades += 1
                    acc.volume += size
                    acc.pv += pv
                    if side == 1:
                        acc.buy += size
                    elif side == 2:
                        acc.sell += size
                    else:
                        acc.neutral += size
                    if covered:
                        acc.covered += 1
        if wm > self.watermark:
            self.watermark = wm

    def _refresh(self, st: _SymbolState) -> None:
        """Recompute ``st.lo``/``st.hi``/``st.accl`` from the open bars (an empty range if one is missing)."""
        accs = st.accs
        lo, hi = 0, 1 << 62
        accl = []
        for _, iv in self.intervals:
            acc = accs.get(iv)
            if acc is None:
                st.lo, st.hi, st.accl = 0, -1, []  # -1: valid but empty, every event takes the slow path
                return
            start = acc.bucket * iv
            if start > lo:
                lo = start
            if start + iv < hi:
                hi = start + iv
            accl.append(acc)
        if lo >= hi:
            lo, hi = 0, -1
        st.lo, st.hi, st.accl = lo, hi, accl

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
        if acc.open is None:
            return  # quotes only: no bar (the bucket had no trade)
        last = st.last_close.get(iv)
        if self.fill_gaps and last is not None:
            for b in range(last[0] + 1, acc.bucket):
                self.closed.append(MicroBar(sym=sym, interval=name, start_ns=b * iv, open=last[1], high=last[1],
                                            low=last[1], close=last[1], volume=0.0, trades=0, closed=True,
                                            gap_fill=True))
        st.last_close[iv] = (acc.bucket, acc.close)
        self.closed.append(self._bar(sym, name, iv, acc, st.quote, closed=True))

    def _bar(self, sym: str, name: str, iv: int, acc: _Acc, q_close: tuple | None, closed: bool) -> MicroBar:
        vwap = acc.pv / acc.volume if acc.volume > 0 else None
        if acc.index or not self.l2:
            return MicroBar(sym=sym, interval=name, start_ns=acc.bucket * iv, open=acc.open, high=acc.high,
                            low=acc.low, close=acc.close, volume=acc.volume, trades=acc.trades,
                            vwap=None if acc.index else vwap, closed=closed)
        tot = acc.sum_bid + acc.sum_ask
        bsz = q_close.bid_size if q_close is not None else None
        asz = q_close.ask_size if q_close is not None else None
        return MicroBar(
            sym=sym, interval=name, start_ns=acc.bucket * iv, open=acc.open, high=acc.high, low=acc.low,
            close=acc.close, volume=acc.volume, trades=acc.trades, vwap=vwap,
            buy_volume=acc.buy, sell_volume=acc.sell, neutral_volume=acc.neutral, delta_volume=acc.buy - acc.sell,
            bid_ask_imbalance=(acc.sum_bid - acc.sum_ask) / tot if acc.obs and tot > 0 else None,
            ask_bid_size_ratio=asz / bsz if bsz else None,
            quote_coverage_pct=100.0 * acc.covered / acc.trades if acc.trades else None,
            avg_spread_bps=acc.spread_sum / acc.spread_n if acc.spread_n else None,
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


def order_key(ev: Trade | Quote | IndexValue) -> tuple[int, int]:
    """Merge order of separate trade and quote sources: SIP time, then quote before trade."""
    return (ev.ts, 0 if type(ev) is Quote else 1)


def bars_from_events(events: Iterable[Trade | Quote | IndexValue], intervals=("1s",), **kw) -> list[MicroBar]:
    """Offline helper: aggregate a whole stream and return every bar (same code as live)."""
    agg = BarAggregator(intervals, **kw)
    agg.on_events(events)
    return agg.flush()


CSV_COLUMNS = (
    "symbol,start_ns,open,high,low,close,volume,trades,vwap,buy_volume,sell_volume,neutral_volume,delta_volume,"
    "bid_ask_imbalance,ask_bid_size_ratio,quote_coverage_pct,avg_spread_bps,bid_size_at_close,ask_size_at_close"
).split(",")


def csv_row(bar: MicroBar) -> list[str]:
    """A bar as the documented CSV row (nulls as empty cells, floats in repr form: exact)."""
    values = [bar.sym, bar.start_ns, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades, bar.vwap,
              bar.buy_volume, bar.sell_volume, bar.neutral_volume, bar.delta_volume, bar.bid_ask_imbalance,
              bar.ask_bid_size_ratio, bar.quote_coverage_pct, bar.avg_spread_bps, bar.bid_size_at_close,
              bar.ask_size_at_close]
    return ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values]
