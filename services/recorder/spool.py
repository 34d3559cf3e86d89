"""Append-only outage spool: length-prefixed msgpack records ``[kind, body]`` in one file.

Written while the database is unavailable, replayed in order when it returns, then removed.
Replays are safe to repeat (every store write is idempotent), so a crash mid-replay loses
nothing and duplicates nothing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Iterator

import msgspec

_LEN = struct.Struct(">I")


class SpoolFull(Exception):
    """The spool reached its size bound; the record was not written."""


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._enc = msgspec.msgpack.Encoder()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def __bool__(self) -> bool:
        return self.size() > 0

    def append(self, records: list[tuple[str, Any]]) -> None:
        """Append records and fsync (raises :class:`SpoolFull` past the bound)."""
        data = bytearray()
        for rec in records:
            payload = self._enc.encode(rec)
            data += _LEN.pack(len(payload)) + payload
        if self.size() + len(data) > self.max_bytes:
            raise SpoolFull(f"spool {self.path} would exceed {self.max_bytes} bytes")
        with self.path.open("ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def read(self, chunk: int = 1000) -> Iterator[list[tuple[str, Any]]]:
        """Records in write order, ``chunk`` at a time; a torn last record (crash mid-write) is ignored."""
        if not self.path.exists():
            return
        buf = self.path.read_bytes()
        out: list[tuple[str, Any]] = []
        pos = 0
        while pos + 4 <= len(buf):
            (n,) = _LEN.unpack_from(buf, pos)
            if pos + 4 + n > len(buf):
                break
            kind, body = msgspec.msgpack.decode(buf[pos + 4:pos + 4 + n])
            out.append((kind, body))
            pos += 4 + n
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
