"""Event-time alignment of several input streams: a pure core (events and watermarks in, ordered releases out).

A process that reads more than one stream (the detector reads ticks from the feed and bars from the
aggregator) must not let the relative speed of its publishers decide the order in which it sees
their data: at replay speed ``max`` the feed runs hours ahead of the aggregator, and ticks were
evaluated against bars from hours earlier. The contract (docs/protocol.md, "Event-time alignment"),
after Flink's watermarks in parallel streams:

* every stream carries a **watermark** ``W``: a promise that every item it sends later has a key at
  or after ``W`` (the publisher's ``wm.<instance>`` frames);
* a consumer holds each item until every stream it depends on has a watermark **strictly after**
  the item's key, then releases the held items in the **canonical order**
  ``(key, order, stream, arrival)``: ``key`` an event time in ns, ``order`` a tuple the consumer
  chooses (e.g. a bar before the ticks that follow its end, bars of one end by symbol), then the
  stream's name and the item's arrival index within its stream;
* with correct watermarks the released sequence is the same whatever the interleaving of the streams
  (tested with hypothesis), so it is a function of the data, not of speed or scheduling.

**Runs.** An item may be a *run* of events with their own times (a batch of ticks, sorted): pushed with
``times`` (one per event, non-decreasing), keyed by its first. The run is released only up to the first
event that must wait: one at or after the frontier, or one after the next held item of any stream
(``(time, order, stream, arrival)`` compared as for items); the rest is held again (``splitter`` cuts it).
The released events are then in exactly the order they would have had as one item each, whatever the
publishers' batch sizes, at the cost of one heap operation per frame and one per cut.

Liveness and bounds, each counted, never silent:

* a stream is waited for from its first watermark on (a publisher that sends none, e.g. an older
  one or a test tool, is not waited for; publishers that do send them announce one at start-up);
* a stream whose publisher is down is marked **idle** (:meth:`Aligner.idle`) and no longer holds
  the others back; a silent but live publisher advances its watermark on its heartbeat;
* an item whose key is below what was already released is **late**: released at the next
  :meth:`Aligner.release`, counted (``late``);
* at most ``max_items`` items and ``max_bytes`` bytes are held: past either bound the oldest items
  (canonical order) are released early, counted (``forced``): memory stays bounded when a stream
  stalls while still alive.

No I/O, no clock: the service shell decides when a stream is idle and when to call ``release``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: a watermark past every event time: the stream has ended (a finished replay)
FINAL_NS = 1 << 62
#: before a stream's first watermark
_NONE = -(1 << 63)


#: a held item: (key, order, stream, arrival, bytes, item, the run's event times or None)
_Entry = tuple[int, tuple[Any, ...], str, int, int, Any, Sequence[int] | None]


@dataclass(slots=True)
class StreamState:
    """What the aligner knows of one input stream."""

    name: str
    watermark: int = _NONE
    session: str | None = None
    idle: bool = False
    arrived: int = 0  # items pushed (the arrival index of the next one)


@dataclass(slots=True)
class AlignStats:
    held: int = 0
    held_bytes: int = 0
    released: int = 0
    late: int = 0
    forced: int = 0
    resets: int = 0  # a stream's publisher restarted (new session) with a watermark behind its old one


class Aligner:
    """Hold items of several streams until every stream's watermark passed them; release them in order.

    ``streams``: the names of the streams every release waits for (more may join: :meth:`add_stream`,
    or implicitly by their first watermark or item). ``max_items`` / ``max_bytes`` bound what is held.
    """

    def __init__(self, streams: Iterable[str] = (), *, max_items: int = 100_000, max_bytes: int = 64 << 20,
                 splitter: Callable[[Any, int, int], tuple[Any, Any]] | None = None) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be at least 1")
        self.max_items = max_items
        self.max_bytes = max_bytes
        #: ``splitter(item, i, key of the rest) -> (first i events, the rest)``: how a run is cut (runs need one)
        self.splitter = splitter
        self.streams: dict[str, StreamState] = {}
        self.stats = AlignStats()
        #: the newest key released: an item pushed below it is late
        self.released_key = _NONE
        self._heap: list[_Entry] = []
        for s in streams:
            self.add_stream(s)

    # ------------------------------------------------------------------ input

    def add_stream(self, name: str) -> StreamState:
        st = self.streams.get(name)
        if st is None:
            st = self.streams[name] = StreamState(name)
        return st

    def push(self, stream: str, key: int, order: tuple[Any, ...], item: Any, nbytes: int = 0,
             times: Sequence[int] | None = None) -> None:
        """Hold ``item`` of ``stream`` with event time ``key`` (ns) and tie-break ``order``. With ``times`` the
        item is a run (module docstring): one event time per event, non-decreasing, ``key`` its first."""
        st = self.streams.get(stream) or self.add_stream(stream)
        n = st.arrived
        st.arrived = n + 1
        if key < self.released_key:
            self.stats.late += 1
        if times is not None:
            if self.splitter is None:
                raise ValueError("runs need an Aligner with a splitter")
            if len(times) < 2:
                times = None
        heapq.heappush(self._heap, (key, order, stream, n, nbytes, item, times))
        self.stats.held += 1
        self.stats.held_bytes += nbytes

    def watermark(self, stream: str, ns: int, session: str | None = None) -> None:
        """``stream`` promises that its later items have keys at or after ``ns``. Watermarks only move
        forward, except when the publisher restarted (a new ``session``): then the new one is taken."""
        st = self.streams.get(stream) or self.add_stream(stream)
        st.idle = False
        if session is not None and st.session is not None and session != st.session and ns < st.watermark:
            st.watermark = ns
            self.stats.resets += 1
        elif ns > st.watermark:
            st.watermark = ns
        if session is not None:
            st.session = session

    def idle(self, stream: str, idle: bool = True) -> None:
        """Mark ``stream`` idle (its publisher is down): releases stop waiting for it until it sends again."""
        (self.streams.get(stream) or self.add_stream(stream)).idle = idle

    # ------------------------------------------------------------------ output

    def ended(self) -> bool:
        """Every stream that sent a watermark announced the end of its input (``FINAL_NS``), at least one
        did, and nothing is held: all event time has passed for this consumer."""
        wms = [s.watermark for s in self.streams.values() if not s.idle and s.watermark != _NONE]
        return bool(wms) and min(wms) >= FINAL_NS and not self._heap

    @property
    def frontier(self) -> int:
        """The smallest watermark of the streams that are not idle and sent one (every item below it can go)."""
        wms = [s.watermark for s in self.streams.values() if not s.idle and s.watermark != _NONE]
        return min(wms) if wms else FINAL_NS + 1

    def release(self) -> list[Any]:
        """The held items now safe to process, in canonical order (bounded holds released early)."""
        heap = self._heap
        if not heap:
            return []
        limit = self.frontier
        if limit >= FINAL_NS:  # every stream ended: nothing more can come before anything held
            limit = 1 << 63
        out = []
        stats = self.stats
        pop = heapq.heappop
        while heap and (heap[0][0] < limit or stats.held > self.max_items or stats.held_bytes > self.max_bytes):
            entry = pop(heap)
            key, order, stream, n, nbytes, item, times = entry
            if key >= limit:
                stats.forced += 1
                times = None  # released whole: the bounds are reached
            if times is not None:
                cut = self._cut(entry, times, limit)
                if cut < len(times):
                    rest = times[cut:]
                    splitter = self.splitter
                    if splitter is None:  # push() refuses a run without one
                        raise RuntimeError("a run held by an Aligner without a splitter")
                    head, tail = splitter(item, cut, rest[0])
                    part = nbytes * cut // len(times)
                    heapq.heappush(heap, (rest[0], order, stream, n, nbytes - part, tail,
                                          rest if len(rest) > 1 else None))
                    stats.held_bytes -= part
                    last = times[cut - 1]
                    if last > self.released_key:
                        self.released_key = last
                    out.append(head)
                    continue
                key = times[-1]
            stats.held -= 1
            stats.held_bytes -= nbytes
            if key > self.released_key:
                self.released_key = key
            out.append(item)
        stats.released += len(out)
        return out

    def _cut(self, entry: _Entry, times: Sequence[int], limit: int) -> int:
        """How many events of the run ``entry`` (just popped; ``times`` its event times) go now: those before
        ``limit`` and before the next held item in canonical order (at least the first, the smallest of all)."""
        _, order, stream, n, _, _, _ = entry
        heap = self._heap
        nxt = heap[0] if heap else None
        rank = (order, stream, n)
        cut = 1
        for t in times[1:]:
            if t >= limit:
                break
            if nxt is not None and (t > nxt[0] or (t == nxt[0] and rank > nxt[1:4])):
                break
            cut += 1
        return cut

    def drain(self) -> list[Any]:
        """Every held item in canonical order, whatever the watermarks (shutdown)."""
        out = []
        while self._heap:
            key, _, _, _, nbytes, item, times = heapq.heappop(self._heap)
            if times is not None:
                key = times[-1]
            self.stats.held -= 1
            self.stats.held_bytes -= nbytes
            self.released_key = max(self.released_key, key)
            out.append(item)
        self.stats.released += len(out)
        return out

    def held_min(self) -> int:
        """The smallest key held (``FINAL_NS + 1`` when nothing is)."""
        return self._heap[0][0] if self._heap else FINAL_NS + 1

    def held(self) -> list[Any]:
        """The held items, in no particular order (a service looking at what waits, e.g. a warm-up)."""
        return [e[5] for e in self._heap]

    def __len__(self) -> int:
        return len(self._heap)


__all__ = ["AlignStats", "Aligner", "FINAL_NS", "StreamState"]
