"""The tick journal: every normalized market event, appended off the hot path to day files.

Layout: ``<run_dir>/journal/<YYYY-MM-DD>.ticks`` (the America/New_York trading date of the
events), and when a day file passes ``max_file_bytes`` the next parts ``<date>.001.ticks``,
``<date>.002.ticks``...  A file is a :mod:`spx_common.recordlog` (length, CRC-32, payload) whose
records are::

    msgpack of list[Trade | Quote | IndexValue]

one record per published batch, in publish order, so a replay sees the same batches. Files written
before the record log (a ``<u32 LE length>`` prefix, no magic, no CRC) are still read; the writer never
appends to one (a restart on such a day starts the next part).

Durability contract: :meth:`JournalWriter.append` only queues the batch (no encoding, no I/O on
the caller's thread).  A writer thread wakes every ``flush_interval_s`` (default 0.25 s), encodes
everything queued and hands it to the operating system with one ``write``.  So if the *process*
crashes, at most the batches appended during the last flush interval are lost; with
``fsync=True`` the same holds for a machine crash (at the cost of an ``fsync`` per interval).
A torn record at the end of a file (crash during a write) is cut off before the writer appends after
it; a reader ignores it and counts it, and skips (and counts) a record whose CRC fails.

The queue is bounded (``max_pending`` events); beyond it batches are dropped and counted in
``JournalWriter.dropped`` rather than growing memory without limit.

Side documents (the option chain snapshots published on ``chain.<root>``) go to
``<date>.<kind>.docs`` with the same record framing (msgpack of ``{"ts": ns, ...}``), so a
journal replay can republish them: :meth:`JournalWriter.append_doc`, :func:`iter_docs`.  At
most ``max_pending_docs`` are queued.

Readers: :func:`iter_events` (files or a directory, optional time/symbol filter) is what replay and
``spx bars`` use.  :func:`iter_tail` reads only the newest ``max_bytes`` of one day, whatever the day's
size (the aggregator's warm-up); :func:`read_journal_tail` is the same as a flat event list with each
symbol's newest event time (the feed's restart backfill).
"""

from __future__ import annotations

import datetime as dt
import mmap
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator

import msgspec

from spx_common.calendar import ET
from spx_common import recordlog
from spx_common.models import MarketEvent

SUFFIX = ".ticks"
DOC_SUFFIX = ".docs"
#: the length prefix of the parts written before the record log (:data:`recordlog.LEGACY_LE`)
_LEN = struct.Struct("<I")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: how far into a journal part read from its middle a record boundary is searched for (the largest record
#: assumed; see :func:`iter_tail`)
TAIL_SYNC_BYTES = 4 << 20
#: records decoded to confirm a record boundary found mid-file (the length chain to the end is also checked)
TAIL_SYNC_CONFIRM = 8
_ARRAY_HEADS = frozenset(range(0x91, 0xA0)) | {0xDC, 0xDD}  # msgpack array of >= 1 element


def trading_date(ts_ns: int) -> dt.date:
    """The New York calendar date of an event time."""
    return dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, ET).date()


class JournalWriter:
    """Queue batches on the hot path; a background thread writes them (see module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        flush_interval_s: float = 0.25,
        max_pending: int = 500_000,
        max_file_bytes: int = 2_000_000_000,
        fsync: bool = False,
        max_pending_docs: int = 1000,
    ) -> None:
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be > 0")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.max_file_bytes = max_file_bytes
        self.fsync = fsync
        self.dropped = 0  # events refused because the queue was full
        self.written = 0  # events handed to the OS
        self.errors = 0  # failed writes (disk full, permissions); counted, logged by the owner
        self.last_error: str = ""
        #: why the last write failed, until a write succeeds again (the feed reports itself degraded)
        self.fault: str | None = None
        self._pending: deque[list[MarketEvent]] = deque()
        self._docs: deque[tuple[str, dict]] = deque()
        self.max_pending_docs = max_pending_docs
        self.docs_dropped = 0
        self._pending_events = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._files: dict[dt.date, recordlog.RecordWriter] = {}
        self._doc_files: dict[Path, recordlog.RecordWriter] = {}
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def append(self, events: list[MarketEvent]) -> bool:
        """Queue one batch (cheap). Returns False, counting the drop, when the queue is full."""
        if not events:
            return True
        n = len(events)
        with self._lock:
            if self._closed or self._pending_events + n > self.max_pending:
                self.dropped += n
                return False
            self._pending.append(events)
            self._pending_events += n
        return True

    def append_doc(self, kind: str, doc: dict) -> bool:
        """Queue a side document (``doc["ts"]`` in ns is required) for ``<date>.<kind>.docs``."""
        if not kind.isidentifier() or not isinstance(doc.get("ts"), int):
            raise ValueError("append_doc needs an identifier kind and an integer doc['ts']")
        with self._lock:
            if self._closed or len(self._docs) >= self.max_pending_docs:
                self.docs_dropped += 1
                return False
            self._docs.append((kind, doc))
        return True

    @property
    def pending(self) -> int:
        return self._pending_events

    def flush(self) -> None:
        """Write everything queued now (called by the thread; also safe from the owner)."""
        with self._lock:
            batches = list(self._pending)
            self._pending.clear()
            self._pending_events = 0
            docs = list(self._docs)
            self._docs.clear()
        if docs:
            self._write_docs(docs)
        if not batches:
            return
        by_day: dict[dt.date, list[bytes]] = {}
        counts: dict[dt.date, int] = {}
        for batch in batches:
            payload = _ENCODER.encode(batch)
            day = trading_date(batch[0].ts)
            by_day.setdefault(day, []).append(payload)
            counts[day] = counts.get(day, 0) + len(batch)
        for day, chunks in by_day.items():
            try:
                self._file(day).append(chunks)
                self.written += counts[day]
                self.fault = None
            except OSError as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.fault = f"tick journal not written: {exc.strerror or exc}"
                self._drop_file(day)

    def _write_docs(self, docs: list[tuple[str, dict]]) -> None:
        by_file: dict[Path, list[bytes]] = {}
        for kind, doc in docs:
            payload = _ENCODER.encode(doc)
            path = self.directory / f"{trading_date(doc['ts']).isoformat()}.{kind}{DOC_SUFFIX}"
            by_file.setdefault(path, []).append(payload)
        for path, chunks in by_file.items():
            writer = self._doc_files.get(path)
            try:
                if writer is None:  # opened (and its tail checked) once, kept open like the day's ticks part
                    if recordlog.is_legacy(path):  # a day's documents from before the record log: migrated once
                        recordlog.rewrite(path, recordlog.iter_file(path, recordlog.LEGACY_LE), fsync=self.fsync)
                    writer = recordlog.RecordWriter(path, fsync=self.fsync).open()
                    for old in [p for p in self._doc_files if p.name[:10] != path.name[:10]]:
                        self._doc_files.pop(old).close()  # another day's: a live feed only writes today
                    self._doc_files[path] = writer
                writer.append(chunks)
            except (OSError, recordlog.LegacyFile) as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                dropped = self._doc_files.pop(path, None)
                if dropped is not None:
                    dropped.close()

    def _file(self, day: dt.date) -> recordlog.RecordWriter:
        writer = self._files.get(day)
        if writer is not None:
            if writer.size < self.max_file_bytes:
                return writer
            writer.close()
        path = self._next_path(day, writer.path if writer else None)
        writer = recordlog.RecordWriter(path, fsync=self.fsync).open()
        # retire other days' handles: a live feed only writes today
        for other in [d for d in self._files if d != day]:
            self._drop_file(other)
        self._files[day] = writer
        return writer

    def _next_path(self, day: dt.date, current: Path | None) -> Path:
        """The day's last part if it has room and is a record log (resume after a restart), else the next
        part."""
        parts = sorted(self.directory.glob(f"{day.isoformat()}*{SUFFIX}"), key=_sort_key)
        if (current is None and parts and parts[-1].stat().st_size < self.max_file_bytes
                and not recordlog.is_legacy(parts[-1])):
            return parts[-1]
        last = _sort_key(parts[-1])[1] if parts else -1
        if last < 0:
            return self.directory / f"{day.isoformat()}{SUFFIX}"
        return self.directory / f"{day.isoformat()}.{last + 1:03d}{SUFFIX}"

    def _drop_file(self, day: dt.date) -> None:
        writer = self._files.pop(day, None)
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, write what is queued, close files (bounded by ``timeout_s``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush()
        for day in list(self._files):
            self._drop_file(day)
        for writer in self._doc_files.values():
            writer.close()
        self._doc_files.clear()


@dataclass
class ReadStats:
    """What a reader skipped: torn tail records and undecodable records (by file)."""

    records: int = 0
    events: int = 0
    torn: int = 0
    corrupt: int = 0
    problems: list[str] = field(default_factory=list)


def journal_files(path: Path | str) -> list[Path]:
    """A single file, or every ``*.ticks`` of a directory in date/part order."""
    p = Path(path)
    if p.is_dir():
        return sorted(p.glob(f"*{SUFFIX}"), key=_sort_key)
    if not p.exists():
        raise FileNotFoundError(f"no journal at {p}")
    return [p]


def _sort_key(p: Path) -> tuple[str, int]:
    parts = p.name[: -len(SUFFIX)].split(".")
    return parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def iter_batches(path: Path | str, stats: ReadStats | None = None) -> Iterator[list[MarketEvent]]:
    """Yield the journal's batches in order, skipping (and counting) torn or corrupt records."""
    stats = stats if stats is not None else ReadStats()
    for f in journal_files(path):
        for payload in _records(f, stats):
            try:
                batch = _DECODER.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                stats.corrupt += 1
                stats.problems.append(f"{f.name}: corrupt record: {exc}")
                continue
            stats.records += 1
            stats.events += len(batch)
            yield batch


def _records(f: Path, stats: ReadStats) -> Iterator[bytes]:
    """The records of one journal file (either framing), damage counted into ``stats``."""
    scan = recordlog.ScanStats()
    try:
        yield from recordlog.iter_file(f, recordlog.LEGACY_LE, scan, max_record=MAX_RECORD_BYTES)
    finally:
        stats.torn += scan.torn
        stats.corrupt += scan.corrupt
        stats.problems.extend(scan.problems)


def day_files(directory: Path | str, day: dt.date) -> list[Path]:
    """The ``*.ticks`` parts of one trading date in a journal directory, in part order (none: empty)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    name = day.isoformat()
    return sorted((p for p in d.glob(f"{name}*{SUFFIX}") if p.name[: -len(SUFFIX)].split(".")[0] == name),
                  key=_sort_key)


def iter_docs(path: Path | str, kind: str, stats: ReadStats | None = None,
              day: dt.date | None = None) -> Iterator[dict]:
    """Side documents of ``kind`` from a journal directory (or the directory of a ``.ticks`` file), in order;
    only trading date ``day``'s file when given."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    stats = stats if stats is not None else ReadStats()
    dec = msgspec.msgpack.Decoder(dict)
    pattern = f"{day.isoformat() if day is not None else '*'}.{kind}{DOC_SUFFIX}"
    for f in sorted(d.glob(pattern)):
        for payload in _records(f, stats):
            try:
                doc = dec.decode(payload)
            except msgspec.DecodeError:
                stats.corrupt += 1
                continue
            stats.records += 1
            yield doc


def iter_events(
    path: Path | str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    symbols: Iterable[str] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[MarketEvent]:
    """Every journaled event of a file or directory, optionally within ``[start_ns, end_ns)`` and symbols."""
    wanted = set(symbols) if symbols is not None else None
    for batch in iter_batches(path, stats):
        for ev in batch:
            if start_ns is not None and ev.ts < start_ns:
                continue
            if end_ns is not None and ev.ts >= end_ns:
                continue
            if wanted is not None and ev.sym not in wanted:
                continue
            yield ev


# ------------------------------------------------------------------ the newest part of a day


@dataclass
class TailStats:
    """What :func:`iter_tail` read (filled in as the batches are yielded)."""

    #: bytes read from the parts' ends (including what precedes the first record boundary and a torn tail)
    bytes_read: int = 0
    records: int = 0
    event_count: int = 0
    #: torn records skipped (a crash during a write; at most one per part, at its end)
    torn: int = 0
    #: records whose length was sound but whose content did not decode, skipped
    corrupt: int = 0
    #: True when older records of the day exist before what was read
    partial: bool = False
    #: True when the oldest part read was entered mid-file and re-synchronised on a record boundary;
    #: ``skipped_bytes`` precede that boundary (the rest of a record cut by the byte bound)
    resynced: bool = False
    skipped_bytes: int = 0
    #: parts of the day read (newest last)
    parts: list[str] = field(default_factory=list)
    #: oldest event time of the first record read (0: nothing read): what a reader of the tail knows
    #: about where the journal before it ends (``Aggregator.warm_up``: which rebuilt bars are exact)
    first_ns: int = 0
    #: oldest and newest event time read (0: nothing)
    oldest_ns: int = 0
    newest_ns: int = 0


def _sync_current(data, end: int) -> int | None:
    """The first record boundary of a record-log slice that starts mid-file: the first offset, within
    ``TAIL_SYNC_BYTES``, where a record whose CRC holds starts and decodes to a non-empty batch."""
    off = 0
    while True:
        off = recordlog.find_record(data, off, end, max_record=MAX_RECORD_BYTES, limit=TAIL_SYNC_BYTES - off)
        if off < 0:
            return None
        (n,) = _LEN.unpack_from(data, off)
        try:
            if _DECODER.decode(data[off + recordlog.CURRENT.head_size:off + recordlog.CURRENT.head_size + n]):
                return off
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        off += 1


# The parts written before the record log have no CRC: a boundary found mid-file is confirmed by the
# length chain and by decoding (below).


def _chain_ok(data, off: int, end: int) -> bool:
    """The length prefixes from ``off`` lead exactly to ``end`` or to a torn last record (no length of 0
    or above ``MAX_RECORD_BYTES`` on the way)."""
    unpack = _LEN.unpack_from
    while off + 4 <= end:
        (n,) = unpack(data, off)
        if n == 0 or n > MAX_RECORD_BYTES:
            return False
        off += 4 + n
    return True


def _is_boundary(data, off: int, end: int) -> bool:
    """``off`` starts a record: the length chain from it leads to ``end`` (or a torn last record) and its
    first ``TAIL_SYNC_CONFIRM`` records decode to non-empty batches. The framing has no sync marker; a
    false boundary needs typed batches at the right lengths, and the chain check then costs one length
    read per record."""
    pos = off
    for _ in range(TAIL_SYNC_CONFIRM):
        if pos + 4 > end:
            break
        (n,) = _LEN.unpack_from(data, pos)
        if n == 0 or n > MAX_RECORD_BYTES or pos + 4 + n > end:
            break
        try:
            if not _DECODER.decode(data[pos + 4:pos + 4 + n]):
                return False
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        pos += 4 + n
    if pos == off:  # not even one whole record
        return False
    return _chain_ok(data, pos, end)


def _sync(data, end: int) -> int | None:
    """The first record boundary of a slice of a part of the earlier framing that starts mid-file, searched
    in its first ``TAIL_SYNC_BYTES``."""
    heads = _ARRAY_HEADS
    for off in range(min(end - 5, TAIL_SYNC_BYTES)):
        if data[off + 4] in heads and _is_boundary(data, off, end):
            return off
    return None


def _tail_parts(directory: Path, day: dt.date, max_bytes: int, stats: TailStats) -> list[tuple[Path, int, int]]:
    """``(part, start, size)`` of the day's newest parts within ``max_bytes``, oldest first."""
    prefix = day.isoformat() + "."
    parts = [f for f in journal_files(directory) if f.name.startswith(prefix)]
    budget = max_bytes
    chosen: list[tuple[Path, int, int]] = []
    for f in reversed(parts):
        if budget <= 0:
            stats.partial = True
            break
        try:
            size = f.stat().st_size
        except OSError:
            continue
        start = max(0, size - budget)
        budget -= size - start
        chosen.append((f, start, size))
        if start > 0:
            stats.partial = True
            break
    chosen.reverse()
    return chosen


def iter_tail(directory: Path | str, day: dt.date, max_bytes: int,
              stats: TailStats | None = None) -> Iterator[list[MarketEvent]]:
    """The batches of the newest ``max_bytes`` of ``day``'s tick journal, oldest first, in journal order.

    Bounded whatever the day's size: the day's parts are taken newest first until ``max_bytes``; the
    oldest one taken is read from ``max_bytes`` (what is left of them) before its end and re-synchronised
    on the first record boundary (the first offset, within ``TAIL_SYNC_BYTES``, from which the length
    prefixes lead to the end and the first records decode). A torn last record is skipped and counted, a
    record that does not decode is skipped and counted. Memory: the parts are mapped, not copied, and the
    batches are decoded one at a time as they are consumed. ``stats`` is filled in as the batches are
    yielded (:class:`TailStats`).
    """
    stats = stats if stats is not None else TailStats()
    directory = Path(directory)
    if not directory.is_dir():
        return
    for f, start, size in _tail_parts(directory, day, max_bytes, stats):
        if size == 0:
            continue
        try:
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            continue
        stats.parts.append(f.name)
        stats.bytes_read += size - start
        try:
            yield from _part_batches(mm, start, size, stats)
        finally:
            mm.close()


def _part_batches(mm: mmap.mmap, start: int, size: int, stats: TailStats) -> Iterator[list[MarketEvent]]:
    """The records of ``mm[start:size]`` (re-synchronised when ``start`` > 0). Decoded batches copy what they
    hold, so no view of the map outlives the part."""
    view = memoryview(mm)
    data = view[start:size]
    framing = recordlog.framing_of(view[:len(recordlog.MAGIC)].tobytes(), recordlog.LEGACY_LE)
    scan = recordlog.ScanStats()
    records = None
    try:
        end = size - start
        off = None if start == 0 else 0
        if start > 0:
            found = _sync_current(data, end) if framing is recordlog.CURRENT else _sync(data, end)
            if found is None:
                stats.skipped_bytes += end
                return
            stats.resynced = True
            stats.skipped_bytes += found
            off = found
        decode = _DECODER.decode
        records = recordlog.scan(data, framing, start=off, stats=scan, max_record=MAX_RECORD_BYTES)
        for _, payload in records:
            try:
                batch = decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                stats.corrupt += 1
                continue
            finally:
                payload.release()  # a slice of the map
            if not batch:
                continue
            lo = hi = batch[0].ts
            for ev in batch:
                t = ev.ts
                if t < lo:
                    lo = t
                elif t > hi:
                    hi = t
            if not stats.first_ns:
                stats.first_ns = stats.oldest_ns = lo
                stats.newest_ns = hi
            else:
                if lo < stats.oldest_ns:
                    stats.oldest_ns = lo
                if hi > stats.newest_ns:
                    stats.newest_ns = hi
            stats.records += 1
            stats.event_count += len(batch)
            yield batch
    finally:
        if records is not None:
            records.close()
        stats.torn += scan.torn
        stats.corrupt += scan.corrupt
        data.release()
        view.release()


@dataclass
class JournalTail(TailStats):
    """The newest journaled events of one trading day as one list (see :func:`read_journal_tail`)."""

    events: list[MarketEvent] = field(default_factory=list)
    #: symbol -> newest journaled event time
    newest: dict[str, int] = field(default_factory=dict)


def read_journal_tail(directory: Path | str, day: dt.date, max_bytes: int = 16 << 20) -> JournalTail:
    """The last ``max_bytes`` (16 MiB by default) of the tick journal of ``day``, decoded into one list,
    with each symbol's newest event time (:func:`iter_tail`; the feed's restart backfill, docs/feed.md).
    A torn last record (crash during a write) is skipped and counted."""
    tail = JournalTail()
    events, newest = tail.events, tail.newest
    for batch in iter_tail(directory, day, max_bytes, tail):
        events.extend(batch)
        for ev in batch:
            if ev.ts > newest.get(ev.sym, 0):
                newest[ev.sym] = ev.ts
    return tail
