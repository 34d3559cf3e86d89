"""Append-only outage spool: a :mod:`spx_common.recordlog` file of msgpack records ``[kind, body, source,
run_id]`` (records of older spools, ``[kind, body]``, are read as live).

Written while the database is unavailable (by the writer thread) and when the writer's queue
is full (by the subscriber loop, without fsync so the loop never waits on the disk).  To replay,
the writer renames the file aside (:meth:`Spool.take`) under a short lock, writes it to the
database and deletes it (:meth:`Spool.done`); records appended meanwhile go to a fresh file, so
nothing appended during a replay can be deleted with it.  Replays are safe to repeat (every
store write is idempotent), so a crash mid-replay loses nothing and duplicates nothing.

A spool written before the record log (``<u32 BE length><msgpack>``, no CRC) is rewritten in the record
log's framing when the recorder starts (once; a torn record at its end dropped), so an upgrade keeps it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from collections.abc import Iterator

import msgspec

from spx_common.errors import Retryable
from spx_common import recordlog


class SpoolFull(Retryable):
    """The spool reached its size bound; the record was not written."""


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._log = recordlog.RecordWriter(self.path)
        #: what the start found (torn tails cut, damaged records, files migrated from the earlier framing)
        self.recovered = recordlog.ScanStats()
        self.migrated = 0
        self.read_stats = recordlog.ScanStats()
        for p in (self.path, self.replaying):
            self._recover(p)

    def _recover(self, path: Path) -> None:
        """Migrate a spool of the earlier framing, else cut a torn tail, so later appends stay readable."""
        if recordlog.is_legacy(path):
            recordlog.rewrite(path, recordlog.iter_file(path, recordlog.LEGACY_BE, self.recovered), fsync=True)
            self.migrated += 1
        elif path.exists():
            st = recordlog.recover(path)
            self.recovered.torn += st.torn
            self.recovered.skipped_bytes += st.skipped_bytes

    def size(self) -> int:
        """Bytes waiting: the spool plus a file being replayed (a file holding no record counts 0)."""
        total = 0
        for p in (self.path, self.replaying):
            try:
                n = p.stat().st_size
            except FileNotFoundError:
                continue
            total += n if n > len(recordlog.MAGIC) else 0
        return total

    def __bool__(self) -> bool:
        return self.size() > 0

    def append(self, records: list[tuple], *, fsync: bool = True) -> None:
        """Append records (raises :class:`SpoolFull` past the bound, ``OSError`` with nothing of them
        written when the disk refuses). Thread-safe."""
        payloads = [msgspec.msgpack.encode(rec) for rec in records]
        n = sum(len(p) + recordlog.CURRENT.head_size for p in payloads)
        with self._lock:
            if self.size() + n > self.max_bytes:
                raise SpoolFull(f"spool {self.path} would exceed {self.max_bytes} bytes")
            if not self._log.is_open:
                self._log.open(check=False)  # recovered at start; a failed append cuts itself off
            self._log.append(payloads, fsync=fsync)

    def take(self) -> Path | None:
        """The file to replay next: an unfinished replay, else the spool renamed aside; None when empty."""
        with self._lock:
            if self.replaying.exists():
                return self.replaying
            self._log.close()
            if self.path.exists() and self.path.stat().st_size > len(recordlog.MAGIC):
                os.replace(self.path, self.replaying)
                return self.replaying
            return None

    def done(self, path: Path) -> None:
        """Remove a file whose records are all written."""
        path.unlink(missing_ok=True)

    def read(self, chunk: int = 1000, path: Path | None = None) -> Iterator[list[tuple]]:
        """Records of ``path`` (default: the spool) in write order, ``chunk`` at a time; a torn last
        record (crash mid-write) or a damaged one is skipped (counted in ``read_stats``)."""
        out: list[tuple] = []
        # mapped, not read: memory stays one chunk, whatever the spool size
        for payload in recordlog.iter_file(path or self.path, recordlog.LEGACY_BE, self.read_stats):
            # [kind, body] or [kind, body, source, run_id] (provenance, since revision 0005)
            out.append(tuple(msgspec.msgpack.decode(payload)))
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out
