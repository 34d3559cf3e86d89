"""Where market data travels on the bus: the topic of a symbol's ticks, and splitting a batch by symbol.

``tick.<sym>`` carries a stock's or an index's ticks (``tick.SPY``, ``tick.I:SPX``). Options travel by
root: the events of every ``O:SPXW...`` contract in one vendor batch are one ``tick.O:SPXW`` frame. A 0DTE
stream touches ~80 contracts a few events at a time, and one frame per contract made the per-frame cost
(publish, receive, envelope, dispatch: in the feed and in each of four subscribers) the largest CPU cost
of the mesh at 50,000 events/s (docs/performance.md). So a consumer of option ticks reads each event's
``sym``; :func:`group_by_symbol` splits a batch when it needs each contract apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from spx_common.models import MarketEvent

__all__ = ["tick_topic", "group_by_symbol", "is_one_symbol"]


def tick_topic(sym: str) -> str:
    """The topic that carries ``sym``'s ticks: ``tick.<sym>``, or ``tick.O:<root>`` for an option."""
    if sym.startswith("O:") and len(sym) > 17:  # Massive form: O: + root + 15 characters
        return "tick.O:" + sym[2:-15]
    return "tick." + sym


def is_one_symbol(topic: str, events: Sequence[MarketEvent]) -> bool:
    """True when a ``ticks`` frame on ``topic`` is one symbol's batch (``tick.<sym>``), not a root's."""
    return bool(events) and topic[5:] == events[0].sym


def group_by_symbol(events: Sequence[MarketEvent]) -> dict[str, list[MarketEvent]]:
    """``{sym: its events in batch order}``, symbols in order of first appearance."""
    out: dict[str, list[MarketEvent]] = {}
    for ev in events:
        evs = out.get(ev.sym)
        if evs is None:
            out[ev.sym] = [ev]
        else:
            evs.append(ev)
    return out
