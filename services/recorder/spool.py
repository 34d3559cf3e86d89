"""Append-only outage spool: length-prefixed msgpack records ``[kind, body, source, run_id]`` in one file
(records of older spools, ``[kind, body]``, are read as live).

Written while the database is unavailable (by the writer thread) and when the writer's queue
is full (by the subscriber loop, without fsync so the loop never waits on the disk).  To replay,
the writer renames the file aside (:meth:`Spool.take`) under a short lock, writes it to the
database and deletes it (:meth:`Spool.done`); records appended meanwhile go to a fresh file, so
nothing appended during a replay can be deleted with it.  Replays are safe to repeat (every
store write is idempotent), so a crash mid-replay loses nothing and duplicates nothing.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from collections.abc import Iterator

import msgspec

_LEN = struct.Struct(">I")


class SpoolFull(Exception):
    """The spool reached its size bound; the record was not written."""


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for p in (self.path, self.replaying):
            self._cut_torn_tail(p)

    @staticmethod
    def _cut_torn_tail(path: Path) -> None:
        """Truncate a record torn by a crash mid-write, so later appends stay readable."""
        if not path.exists():
            return
        good = 0
        with path.open("rb") as fh:
            while True:
                head = fh.read(4)
                if len(head) < 4:
                    break
                (n,) = _LEN.unpack(head)
                if len(fh.read(n)) < n:
                    break
                good = fh.tell()
        if good < path.stat().st_size:
            with path.open("r+b") as fh:
                fh.truncate(good)

    def size(self) -> int:
        """Bytes waiting: the spool plus a file being replayed."""
        total = 0
        for p in (self.path, self.replaying):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def __bool__(self) -> bool:
        return self.size() > 0

    def append(self, records: list[tuple], *, fsync: bool = True) -> None:
        """Append records (raises :class:`SpoolFull` past the bound). Thread-safe."""
        data = bytearray()
        for rec in records:
            payload = msgspec.msgpack.encode(rec)
            data += _LEN.pack(len(payload)) + payload
        with self._lock:
            if self.size() + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.path} would exceed {self.max_bytes} bytes")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            except OSError:
                try:  # a record cut short by a full disk would make every later one unreadable
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)

    def take(self) -> Path | None:
        """The file to replay next: an unfinished replay, else the spool renamed aside; None when empty."""
        with self._lock:
            if self.replaying.exists():
                return self.replaying
            if self.path.exists() and self.path.stat().st_size > 0:
                os.replace(self.path, self.replaying)
                return self.replaying
            return None

    def done(self, path: Path) -> None:
        """Remove a file whose records are all written."""
        path.unlink(missing_ok=True)

    def read(self, chunk: int = 1000, path: Path | None = None) -> Iterator[list[tuple]]:
        """Records of ``path`` (default: the spool) in write order, ``chunk`` at a time; a torn last
        record (crash mid-write) is ignored."""
        path = path or self.path
        if not path.exists():
            return
        out: list[tuple] = []
        with path.open("rb") as fh:  # streamed: memory stays one chunk, whatever the spool size
            while True:
                head = fh.read(4)
                if len(head) < 4:
                    break
                (n,) = _LEN.unpack(head)
                payload = fh.read(n)
                if len(payload) < n:
                    break
                # [kind, body] or [kind, body, source, run_id] (provenance, since revision 0005)
                out.append(tuple(msgspec.msgpack.decode(payload)))
                if len(out) >= chunk:
                    yield out
                    out = []
        if out:
            yield out
