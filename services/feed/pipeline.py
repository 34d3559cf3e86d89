"""The pure middle of the feed: dedupe, out-of-order guard, per-topic batching, rate.

Live ingest and every replay source end in :class:`TickPipeline.process`, so they publish the
same frames: one ``ticks`` frame per topic per incoming batch, events in arrival order. The topic
is :func:`spx_common.topics.tick_topic`: ``tick.<sym>`` for stocks and indices, ``tick.O:<root>``
for all the option contracts of one root.

Drop policy (every drop counted by reason in ``tick_drop_count{reason}``):

* ``duplicate`` - the same event seen before.  Key: ``(sym, kind, seq)`` when the vendor gave a
  sequence number, else ``(sym, kind, ts, price, size)`` (quotes: ``ts, bid, ask, sizes``; index
  values: ``ts, value``).  Memory is bounded (:class:`Dedupe`); a duplicate older than what it
  remembers would pass, which the vendor's seconds-scale redelivery and the
  REST backfill overlap never reach.
* ``stale`` - an event older than the newest event of its symbol by more than
  ``reorder_tolerance_ns``.  Within the tolerance an out-of-order event is *kept* and published in
  arrival order (consumers keep their own event clock watermark); beyond it, it would rewrite a bar
  that is already closed, so it is dropped.  Backfilled events skip this guard (they are old by
  design) but not the dedupe.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Iterable

from spx_common.models import IndexValue, MarketEvent, Quote, Trade
from spx_common.topics import tick_topic


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
    """Bounded memory of the events already published, for duplicate detection.

    Events with a vendor sequence number (Massive ``q``: every trade and quote, increasing per
    symbol) are remembered as plain 8-byte integers in one sorted ``array`` per (symbol, kind):
    the common case, a sequence number above the symbol's newest, is an append; anything else is
    a binary search (a duplicate) or an insert (a backfilled gap event). No Python object per key
    means nothing for the cyclic collector to traverse and nothing to free one by one: the sets or
    ``OrderedDict`` of tuples this replaced cost a 60-70 ms collector pause per full pass over a
    million keys, plus a stall to free a dropped generation (docs/performance.md). At most
    ``max_keys`` numbers are held; when full, every symbol forgets its older half (each keeps at
    least its newest half). More than ``max_keys // 4`` (symbol, kind) pairs start them all afresh.

    Events without a sequence number (index values; REST rows lacking one) are keyed by content
    in two generations of sets of ``content_keys`` each: the newest ``content_keys`` always
    remembered, at most twice that held; a key seen again is copied to the young set.
    """

    def __init__(self, max_keys: int = 500_000, content_keys: int | None = None) -> None:
        self.max_keys = max_keys
        self.content_keys = content_keys or max(1000, max_keys // 10)
        self._seqs: dict[tuple[str, str], array] = {}
        self._n = 0
        self._young: set[tuple] = set()
        self._old: set[tuple] = set()
        self.trims = 0  # times the sequence memory was full and halved

    def seen(self, ev: MarketEvent) -> bool:
        """True when ``ev`` was seen before; else remember it and return False."""
        t = type(ev)
        if t is not IndexValue and ev.seq:
            return self.seen_seq(ev.sym, "q" if t is Quote else "t", ev.seq)
        return self.seen_key(event_key(ev))

    def seen_seq(self, sym: str, kind: str, seq: int) -> bool:
        seqs = self._seqs.get((sym, kind))
        if seqs is None:
            if len(self._seqs) >= max(16, self.max_keys // 4):
                self._seqs.clear()
                self._n = 0
            seqs = self._seqs[(sym, kind)] = array("q")
        if not seqs or seq > seqs[-1]:
            seqs.append(seq)
        else:
            i = bisect_left(seqs, seq)
            if i < len(seqs) and seqs[i] == seq:
                return True
            seqs.insert(i, seq)
        self._n += 1
        if self._n > self.max_keys:
            self._halve()
        return False

    def _halve(self) -> None:
        n = 0
        for seqs in self._seqs.values():
            del seqs[:len(seqs) // 2]
            n += len(seqs)
        self._n = n
        self.trims += 1

    def seen_key(self, k: tuple) -> bool:
        young = self._young
        if k in young:
            return True
        old = k in self._old
        young.add(k)
        if len(young) >= self.content_keys:
            self._old, self._young = young, set()
        return old

    def __len__(self) -> int:
        return self._n + len(self._young) + len(self._old)


class TickPipeline:
    """Dedupe + order guard + grouping. Returns ``[(topic, events)]`` and counts what it dropped."""

    def __init__(self, *, max_keys: int = 500_000, reorder_tolerance_ns: int = 2_000_000_000,
                 dedupe: bool = True) -> None:
        self.dedupe = Dedupe(max_keys) if dedupe else None
        self.reorder_tolerance_ns = reorder_tolerance_ns
        self.newest: dict[str, int] = {}
        self._topics: dict[str, str] = {}  # symbol -> topic, memoised (bounded: cleared past 100k symbols)
        self.drops: dict[str, int] = {}
        self.accepted = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def process(self, events: Iterable[MarketEvent]) -> list[tuple[str, list[MarketEvent]]]:
        groups: dict[str, list[MarketEvent]] = {}
        newest, topics = self.newest, self._topics
        dedupe = self.dedupe
        tol = self.reorder_tolerance_ns
        seen_seq, seen_key = (dedupe.seen_seq, dedupe.seen_key) if dedupe is not None else (None, None)
        for ev in events:
            sym = ev.sym
            last = newest.get(sym, 0)
            if not ev.backfilled and ev.ts + tol < last:
                self.drop("stale")
                continue
            if seen_seq is not None:
                t = type(ev)  # Dedupe.seen inlined
                seq = ev.seq if t is not IndexValue else 0
                if seen_seq(sym, "q" if t is Quote else "t", seq) if seq else seen_key(event_key(ev)):
                    self.drop("duplicate")
                    continue
            if ev.ts > last:
                newest[sym] = ev.ts
            topic = topics.get(sym)
            if topic is None:
                if len(topics) >= 100_000:
                    topics.clear()
                topic = topics[sym] = tick_topic(sym)
            g = groups.get(topic)
            if g is None:
                groups[topic] = [ev]
            else:
                g.append(ev)
        out = list(groups.items())
        self.accepted += sum(len(g) for _, g in out)
        return out


__all__ = ["Dedupe", "TickPipeline", "event_key"]
