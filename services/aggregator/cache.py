"""The bounded tick cache: last trade/quote/value per symbol and a rolling event buffer.

Bounded by event-time window and by count per symbol; every stored event gets a per-symbol
monotonic sequence number so clients can ask "ticks since seq N" and stitch live updates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from spx_common.models import IndexValue, MarketEvent, Quote, Trade


@dataclass
class _Sym:
    seq: int = 0  # sequence number of the newest event
    last_trade: Trade | None = None
    last_quote: Quote | None = None
    last_value: IndexValue | None = None
    buf: deque = field(default_factory=deque)  # events; buf[i] has seq  seq - len(buf) + 1 + i


class TickCache:
    def __init__(self, window_ns: int, max_events: int, max_symbols: int = 5000) -> None:
        self.window_ns = window_ns
        self.max_events = max_events
        self.max_symbols = max_symbols
        self.syms: dict[str, _Sym] = {}
        self.evicted = 0
        self.refused = 0

    def add(self, events: list[MarketEvent]) -> None:
        """Append a one-symbol batch (as the feed publishes them)."""
        if not events:
            return
        sym = events[0].sym
        st = self.syms.get(sym)
        if st is None:
            if len(self.syms) >= self.max_symbols:
                self.refused += len(events)
                return
            st = self.syms[sym] = _Sym()
        buf = st.buf
        buf.extend(events)
        st.seq += len(events)
        last = {type(ev): ev for ev in events}  # the newest event of each type, in one pass
        if len(last) == 1:
            t, ev = last.popitem()
            if t is Quote:
                st.last_quote = ev
            elif t is Trade:
                st.last_trade = ev
            else:
                st.last_value = ev
        else:
            st.last_quote = last.get(Quote, st.last_quote)
            st.last_trade = last.get(Trade, st.last_trade)
            st.last_value = last.get(IndexValue, st.last_value)
        over = len(buf) - self.max_events
        if over > 0:
            for _ in range(over):
                buf.popleft()
            self.evicted += over
        horizon = events[-1].ts - self.window_ns
        while buf and buf[0].ts < horizon:
            buf.popleft()
            self.evicted += 1

    def last(self, sym: str) -> dict:
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "trade": None, "quote": None, "value": None}
        return {"sym": sym, "seq": st.seq, "trade": st.last_trade, "quote": st.last_quote, "value": st.last_value}

    def since(self, sym: str, *, seq: int | None = None, ts_ns: int | None = None, limit: int = 10_000) -> dict:
        st = self.syms.get(sym)
        if st is None:
            return {"sym": sym, "seq": 0, "events": [], "truncated": False}
        first = st.seq - len(st.buf) + 1
        out = []
        for i, ev in enumerate(st.buf):
            s = first + i
            if seq is not None and s <= seq:
                continue
            if ts_ns is not None and ev.ts < ts_ns:
                continue
            out.append({"seq": s, "event": ev})
        truncated = len(out) > limit or (seq is not None and seq + 1 < first)
        return {"sym": sym, "seq": st.seq, "events": out[-limit:], "truncated": truncated}

    def size(self) -> int:
        return sum(len(s.buf) for s in self.syms.values())
