"""The backtest engine: pure, event-time, deterministic; the same code the live mesh runs.

Second resolution: stored closed 1s bars. Each bar first moves the lifecycle with its price path —
open, then the extreme against the bar's direction, then the other extreme, then close (the usual
conservative OHLC path), at 0/250/500/750 ms into the bar — exactly as the live ticks inside that
second would have, and then closes: the detector host runs the plugins on it (gating included)
and every triggered setup's exit plan checks it (high/low against stop and targets; pivots every
``pivot_every``-second bars, aligned on event time like the live aggregator's 60 s bars, trail the runner). Tick resolution: stored trades and quotes go through the
live :class:`~services.aggregator.bars.BarAggregator`; every trade drives the lifecycle as a live
tick does, and bars close as they would live, in the live detector's event-time order (docs/protocol.md,
"Event-time alignment"): a replay through the mesh at any speed gives the same transitions.

Outcomes come from :class:`~services.selector.exits.ExitPlan` (the live exit advisor): 50% out at
target 1 with the stop to breakeven, 50% of the rest at target 2, the runner trails pivots; a
trade still open when its session's data ends is closed at the last close (``session_end``).
Realised R = Σ fraction × R at each exit. Setup ids are prefixed with the run tag so backtest rows
never collide with live ones, and re-running the same backtest rewrites the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator

import msgspec

from services.aggregator.bars import BarAggregator, parse_interval
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from services.selector.exits import ExitPlan, ExitPlanError, ExitRules
from spx_common.models import ExitAdvice, IndexValue, MicroBar, Quote, SetupTransition, Trade

PATH_OFFSETS_NS = (0, 250_000_000, 500_000_000, 750_000_000)


@dataclass
class TradeResult:
    """One triggered setup and what the exit advisor made of it."""

    setup_id: str
    detector: str
    family: str
    sym: str
    direction: str
    triggered_ns: int
    entry: float
    stop: float
    targets: list[float]
    t1_hit: bool = False
    t2_hit: bool = False
    r: float = 0.0
    exit_ns: int | None = None
    resolution: str = "open"
    trailing_stop_path: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Open:
    __slots__ = ("plan", "result", "remaining")

    def __init__(self, plan: ExitPlan, result: TradeResult) -> None:
        self.plan, self.result, self.remaining = plan, result, 1.0


class Backtester:
    """Drive a :class:`DetectorEngine` and exit plans over one ordered stream of bars or events."""

    def __init__(self, cfg: DetectorConfig, host: PluginHost, *, rules: ExitRules | None = None,
                 pivot_every: int = 60, tag: str = "bt", profile=None) -> None:
        self.engine = DetectorEngine(cfg, host)
        self.engine.profile = profile
        self.rules = rules or ExitRules()
        self.pivot_every = pivot_every
        #: the runner trails pivots of ``pivot_every``-second bars aligned on event time, exactly the bars the
        #: live aggregator publishes for the selector's ``bar_interval`` (60 s): whole buckets, the part of the
        #: trigger's minute before the trigger included
        self.pivot_ns = int(pivot_every) * 1_000_000_000
        self._pivot_acc: dict[str, list] = {}  # symbol -> [bucket index, high, low] of the pivot bar being built
        self.tag = tag
        self.transitions: list[SetupTransition] = []
        self.advice: list[ExitAdvice] = []
        self.trades: list[TradeResult] = []
        self.blocks: dict[str, int] = {}
        self._open: dict[str, list[_Open]] = {}
        self._last_close: dict[str, tuple[int, float]] = {}
        self.bars_seen = 0
        self.ticks_seen = 0

    # ------------------------------------------------------------------ inputs

    def on_bar(self, bar: MicroBar) -> None:
        """A closed bar (second resolution: its price path drives the lifecycle first)."""
        self._path(bar)
        self._close_bar(bar)

    def on_events(self, events: Iterable[Trade | Quote | IndexValue], agg: BarAggregator) -> None:
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
        for ev in events:
            b = ev.ts // iv
            if b != bucket:
                if group:
                    self._bucket(group, agg)
                    group = []
                self._close_until(b * iv, agg, interval, iv)
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

    def _close_bars(self, bars: list[MicroBar], interval: str, iv: int) -> None:
        bars = [b for b in bars if b.interval == interval]
        bars.sort(key=lambda b: (b.start_ns + iv, b.sym))
        for bar in bars:
            self._close_bar(bar)

    def _bucket(self, group: list, agg: BarAggregator) -> None:
        """One bar bucket's events: the lifecycle sees the watched trades and index values, the aggregator all."""
        self.ticks_seen += len(group)
        watched = self.engine.watched
        prices = [ev for ev in group if type(ev) is not Quote and ev.sym in watched]
        if prices:
            self._record(self.engine.on_ticks(prices))
        agg.on_events(group)

    def finish(self) -> None:
        """The data ended: setups still open expire at their session's close (as live), and every trade
        still open closes at the last price of its symbol."""
        closes = [s.close_ns for syms in self.engine.lifecycle.active.values() for s in syms.values()]
        if closes:
            self._record(self.engine.lifecycle.session_end(max(closes)))
        for sym, opens in self._open.items():
            last = self._last_close.get(sym)
            for o in opens:
                self._settle(o, last[1] if last else o.result.entry, last[0] if last else o.result.triggered_ns,
                             "session_end")
        self._open.clear()
        self.trades.sort(key=lambda t: (t.exit_ns or 0, t.setup_id))

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
            self._end_session(sym, prev)
        self._pivot_bar(bar)
        self._exits(bar)
        self._record(self.engine.on_bar(bar))
        for reason, _ in self.engine.drain_blocks():
            self.blocks[reason] = self.blocks.get(reason, 0) + 1
        self._last_close[sym] = (bar.start_ns, bar.close)

    def _end_session(self, sym: str, last: tuple[int, float]) -> None:
        """A new session began: trades of the previous one close at its last close (0DTE)."""
        keep = []
        for o in self._open.get(sym, ()):
            if _day(o.result.triggered_ns) <= _day(last[0]):
                self._settle(o, last[1], last[0], "session_end")
            else:
                keep.append(o)
        self._open[sym] = keep

    def _record(self, trs: list[SetupTransition]) -> None:
        if not trs:
            return
        for tr in trs:
            tr = msgspec.structs.replace(tr, setup_id=f"{self.tag}:{tr.setup_id}")
            self.transitions.append(tr)
            if tr.to_state == "triggered":
                self._open_trade(tr)
            elif tr.to_state == "expired":  # resolved at the session close: its trade closes there too
                self._expire_trade(tr)

    def _expire_trade(self, tr: SetupTransition) -> None:
        opens = self._open.get(tr.sym)
        if not opens:
            return
        keep = []
        for o in opens:
            if o.result.setup_id == tr.setup_id:
                last = self._last_close.get(tr.sym)
                price = tr.price if tr.price is not None else (last[1] if last else o.result.entry)
                self._settle(o, price, tr.ts, "expired")
            else:
                keep.append(o)
        self._open[tr.sym] = keep

    def _open_trade(self, tr: SetupTransition) -> None:
        entry = tr.price if tr.price is not None else (tr.entry_high if tr.direction == "long" else tr.entry_low)
        try:
            plan = ExitPlan(tr.setup_id, tr.direction, float(entry), float(tr.stop), list(tr.targets), self.rules)
        except ExitPlanError:
            self.blocks["exit_plan_invalid"] = self.blocks.get("exit_plan_invalid", 0) + 1
            return
        res = TradeResult(setup_id=tr.setup_id, detector=tr.detector, family=tr.family, sym=tr.sym,
                          direction=tr.direction, triggered_ns=tr.ts, entry=float(entry), stop=float(tr.stop),
                          targets=list(tr.targets), trailing_stop_path=[float(tr.stop)])
        self._open.setdefault(tr.sym, []).append(_Open(plan, res))

    def _exits(self, bar: MicroBar) -> None:
        opens = self._open.get(bar.sym)
        if not opens:
            return
        keep = []
        for o in opens:
            if o.result.triggered_ns >= bar.start_ns + 1_000_000_000:
                keep.append(o)
                continue
            if o.result.triggered_ns >= bar.start_ns:
                # triggered inside this bar: only the part of the bar after the trigger is known to
                # come later; check the close only (conservative and deterministic)
                adv = o.plan.on_price_bar(bar.close, bar.close, bar.start_ns)
            else:
                adv = o.plan.on_price_bar(bar.high, bar.low, bar.start_ns)
            for a in adv:
                self._apply(o, a)
            if o.plan.closed:
                self._finish_trade(o, bar.start_ns)
            else:
                keep.append(o)
        self._open[bar.sym] = keep

    def _pivot_bar(self, bar: MicroBar) -> None:
        """Build the pivot-interval bar of ``bar``'s symbol; when a bucket closes (a bar of the next one
        arrives, as the live aggregator's watermark closes it), the trades that were open by then trail
        on it, as the live selector does on ``bar.60s``."""
        b = bar.start_ns // self.pivot_ns
        cur = self._pivot_acc.get(bar.sym)
        if cur is not None and cur[0] != b:
            start = cur[0] * self.pivot_ns
            for o in self._open.get(bar.sym, ()):
                if o.result.triggered_ns < start + self.pivot_ns and not o.plan.closed:
                    for a in o.plan.on_pivot_bar(cur[1], cur[2], start):
                        self._apply(o, a)
            cur = None
        if cur is None:
            self._pivot_acc[bar.sym] = [b, bar.high, bar.low]
        else:
            cur[1] = max(cur[1], bar.high)
            cur[2] = min(cur[2], bar.low)

    def _apply(self, o: _Open, a: ExitAdvice) -> None:
        self.advice.append(a)
        res = o.result
        res.trailing_stop_path = list(a.trailing_stop_path)
        if a.action == "scale_out" and a.fraction is not None:
            take = o.remaining * a.fraction
            res.r += take * float(a.r_multiple)
            o.remaining -= take
            if o.plan.stage >= 1:
                res.t1_hit = True
            if o.plan.stage >= 2:
                res.t2_hit = True
        elif a.action == "exit_all":
            res.r += o.remaining * float(a.r_multiple)
            o.remaining = 0.0
            res.resolution = "stopped" if not res.t1_hit else "target1_then_stop" if not res.t2_hit else "runner_stop"

    def _finish_trade(self, o: _Open, ts: int) -> None:
        o.result.exit_ns = ts
        o.result.r = round(o.result.r, 6)
        self.trades.append(o.result)

    def _settle(self, o: _Open, price: float, ts: int, why: str) -> None:
        res = o.result
        if o.remaining > 0:
            sign = 1.0 if res.direction == "long" else -1.0
            risk = abs(res.entry - res.stop)
            r_at = (price - res.entry) * sign / risk if risk > 0 else 0.0
            res.r += o.remaining * r_at
            o.remaining = 0.0
        res.resolution = why if res.resolution == "open" else res.resolution
        self._finish_trade(o, ts)


def _day(ts_ns: int) -> int:
    """The New York trading day number of an event time (sessions never cross 00:00 ET)."""
    return (ts_ns - 5 * 3600 * 10**9) // (86_400 * 10**9)


def merge_bars(per_symbol: dict[str, list[MicroBar]]) -> Iterator[MicroBar]:
    """All symbols' bars in event-time order (ties by symbol name: deterministic)."""
    import heapq

    return heapq.merge(*(per_symbol[s] for s in sorted(per_symbol)), key=lambda b: (b.start_ns, b.sym))


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
