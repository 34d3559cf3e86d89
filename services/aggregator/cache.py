"""The bounded tick cache: last trade/quote/value per symbol and a rolling event buffer.

Bounded by event-time window and by count per symbol; every stored event gets a per-symbol
monotonic sequence number so clients can ask "ticks since seq N" and stitch live updates.

Events are kept as the batches they arrived in (the feed publishes one-symbol batches), and a
batch is kept as its msgpack body — the bytes it arrived in — not as decoded objects; queries
decode the batches they read. So adding a batch costs the same whatever its length, the decoded
events die young (right after the bars have used them) instead of being freed ten minutes later
when they are cold, and the cache holds about a quarter of the memory (measured: keeping decoded
events cost ~20% of the live loop). The count bound is exact (a partly evicted oldest batch keeps
an offset). The time bound works per batch: a batch is dropped once its last event is older than
the window, so up to one batch per symbol may be older than the window.

A third bound holds across symbols: ``max_bytes`` of kept batch bodies in all (``[aggregator]
cache_max_mb``). Above it, the batches with the oldest last event time go first, whatever their symbol,
until the cache is at 90% of the bound (one heap over the symbols' oldest batches per shrink, so the
cost is paid in bulk, not per batch).
"""

from __future__ import annotations

import heapq
from collections import deque

import msgspec

from services.aggregator.bars import newest_by_kind
from spx_common.models import IndexValue, MarketEvent, Quote, Trade

_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
_ENCODER = msgspec.msgpack.Encoder()


class _Sym:
    """One symbol's cache: ``chunks`` holds ``(body, count, last_ts)`` per batch, oldest first; the first
    ``head`` events of the oldest batch are evicted. ``n`` events are cached; the newest has sequence
    number ``seq``."""

    __slots__ = ("seq", "last_trade", "last_quote", "last_value", "chunks", "head", "n")

    def __init__(self) -> None:
        self.seq = 0
        self.last_trade: Trade | None = None
        self.last_quote: Quote | None = None
        self.last_value: IndexValue | None = None
        self.chunks: deque[tuple[bytes | msgspec.Raw, int, int]] = deque()
        self.head = 0
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def events(self) -> list[MarketEvent]:
        """The cached events, oldest first (decoded anew)."""
        out: list[MarketEvent] = []
        head = self.head
        for body, _, _ in self.chunks:
            batch = _DECODER.decode(body)
            out.extend(batch[head:] if head else batch)
            head = 0
        return out


class TickCache:
    def __init__(self, window_ns: int, max_events: int, max_symbols: int = 5000,
                 max_bytes: int = 256 << 20) -> None:
        self.window_ns = window_ns
        self.max_events = max_events
        self.max_symbols = max_symbols
        self.max_bytes = max_bytes
        self.syms: dict[str, _Sym] = {}
        self.evicted = 0
        self.refused = 0
        self.bytes = 0  # kept batch bodies, all symbols
        self.shrinks = 0  # times the byte bound evicted across symbols

    def add(self, events: list[MarketEvent], body: bytes | msgspec.Raw | None = None) -> None:
        """Append a one-symbol batch (as the feed publishes them). ``body``: the msgpack the batch was decoded
        from (a frame's ``raw_body()``), kept as it is; without it the batch is encoded here."""
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
        last = events[-1]
        chunks = st.chunks
        if body is None:
            body = _ENCODER.encode(events)
        chunks.append((body, k, last.ts))
        self.bytes += len(body)
        st.seq += k
        n = st.n + k
        trade, quote, value = newest_by_kind(events)
        if trade is not None:
            st.last_trade = trade
        if quote is not None:
            st.last_quote = quote
        if value is not None:
            st.last_value = value
        over = n - self.max_events
        if over > 0:
            self.evicted += over
            n -= over
            head = st.head
            while over:
                left = chunks[0][1] - head
                if left <= over:
                    self.bytes -= len(chunks.popleft()[0])
                    over -= left
                    head = 0
                else:
                    head += over
                    over = 0
            st.head = head
        horizon = last.ts - self.window_ns
        if chunks[0][2] < horizon:  # whole batches whose last event is older than the window
            head = st.head
            while chunks[0][2] < horizon:  # never empties: the newest batch ends at ``last``
                old_body, count, _ = chunks.popleft()
                self.bytes -= len(old_body)
                dropped = count - head
                head = 0
                n -= dropped
                self.evicted += dropped
            st.head = 0
        st.n = n
        if self.bytes > self.max_bytes:
            self._shrink()

    def _shrink(self) -> None:
        """Evict the batches with the oldest last event time, across symbols, to 90% of ``max_bytes``."""
        self.shrinks += 1
        target = self.max_bytes * 9 // 10
        heap = [(st.chunks[0][2], i, st) for i, st in enumerate(self.syms.values()) if st.chunks]
        heapq.heapify(heap)
        while self.bytes > target and heap:
            _, i, st = heapq.heappop(heap)
            body, count, _ = st.chunks.popleft()
            self.bytes -= len(body)
            dropped = count - st.head
            st.head = 0
            st.n -= dropped
            self.evicted += dropped
            if st.chunks:
                heapq.heappush(heap, (st.chunks[0][2], i, st))

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
        s = first  # sequence number of the next cached event
        head = st.head
        for body, count, last_ts in st.chunks:
            end = s + count - head  # one past this batch's last sequence number
            # batches wholly before ``seq`` or older than ``ts_ns`` are not decoded
            if (seq is None or end - 1 > seq) and (ts_ns is None or last_ts >= ts_ns):
                batch = _DECODER.decode(body)
                for ev in batch[head:] if head else batch:
                    if (seq is None or s > seq) and (ts_ns is None or ev.ts >= ts_ns):
                        out.append({"seq": s, "event": ev})
                    s += 1
            s = end
            head = 0
        truncated = len(out) > limit or (seq is not None and seq + 1 < first)
        return {"sym": sym, "seq": st.seq, "events": out[-limit:], "truncated": truncated}

    def size(self) -> int:
        return sum(s.n for s in self.syms.values())

