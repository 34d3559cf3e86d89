"""The publisher's outbox: kept frames journalled to a local record log before they are sent, reloaded
into the replay ring at the next start (see :class:`Outbox`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spx_common import codec, recordlog
from spx_common.codec import FrameError
from spx_common.metrics import Registry

log = logging.getLogger("spx.bus")

#: framing bytes of an outbox record: the record log's head and the topic length
_REC_HEAD = recordlog.CURRENT.head_size + 2


class Outbox:
    """A bounded, append-only local journal of the frames a publisher keeps for replay.

    Each kept frame is appended (one ``write(2)`` on an ``O_APPEND`` descriptor) before it is
    sent, so a SIGKILL right after the send cannot lose it: the bytes are in the kernel's page
    cache and reach the file whatever happens to the process. (A kernel crash or power loss can
    lose the unsynced tail; ``fsync=True`` closes that too, at the price of one disk flush per
    record.) At start :meth:`load` reads the previous sessions' frames back (the publisher puts
    them into its replay ring, so a consumer's catch-up fetches them) and rewrites the file
    without a torn or corrupt tail (a file of the framing before :mod:`spx_common.recordlog` is
    read and rewritten in the current one: the migration happens once, at the first start).

    A :mod:`~spx_common.recordlog` file; each record ``<u16 topic length><topic><payload>`` (the
    payload exactly as published). Bounds: the file never grows past ``max_bytes``; when it would,
    it is compacted to the newest kept frames that fit in half of it (written to a temporary file,
    then renamed over, so a kill during compaction leaves the old file whole; a failed compaction
    is retried after ``RETRY_S``, not on every frame); frames older than ``max_age_ns`` of *event
    time* behind the newest one are dropped at load. Failures to write are counted and logged,
    never raised: the frame is still sent (the live path to the recorder is untouched; only the
    crash guarantee is lost, visibly).
    """

    RETRY_S = 10.0

    def __init__(self, path: Path, *, max_bytes: int = 32 << 20, max_age_ns: int = 86_400 * 10**9,
                 fsync: bool = False, registry: Registry | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self.fsync = fsync
        self.newest_ns = 0
        self._log = recordlog.RecordWriter(self.path, fsync=fsync)
        #: why the last write failed, until one succeeds again (the owner reports itself degraded)
        self.fault: str | None = None
        metrics = registry or Registry()
        self.m_written = metrics.counter("outbox_frames_written_total", "Kept frames journalled before sending.")
        self.m_errors = metrics.counter("outbox_write_errors_total",
                                        "Outbox writes, opens or compactions that failed (frames are sent anyway).")
        self.m_loaded = metrics.counter("outbox_frames_loaded_total",
                                        "Frames of previous sessions reloaded into the replay ring at start.")
        self.m_refused = metrics.counter("outbox_frames_refused_total",
                                         "Journal records refused at load, by reason.", ["reason"])
        self.m_compactions = metrics.counter("outbox_compactions_total", "Journal rewrites to stay within bounds.")
        self.m_bytes = metrics.gauge("outbox_bytes", "Size of the outbox journal.")

    @property
    def size(self) -> int:
        return self._log.size

    # ---------------------------------------------------------------- read
    def load(self) -> list[tuple[str, bytes]]:
        """The valid frames of the journal, oldest first (bounded by age and size), after which the
        file holds exactly those; opens the journal for appending."""
        frames: list[tuple[str, bytes, int]] = []
        stats = recordlog.ScanStats()
        try:
            records = list(recordlog.iter_file(self.path, recordlog.LEGACY_OUTBOX, stats))
        except OSError as exc:  # left as it is (not rewritten): appending goes on if it can
            log.error("outbox %s unreadable (%r): nothing reloaded", self.path, exc)
            self.m_refused.inc(reason="unreadable")
            try:
                self._log.open()
            except (OSError, recordlog.LegacyFile) as exc2:
                self._failed(exc2)
            return []
        if stats.corrupt:
            self.m_refused.inc(stats.corrupt, reason="crc")  # contents damaged: that record skipped
        if stats.torn:
            self.m_refused.inc(stats.torn, reason="torn")  # a record cut short: the end of what was written
        for rec in records:
            tlen = int.from_bytes(rec[:2], "little")
            if len(rec) < 2 + tlen:
                self.m_refused.inc(reason="torn")
                continue
            payload = rec[2 + tlen:]
            try:
                frame = codec.decode_frames([rec[2:2 + tlen], payload])
            except FrameError as exc:
                self.m_refused.inc(reason=exc.reason)
                continue
            frames.append((frame.topic, payload, frame.env.event_ns))
        if frames:
            self.newest_ns = max(ns for _, _, ns in frames)
        kept = self._bounded(frames)
        self.m_loaded.inc(len(kept))
        self._rewrite(kept)
        return [(t, p) for t, p, _ in kept]

    def _bounded(self, frames: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
        """The newest frames within the age bound whose records fit in half of ``max_bytes``."""
        floor = self.newest_ns - self.max_age_ns
        budget, out = self.max_bytes // 2, []
        for t, p, ns in reversed(frames):
            if ns < floor:
                continue
            n = _REC_HEAD + len(t.encode()) + len(p)
            if n > budget:
                break  # a contiguous newest tail: every later frame of a record's history stays
            budget -= n
            out.append((t, p, ns))
        return out[::-1]

    # ---------------------------------------------------------------- write
    @staticmethod
    def _record(topic: str, payload: bytes) -> bytes:
        tb = topic.encode()
        return len(tb).to_bytes(2, "little") + tb + payload

    def append(self, topic: str, payload: bytes, event_ns: int, ring=None) -> None:
        """Journal one frame (before it is sent). ``ring`` (the publisher's kept frames, this one
        not yet among them) is what a compaction keeps when the file reaches ``max_bytes``."""
        rec = self._record(topic, payload)
        if event_ns > self.newest_ns:
            self.newest_ns = event_ns
        try:
            if not self._log.is_open:
                self._log.open()
            if (self.size + len(rec) + _REC_HEAD - 2 > self.max_bytes
                    and time.monotonic() >= self._compact_retry_at):
                self.compact(list(ring or ()))
            self._log.append([rec])
        except (OSError, recordlog.LegacyFile) as exc:
            self._failed(exc)
            return
        self.fault = None
        self.m_written.inc()
        self.m_bytes.set(self.size)

    def compact(self, ring: list[tuple[str, bytes]]) -> None:
        """Rewrite the journal as the newest of ``ring`` that fit in half of ``max_bytes`` (atomic
        rename). The age bound is left to the next :meth:`load` (no frame is decoded here)."""
        if self._rewrite(self._bounded([(t, p, self.newest_ns) for t, p in ring])):
            self.m_compactions.inc()
        else:
            self._compact_retry_at = time.monotonic() + self.RETRY_S
            if not self._log.is_open:
                self._log.open()  # keep appending to the old journal meanwhile

    _compact_retry_at = 0.0

    def _rewrite(self, frames: list[tuple[str, bytes, int]]) -> bool:
        self.close()
        try:
            recordlog.rewrite(self.path, (self._record(t, p) for t, p, _ in frames), fsync=self.fsync)
            self._log.open(check=False)
        except OSError as exc:
            self._failed(exc)
            return False
        finally:
            self.m_bytes.set(self.size)
        return True

    _last_error_log = 0.0

    def _failed(self, exc: Exception) -> None:
        self.m_errors.inc()
        self.fault = f"outbox {self.path.name} not written: {getattr(exc, 'strerror', None) or exc}"
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.error("outbox %s not written (%r): frames are still sent, but not kept across a crash",
                      self.path, exc)
        self.close()

    def close(self) -> None:
        try:
            self._log.close()
        except OSError:
            pass
