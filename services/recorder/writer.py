"""The recorder's writer thread: bounded queue in, batched idempotent writes out, spool on outage.

The subscriber loop only calls :meth:`Writer.submit` (a non-blocking ``put_nowait``); the
database is touched by one thread.  Order of records is kept across an outage: while the
spool holds anything, new batches are appended behind it, and the spool is replayed first
when the database answers again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any
from collections.abc import Callable

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from spx_common import models as m
from spx_common.metrics import Registry
from spx_common.store.repo import Store
from services.recorder.spool import Spool, SpoolFull

log = logging.getLogger("spx.recorder.writer")

#: record kind -> bus model (None: a plain document)
KINDS: dict[str, Any] = {"transition": m.SetupTransition, "order": m.Order, "fill": m.Fill,
                         "position": m.Position, "snapshot": None, "exit": m.ExitAdvice, "bar": m.MicroBar,
                         "coach": m.CoachEvent, "feedback": m.CoachFeedback, "availability": None}


def write_batch(store: Store, records: list[tuple]) -> None:
    """Write one batch in one transaction (all or nothing). A record is ``(kind, body)`` or
    ``(kind, body, source, run_id)``: its provenance (``spx_common.provenance``; default live)."""
    groups: dict[tuple[str, str, str | None], list] = {}
    for rec in records:
        kind, body = rec[0], rec[1]
        source, run_id = (rec[2], rec[3]) if len(rec) >= 4 else ("live", None)
        model = KINDS[kind]
        groups.setdefault((kind, source, run_id), []).append(body if model is None else msgspec.convert(body, model))
    with store.engine.begin() as conn:
        for (kind, source, run_id), items in groups.items():
            prov = {"source": source, "run_id": run_id}
            if kind == "transition":
                store.record_transitions(items, conn=conn, **prov)
            elif kind == "exit":
                store.record_trailing_stop(items, conn=conn)
            elif kind == "order":
                store.record_orders(items, conn=conn, **prov)
            elif kind == "fill":
                store.record_fills(items, conn=conn, **prov)
            elif kind == "position":
                store.record_positions(items, conn=conn, **prov)
            elif kind == "snapshot":
                store.record_snapshots(items, conn=conn, **prov)
            elif kind == "bar":
                store.upsert_bars(items, conn=conn, **prov)
            elif kind == "coach":
                store.record_coach_events(items, conn=conn)
            elif kind == "availability":
                store.record_availability(items, conn=conn, source=source)
        for (kind, _, _), items in groups.items():  # answers after every alert of the batch
            if kind == "feedback":
                store.record_feedback(items, conn=conn)


class Writer:
    """Batches records from a bounded queue into the store on its own thread."""

    def __init__(self, store: Store, spool: Spool, registry: Registry, *, batch_size: int = 500,
                 queue_max: int = 100_000, flush_s: float = 0.2, retry_s: float = 1.0,
                 before_replay: Callable[[], None] | None = None) -> None:
        self.store, self.spool = store, spool
        self.batch_size, self.flush_s, self.retry_s = batch_size, flush_s, retry_s
        self.q: queue.Queue = queue.Queue(maxsize=queue_max)
        self.before_replay = before_replay
        self.db_ok = True
        #: why the last write failed (database or spool), until a database write succeeds again
        self.fault: str | None = None
        #: records were dropped since the last catch-up: the recorder fetches the publishers' replay
        #: rings again (idempotent) until that succeeds (a full disk costs no record)
        self.needs_catch_up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self.written = registry.counter("recorder_rows_written_total", "Records written to the database.", ["kind"])
        self.spooled = registry.counter("recorder_rows_spooled_total", "Records written to the outage spool.")
        self.replayed = registry.counter("recorder_rows_replayed_total", "Spooled records replayed into the database.")
        self.dropped = registry.counter("recorder_rows_dropped_total",
                                        "Records lost (queue and spool both full, or not decodable).", ["reason"])
        self.failures = registry.counter("recorder_db_failures_total", "Database write attempts that failed.")
        self.batches = registry.histogram("recorder_batch_ms", "Time to write one batch.")
        self.queue_depth = registry.gauge("recorder_queue_depth", "Records waiting for the writer.")
        self.spool_bytes = registry.gauge("recorder_spool_bytes", "Size of the outage spool.")
        self.db_up = registry.gauge("recorder_db_up", "1 when the last database write succeeded.")
        self.db_up.set(1)

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, body: Any, source: str = "live", run_id: str | None = None) -> None:
        """Hand a record (with its provenance) to the writer without blocking; a full queue overflows
        to the spool."""
        rec = (kind, body, source, run_id)
        try:
            self.q.put_nowait(rec)
        except queue.Full:
            self._to_spool([rec], reason="queue_full", fsync=False)

    def stop(self, timeout_s: float) -> None:
        """Flush what is queued (to the database or the spool) within ``timeout_s``; whatever the
        writer could not reach in time (a database call hanging) is moved to the spool."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        left: list[tuple] = []
        while True:
            try:
                left.append(self.q.get_nowait())
            except queue.Empty:
                break
        if left:
            log.warning("writer did not finish in %.1fs; %d queued records moved to the spool", timeout_s, len(left))
            self._to_spool(left, reason="shutdown")

    def pending(self) -> int:
        return self.q.qsize()

    def wait_idle(self, timeout_s: float) -> bool:
        """Until the queue is empty and the batch taken is done (written, spooled or dropped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.q.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ thread
    def _take(self, wait_s: float) -> list[tuple]:
        batch: list[tuple] = []
        deadline = time.monotonic() + wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.q.get(timeout=max(remaining, 0)) if remaining > 0 else self.q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        next_retry = 0.0
        while True:
            stopping = self._stop.is_set()
            batch = self._take(0 if stopping else self.flush_s)
            self.queue_depth.set(self.q.qsize())
            if self.spool and time.monotonic() >= next_retry:
                if not self._replay():
                    next_retry = time.monotonic() + self.retry_s
            if batch:
                if self.spool:
                    self._to_spool(batch, reason="outage")
                elif not self._write(batch):
                    self._to_spool(batch, reason="outage")
                    next_retry = time.monotonic() + self.retry_s
                for _ in batch:
                    self.q.task_done()
            self.spool_bytes.set(self.spool.size())
            if stopping and not batch:
                return

    def _write(self, batch: list[tuple]) -> bool:
        t0 = time.perf_counter()
        try:
            write_batch(self.store, batch)
        except (SQLAlchemyError, OSError) as exc:
            self.failures.inc()
            if self.db_ok:
                log.warning("database unavailable (%s); spooling to %s", type(exc).__name__, self.spool.path)
            self.fault = f"database not written: {str(getattr(exc, 'orig', None) or exc).splitlines()[0][:120]}"
            self.db_ok = False
            self.db_up.set(0)
            return False
        except (msgspec.ValidationError, ValueError, KeyError, TypeError) as exc:
            # a bad record must not sink the good ones around it: write this batch record by record
            log.warning("batch with a bad record (%r); writing records singly", exc)
            for i, rec in enumerate(batch):
                try:
                    write_batch(self.store, [rec])
                    self.written.inc(kind=rec[0])
                except (SQLAlchemyError, OSError):
                    self._to_spool(batch[i:], reason="outage")
                    self.db_ok = False
                    self.db_up.set(0)
                    return True
                except (msgspec.ValidationError, ValueError, KeyError, TypeError):
                    self.dropped.inc(reason="invalid")
            return True
        self.batches.observe((time.perf_counter() - t0) * 1000)
        if not self.db_ok:
            log.info("database available again")
        self.db_ok = True
        self.fault = None
        self.db_up.set(1)
        for rec in batch:
            self.written.inc(kind=rec[0])
        return True

    def _to_spool(self, records: list[tuple], reason: str, fsync: bool = True) -> None:
        try:
            self.spool.append(records, fsync=fsync)
            self.spooled.inc(len(records))
        except (SpoolFull, OSError) as exc:
            self.dropped.inc(len(records), reason="spool_full" if isinstance(exc, SpoolFull) else "spool_error")
            log.error("dropped %d records (%s): %s", len(records), reason, exc)
            self.needs_catch_up = True
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.fault = f"records not kept (spool: {why[:100]}); fetched again from the publishers once writable"

    def _replay(self) -> bool:
        """Write the whole spool, then remove it. False (spool kept) when the database still fails."""
        n = 0
        if self.before_replay is not None:
            try:
                self.before_replay()
            except (SQLAlchemyError, OSError):
                self.failures.inc()
                return False
        while (path := self.spool.take()) is not None:
            for chunk in self.spool.read(self.batch_size, path):
                if not self._write(chunk):
                    return False
                n += len(chunk)
                self.replayed.inc(len(chunk))
            self.spool.done(path)
        log.info("replayed %d spooled records", n)
        return True
