"""Replay sources and the pacer that turns an event stream into timed batches.

A source is an iterator of market events in time order plus what the pacer needs to know about
it (bounds for progress, an option chain when it has one):

* :class:`SyntheticSource` - :class:`~services.feed.synthetic.SyntheticSession`, looping day after day;
* :class:`JournalSource` - the tick journal (``spx_common.journal``);
* :class:`FlatFileSource` - the vendor's trades/quotes day files (``spx_common.flatfiles``).

:func:`pace` batches events the way the vendor does (consecutive events within ``batch_ns`` of
event time, at most ``max_batch`` events) and releases each batch when the wall clock reaches its
last event's time divided by the speed (``None`` = as fast as possible).  Event-time gaps longer
than ``max_gap_ns`` (nights, weekends, a stopped recorder) are skipped rather than waited for.
"""

from __future__ import annotations

import abc
import asyncio
import time
from pathlib import Path
from collections.abc import Awaitable, Callable, Iterable, Iterator

from spx_common import flatfiles, journal
from spx_common.models import MarketEvent

from services.feed.synthetic import SyntheticSession


class Source(abc.ABC):
    """Base of replay sources."""

    name = "source"
    start_ns: int | None = None
    end_ns: int | None = None

    @abc.abstractmethod
    def events(self) -> Iterator[MarketEvent]:
        """The source's events in event-time order."""

    def chain_docs(self, t_ns: int, every_ns: int, root: str) -> list[dict]:
        """Chain documents due at event time ``t_ns`` (none for sources without a chain)."""
        return []


class SyntheticSource(Source):
    """The synthetic session, optionally followed by the next ones (``loop``)."""

    name = "synthetic"

    def __init__(self, session: SyntheticSession, loop: bool = False, max_sessions: int | None = None) -> None:
        self.session = session
        self.loop = loop
        self.max_sessions = max_sessions
        self.start_ns = session.open_ns
        self.end_ns = None if loop else session.end_ns

    def events(self) -> Iterator[MarketEvent]:
        n = 0
        while True:
            yield from self.session.events()
            n += 1
            if not self.loop or (self.max_sessions is not None and n >= self.max_sessions):
                return
            self.session = self.session.next_session()

    _next_chain_ns = 0

    def chain_docs(self, t_ns: int, every_ns: int, root: str) -> list[dict]:
        """One generated chain every ``every_ns`` of event time."""
        if t_ns < self._next_chain_ns:
            return []
        self._next_chain_ns = t_ns + every_ns
        s = self.session
        return [{"ts": t_ns, "root": root, "underlying": s.spot(s.sim_seconds(t_ns)), "contracts": s.chain(t_ns)}]


class JournalSource(Source):
    """Events of a journal file or directory, with their recorded ``source`` labels."""

    name = "journal"

    def __init__(self, path: Path | str, *, start_ns: int | None = None, end_ns: int | None = None,
                 symbols: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.files = journal.journal_files(self.path)
        self.stats = journal.ReadStats()
        self._filter = (start_ns, end_ns, list(symbols) if symbols is not None else None)
        self.start_ns, self.end_ns = self._bounds(start_ns, end_ns)

    def _bounds(self, start_ns: int | None, end_ns: int | None) -> tuple[int | None, int | None]:
        if not self.files:
            return start_ns, end_ns
        first = next(journal.iter_batches(self.files[0]), None)
        last = None
        for batch in journal.iter_batches(self.files[-1]):
            last = batch
        lo = first[0].ts if first else None
        hi = last[-1].ts if last else None
        return (max(lo, start_ns) if lo is not None and start_ns else lo or start_ns,
                min(hi, end_ns) if hi is not None and end_ns else hi or end_ns)

    def events(self) -> Iterator[MarketEvent]:
        start, end, syms = self._filter
        return journal.iter_events(self.path, start_ns=start, end_ns=end, symbols=syms, stats=self.stats)

    _docs: Iterator[dict] | None = None
    _next_doc: dict | None = None

    def chain_docs(self, t_ns: int, every_ns: int, root: str) -> list[dict]:
        """The recorded chain documents with ``ts <= t_ns`` not yet replayed, at their recorded times."""
        if self._docs is None:
            self._docs = journal.iter_docs(self.path, "chain")
            self._next_doc = next(self._docs, None)
        start = self._filter[0]
        out = []
        while self._next_doc is not None and self._next_doc.get("ts", 0) <= t_ns:
            if start is None or self._next_doc["ts"] >= start:
                out.append(self._next_doc)
            self._next_doc = next(self._docs, None)
        return out


class FlatFileSource(Source):
    """Vendor flat files (trades and/or quotes day files, CSV or CSV.gz) merged in time order.

    Reading is ``spx_common.flatfiles`` (the aggregator's readers: columns by header name, bad rows
    counted in ``stats`` and skipped); events carry ``source="replay"``.
    """

    name = "flatfile"

    def __init__(self, paths: list[Path | str], *, symbols: Iterable[str] | None = None,
                 quote_sizes: str = "vendor") -> None:

        if quote_sizes not in flatfiles.QUOTE_SIZES:
            raise ValueError(f"quote_sizes must be one of {flatfiles.QUOTE_SIZES}, not {quote_sizes!r}")
        self.quote_sizes = quote_sizes
        self._flatfiles = flatfiles
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(f"no flat file at {p}")
            flatfiles.kind_of(p)  # refuses a file with neither the trades nor the quotes header, now
        self.symbols = list(symbols) if symbols is not None else None
        self.stats = flatfiles.ReadStats()

    def events(self) -> Iterator[MarketEvent]:
        return self._flatfiles.read_merged(self.paths, symbols=self.symbols, stats=self.stats,
                                           quote_sizes=self.quote_sizes)


Emit = Callable[[list[MarketEvent]], None]


async def pace(
    events: Iterable[MarketEvent],
    emit: Emit,
    *,
    speed: float | None,
    batch_ns: int = 50_000_000,
    max_batch: int = 1000,
    max_gap_ns: int = 60_000_000_000,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[int], Awaitable[None] | None] | None = None,
    yield_every: int = 2000,
) -> int:
    """Release ``events`` in batches at ``speed`` x real time (None: as fast as possible).

    ``emit(batch)`` is called for each batch; ``on_batch(last_ts)`` (optional) runs before each
    emit and may publish side documents (chain snapshots, progress).  Returns the events emitted.
    """
    batch: list[MarketEvent] = []
    first_ts = 0
    anchor_wall = anchor_ev = None
    prev_ts = None
    total = 0
    since_yield = 0

    async def release() -> None:
        nonlocal anchor_wall, anchor_ev, total, since_yield
        last_ts = batch[-1].ts
        if speed is not None:
            if anchor_wall is None:
                anchor_wall, anchor_ev = time.monotonic(), batch[0].ts
            delay = anchor_wall + (last_ts - anchor_ev) / 1e9 / speed - time.monotonic()
            if delay > 0:
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)
        if on_batch is not None:
            r = on_batch(last_ts)
            if r is not None:
                await r
        emit(list(batch))
        total += len(batch)
        since_yield += len(batch)
        if speed is None and since_yield >= yield_every:
            since_yield = 0
            await asyncio.sleep(0)

    for ev in events:
        if stop is not None and stop.is_set():
            return total
        ts = ev.ts
        if prev_ts is not None and ts - prev_ts > max_gap_ns:
            if batch:
                await release()
                batch = []
            anchor_wall = None  # re-anchor after a night / weekend / outage
        prev_ts = ts
        if batch and (ts - first_ts > batch_ns or len(batch) >= max_batch):
            await release()
            batch = []
        if not batch:
            first_ts = ts
        batch.append(ev)
    if batch and not (stop is not None and stop.is_set()):
        await release()
    return total
