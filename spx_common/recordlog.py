"""The record log: one framing, one torn-tail recovery and one fsync policy for every append-only file the
mesh writes (the publisher's outbox, the tick journal, the recorder's outage spool, dead letters).

A file is an 8-byte magic followed by records::

    MAGIC = b"SPXLOG\\x00\\x01"
    [ length: u32 LE ][ crc32 of the length's 4 bytes and the payload: u32 LE ][ payload: length bytes ]

What the payload holds is the owner's business (a msgpack document, a topic and a frame...).

Reading (:func:`scan`, :func:`iter_file`) is pure and never raises on damage: a record whose CRC fails
is skipped and counted ``corrupt`` when a good record follows it (found by its length if the damage
spared the length, else by searching forward for the next offset where a record's CRC holds), and the
damage at the end of a file (a write cut short by a crash or a full disk, a tail the disk never got)
is counted ``torn`` and ends the read. :func:`recover` cuts such a tail off before a writer appends
after it, so what is appended later stays readable.

Writing (:class:`RecordWriter`): records are appended with ``write(2)`` on an ``O_APPEND`` descriptor
(mode 0600), all of one :meth:`~RecordWriter.append` in one write, so a killed *process* never loses
what was appended; :class:`FsyncPolicy` says when the bytes are also forced to the disk (a kernel crash
or power loss). A write that fails part way (disk full) is cut off again before the error is raised,
so a failed append never leaves a torn record in the middle of the file.

Files from before this module (:data:`LEGACY_OUTBOX`, :data:`LEGACY_LE`, :data:`LEGACY_BE`: the same
length prefix without the magic, with or without a CRC) are still read; owners migrate them once
(:func:`rewrite`) or start a new file beside them, and never append the new framing to an old file.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TypeVar
from spx_common.errors import Fatal

MAGIC = b"SPXLOG\x00\x01"
_HEAD = struct.Struct("<II")
_U32 = struct.Struct("<I")
#: a length above this is damage, not a record (the largest record any owner writes is far below it)
MAX_RECORD_BYTES = 64 << 20
#: at most this many problem descriptions are kept in :class:`ScanStats` (the counts are exact)
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Framing:
    """How the records of a file are framed: a ``length`` prefix, then (``crc``) a u32 CRC-32 of the
    payload (``crc_length``: of the length's bytes and the payload), then the payload; ``magic`` heads
    the file. Only :data:`CURRENT` is written; the others are files of earlier versions."""

    name: str
    length: struct.Struct
    crc: bool
    crc_length: bool = False
    magic: bytes = b""

    @property
    def head_size(self) -> int:
        return self.length.size + (4 if self.crc else 0)


CURRENT = Framing("spxlog/1", _U32, crc=True, crc_length=True, magic=MAGIC)
#: the outbox before this module: ``<u32 length><u32 crc32 of the payload><payload>``, no magic
LEGACY_OUTBOX = Framing("outbox/0", _U32, crc=True)
#: the tick journal before this module: ``<u32 LE length><payload>``, no CRC
LEGACY_LE = Framing("journal/0", _U32, crc=False)
#: the recorder's spool before this module: ``<u32 BE length><payload>``, no CRC
LEGACY_BE = Framing("spool/0", struct.Struct(">I"), crc=False)


class LegacyFile(Fatal):
    """An append was asked of a file in an earlier framing (migrate it, or write a new file)."""


def encode(payload: bytes) -> bytes:
    """One record in the current framing."""
    n = len(payload)
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"record of {n} bytes is larger than {MAX_RECORD_BYTES}")
    length = _U32.pack(n)
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def encode_many(payloads: Iterable[bytes]) -> bytes:
    return b"".join([encode(p) for p in payloads])


def framing_of(head: bytes, legacy: Framing | None) -> Framing:
    """The framing of a file that starts with ``head`` (its first bytes): the current one when it
    starts with the magic or is empty, else ``legacy`` (``CURRENT`` when there is none)."""
    if not head or head[:len(MAGIC)] == MAGIC:
        return CURRENT
    if len(head) < len(MAGIC) and MAGIC.startswith(bytes(head)):
        return CURRENT  # a file whose magic itself was torn: an empty current log
    return legacy or CURRENT


# ----------------------------------------------------------------------------- read


@dataclass
class ScanStats:
    """What a read kept and skipped."""

    records: int = 0
    #: damaged records skipped with good records after them
    corrupt: int = 0
    #: damaged tails (a write cut short, a tail the disk never got): at most one per file
    torn: int = 0
    #: bytes skipped: damaged records and the torn tail
    skipped_bytes: int = 0
    #: offset just past the last good record of the last file scanned (where an appender may go on)
    end: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def _valid(data, pos: int, end: int, f: Framing, max_record: int) -> int:
    """The record end if a whole record whose CRC holds starts at ``pos``, else -1 (CRC framings only)."""
    hs = f.head_size
    if pos + hs > end:
        return -1
    (n,) = f.length.unpack_from(data, pos)
    ls = f.length.size
    stop = pos + hs + n
    if n > max_record or stop > end:
        return -1
    (crc,) = _U32.unpack_from(data, pos + ls)
    seed = zlib.crc32(data[pos:pos + ls]) if f.crc_length else 0
    return stop if zlib.crc32(data[pos + hs:stop], seed) == crc else -1


def find_record(data, start: int, end: int, framing: Framing = CURRENT, *,
                max_record: int = MAX_RECORD_BYTES, limit: int | None = None) -> int:
    """The first offset in ``[start, start + limit)`` where a whole record whose CRC holds starts, or -1
    (re-synchronisation after damage, or inside a slice that starts mid-file)."""
    if not framing.crc:
        raise ValueError("re-synchronisation needs a CRC framing")
    last = end - framing.head_size
    if limit is not None:
        last = min(last, start + limit - 1)
    unpack, hs = framing.length.unpack_from, framing.head_size
    for q in range(start, last + 1):
        (n,) = unpack(data, q)
        if n <= max_record and q + hs + n <= end and _valid(data, q, end, framing, max_record) >= 0:
            return q
    return -1


#: what :func:`scan` reads, and so what its payloads are: slices of the same type
Buf = TypeVar("Buf", bytes, memoryview)


def scan(data: Buf, framing: Framing = CURRENT, *, start: int | None = None, stats: ScanStats | None = None,
         max_record: int = MAX_RECORD_BYTES, name: str = "") -> Generator[tuple[int, Buf], None, None]:
    """``(offset, payload)`` of every good record of ``data`` (bytes, or a memoryview: payloads are
    slices of it), from ``start`` (default: just past the framing's magic).

    CRC framings: a damaged record is skipped (``corrupt``) when a good one follows; damage with no good
    record after it is the ``torn`` tail. Framings without a CRC trust the lengths: a record whose length
    runs past the end is the torn tail (the payload's own decoding must catch a damaged one).
    ``stats.end`` is left just past the last good record."""
    st = stats if stats is not None else ScanStats()
    end = len(data)
    pos = len(framing.magic) if start is None else start
    st.end = pos
    hs, unpack = framing.head_size, framing.length.unpack_from
    where = f"{name}: " if name else ""
    while pos < end:
        if not framing.crc:
            if pos + hs > end:
                stop = -1
            else:
                (n,) = unpack(data, pos)
                stop = pos + hs + n if n <= max_record and pos + hs + n <= end else -1
            if stop < 0:
                st.torn += 1
                st.skipped_bytes += end - pos
                st.problem(f"{where}torn record at byte {pos}")
                return
        else:
            stop = _valid(data, pos, end, framing, max_record)
            if stop < 0:
                # damaged: go on at the next good record, by the length if the damage spared it, else by search
                nxt = -1
                if pos + hs <= end:
                    (n,) = unpack(data, pos)
                    guess = pos + hs + n
                    if n <= max_record and guess < end and _valid(data, guess, end, framing, max_record) >= 0:
                        nxt = guess
                if nxt < 0:
                    nxt = find_record(data, pos + 1, end, framing, max_record=max_record)
                if nxt < 0:
                    st.torn += 1
                    st.skipped_bytes += end - pos
                    st.problem(f"{where}torn or damaged tail at byte {pos} ({end - pos} bytes)")
                    return
                st.corrupt += 1
                st.skipped_bytes += nxt - pos
                st.problem(f"{where}damaged record at byte {pos} ({nxt - pos} bytes skipped)")
                pos = nxt
                continue
        st.records += 1
        yield pos, data[pos + hs:stop]
        pos = stop
        st.end = pos


def _map(path: Path) -> tuple[mmap.mmap | None, int]:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None, 0
        return mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ), size


def iter_file(path: Path | str, legacy: Framing | None = None, stats: ScanStats | None = None, *,
              max_record: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """Every good record of a file as bytes, in order (``legacy``: the framing of a file without the
    magic). The file is mapped, not read into memory; a missing file has no records."""
    path = Path(path)
    try:
        mm, size = _map(path)
    except FileNotFoundError:
        return
    if mm is None:
        return
    view = memoryview(mm)
    records = scan(view, framing_of(view[:len(MAGIC)].tobytes(), legacy), stats=stats, max_record=max_record,
                   name=path.name)
    try:
        for _, payload in records:
            out = payload.tobytes()
            payload.release()
            yield out
    finally:
        records.close()
        view.release()
        mm.close()


#: how much of a file's end :func:`recover` reads (a tick journal part is up to 2 GB)
RECOVER_TAIL_BYTES = 4 << 20


def recover(path: Path | str, *, max_record: int = MAX_RECORD_BYTES,
            tail_bytes: int = RECOVER_TAIL_BYTES) -> ScanStats:
    """Cut a torn tail off a current-format file, so records appended after it stay readable.

    Cheap whatever the file's size: only its last ``tail_bytes`` are read (from the first record whose
    CRC holds in them; the whole file when it has none, a record longer than that), the length chain is
    walked to the end without reading the payloads and only the last record's CRC is checked; only when
    that fails is the rest scanned (from the last record) for the end of its last good record. A damaged
    record with good ones after it is left (readers skip it). Returns what was found (``torn``,
    ``skipped_bytes`` cut)."""
    st = ScanStats()
    path = Path(path)
    try:
        mm, size = _map(path)
    except FileNotFoundError:
        return st
    if mm is None:
        return st
    view = memoryview(mm)
    try:
        head = view[:len(MAGIC)].tobytes()
        if head != MAGIC:
            if framing_of(head, None) is CURRENT and size < len(MAGIC):
                good = 0  # a torn magic: start over
                st.torn, st.skipped_bytes = 1, size
            else:
                raise LegacyFile(f"{path} is not in the {CURRENT.name} framing")
        else:
            start = len(MAGIC)
            if size - start > tail_bytes:
                found = find_record(view, size - tail_bytes, size, max_record=max_record)
                start = found if found >= 0 else start
            pos, last, hs = start, -1, CURRENT.head_size
            while pos + hs <= size:
                (n,) = _U32.unpack_from(view, pos)
                if n > max_record or pos + hs + n > size:
                    break
                last, pos = pos, pos + hs + n
            if pos == size and (last < 0 or _valid(view, last, size, CURRENT, max_record) == size):
                st.end = size
                return st
            for _, payload in scan(view, CURRENT, start=max(last, start), stats=st, max_record=max_record):
                payload.release()
            good = st.end
            if st.torn == 0:  # the chain broke on a damaged length with good records after it
                return st
    finally:
        view.release()
        mm.close()
    with open(path, "r+b") as fh:
        fh.truncate(good)
    st.end = good
    return st


# ----------------------------------------------------------------------------- write


@dataclass(frozen=True)
class FsyncPolicy:
    """When appended records are forced to the disk (beyond the page cache, which a killed process
    never loses): ``every_s`` None never, 0 after every append, > 0 at the first append (or
    :meth:`RecordWriter.sync`) at least that many seconds after the last forced one."""

    every_s: float | None = None

    @classmethod
    def of(cls, fsync: bool | FsyncPolicy) -> FsyncPolicy:
        """The policy of a config's boolean ``fsync`` (True: after every append)."""
        if isinstance(fsync, FsyncPolicy):
            return fsync
        return ALWAYS if fsync else NEVER

    def due(self, last_sync: float, now: float) -> bool:
        if self.every_s is None:
            return False
        return now - last_sync >= self.every_s


NEVER = FsyncPolicy(None)
ALWAYS = FsyncPolicy(0.0)


class RecordWriter:
    """Appends records in the current framing to one file (see the module docstring).

    ``write`` and ``sync_fd`` are the ``os.write`` and ``os.fsync`` it calls (tests inject a full disk
    and count the flushes). Not thread-safe: one owner."""

    def __init__(self, path: Path | str, *, fsync: bool | FsyncPolicy = NEVER,
                 write: Callable[[int, memoryview], int] = os.write,
                 sync_fd: Callable[[int], None] = os.fsync) -> None:
        self.path = Path(path)
        self.policy = FsyncPolicy.of(fsync)
        self._write = write
        self._sync_fd = sync_fd
        self._fd: int | None = None
        self.size = 0
        self._synced_at = time.monotonic()
        self.unsynced = False

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self, *, check: bool = True) -> RecordWriter:
        """Open for appending: an empty or missing file gets the magic, a torn tail is cut
        (:func:`recover`; ``check=False`` skips it, for a file just written whole); a file of an
        earlier framing raises :class:`LegacyFile`."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if check and self.path.exists():
            recover(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self.size = os.fstat(fd).st_size
            if self.size == 0:
                self._write_all(fd, memoryview(MAGIC), 0)
                self.size = len(MAGIC)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _write_all(self, fd: int, view: memoryview, start_size: int) -> None:
        try:
            while view:
                view = view[self._write(fd, view):]
        except OSError:
            try:  # a record cut short (disk full) would tear the file: cut it off again
                os.ftruncate(fd, start_size)
            except OSError:
                pass
            raise

    def append(self, payloads: Iterable[bytes], *, fsync: bool | None = None) -> int:
        """Append records (one write) and force them to the disk when the policy (or ``fsync``, when
        given, for this append) says so. Returns the bytes written; raises ``OSError`` with nothing
        of this append left in the file."""
        blob = encode_many(payloads)
        if self._fd is None:
            self.open()
        assert self._fd is not None
        self._write_all(self._fd, memoryview(blob), self.size)
        self.size += len(blob)
        self.unsynced = True
        now = time.monotonic()
        if fsync or (fsync is None and self.policy.due(self._synced_at, now)):
            self.sync(now)
        return len(blob)

    def sync(self, now: float | None = None) -> None:
        """Force what was appended to the disk."""
        if self._fd is not None and self.unsynced:
            self._sync_fd(self._fd)
            self.unsynced = False
            self._synced_at = time.monotonic() if now is None else now

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self.unsynced and self.policy.every_s is not None:
                    self._sync_fd(fd)
            except OSError:
                pass
            finally:
                os.close(fd)


def rewrite(path: Path | str, payloads: Iterable[bytes], *, fsync: bool = False) -> int:
    """Replace ``path`` with a current-format file of ``payloads`` (written to ``<path>.tmp``, mode
    0600, then renamed over, so a kill leaves the old file whole): compaction, and the one-time
    migration of a file of an earlier framing. Returns the new size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(MAGIC)
        size = len(MAGIC)
        chunk: list[bytes] = []
        pending = 0
        for p in payloads:
            chunk.append(encode(p))
            pending += len(chunk[-1])
            if pending >= 1 << 20:
                fh.write(b"".join(chunk))
                size, chunk, pending = size + pending, [], 0
        fh.write(b"".join(chunk))
        size += pending
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return size


def is_legacy(path: Path | str) -> bool:
    """The file exists, is not empty and is not in the current framing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC))
    except FileNotFoundError:
        return False
    return framing_of(head, LEGACY_LE) is not CURRENT
