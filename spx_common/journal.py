"""The tick journal: every normalized market event, appended off the hot path to day files.

Layout: ``<run_dir>/journal/<YYYY-MM-DD>.ticks`` (the America/New_York trading date of the
events), and when a day file passes ``max_file_bytes`` the next parts ``<date>.001.ticks``,
``<date>.002.ticks``...  A file is a sequence of records::

    [ length: uint32 little-endian ][ msgpack of list[Trade | Quote | IndexValue] ]

one record per published batch, in publish order, so a replay sees the same batches.

Durability contract: :meth:`JournalWriter.append` only queues the batch (no encoding, no I/O on
the caller's thread).  A writer thread wakes every ``flush_interval_s`` (default 0.25 s), encodes
everything queued and hands it to the operating system with one ``write``.  So if the *process*
crashes, at most the batches appended during the last flush interval are lost; with
``fsync=True`` the same holds for a machine crash (at the cost of an ``fsync`` per interval).
A torn record at the end of a file (crash during a write) is detected by its length prefix and
ignored by the reader, which counts it.

The queue is bounded (``max_pending`` events); beyond it batches are dropped and counted in
``JournalWriter.dropped`` rather than growing memory without limit.

Side documents (the option chain snapshots published on ``chain.<root>``) go to
``<date>.<kind>.docs`` with the same record framing (msgpack of ``{"ts": ns, ...}``), so a
journal replay can republish them: :meth:`JournalWriter.append_doc`, :func:`iter_docs`.  At
most ``max_pending_docs`` are queued.

Readers: :func:`iter_events` (files or a directory, optional time/symbol filter) is what replay,
``spx bars`` and the aggregator's warm-up use.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator
from zoneinfo import ZoneInfo

import msgspec

from spx_common.models import MarketEvent

ET = ZoneInfo("America/New_York")
SUFFIX = ".ticks"
DOC_SUFFIX = ".docs"
_LEN = struct.Struct("<I")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
MAX_RECORD_BYTES = 64 * 1024 * 1024


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
        self._pending: deque[list[MarketEvent]] = deque()
        self._docs: deque[tuple[str, dict]] = deque()
        self.max_pending_docs = max_pending_docs
        self.docs_dropped = 0
        self._pending_events = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._files: dict[dt.date, tuple[Path, object]] = {}
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
            by_day.setdefault(day, []).append(_LEN.pack(len(payload)) + payload)
            counts[day] = counts.get(day, 0) + len(batch)
        for day, chunks in by_day.items():
            try:
                fh = self._file(day)
                fh.write(b"".join(chunks))
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                self.written += counts[day]
            except OSError as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._drop_file(day)

    def _write_docs(self, docs: list[tuple[str, dict]]) -> None:
        by_file: dict[Path, list[bytes]] = {}
        for kind, doc in docs:
            payload = _ENCODER.encode(doc)
            path = self.directory / f"{trading_date(doc['ts']).isoformat()}.{kind}{DOC_SUFFIX}"
            by_file.setdefault(path, []).append(_LEN.pack(len(payload)) + payload)
        for path, chunks in by_file.items():
            try:
                with open(path, "ab") as fh:
                    fh.write(b"".join(chunks))
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
            except OSError as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"

    def _file(self, day: dt.date):
        entry = self._files.get(day)
        if entry is not None:
            path, fh = entry
            if fh.tell() < self.max_file_bytes:  # type: ignore[attr-defined]
                return fh
            fh.close()  # type: ignore[attr-defined]
        path = self._next_path(day, entry[0] if entry else None)
        fh = open(path, "ab")
        # retire other days' handles: a live feed only writes today
        for other in [d for d in self._files if d != day]:
            self._drop_file(other)
        self._files[day] = (path, fh)
        return fh

    def _next_path(self, day: dt.date, current: Path | None) -> Path:
        """The day's last part if it has room (resume after a restart), else the next part."""
        parts = sorted(self.directory.glob(f"{day.isoformat()}*{SUFFIX}"), key=_sort_key)
        if current is None and parts and parts[-1].stat().st_size < self.max_file_bytes:
            return parts[-1]
        last = _sort_key(parts[-1])[1] if parts else -1
        if last < 0:
            return self.directory / f"{day.isoformat()}{SUFFIX}"
        return self.directory / f"{day.isoformat()}.{last + 1:03d}{SUFFIX}"

    def _drop_file(self, day: dt.date) -> None:
        entry = self._files.pop(day, None)
        if entry is not None:
            try:
                entry[1].close()  # type: ignore[attr-defined]
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
        with open(f, "rb") as fh:
            data = fh.read()
        off, end = 0, len(data)
        while off < end:
            if off + 4 > end:
                stats.torn += 1
                stats.problems.append(f"{f.name}: torn length at byte {off}")
                break
            (n,) = _LEN.unpack_from(data, off)
            if n > MAX_RECORD_BYTES or off + 4 + n > end:
                stats.torn += 1
                stats.problems.append(f"{f.name}: torn record at byte {off}")
                break
            try:
                batch = _DECODER.decode(data[off + 4: off + 4 + n])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                stats.corrupt += 1
                stats.problems.append(f"{f.name}: corrupt record at byte {off}: {exc}")
                off += 4 + n
                continue
            off += 4 + n
            stats.records += 1
            stats.events += len(batch)
            yield batch


def iter_docs(path: Path | str, kind: str, stats: ReadStats | None = None) -> Iterator[dict]:
    """Side documents of ``kind`` from a journal directory (or the directory of a ``.ticks`` file), in order."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    stats = stats if stats is not None else ReadStats()
    dec = msgspec.msgpack.Decoder(dict)
    for f in sorted(d.glob(f"*.{kind}{DOC_SUFFIX}")):
        data = f.read_bytes()
        off, end = 0, len(data)
        while off + 4 <= end:
            (n,) = _LEN.unpack_from(data, off)
            if n > MAX_RECORD_BYTES or off + 4 + n > end:
                stats.torn += 1
                break
            try:
                yield dec.decode(data[off + 4: off + 4 + n])
                stats.records += 1
            except msgspec.DecodeError:
                stats.corrupt += 1
            off += 4 + n


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
