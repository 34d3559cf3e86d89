"""The recorder process: ``python -m services.recorder``.

Subscribes to ``setup.transition`` (detector), ``exit.`` (selector: trailing-stop paths),
``order.``, ``fill.``, ``position.``, ``portfolio.`` (broker) and persists them through
:class:`spx_common.store.Store`.  Handlers only enqueue (never blocking the subscriber loop);
a writer thread writes batches; during a database outage records go to
``<run_dir>/recorder/spool.bin`` and are replayed when the database returns.  Every write is
keyed by a natural id, so nothing is written twice.  Every ``requarantine_every_s`` of event
time it re-checks setup families against the optimizer profile floors over the rolling window.

Catch-up: the detector, selector and broker keep their newest transitions, exit advice, orders,
fills and positions (``replayable``); at start, whenever the subscriber sees a sequence gap,
and whenever a publisher's heartbeat (re)appears on its subscription (so nothing published
before the connection was up slips through), the recorder asks each of them for those frames
(``replay``) and records them again — the writes
are idempotent, so what it already had is unchanged and what it missed while it was down (or that
the network dropped) is recorded. Counted in ``recorder_replayed_frames_total{peer}``.
The publishers journal those frames to their outbox before sending them and reload it into the
ring at start (``spx_common.bus.Outbox``), so what this recorder had queued but not written when it
died together with a publisher comes back from the publisher's next session.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from spx_common import provenance
from spx_common.codec import Frame, FrameError, decode_frames
from spx_common.config import load
from spx_common.models import BlockEvent
from spx_common.service import BusService
from spx_common.store import StoreConfig
from spx_common.store.engine import make_engine, upgrade
from spx_common.store.repo import Store, snapshot_row
from spx_common.topics import (AVAILABILITY_FEED, BAR, COACH, EXIT, FEEDBACK_COACH, FILL, ORDER, PORTFOLIO,
                               POSITION, SETUP_SHADOW, SETUP_TRANSITION, STATUS_FEED, bar_topic, block_topic)
from services.recorder.spool import Spool
from services.recorder.writer import Writer


class Recorder(BusService):
    """Recorder: persists setups, orders, fills, positions and portfolio snapshots."""

    name = "recorder"
    #: the publishers whose replay rings the recorder catches up from
    catch_up_peers = {
        # setup.shadow: transitions computed while the evaluator is in logging-only mode
        # (rollout switch evaluator_logging_only): recorded, never shown to users
        "detector": [SETUP_TRANSITION, SETUP_SHADOW],
        "selector": [EXIT],
        "broker": [ORDER, FILL, POSITION, PORTFOLIO],
    }
    subscriptions = catch_up_peers

    def __init__(self, *args: Any, store_config: StoreConfig | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cfg = store_config or load(StoreConfig)
        # status.feed: the provenance stamped on every row; bar.<iv>.<sym>: the bars a backtest reads
        self.subscriptions = {**self.catch_up_peers, "feed": [STATUS_FEED, AVAILABILITY_FEED],
                              "aggregator": [bar_topic(self.cfg.record_bar_interval, sym)
                                             for sym in self.cfg.record_bar_symbols],
                              # issue 28: alerts and users' answers (acknowledgment rates)
                              "coach": [COACH], "gateway": [FEEDBACK_COACH]}
        self._bar_topics = frozenset(self.subscriptions["aggregator"])
        #: provenance of what is recorded now: the feed's word (status.feed), until then the configuration
        self.source, self.run_id = provenance.configured()
        self.run_id = self.run_id or None
        self.url = self.cfg.resolved_url(self.runtime)
        self.store: Store | None = None
        self.writer: Writer | None = None
        self._last_check_ns = 0
        self._checking = False
        self._check_task: asyncio.Future | None = None
        self.bad = self.metrics.counter("recorder_bad_records_total", "Records refused before queueing.", ["reason"])
        self.requarantined = self.metrics.counter("recorder_requarantines_total",
                                                  "Families quarantined by the live rolling window.")
        self.replayed = self.metrics.counter("recorder_replayed_frames_total",
                                             "Frames fetched again from a publisher's replay ring.", ["peer"])
        self._lost_seen = 0.0
        self._catch_up_due = True
        self._catch_up_tries = 0

    def setup(self) -> None:
        try:
            upgrade(self.url)
        except SQLAlchemyError as exc:  # an outage at start: spool until it answers (migrated on replay)
            self.log.warning("database not migrated at start (%s); will spool", type(exc).__name__)
        self.store = Store(make_engine(self.url, busy_timeout_s=self.cfg.sqlite_busy_timeout_s))
        self.writer = Writer(self.store, Spool(self.runtime.path("recorder", "spool.bin"), self.cfg.spool_max_bytes),
                             self.metrics, batch_size=self.cfg.batch_size, queue_max=self.cfg.queue_max,
                             flush_s=self.cfg.flush_s, retry_s=self.cfg.retry_s,
                             before_replay=lambda: upgrade(self.url))
        self.writer.start()
        self.on(SETUP_TRANSITION, self._record("transition"))
        self.on(SETUP_SHADOW, self._record("transition"))
        self.on(EXIT, self._record("exit"))
        self.on(ORDER, self._record("order"))
        self.on(FILL, self._record("fill"))
        self.on(POSITION, self._record("position"))
        self.on(PORTFOLIO, self._snapshot)
        self.on(STATUS_FEED, self._on_feed_status)
        self.on(BAR, self._on_bar)
        self.on(COACH, self._record("coach"))
        self.on(FEEDBACK_COACH, self._record("feedback"))
        self.on(AVAILABILITY_FEED, self._availability)
        self.rpc("profile", lambda p: msgspec.to_builtins(self.store.get_active_profile()))

    def _on_feed_status(self, frame: Frame, body: Any) -> None:
        if body.source and (body.source, body.run_id or None) != (self.source, self.run_id):
            self.log.info("recording as source=%s run=%s (feed status)", body.source, body.run_id)
            self.source, self.run_id = body.source, body.run_id or None

    def _on_bar(self, frame: Frame, bar: Any) -> None:
        if frame.topic in self._bar_topics and bar.closed:
            self.writer.submit("bar", msgspec.to_builtins(bar), self.source, self.run_id)

    def _record(self, kind: str):
        def handler(frame: Frame, body: Any) -> None:
            self.writer.submit(kind, msgspec.to_builtins(body), self.source, self.run_id)
            self._maybe_requarantine(frame.event_ns)
        return handler

    def _availability(self, frame: Frame, body: Any) -> None:
        need = ("day", "session_s", "elapsed_s", "available_s", "longest_gap_s")
        if not isinstance(body, dict) or any(not isinstance(body.get(k), (str, int)) for k in need):
            self.bad.inc(reason="availability_invalid")
            return
        self.writer.submit("availability", body)

    def _snapshot(self, frame: Frame, body: Any) -> None:
        if not isinstance(body, dict):
            self.bad.inc(reason="snapshot_not_a_document")
            return
        try:
            snapshot_row(body)
        except (ValueError, TypeError) as exc:
            self.bad.inc(reason="snapshot_invalid")
            self._rate_log.warning("snapshot", f"refused portfolio snapshot on {frame.topic}: {exc}")
            return
        self.writer.submit("snapshot", body, self.source, self.run_id)

    async def catch_up(self) -> int:
        """Fetch and record every replayable frame of each peer (idempotent); returns frames fetched."""

        total = 0
        for peer, prefixes in self.catch_up_peers.items():
            for instance in self.bus.instances_of(peer):
                try:
                    doc = await self.client(instance, timeout_s=2.0, retries=0).call("replay", {"prefixes": prefixes})
                except Exception as exc:  # the peer is down or does not keep frames: retry, bounded
                    self.log.info("catch-up from %s skipped: %r", instance, exc)
                    self._catch_up_tries += 1
                    if self._catch_up_tries < 5:
                        self._catch_up_due = True
                    continue
                frames = doc.get("frames", []) if isinstance(doc, dict) else []
                for item in frames:
                    try:
                        topic, payload = item
                        frame = decode_frames([topic.encode(), bytes(payload)])
                    except (FrameError, ValueError, TypeError, AttributeError):
                        self.bad.inc(reason="replay_frame")
                        continue
                    self.dispatch(frame)
                self.replayed.inc(len(frames), peer=instance)
                total += len(frames)
        return total

    def _peer_changed(self, peer) -> None:
        super()._peer_changed(peer)
        if peer.alive:
            # our subscription to this peer now delivers: what it published before (including
            # between a catch-up and the connection) is fetched once more; writes are idempotent
            self._catch_up_due = True
            self._catch_up_tries = 0

    _fault_catch_up_at = 0.0

    def faults(self) -> list[str]:
        out = super().faults()
        w = self.writer
        if w is not None:
            if w.fault:
                out.append(w.fault)
            if w.needs_catch_up or self._catch_up_pending:
                out.append("records to fetch again from the publishers' replay rings")
        return out

    _catch_up_pending = False

    def periodic(self) -> None:
        w = self.writer
        now = time.monotonic()
        if w is not None and w.needs_catch_up and now - self._fault_catch_up_at > 3.0:
            # records were dropped (disk full, read-only): fetch them again, and again until it holds
            self._fault_catch_up_at = now
            w.needs_catch_up = False
            self._catch_up_pending = True
            self._catch_up_due = True
            self._catch_up_tries = 0
        lost = self.core.lost.total()
        if lost > self._lost_seen:
            self._lost_seen = lost
            self._catch_up_due = True
            self._catch_up_tries = 0

    async def main(self) -> None:
        while not self.stop_event.is_set():
            if self._catch_up_due:
                self._catch_up_due = False
                n = await self.catch_up()
                if n:
                    self.log.info("caught up: %d frames fetched again from publishers' replay rings", n)
                if self._catch_up_pending and not self._catch_up_due:
                    await asyncio.to_thread(self.writer.wait_idle, 10.0)  # written, or dropped again
                    self._catch_up_pending = False
            try:
                await asyncio.wait_for(self.stop_event.wait(), 2.0)
            except TimeoutError:
                pass

    def _maybe_requarantine(self, event_ns: int) -> None:
        every = int(self.cfg.requarantine_every_s * 1e9)
        if event_ns - self._last_check_ns < every or self._checking:
            return
        self._last_check_ns = event_ns
        self._checking = True
        self._check_task = asyncio.ensure_future(self._requarantine(event_ns))

    async def _requarantine(self, now_ns: int) -> None:
        """One check at a time, off the loop; each quarantine is published on ``block.recorder``."""
        try:
            changes = await asyncio.to_thread(self.store.requarantine, now_ns,
                                              int(self.cfg.requarantine_window_s * 1e9),
                                              sources=self.cfg.optimizer_sources)
        except SQLAlchemyError as exc:
            self.log.warning("re-quarantine check skipped: %s", type(exc).__name__)
            return
        except Exception:  # a bad stored profile must not stop recording
            self.log.exception("re-quarantine check failed")
            return
        finally:
            self._checking = False
        for family, reason in changes.items():
            self.requarantined.inc()
            self.log.warning("family %s quarantined: %s", family, reason)
            block = BlockEvent(service=self.instance, reason="family_quarantined", ts=now_ns, subject=family,
                               detail=reason)
            self.publish(block_topic("recorder"), "block", block, now_ns)

    def status(self) -> dict[str, Any]:
        st = super().status()
        if self.writer is not None:
            st.update(source=self.source, run_id=self.run_id,
                      url=self.store.engine.url.render_as_string(hide_password=True), db_up=self.writer.db_ok,
                      queue=self.writer.pending(), spool_bytes=self.writer.spool.size())
        return st

    async def drain(self) -> None:
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop, max(self.runtime.shutdown_grace_s - 0.5, 0.5))
        if self.store is not None:
            self.store.close()

