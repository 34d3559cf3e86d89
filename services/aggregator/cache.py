"""The bounded tick cache: last trade/quote/value per symbol and a rolling event buffer.

Bounded by event-time window and by count per symbol; every stored event gets a per-symbol
monotonic sequence number so clients can ask "ticks since seq N" and stitch live updates.

Events are kept as the batches they arrived in (the feed publishes one-symbol batches), so adding
a batch costs the same whatever its length: no per-event work on the hot path. The count bound is
exact (a partly evicted oldest batch keeps an offset). The time bound takes a batch's events to be in
event-time order, as the feed's are: whole batches older than the window are dropped and the oldest
remaining batch is cut by binary search (the events a scan from the oldest would evict).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from operator import attrgetter

from spx_common.models import IndexValue, MarketEvent, Quote, Trade


class _Sym:
    """One symbol's cache. ``chunks[0][head:]`` and the later chunks are the ``n`` cached events;
    the newest has sequence number ``seq``."""

    __slots__ = ("seq", "last_trade", "last_quote", "last_value", "chunks", "head", "n")

    def __init__(self) -> None:
        self.seq = 0
        self.last_trade: Trade | None = None
        self.last_quote: Quote | None = None
        self.last_value: IndexValue | None = None
        self.chunks: deque[list[MarketEvent]] = deque()
        self.head = 0
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def events(self) -> list[MarketEvent]:
        """The cached events, oldest first (a copy)."""
        out: list[MarketEvent] = []
        head = self.head
        for c in self.chunks:
            out.extend(c[head:] if head else c)
            head = 0
        return out


class TickCache:
    def __init__(self, window_ns: int, max_events: int, max_symbols: int = 5000) -> None:
        self.window_ns = window_ns
        self.max_events = max_events
        self.max_symbols = max_symbols
        self.syms: dict[str, _Sym] = {}
        self.evicted = 0
        self.refused = 0

    def add(self, events: list[MarketEvent]) -> None:
        """Append a one-symbol batch (as the feed publishes them). The cache keeps the list itself: callers hand
        it over and do not change it afterwards."""
        if not events:
            return
        sym = events[0].sym
        st = self.syms.get(sym)
        if st is None:
            if len(self.syms) >= self.max_symbols:
                self.refused += len(events)
                return
            st = self.syms[sym] = _Sym()
        k = len(events)
        st.chunks.append(events)
        st.seq += k
        n = st.n + k
        last = events[-1]
        kinds = set(map(type, events))
        if len(kinds) == 1:
            _set_last(st, last)
        else:  # the newest event of each kind, scanning back from the end (usually a few steps)
            for ev in reversed(events):
                t = type(ev)
                if t in kinds:
                    _set_last(st, ev)
                    kinds.discard(t)
                    if not kinds:
                        break
        chunks = st.chunks
        over = n - self.max_events
        if over > 0:
            self.evicted += over
            n -= over
            head = st.head
            while over:
                left = len(chunks[0]) - head
                if left <= over:
                    chunks.popleft()
                    over -= left
                    head = 0
                else:
                    head += over
                    over = 0
            st.head = head
        horizon = last.ts - self.window_ns
        first = chunks[0]
        if first[st.head].ts < horizon:
            head = st.head
            while first[-1].ts < horizon:  # the whole oldest batch is out of the window
                chunks.popleft()
                n -= len(first) - head
                self.evicted += len(first) - head
                head = 0
                first = chunks[0]  # never empty: the newest batch ends at ``last``, inside the window
            if first[head].ts < horizon:
                cut = bisect_left(first, horizon, head, len(first), key=_ts)
                n -= cut - head
                self.evicted += cut - head
                head = cut
            st.head = head
        st.n = n

    def last(self, sym: str) -> dict:
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "trade": None, "quote": None, "value": None}
        return {"sym": sym, "seq": st.seq, "trade": st.last_trade, "quote": st.last_quote, "value": st.last_value}

    def since(self, sym: str, *, seq: int | None = None, ts_ns: int | None = None, limit: int = 10_000) -> dict:
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "events": [], "truncated": False}
        first = st.seq - st.n + 1
        out = []
        for i, ev in enumerate(st.events()):
            s = first + i
            if seq is not None and s <= seq:
                continue
            if ts_ns is not None and ev.ts < ts_ns:
                continue
            out.append({"seq": s, "event": ev})
        truncated = len(out) > limit or (seq is not None and seq + 1 < first)
        return {"sym": sym, "seq": st.seq, "events": out[-limit:], "truncated": truncated}

    def size(self) -> int:
        return sum(s.n for s in self.syms.values())


_ts = attrgetter("ts")


def _set_last(st: _Sym, ev: MarketEvent) -> None:
    t = type(ev)
    if t is Quote:
        st.last_quote = ev
    elif t is Trade:
        st.last_trade = ev
    else:
        st.last_value = ev
