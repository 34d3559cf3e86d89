"""The pure middle of the feed: dedupe, out-of-order guard, per-symbol batching, rate.

Live ingest and every replay source end in :class:`TickPipeline.process`, so they publish the
same frames: one ``tick.<sym>`` frame (type ``ticks``) per symbol per incoming batch, events in
arrival order.

Drop policy (every drop counted by reason in ``tick_drop_count{reason}``):

* ``duplicate`` - the same event seen before.  Key: ``(sym, kind, seq)`` when the vendor gave a
  sequence number, else ``(sym, kind, ts, price, size)`` (quotes: ``ts, bid, ask, sizes``; index
  values: ``ts, value``).  Memory is bounded: the newest ``max_keys`` keys are always kept, at
  most ``2 * max_keys`` (two generations, :class:`Dedupe`); a duplicate older than that window would pass, which the vendor's seconds-scale redelivery and the
  REST backfill overlap never reach.
* ``stale`` - an event older than the newest event of its symbol by more than
  ``reorder_tolerance_ns``.  Within the tolerance an out-of-order event is *kept* and published in
  arrival order (consumers keep their own event clock watermark); beyond it, it would rewrite a bar
  that is already closed, so it is dropped.  Backfilled events skip this guard (they are old by
  design) but not the dedupe.
"""

from __future__ import annotations

from typing import Iterable

from spx_common.models import IndexValue, MarketEvent, Quote, Trade


def event_key(ev: MarketEvent) -> tuple:
    """Identity of an event for duplicate detection (see module docstring)."""
    t = type(ev)
    if t is Quote:
        if ev.seq:
            return (ev.sym, "q", ev.seq)
        return (ev.sym, "q", ev.ts, ev.bid, ev.ask, ev.bid_size, ev.ask_size)
    if t is Trade:
        if ev.seq:
            return (ev.sym, "t", ev.seq)
        return (ev.sym, "t", ev.ts, ev.price, ev.size)
    return (ev.sym, "v", ev.ts, ev.value)


class Dedupe:
    """Bounded set of recently seen event keys, in two generations.

    New keys go into the young set; when it holds ``max_keys`` it becomes the old set and the
    previous old set is dropped whole. A key found only in the old set is copied to the young
    one (seen again = kept longer, like an LRU). So the newest ``max_keys`` keys are always
    remembered and at most ``2 * max_keys`` are held. Two plain sets cost one C lookup each,
    against an ``OrderedDict``'s lookup, re-link and eviction per event (benchmarks/feed.py),
    and take less memory per key than its linked entries.
    """

    def __init__(self, max_keys: int = 500_000) -> None:
        self.max_keys = max_keys
        self._young: set[tuple] = set()
        self._old: set[tuple] = set()

    def seen(self, ev: MarketEvent) -> bool:
        """True when ``ev`` was seen before (and refresh it); else remember it and return False."""
        return self.seen_key(event_key(ev))

    def seen_key(self, k: tuple) -> bool:
        young = self._young
        if k in young:
            return True
        old = k in self._old
        young.add(k)
        if len(young) >= self.max_keys:
            self._old, self._young = young, set()
        return old

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


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
        seen_key = dedupe.seen_key if dedupe is not None else None
        for ev in events:
            sym = ev.sym
            last = newest.get(sym, 0)
            if not ev.backfilled and ev.ts + tol < last:
                self.drop("stale")
                continue
            if seen_key is not None:
                # event_key inlined for the common case: a vendor sequence number
                t = type(ev)
                seq = ev.seq if t is not IndexValue else 0
                if seen_key((sym, "q" if t is Quote else "t", seq) if seq else event_key(ev)):
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
