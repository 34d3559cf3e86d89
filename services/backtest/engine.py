"""The backtest engine: pure, event-time, deterministic; the same code the live mesh runs.

Second resolution: stored closed 1s bars. Each bar first moves the lifecycle with its price path —
open, then the extreme against the bar's direction, then the other extreme, then close (the usual
conservative OHLC path), at 0/250/500/750 ms into the bar — exactly as the live ticks inside that
second would have, and then closes: the detector host runs the plugins on it (gating included)
and the selector's exit plans check it (high/low against stop and targets; pivots of
``pivot_every``-second bars, aligned on event time like the live aggregator's 60 s bars, trail the runner). Tick resolution: stored trades and quotes go through the
live :class:`~services.aggregator.bars.BarAggregator`; every trade drives the lifecycle as a live
tick does, and bars close as they would live, in the live detector's event-time order (docs/protocol.md,
"Event-time alignment"): a replay through the mesh at any speed gives the same transitions.

Trades are made by :class:`~services.backtest.trading.TradeModel`: the live selector core (its exit
advisor: 50% out at target 1 with the stop to breakeven, 50% of the rest at target 2, the runner trails
pivots; and, with a replayed option chain, the contract and its size), the broker's engine and the paper
broker filling on the replayed option quotes — the code the mesh runs, not a copy of it. A trade still
open when its session's data ends is closed at the last close (``session_end``). Realised R = Σ
fraction × R at each exit; option P&L in dollars from the paper fills. Setup ids are prefixed with the run tag so backtest rows
never collide with live ones, and re-running the same backtest rewrites the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import msgspec
import heapq

from services.aggregator.bars import BarAggregator, parse_interval
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from services.backtest.trading import TradeModel, TradeRecord, selector_config
from spx_common.models import ExitAdvice, IndexValue, MicroBar, Quote, SetupTransition, Trade

PATH_OFFSETS_NS = (0, 250_000_000, 500_000_000, 750_000_000)


class Backtester:
    """Drive a :class:`DetectorEngine` and exit plans over one ordered stream of bars or events."""

    def __init__(self, cfg: DetectorConfig, host: PluginHost, *, pivot_every: int = 60, tag: str = "bt",
                 profile=None, trade: TradeModel | None = None) -> None:
        self.engine = DetectorEngine(cfg, host)
        self.engine.profile = profile
        self.pivot_every = pivot_every
        #: the trades: the live selector, broker engine and paper broker (services/backtest/trading.py); its
        #: selector checks stops and targets on the detectors' bars and trails on ``pivot_every``-second bars
        self.trade = trade or TradeModel(selector_config(cfg.interval, pivot_every))
        #: the runner trails pivots of ``pivot_every``-second bars aligned on event time, exactly the bars the
        #: live aggregator publishes for the selector's ``bar_interval`` (60 s): whole buckets, the part of the
        #: trigger's minute before the trigger included
        self.pivot_ns = int(pivot_every) * 1_000_000_000
        self._bar_ns = parse_interval(cfg.interval)
        self._pivot_acc: dict[str, list] = {}  # symbol -> [bucket index, high, low, first start] being built
        self.tag = tag
        self.transitions: list[SetupTransition] = []
        self.trades: list[TradeRecord] = []
        self.blocks: dict[str, int] = {}
        self._last_close: dict[str, tuple[int, float]] = {}
        self._next_periodic = 0
        self.bars_seen = 0
        self.ticks_seen = 0

    @property
    def advice(self) -> list[ExitAdvice]:
        """The exit advice the selector gave (the trailing-stop paths the store records)."""
        return self.trade.advice

    # ------------------------------------------------------------------ inputs

    def on_bar(self, bar: MicroBar) -> None:
        """A closed bar (second resolution: its price path drives the lifecycle first)."""
        self._pivots_until(bar.start_ns)
        self._path(bar)
        self._close_bar(bar)

    def on_seconds(self, bars: Iterable[MicroBar], events: Iterable = (), docs: Iterable[dict] = ()) -> None:
        """Second resolution with the options side: ``bars`` in event-time order (:func:`merge_bars`), option
        quotes and index values (``events``) and chain documents (``docs``) in event-time order. What happened
        at or before a bar's start reaches the selector and broker before the bar's price path (no look-ahead:
        a quote inside the second is applied before the next bar)."""
        evs, dcs = iter(events), iter(docs)
        ev, doc = next(evs, None), next(dcs, None)
        for bar in bars:
            while doc is not None and int(doc.get("ts") or 0) <= bar.start_ns:
                self.on_chain(doc)
                doc = next(dcs, None)
            batch = []
            while ev is not None and ev.ts <= bar.start_ns:
                batch.append(ev)
                ev = next(evs, None)
            if batch:
                self.on_options(batch)
            self.on_bar(bar)
        rest = [ev] + list(evs) if ev is not None else []
        if doc is not None:
            self.on_chain(doc)
        for d in dcs:
            self.on_chain(d)
        if rest:
            self.on_options(rest)

    def on_events(self, events: Iterable[Trade | Quote | IndexValue], agg: BarAggregator,
                  docs: Iterable[dict] = ()) -> None:
        """Tick resolution: events in stream order through the live aggregator and lifecycle, in the order the
        live detector handles them (docs/protocol.md, "Event-time alignment").

        Events are taken one bar bucket of the detectors' interval at a time. Before a bucket's events, every
        bar ending at or before the bucket's start closes (live, the feed's watermark closes it) and goes to
        the detectors and exit plans, by end then symbol; then the lifecycle sees the bucket's trades and index
        values of the watched symbols, and the aggregator takes the bucket's events.
        """
        interval = self.engine.cfg.interval
        iv = parse_interval(interval)
        group: list = []
        bucket = None
        dcs = iter(docs)
        doc = next(dcs, None)
        for ev in events:
            b = ev.ts // iv
            if b != bucket:
                if group:
                    self._bucket(group, agg)
                    group = []
                self._close_until(b * iv, agg, interval, iv)
                while doc is not None and int(doc.get("ts") or 0) <= b * iv:
                    self.on_chain(doc)
                    doc = next(dcs, None)
                bucket = b
            group.append(ev)
        if group:
            self._bucket(group, agg)
        self._close_bars(agg.flush(), interval, iv)

    def _close_until(self, end_ns: int, agg: BarAggregator, interval: str, iv: int) -> None:
        """Close every bar ending at or before ``end_ns`` and hand them on (what the live watermark does)."""
        lateness = agg.allowed_lateness_ns
        if end_ns + lateness >= agg.next_due:
            newest = agg.watermark
            agg.advance(end_ns + lateness)
            agg.watermark = max(newest, end_ns)
        if agg.closed:
            self._close_bars(agg.drain(), interval, iv)
        self._pivots_until(end_ns)

    def _close_bars(self, bars: list[MicroBar], interval: str, iv: int) -> None:
        bars = [b for b in bars if b.interval == interval]
        bars.sort(key=lambda b: (b.start_ns + iv, b.sym))
        for bar in bars:
            self._close_bar(bar)

    def _bucket(self, group: list, agg: BarAggregator) -> None:
        """One bar bucket's events, in stream order: the lifecycle sees the watched trades and index values, the
        trade model the option quotes and index values (a quote before a trigger is known when the selector
        and broker decide on it, as with the live event-time alignment), the aggregator the underlying's."""
        self.ticks_seen += len(group)
        watched = self.engine.watched
        prices: list = []
        options: list = []
        for ev in group:
            kind = type(ev)
            to_trade = (kind is Quote and ev.sym.startswith("O:")) or kind is IndexValue
            to_life = kind is not Quote and ev.sym in watched
            if to_trade and prices:
                self._record(self.engine.on_ticks(prices))
                prices = []
            if to_life and options:
                self.trade.on_market_events(options)
                options = []
            if to_trade:
                options.append(ev)
            if to_life:
                prices.append(ev)
        if prices:
            self._record(self.engine.on_ticks(prices))
        if options:
            self.trade.on_market_events(options)
        if any(ev.sym.startswith("O:") for ev in group):
            group = [ev for ev in group if not ev.sym.startswith("O:")]  # option quotes make no bars here
        agg.on_events(group)

    def on_options(self, events: list) -> None:
        """Option quotes and index values (second resolution: merged in event time with the bars)."""
        self.trade.on_market_events(events)

    def on_chain(self, doc: dict) -> None:
        """A recorded ``chain.<root>`` document: the detectors' GEX and the selector's chain."""
        self.engine.on_chain(doc)
        self.trade.on_chain_doc(doc)

    def finish(self) -> None:
        """The data ended: setups still open expire at their session's close (as live), every trade still
        open closes at the last price of its symbol, and the broker flattens what it holds."""
        self._pivots_until(2**62)
        closes = [s.close_ns for syms in self.engine.lifecycle.active.values() for s in syms.values()]
        if closes:
            self._record(self.engine.lifecycle.session_end(max(closes)))
        self.trade.end_session()
        self.trades = self.trade.finish()

    # ------------------------------------------------------------------ internals

    def _path(self, bar: MicroBar) -> None:
        if not self.engine.lifecycle.active.get(bar.sym):
            self.engine.now_ns = max(self.engine.now_ns, bar.start_ns + PATH_OFFSETS_NS[-1])
            return  # nothing to evaluate: the path would change no state
        up = bar.close >= bar.open
        prices = (bar.open, bar.low, bar.high, bar.close) if up else (bar.open, bar.high, bar.low, bar.close)
        sym, t0 = bar.sym, bar.start_ns
        evs = [IndexValue(sym=sym, value=p, ts=t0 + off) for p, off in zip(prices, PATH_OFFSETS_NS, strict=True)]
        self._record(self.engine.on_ticks(evs))

    def _close_bar(self, bar: MicroBar) -> None:
        self.bars_seen += 1
        sym = bar.sym
        prev = self._last_close.get(sym)
        if prev is not None and _day(prev[0]) != _day(bar.start_ns):
            self._record(self.engine.lifecycle.session_end(bar.start_ns))  # as the live detector does
            self.trade.end_session(sym)  # 0DTE: trades of the previous session close at its last close
        self._pivot_bar(bar)
        # a closed bar's event time is its end, as the aggregator publishes it (the broker stamps its orders so)
        self.trade.on_price_bar(bar, bar.start_ns + self._bar_ns)
        self._record(self.engine.on_bar(bar))
        for reason, _ in self.engine.drain_blocks():
            self.blocks[reason] = self.blocks.get(reason, 0) + 1
        self._last_close[sym] = (bar.start_ns, bar.close)
        if bar.start_ns >= self._next_periodic:  # the broker's once-a-second housekeeping, in event time
            self._next_periodic = bar.start_ns + 1_000_000_000
            self.trade.periodic(bar.start_ns)

    def _record(self, trs: list[SetupTransition]) -> None:
        if not trs:
            return
        for tr in trs:
            tr = msgspec.structs.replace(tr, setup_id=f"{self.tag}:{tr.setup_id}")
            self.transitions.append(tr)
            market = self.engine.market_state() if tr.to_state == "triggered" else None
            self.trade.on_transition(tr, market)

    def _pivot_bar(self, bar: MicroBar) -> None:
        """Add ``bar`` to its symbol's pivot-interval bar (the live aggregator's ``bar.60s``)."""
        b = bar.start_ns // self.pivot_ns
        cur = self._pivot_acc.get(bar.sym)
        if cur is not None and cur[0] != b:
            self._close_pivot(bar.sym, cur)
            cur = None
        if cur is None:
            self._pivot_acc[bar.sym] = [b, bar.high, bar.low, bar.start_ns]
        else:
            cur[1] = max(cur[1], bar.high)
            cur[2] = min(cur[2], bar.low)

    def _pivots_until(self, t_ns: int) -> None:
        """Close every pivot bar whose bucket ended at or before ``t_ns`` (what the live watermark does): the
        trades open by then trail on it, as the live selector does on ``bar.60s``."""
        for sym, cur in list(self._pivot_acc.items()):
            if (cur[0] + 1) * self.pivot_ns <= t_ns:
                self._close_pivot(sym, cur)

    def _close_pivot(self, sym: str, cur: list) -> None:
        del self._pivot_acc[sym]
        start = cur[0] * self.pivot_ns
        pivot = MicroBar(sym=sym, interval=f"{self.pivot_every}s", start_ns=start, open=cur[1], high=cur[1],
                         low=cur[2], close=cur[2], volume=0.0, closed=True)
        self.trade.on_pivot_bar(pivot, start + self.pivot_ns)


def _day(ts_ns: int) -> int:
    """The New York trading day number of an event time (sessions never cross 00:00 ET)."""
    return (ts_ns - 5 * 3600 * 10**9) // (86_400 * 10**9)


def merge_bars(per_symbol: dict[str, list[MicroBar]]) -> Iterator[MicroBar]:
    """All symbols' bars in event-time order (ties by symbol name: deterministic)."""

    return heapq.merge(*(per_symbol[s] for s in sorted(per_symbol)), key=lambda b: (b.start_ns, b.sym))


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
