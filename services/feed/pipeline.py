"""The pure middle of the feed: dedupe, out-of-order guard, per-topic batching, rate.

Live ingest and every replay source end in :class:`TickPipeline.process`, so they publish the
same frames: one ``ticks`` frame per topic per incoming batch, events in arrival order. The topic
is :func:`spx_common.topics.tick_topic`: ``tick.<sym>`` for stocks and indices, ``tick.O:<root>``
for all the option contracts of one root.

Drop policy (every drop counted by reason in ``tick_drop_count{reason}``):

* ``duplicate`` - the same event seen before.  Key: ``(sym, kind, seq, time)`` when the vendor gave a
  sequence number - a sequence number alone is no identity across sessions (the vendor's numbers
  reset each session, and a stream from another session or cluster starts over), so the same
  number is the same event only when its time is less than ``SAME_PRINT_MS + 1`` ms from the
  remembered one's (the stream stamps whole ms, REST rows ns: they differ by less than 1 ms for the
  same print, less than 2 ms if the vendor rounded).  Else
  ``(sym, kind, ts, price, size)`` (quotes: ``ts, bid, ask, sizes``; index values: ``ts, value``).
  Option trades are keyed by *print* as well (:meth:`Dedupe.seen_print`): the vendor's options
  ``/v3/trades`` answer has no ``sequence_number``, so a backfilled option trade must match the
  streamed one by content.  Memory is bounded (:class:`Dedupe`); a duplicate older than what it
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
from collections.abc import Iterable

from spx_common.models import IndexValue, MarketEvent, Quote, Trade
from spx_common.topics import tick_topic


#: a sequence number seen again within this many ms of the remembered event's time (both truncated to
#: whole ms, as the stream sends them) is that event
SAME_PRINT_MS = 1
_MS = 1_000_000
_SAME_NS = (SAME_PRINT_MS + 1) * _MS  # the same bound on ns times: |a - b| < 2 ms


def event_key(ev: MarketEvent) -> tuple:
    """Content identity of an event without a sequence number (see module docstring)."""
    t = type(ev)
    if t is Quote:
        if ev.seq:
            return (ev.sym, "q", ev.seq, ev.ts // _MS)
        return (ev.sym, "q", ev.ts, ev.bid, ev.ask, ev.bid_size, ev.ask_size)
    if t is Trade:
        if ev.seq:
            return (ev.sym, "t", ev.seq, ev.ts // _MS)
        return (ev.sym, "t", ev.ts, ev.price, ev.size)
    return (ev.sym, "v", ev.ts, ev.value)


def print_key(ev: Trade) -> int:
    """A trade's print, as both the stream (ms) and REST (ns, no sequence for options) give it."""
    return hash((ev.sym, ev.ts // _MS, ev.price, ev.size, ev.exch))


class _Counts:
    """int -> int in two generations of ``cap`` keys (the newest ``cap`` always remembered). Plain
    int keys and values: the collector never traverses these dicts."""

    __slots__ = ("cap", "young", "old")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.young: dict[int, int] = {}
        self.old: dict[int, int] = {}

    def get(self, k: int) -> int:
        v = self.young.get(k)
        return self.old.get(k, 0) if v is None else v

    def put(self, k: int, v: int) -> None:
        young = self.young
        young[k] = v
        if len(young) >= self.cap:
            self.old, self.young = young, {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


class Dedupe:
    """Bounded memory of the events already published, for duplicate detection.

    Events with a vendor sequence number (Massive ``q``: every streamed trade and quote, increasing
    per symbol within a session) are remembered as plain 8-byte integers in one sorted ``array``
    per (symbol, kind) with a parallel ``array`` of their event times: the common case, a sequence
    number above the symbol's newest, is an append; anything else is a binary search over the
    entries with that number (a duplicate when one is less than 2 ms from its time) or
    an insert (a backfilled gap event, or a new session's event that reuses an old number). No
    Python object per key means nothing for the cyclic collector to traverse and nothing to free
    one by one: the sets or ``OrderedDict`` of tuples this replaced cost a 60-70 ms collector pause
    per full pass over a million keys, plus a stall to free a dropped generation
    (docs/performance.md). At most ``max_keys`` numbers are held; when full, every symbol forgets
    its older half (each keeps at least its newest half). More than ``max_keys // 4`` (symbol,
    kind) pairs start them all afresh.

    Events without a sequence number (index values; REST rows lacking one) are keyed by content
    in two generations of sets of ``content_keys`` each: the newest ``content_keys`` always
    remembered, at most twice that held; a key seen again is copied to the young set.

    Option trades are also counted by print (:func:`print_key`), as a multiset, because the
    options ``/v3/trades`` answer carries no sequence number: ``published[print]`` is how many
    events of that print went out; a streamed one (with a number) is the n-th of its print the
    stream delivered, a REST one the n-th of its print in its own answer (``passes``: one dict per
    answer or seeding pass, so overlapping backfill windows do not count a print twice). The n-th
    is a duplicate when ``n < published[print]``. So two identical prints in the same ms are two
    prints, the streamed one matches its REST row whichever comes first, and the bar volume
    counts each print once.
    """

    def __init__(self, max_keys: int = 500_000, content_keys: int | None = None) -> None:
        self.max_keys = max_keys
        self.content_keys = content_keys or max(1000, max_keys // 10)
        #: (symbol, kind) -> (sorted sequence numbers, their event times in ns)
        self._seqs: dict[tuple[str, str], tuple[array, array]] = {}
        self._n = 0
        self._young: set[tuple] = set()
        self._old: set[tuple] = set()
        self._published = _Counts(self.content_keys)
        self._streamed = _Counts(self.content_keys)
        self.trims = 0  # times the sequence memory was full and halved

    def seen(self, ev: MarketEvent, passes: dict[int, int] | None = None) -> bool:
        """True when ``ev`` was seen before; else remember it and return False. ``passes``: the
        print counts of the answer (or seeding pass) ``ev`` belongs to (see :meth:`seen_print`)."""
        t = type(ev)
        if t is Trade and ev.sym.startswith("O:"):
            return self.seen_print(ev, {} if passes is None else passes)
        if t is not IndexValue and ev.seq:
            return self.seen_seq(ev.sym, "q" if t is Quote else "t", ev.seq, ev.ts)
        return self.seen_key(event_key(ev))

    def seen_print(self, ev: Trade, passes: dict[int, int]) -> bool:
        """An option trade: by sequence number (+ time) when it has one, and by print as a multiset."""
        pk = print_key(ev)
        if ev.seq:
            if self.seen_seq(ev.sym, "t", ev.seq, ev.ts):
                return True
            n = self._streamed.get(pk)
            self._streamed.put(pk, n + 1)
        else:
            n = passes.get(pk, 0)
            passes[pk] = n + 1
        published = self._published.get(pk)
        if n < published:
            return True
        self._published.put(pk, n + 1)
        return False

    def seen_seq(self, sym: str, kind: str, seq: int, ts: int) -> bool:
        ent = self._seqs.get((sym, kind))
        if ent is None:
            if len(self._seqs) >= max(16, self.max_keys // 4):
                self._seqs.clear()
                self._n = 0
            ent = self._seqs[(sym, kind)] = (array("q"), array("q"))
        seqs, times = ent
        if not seqs or seq > seqs[-1]:
            seqs.append(seq)
            times.append(ts)
        else:
            i = bisect_left(seqs, seq)
            n = len(seqs)
            while i < n and seqs[i] == seq:
                if -_SAME_NS < times[i] - ts < _SAME_NS:
                    return True
                i += 1
            seqs.insert(i, seq)
            times.insert(i, ts)
        self._n += 1
        if self._n > self.max_keys:
            self._halve()
        return False

    def _halve(self) -> None:
        n = 0
        for seqs, times in self._seqs.values():
            cut = len(seqs) // 2
            del seqs[:cut]
            del times[:cut]
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
        return self._n + len(self._young) + len(self._old) + len(self._published)


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

    def process(self, events: Iterable[MarketEvent],
                passes: dict[int, int] | None = None) -> list[tuple[str, list[MarketEvent]]]:
        """``passes``: the option-print counts of the answer these events come from (one REST answer
        ingested in chunks passes the same dict to each; default: this batch alone)."""
        groups: dict[str, list[MarketEvent]] = {}
        newest, topics = self.newest, self._topics
        dedupe = self.dedupe
        tol = self.reorder_tolerance_ns
        seen_seq, seen_key = (dedupe.seen_seq, dedupe.seen_key) if dedupe is not None else (None, None)
        if passes is None:
            passes = {}
        for ev in events:
            sym = ev.sym
            last = newest.get(sym, 0)
            if not ev.backfilled and ev.ts + tol < last:
                self.drop("stale")
                continue
            if seen_seq is not None:
                t = type(ev)  # Dedupe.seen inlined
                if t is Trade and sym.startswith("O:"):
                    dup = dedupe.seen_print(ev, passes)
                else:
                    seq = ev.seq if t is not IndexValue else 0
                    dup = seen_seq(sym, "q" if t is Quote else "t", seq, ev.ts) if seq else seen_key(event_key(ev))
                if dup:
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


__all__ = ["Dedupe", "SAME_PRINT_MS", "TickPipeline", "event_key", "print_key"]
