"""Reference figure for benchmarks/aggregator.py: NautilusTrader's compiled time-bar aggregator, same machine.

Issue 4 sets the aggregator's target (750k events/s) against NautilusTrader's ``TimeBarAggregator``
(1s bars, OHLCV only, "about 1.2-1.4 M trade ticks/s on this class of machine"). Machines differ by 2x
and more (shared, throttled); running both here, now, gives the ratio that means something.

Runs in an interpreter that has ``nautilus_trader`` (kept out of our dependencies: it pins its own
versions), e.g.::

    python -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install nautilus_trader
    python benchmarks/aggregator.py --reference-python /tmp/ntvenv/bin/python

Trade ticks are built first (not timed); the timed loop is Python calling ``handle_trade_tick`` per tick,
the test clock advanced (and its bar timer fired) once per second of event time.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--per-second", type=int, default=100, help="trade ticks per second of event time")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is printed")
    args = ap.parse_args()

    from nautilus_trader.common.component import TestClock
    from nautilus_trader.data.aggregation import TimeBarAggregator
    from nautilus_trader.model.data import BarType, TradeTick
    from nautilus_trader.model.enums import AggressorSide
    from nautilus_trader.model.identifiers import TradeId
    from nautilus_trader.model.objects import Price, Quantity
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    inst = TestInstrumentProvider.equity("SPY", "XNAS")
    bar_type = BarType.from_str(f"{inst.id}-1-SECOND-LAST-INTERNAL")
    n, per_s, t0 = args.ticks, args.per_second, 1_700_000_000_000_000_000
    step = 1_000_000_000 // per_s
    ticks = [TradeTick(inst.id, Price(500.0 + (i % 37) * 0.01, 2), Quantity(100 + i % 5, 0),
                       AggressorSide.NO_AGGRESSOR, TradeId(str(i)), t0 + i * step, t0 + i * step) for i in range(n)]
    best = 0.0
    for _ in range(args.repeat):
        clock = TestClock()
        clock.set_time(t0)
        bars: list = []
        agg = TimeBarAggregator(inst, bar_type, bars.append, clock)
        handle = agg.handle_trade_tick
        start = time.perf_counter()
        for i in range(0, n, per_s):
            for ev in clock.advance_time(ticks[i].ts_event):
                ev.handle()
            for tick in ticks[i:i + per_s]:
                handle(tick)
        rate = n / (time.perf_counter() - start)
        best = max(best, rate)
    print(f"nautilus TimeBarAggregator 1s OHLCV: {n:,} trade ticks, best of {args.repeat}: {best:,.0f} ticks/s "
          f"({len(bars):,} bars)")
    print(f"ticks_per_s={best:.0f}")  # for benchmarks/aggregator.py


if __name__ == "__main__":
    main()
