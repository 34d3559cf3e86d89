"""The pure middle of the feed: dedupe, out-of-order guard, per-symbol batching, rate.

Live ingest and every replay source end in :class:`TickPipeline.process`, so they publish the
same frames: one ``tick.<sym>`` frame (type ``ticks``) per symbol per incoming batch, events in
arrival order.

Drop policy (every drop counted by reason in ``tick_drop_count{reason}``):

* ``duplicate`` - the same event seen before.  Key: ``(sym, kind, seq)`` when the vendor gave a
  sequence number, else ``(sym, kind, ts, price, size)`` (quotes: ``ts, bid, ask, sizes``; index
  values: ``ts, value``).  Memory is bounded: the newest ``max_keys`` keys are kept (LRU); a
  duplicate older than that window would pass, which the vendor's seconds-scale redelivery and the
  REST backfill overlap never reach.
* ``stale`` - an event older than the newest event of its symbol by more than
  ``reorder_tolerance_ns``.  Within the tolerance an out-of-order event is *kept* and published in
  arrival order (consumers keep their own event clock watermark); beyond it, it would rewrite a bar
  that is already closed, so it is dropped.  Backfilled events skip this guard (they are old by
  design) but not the dedupe.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from spx_common.models import MarketEvent, Quote, Trade


def event_key(ev: MarketEvent) -> tuple:
    """Identity of an event for duplicate detection (see module docstring)."""
    if isinstance(ev, Trade):
        if ev.seq:
            return (ev.sym, "t", ev.seq)
        return (ev.sym, "t", ev.ts, ev.price, ev.size)
    if isinstance(ev, Quote):
        if ev.seq:
            return (ev.sym, "q", ev.seq)
        return (ev.sym, "q", ev.ts, ev.bid, ev.ask, ev.bid_size, ev.ask_size)
    return (ev.sym, "v", ev.ts, ev.value)


class Dedupe:
    """Bounded LRU set of recently seen event keys."""

    def __init__(self, max_keys: int = 500_000) -> None:
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple, None] = OrderedDict()

    def seen(self, ev: MarketEvent) -> bool:
        """True when ``ev`` was seen before (and refresh it); else remember it and return False."""
        k = event_key(ev)
        seen = self._seen
        if k in seen:
            seen.move_to_end(k)
            return True
        seen[k] = None
        if len(seen) > self.max_keys:
            seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)


class TickPipeline:
    """Dedupe + order guard + grouping. Returns ``[(sym, events)]`` and counts what it dropped."""

    def __init__(self, *, max_keys: int = 500_000, reorder_tolerance_ns: int = 2_000_000_000,
                 dedupe: bool = True) -> None:
        self.dedupe = Dedupe(max_keys) if dedupe else None
        self.reorder_tolerance_ns = reorder_tolerance_ns
        self.newest: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.accepted = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def process(self, events: Iterable[MarketEvent]) -> list[tuple[str, list[MarketEvent]]]:
        groups: dict[str, list[MarketEvent]] = {}
        newest = self.newest
        dedupe = self.dedupe
        tol = self.reorder_tolerance_ns
        for ev in events:
            sym = ev.sym
            last = newest.get(sym, 0)
            if not ev.backfilled and ev.ts + tol < last:
                self.drop("stale")
                continue
            if dedupe is not None and dedupe.seen(ev):
                self.drop("duplicate")
                continue
            if ev.ts > last:
                newest[sym] = ev.ts
            g = groups.get(sym)
            if g is None:
                groups[sym] = [ev]
            else:
                g.append(ev)
        out = list(groups.items())
        self.accepted += sum(len(g) for _, g in out)
        return out


def topic_for(sym: str) -> str:
    return f"tick.{sym}"


__all__ = ["Dedupe", "TickPipeline", "event_key", "topic_for"]
