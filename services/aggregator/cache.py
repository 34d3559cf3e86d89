"""The bounded tick cache: a rolling event buffer per symbol, and its last trade/quote/value (from the core).

Bounded by event-time window and by count per symbol; every stored event gets a per-symbol
monotonic sequence number so clients can ask "ticks since seq N" and stitch live updates.

Events are kept as the batches the bar core hands over (:meth:`TickCache.add_body`: one symbol's events,
held by the core in runs of up to 64), as msgpack — each event's bytes as they arrived, never decoded on
the live path — copied into large per-symbol segments (:class:`_Sym`: no Python object per batch, so the
collector never walks the cache); queries decode the batches they read. So adding a batch costs the same
whatever its length, and the cache holds about a quarter of the memory decoded events would (measured:
keeping decoded events cost ~20% of the live loop). The count bound is exact (a partly evicted oldest
batch keeps an offset). The time bound works per batch: a batch is dropped once its last event is older
than the window, so up to one batch per symbol may be older than the window.

A third bound holds across symbols: ``max_bytes`` of kept batch bodies in all (``[aggregator]
cache_max_mb``). Above it, the batches with the oldest last event time go first, whatever their symbol,
until the cache is at 90% of the bound (one heap over the symbols' oldest batches per shrink, so the
cost is paid in bulk, not per batch).
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque

import msgspec

from spx_common.models import MarketEvent, MicroBar

_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
_EVENT_DECODER = msgspec.msgpack.Decoder(MarketEvent)
_BAR_DECODER = msgspec.msgpack.Decoder(MicroBar)
_ENCODER = msgspec.msgpack.Encoder()


#: bytes per storage segment of a symbol's batches (a batch larger than this gets a segment of its own)
SEGMENT_BYTES = 256 << 10
_SEG, _OFF, _SIZE, _COUNT, _LAST = range(5)


class SegmentLog:
    """Byte records (msgpack bodies), oldest first, each with an event count and a time, in bounded memory
    the cyclic collector never walks.

    The bodies lie back to back in a few large ``bytearray`` segments and their positions, counts and
    times in one ``int64`` array: no Python object per record. A deque of per-record tuples and bytes
    meant the collector's full passes visited every record (the tick cache held about a million at
    50,000 events/s: 250 ms pauses of the whole aggregator, measured) and ~100 bytes of object headers
    per record besides its body. A segment is freed once no live record lies in it.
    """

    __slots__ = ("segs", "seg0", "fill", "pos", "first", "segment_bytes")

    def __init__(self, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.segment_bytes = segment_bytes
        self.segs: deque[bytearray] = deque()
        self.seg0 = 0  # absolute number of segs[0]
        self.fill = 0  # bytes used of the newest segment
        # five int64 per record (_SEG, _OFF, _SIZE, _COUNT, _LAST): absolute segment number, offset in it,
        # body size, events, time; the live records start at index ``first`` (a multiple of 5)
        self.pos = array("q")
        self.first = 0

    @property
    def batches(self) -> int:
        return (len(self.pos) - self.first) // 5

    def oldest_last_ts(self) -> int:
        return self.pos[self.first + _LAST]

    def oldest_count(self) -> int:
        return self.pos[self.first + _COUNT]

    def push(self, body: bytes, count: int, last_ts: int) -> None:
        """Append a record. Segments are allocated at their full size (4 KiB, doubling up to
        ``segment_bytes``; a larger record gets one of its own) and filled by slice assignment: growing a
        bytearray by ``+=`` copies every byte about nine times while a 256 KiB segment fills (13% of the
        aggregator's live loop, measured)."""
        n = len(body)
        segs = self.segs
        if not segs or self.fill + n > len(segs[-1]):
            cap = min(self.segment_bytes, 2 * len(segs[-1]) if segs else 4096)
            segs.append(bytearray(max(n, cap, 1)))
            self.fill = 0
        off = self.fill
        segs[-1][off:off + n] = body
        self.fill = off + n
        self.pos.extend((self.seg0 + len(segs) - 1, off, n, count, last_ts))

    def pop(self) -> tuple[int, int]:
        """Remove the oldest record; returns its (body size, event count)."""
        pos, i = self.pos, self.first
        size, count = pos[i + _SIZE], pos[i + _COUNT]
        i += 5
        if i == len(pos):  # emptied (the byte bound can take a symbol's every batch)
            self.segs.clear()
            self.seg0 = 0
            self.fill = 0
            del pos[:]
            i = 0
        else:
            keep = pos[i + _SEG]
            while self.seg0 < keep:
                self.segs.popleft()
                self.seg0 += 1
            if i >= 5 * 4096 and 2 * i >= len(pos):  # drop the spent prefix (amortised O(1))
                del pos[:i]
                i = 0
        self.first = i
        return size, count

    def body(self, i: int) -> bytearray:
        pos = self.pos
        o = pos[i + _OFF]
        return self.segs[pos[i + _SEG] - self.seg0][o:o + pos[i + _SIZE]]

    def iter_batches(self):
        """``(index, count, time)`` of the live records, oldest first (``body(index)`` is the record)."""
        pos = self.pos
        for i in range(self.first, len(pos), 5):
            yield i, pos[i + _COUNT], pos[i + _LAST]


class _Sym(SegmentLog):
    """One symbol's cache: its batches (records of a :class:`SegmentLog`), oldest first, of which the first
    ``head`` events of the oldest are evicted; ``n`` events are cached; the newest has sequence number ``seq``."""

    __slots__ = ("seq", "head", "n")

    def __init__(self, segment_bytes: int = SEGMENT_BYTES) -> None:
        super().__init__(segment_bytes)
        self.seq = 0
        self.head = 0
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def events(self) -> list[MarketEvent]:
        """The cached events, oldest first (decoded anew)."""
        out: list[MarketEvent] = []
        head = self.head
        for i, _, _ in self.iter_batches():
            batch = _DECODER.decode(self.body(i))
            out.extend(batch[head:] if head else batch)
            head = 0
        return out


class BarRing(SegmentLog):
    """The newest ``maxlen`` closed bars of one series (symbol and interval), msgpack-encoded in a
    :class:`SegmentLog`: 170 series x 7,200 bars kept as ``MicroBar`` objects in deques were 1.2 M
    entries for every full collector pass to visit. Decoded on query."""

    __slots__ = ("maxlen",)

    def __init__(self, maxlen: int, segment_bytes: int = 64 << 10) -> None:
        super().__init__(segment_bytes)
        self.maxlen = maxlen

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return iter(self.since())

    def append(self, bar: MicroBar) -> None:
        self.push(_ENCODER.encode(bar), 1, bar.start_ns)
        if self.batches > self.maxlen:
            self.pop()

    def since(self, start_ns: int = 0, limit: int | None = None) -> list[MicroBar]:
        """Bars starting at or after ``start_ns``, oldest first; the newest ``limit`` of them."""
        idx = [i for i, _, t in self.iter_batches() if t >= start_ns]
        if limit is not None:
            idx = idx[-limit:] if limit > 0 else []
        return [_BAR_DECODER.decode(self.body(i)) for i in idx]


class TickCache:
    """Per-symbol bounded event logs fed by the bar core's holds (:meth:`add_body` is its ``on_hold``).

    The core (``services.aggregator.bars.BarAggregator``) holds each symbol's events as msgpack and hands
    them over in runs of up to ``hold_max`` (the cache's cost is per run, and an option root's frame holds
    ~1-2 events of each of ~80 contracts); it also keeps each symbol's newest trade, quote and value.
    With :attr:`core` set, every query first has the core hand over what it holds (``hold_flush``), so each
    answer is as if every event had been added on arrival, and ``last`` takes the newest events from it.
    """

    def __init__(self, window_ns: int, max_events: int, *, max_bytes: int = 256 << 20,
                 segment_bytes: int = SEGMENT_BYTES, core=None) -> None:
        self.segment_bytes = segment_bytes
        self.window_ns = window_ns
        self.max_events = max_events
        self.max_bytes = max_bytes
        #: the bar core that feeds :meth:`add_body`: ``hold_flush(sym=None)``, ``newest(sym)``, ``refused_symbols``
        self.core = core
        self.syms: dict[str, _Sym] = {}
        self.evicted = 0
        self.bytes = 0  # kept batch bodies, all symbols
        self.shrinks = 0  # times the byte bound evicted across symbols

    @property
    def refused(self) -> int:
        """Events neither aggregated nor cached because ``max_symbols`` symbols were tracked (the core's count)."""
        return self.core.refused_symbols if self.core is not None else 0

    def add_body(self, sym: str, body: bytes, count: int, last_ts: int) -> None:
        """Append one batch of ``sym``: ``body`` is a msgpack array of ``count`` events (kept as it is, not
        decoded), the last stamped ``last_ts``; then apply the count, time and byte bounds."""
        st = self.syms.get(sym)
        if st is None:
            st = self.syms[sym] = _Sym(self.segment_bytes)
        st.push(body, count, last_ts)
        self.bytes += len(body)
        st.seq += count
        n = st.n + count
        over = n - self.max_events
        if over > 0:
            self.evicted += over
            n -= over
            head = st.head
            while over:
                left = st.oldest_count() - head
                if left <= over:
                    self.bytes -= st.pop()[0]
                    over -= left
                    head = 0
                else:
                    head += over
                    over = 0
            st.head = head
        horizon = last_ts - self.window_ns
        if st.pos[st.first + _LAST] < horizon:  # whole batches whose last event is older than the window
            head = st.head
            while st.oldest_last_ts() < horizon:  # never empties: the newest batch ends at ``last_ts``
                size, count = st.pop()
                self.bytes -= size
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
        heap = [(st.oldest_last_ts(), i, st) for i, st in enumerate(self.syms.values()) if st.batches]
        heapq.heapify(heap)
        while self.bytes > target and heap:
            _, i, st = heapq.heappop(heap)
            size, count = st.pop()
            self.bytes -= size
            dropped = count - st.head
            st.head = 0
            st.n -= dropped
            self.evicted += dropped
            if st.batches:
                heapq.heappush(heap, (st.oldest_last_ts(), i, st))

    def flush(self, sym: str | None = None) -> None:
        """Have the core hand over what it holds, for ``sym`` or for every symbol."""
        if self.core is not None:
            self.core.hold_flush(sym)

    def last(self, sym: str) -> dict:
        """``{sym, seq, trade, quote, value}``: the newest trade, quote and index value fed for ``sym`` (also
        when evicted from the log) and its sequence number."""
        self.flush(sym)
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "trade": None, "quote": None, "value": None}
        newest = self.core.newest(sym) if self.core is not None else (None, None, None)
        trade, quote, value = (None if b is None else _EVENT_DECODER.decode(b) for b in newest)
        return {"sym": sym, "seq": st.seq, "trade": trade, "quote": quote, "value": value}

    def since(self, sym: str, *, seq: int | None = None, ts_ns: int | None = None, limit: int = 10_000) -> dict:
        self.flush(sym)
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "events": [], "truncated": False}
        first = st.seq - st.n + 1
        out = []
        s = first  # sequence number of the next cached event
        head = st.head
        for i, count, last_ts in st.iter_batches():
            end = s + count - head  # one past this batch's last sequence number
            # batches wholly before ``seq`` or older than ``ts_ns`` are not decoded
            if (seq is None or end - 1 > seq) and (ts_ns is None or last_ts >= ts_ns):
                batch = _DECODER.decode(st.body(i))
                for ev in batch[head:] if head else batch:
                    if (seq is None or s > seq) and (ts_ns is None or ev.ts >= ts_ns):
                        out.append({"seq": s, "event": ev})
                    s += 1
            s = end
            head = 0
        truncated = len(out) > limit or (seq is not None and seq + 1 < first)
        return {"sym": sym, "seq": st.seq, "events": out[-limit:], "truncated": truncated}

    def size(self) -> int:
        self.flush()
        return sum(s.n for s in self.syms.values())

    def symbols(self) -> dict[str, int]:
        """``{symbol: events cached}`` (the ``symbols`` request)."""
        self.flush()
        return {sym: st.n for sym, st in self.syms.items()}
