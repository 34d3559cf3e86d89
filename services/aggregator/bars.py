"""Microbars: the public face of the bar core (live service, ``spx bars``, recorder backfill, backtester).

:data:`BarAggregator` is the compiled ``services.aggregator.fastcore.TickCore`` when the extension is
built (``setup.py``), else :class:`services.aggregator.pybars.PyTickCore`, the plain-Python
implementation with the same API and the same bars to the last bit; :data:`COMPILED` says which.
The formulas are the contract in ``docs/microbars.md`` (summary: ``pybars``' docstring).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from services.aggregator.pybars import PyBarAggregator, PyTickCore, newest_by_kind, parse_interval
from spx_common.clock import NS_PER_S
from spx_common.models import IndexValue, MicroBar, Quote, Trade, WireSchemaDrift

#: True when :data:`BarAggregator` is the compiled core (fastcore), False when it is plain Python
COMPILED: bool
#: why the compiled core is not in use ("" when it is): not built, or its tick reader differs from the models
NOT_COMPILED_WHY = ""
try:
    from services.aggregator.fastcore import TickCore as BarAggregator
except ImportError as exc:  # not built (no C compiler at install), or WireSchemaDrift: the same API in plain Python
    from services.aggregator.pybars import PyTickCore as BarAggregator

    COMPILED = False
    NOT_COMPILED_WHY = str(exc) if isinstance(exc, WireSchemaDrift) else "not built"
else:
    COMPILED = True

__all__ = [
    "COMPILED", "CSV_COLUMNS", "NOT_COMPILED_WHY", "NS_PER_S", "BarAggregator", "IndexValue",
    "MicroBar",
    "PyBarAggregator", "PyTickCore", "Quote", "Trade", "bars_from_events", "csv_row", "csv_rows", "newest_by_kind",
    "order_key", "parse_interval",
]


def order_key(ev: Trade | Quote | IndexValue) -> tuple[int, int]:
    """Merge order of separate trade and quote sources: SIP time, then quote before trade."""
    return (ev.ts, 0 if type(ev) is Quote else 1)


def bars_from_events(events: Iterable[Trade | Quote | IndexValue], intervals: Iterable[str] = ("1s",),
                     **kw: Any) -> list[MicroBar]:
    """Offline helper: aggregate a whole stream and return every bar (same code as live)."""
    agg = BarAggregator(intervals, **kw)
    agg.on_events(events)
    bars: list[MicroBar] = agg.flush()
    return bars


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


_CSV_VALUES = operator.attrgetter(*["sym" if c == "symbol" else c for c in CSV_COLUMNS])


def csv_rows(bars: Iterable[MicroBar]) -> list[list[str]]:
    """:func:`csv_row` of each bar, the same strings, with one attribute fetch per bar (``spx bars``' fast
    path writes tens of thousands of bars per symbol and day)."""
    flt, none, rep = float, None, repr
    return [["" if v is none else rep(v) if v.__class__ is flt else str(v) for v in _CSV_VALUES(bar)]
            for bar in bars]
