"""``FeedService``: the process where market data enters the mesh.

Sources (``[feed] source``, see docs/feed.md): the Massive WebSocket (``live``, with REST poll
fallback and gap backfill), the synthetic session (the default without ``MASSIVE_API_KEY``),
the tick journal or vendor flat files.  Whatever the source, events go through one
:class:`~services.feed.pipeline.TickPipeline` and :meth:`FeedService.ingest`, so every mode
publishes the same frames:

* ``tick.<sym>`` type ``ticks``: ``list[Trade | Quote | IndexValue]`` of one symbol, arrival order;
* ``status.feed`` type ``feed_status``: mode, connection, events/s, last event age, reconnects (1/s);
* ``chain.<root>`` type ``doc``: ``{ts, root, underlying, contracts: [...]}`` on a cadence.

Passive ingest (the ``tick_ingest_passive`` rollout switch, docs/rollout.md): every event is still
deduplicated, guarded and journaled, but no tick-cadence frame is published. Instead the latest
trade, quote and index value of each symbol are published once per ``passive_cadence_s`` of event
time, marked ``source="poll"``: the rest of the mesh sees what it sees when the feed falls back to
REST polling. Turning the switch off publishes what is held and returns to tick fan-out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from typing import Any

import msgspec

from spx_common.align import FINAL_NS
from spx_common.clock import EventClock
from spx_common.config import load
from spx_common.journal import JournalWriter
from spx_common import provenance
from spx_common.marketrules import TradeRules
from spx_common.models import FeedStatus, IndexValue, MarketEvent, Trade
from spx_common.topics import AVAILABILITY_FEED, STATUS_FEED, chain_topic, tick_topic
from spx_common.service import BusService

from services.feed.availability import Availability
from services.feed.config import FeedConfig
from services.feed.pipeline import TickPipeline
from services.feed.replay import JournalSource, Source, SyntheticSource, pace
from services.feed.synthetic import SyntheticSession
from spx_common.calendar import ET

MODES = ("tick", "poll", "replay", "down")


class FeedService(BusService):
    """Feed: Massive WebSocket ingest, poll fallback, replay (synthetic, journal, flat files), tick journal."""

    name = "feed"
    watermarks = True

    def __init__(self, *args: Any, config: FeedConfig | None = None, source: Source | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cfg = config or load(FeedConfig)
        self.source_override = source
        self.clock = EventClock()
        self.mode = "down"
        self.connected = False
        self.reconnects = 0
        self.status_detail = ""
        self.pipeline = TickPipeline(max_keys=self.cfg.dedupe_keys,
                                     reorder_tolerance_ns=self.cfg.reorder_tolerance_ms * 1_000_000)
        #: the one place every published trade is flagged (excl) by the condition table, correction and
        #: outlier rules (spx_common/marketrules.py): live, backfill, poll and replays alike
        self.rules = TradeRules(outlier_pct=self.cfg.outlier_guard_pct)
        self._excluded_total: dict[str, int] = {}
        m = self.metrics
        self.m_events = m.counter("tick_events_total", "Events published, by event source.", ["source"])
        self.m_rate = m.gauge("tick_ingest_rate", "Events published per second (last status interval).")
        self.m_drops = m.counter("tick_drop_count", "Events dropped, by reason.", ["reason"])
        self.m_reconnects = m.counter("feed_reconnects_total", "WebSocket reconnects.", ["market"])
        self.m_mode = m.gauge("feed_mode", "1 for the current feed mode.", ["mode"])
        self.m_avail = m.gauge("feed_availability_pct", "Share of this regular session's seconds with a fresh "
                               "price (tick or poll) so far, percent.")
        self.m_gap = m.gauge("feed_longest_gap_s", "Longest run of session seconds without a fresh price today.")
        #: the session availability SLO (pure core; fed the newest price of each watched frame)
        self.availability = Availability(stale_s=self.cfg.availability_stale_s)
        self._avail_topics = frozenset(tick_topic(s) for s in self.cfg.availability_symbols)
        self._avail_days: deque[dict] = deque(maxlen=30)  # finished sessions, newest last
        self.m_parse = m.counter("feed_parse_errors_total", "Vendor events that could not be parsed.", ["reason"])
        self.m_unknown = m.counter("feed_unknown_events_total", "Vendor events of unknown type (skipped).", ["ev"])
        self.m_journal_dropped = m.gauge("journal_dropped_events", "Events the journal queue refused (full).")
        self.m_journal_errors = m.gauge("journal_write_errors", "Journal writes that failed (disk full, permissions).")
        self.m_frames = m.counter("tick_frames_total", "ticks frames published (tick.<sym>, tick.O:<root>).")
        self.m_excluded = m.counter("feed_trades_excluded_total", "Trades published flagged out of bars (excl), by "
                                    "condition id, or correction / outlier (docs/microbars.md).", ["condition"])
        self.m_excluded_size = m.counter("feed_trades_excluded_size_total", "Size (shares/contracts) of the trades "
                                         "in feed_trades_excluded_total, by the same labels.", ["condition"])
        self.m_chain = m.counter("chain_snapshots_total", "Option chain documents published.")
        self.m_passive = m.counter("tick_passive_events_total", "Events ingested and journaled while "
                                   "tick_ingest_passive held them back from tick-cadence fan-out.")
        self.m_passive_frames = m.counter("tick_passive_frames_total", "Poll-cadence frames published while "
                                          "tick_ingest_passive is on.")
        self.passive = bool(self.flag_store.get("tick_ingest_passive"))
        self._wm_lag = self.cfg.watermark_lag_ms * 1_000_000
        #: live vendor connection -> (its newest event time, monotonic time it last delivered events)
        self._inputs: dict[str, tuple[int, float]] = {}
        #: passive mode: symbol -> event kind -> latest event since the last poll-cadence frame
        self._held: dict[str, dict[str, MarketEvent]] = {}
        self._passive_due = 0
        self._passive_flushed = time.monotonic()
        self._passive_count = 0
        self.journal: JournalWriter | None = None
        self._last_event_wall: float | None = None
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=16)
        self._published = 0
        self._frames = 0
        self._source_counts: dict[str, int] = {}
        self._drops_seen: dict[str, int] = {}
        self.replay_source: Source | None = None
        self.replay_done = False
        self.live = None  # services.feed.live.LiveIngest when source == live
        #: stop the process when a (non-looping) replay ends (``spx replay``)
        self.exit_when_done = False
        #: called with the event time of each replayed batch (``spx replay``'s progress bar)
        self.progress = None

    # ------------------------------------------------------------------ hot path

    def ingest(self, events: list[MarketEvent], passes: dict[int, int] | None = None, stream: str | None = None) -> int:
        """Dedupe/guard, group by topic (``tick.<sym>``; ``tick.O:<root>`` for options), publish one frame per
        topic, journal. Returns events published. ``passes``: the print counts of the REST answer
        ``events`` are part of (``TickPipeline.process``), when it is ingested in chunks. ``stream``: the
        vendor connection the batch came from (live: ``stocks``, ``indices``, ``options``); the watermark is
        the oldest of the connections' newest event times (:meth:`watermark_ns`).

        Per-frame work is kept to the publish itself: counters are summed here and moved into the
        labelled metrics once a second (``periodic``), and the journal gets one record per call.
        """
        groups = self.pipeline.process(events, passes)
        rules = self.rules
        for _, evs in groups:
            rules.apply(evs)
        if self.passive:
            return self._ingest_passive(events, groups)
        n = 0
        publish, counts = self.publish, self._source_counts
        avail = self._avail_topics
        for topic, evs in groups:
            last = evs[-1].ts
            publish(topic, "ticks", evs, last)
            self.clock.advance(last)
            if topic in avail:
                self._priced(evs)
            k = len(evs)
            n += k
            src = evs[0].source
            counts[src] = counts.get(src, 0) + k
        if n:
            self._frames += len(groups)
            self._published += n
            self._last_event_wall = time.monotonic()
            if self.journal is not None:
                self.journal.append(events if n == len(events) and len(groups) == 1
                                    else [ev for _, evs in groups for ev in evs])
            if stream is not None:
                newest = max(ev.ts for _, evs in groups for ev in evs)
                prev = self._inputs.get(stream)
                self._inputs[stream] = (newest if prev is None or newest > prev[0] else prev[0], time.monotonic())
            self.publish_watermark(self.watermark_ns())
        return n

    def _priced(self, evs: list[MarketEvent]) -> None:
        """The newest price (trade counted in bars, or index value) of a watched symbol's frame."""
        for ev in reversed(evs):
            t = type(ev)
            if t is IndexValue or (t is Trade and not ev.excl):
                self.availability.on_price(ev.ts)
                return

    def _availability_now(self) -> None:
        """Move availability to the current time (wall clock for a vendor feed, whose silence is the
        thing measured; event time in replay), and publish each finished session's figures."""
        now = self.clock.now_ns()
        if self.cfg.resolved_source() == "live" and self.source_override is None:
            now = max(now, time.time_ns())
        if now:
            self.availability.advance(now)
        for day in self.availability.take_closed():
            doc = day.as_dict()
            self.log.info("feed availability %s: %.3f%% of the session, longest gap %d s", day.day,
                          day.pct or 0.0, day.longest_gap_s)
            self.publish(AVAILABILITY_FEED, "doc", doc, now)
            self._avail_days.append(doc)

    def watermark_ns(self) -> int:
        """The feed's watermark: its newest event time minus ``watermark_lag_ms``; with several live vendor
        connections, the oldest of their newest event times (a connection runs ahead of another by its
        network and parsing: Flink's watermark of parallel inputs), a connection silent for
        ``watermark_idle_ms`` left out (it holds nobody back)."""
        newest = self.clock.now_ns()
        if self._inputs:
            horizon = time.monotonic() - self.cfg.watermark_idle_ms / 1000
            active = [ts for ts, seen in self._inputs.values() if seen >= horizon]
            if active:
                newest = min(active)
        return newest - self._wm_lag

    def _ingest_passive(self, events: list[MarketEvent], groups: list[tuple[str, list[MarketEvent]]]) -> int:
        """tick_ingest_passive: journal everything, hold the latest event of each kind per symbol and
        publish the held ones once per ``passive_cadence_s`` of event time. Returns events ingested."""
        n = 0
        held = self._held
        for _, evs in groups:
            for ev in evs:
                kinds = held.get(ev.sym)
                if kinds is None:
                    kinds = held[ev.sym] = {}
                k = type(ev).__name__
                prev = kinds.get(k)
                if prev is None or ev.ts >= prev.ts:
                    kinds[k] = ev
            self.clock.advance(evs[-1].ts)
            n += len(evs)
        if n:
            self._published += n
            self._passive_count += n
            self._last_event_wall = time.monotonic()
            if self.journal is not None:
                self.journal.append(events if n == len(events) and len(groups) == 1
                                    else [ev for _, evs in groups for ev in evs])
            if self.clock.now_ns() >= self._passive_due:
                self.flush_passive()
        return n

    def flush_passive(self) -> int:
        """Publish the held latest events (one frame per topic, as ``ingest`` does, ``source="poll"``)."""
        held, self._held = self._held, {}
        frames: dict[str, list[MarketEvent]] = {}
        for sym, kinds in held.items():
            frames.setdefault(tick_topic(sym), []).extend(msgspec.structs.replace(ev, source="poll")
                                                          for ev in kinds.values())
        for topic, evs in frames.items():
            evs.sort(key=lambda e: e.ts)
            self.publish(topic, "ticks", evs, evs[-1].ts)
        if frames:  # held events are older than the newest: the watermark follows the poll-cadence frames
            self.publish_watermark(self.watermark_ns())
        cadence = int(self.cfg.passive_cadence_s * 1e9)
        self._passive_due = (self.clock.now_ns() // cadence + 1) * cadence
        self._passive_flushed = time.monotonic()
        if frames:
            self.m_passive_frames.inc(len(frames))
        return len(frames)

    def on_flags(self, changed: dict[str, Any]) -> None:
        if "tick_ingest_passive" in changed:
            passive = bool(changed["tick_ingest_passive"])
            if self.passive and not passive:
                self.flush_passive()  # the held latest values go out; tick fan-out continues from here
            self.passive = passive
            self._passive_due = 0
            self.log.info("tick ingest %s", "passive (poll-cadence fan-out)" if passive else "active (tick fan-out)")
            if self.pub is not None:
                self.publish_status()

    def _flush_counters(self) -> None:
        """Move the hot path's plain counters into the labelled metrics (once a second, and on demand)."""
        for src, k in self._source_counts.items():
            if k:
                self.m_events.inc(k, source=src)
        self._source_counts = {}
        if self._frames:
            self.m_frames.inc(self._frames)
            self._frames = 0
        if self.rules.excluded:
            counts, sizes = self.rules.take_counts()
            for label, k in counts.items():
                self.m_excluded.inc(k, condition=label)
                self._excluded_total[label] = self._excluded_total.get(label, 0) + k
                self.m_excluded_size.inc(sizes[label], condition=label)
        if self._passive_count:
            self.m_passive.inc(self._passive_count)
            self._passive_count = 0
        drops = self.pipeline.drops
        for reason, k in drops.items():
            d = k - self._drops_seen.get(reason, 0)
            if d:
                self.m_drops.inc(d, reason=reason)
                self._drops_seen[reason] = k

    def set_mode(self, mode: str, detail: str = "") -> None:
        """Switch mode; a switch publishes a FeedStatus at once (not only on the next second)."""
        changed = mode != self.mode
        self.mode = mode
        self.status_detail = detail
        for m in MODES:
            self.m_mode.set(1.0 if m == mode else 0.0, mode=m)
        if changed and self.pub is not None:
            self.log.info("feed mode -> %s %s", mode, detail)
            self.publish_status()

    def publish_status(self) -> FeedStatus:
        now = time.monotonic()
        window = self._rate_window
        rate = 0.0
        if window:
            t0, n0 = window[0]
            if now > t0:
                rate = (self._published - n0) / (now - t0)
        age = None if self._last_event_wall is None else round((now - self._last_event_wall) * 1000, 1)
        detail = f"passive ingest (poll-cadence fan-out); {self.status_detail}" if self.passive else self.status_detail
        day = self.availability.current()
        source = self.provenance()
        ev_ns = self.clock.now_ns()
        replay_date = speed = ""
        if source != "live":
            speed = self.cfg.replay_speed
            if ev_ns:

                replay_date = dt.datetime.fromtimestamp(ev_ns / 1e9, ET).date().isoformat()
        st = FeedStatus(mode=self.mode, connected=self.connected, events_per_s=round(rate, 2), last_event_age_ms=age,
                        reconnects=self.reconnects, ts=ev_ns or time.time_ns(), detail=detail,
                        availability_pct=day.pct if day else None, availability_day=day.day if day else None,
                        longest_gap_s=day.longest_gap_s if day else 0,
                        longest_gap_start_ns=day.longest_gap_start_ns if day else None, source=source,
                        run_id=self.run_id, replay_date=replay_date, speed=speed)
        self.publish(STATUS_FEED, "feed_status", st, st.ts)
        return st

    def provenance(self) -> str:
        """What the mesh makes from this feed is: live (a vendor), synthetic or replay (spx_common.provenance)."""
        src = self.source_override
        return provenance.of_feed_source(self.cfg.resolved_source() if src is None else src.name)

    @property
    def run_id(self) -> str:
        return provenance.run_id(self.pub.session if self.pub is not None else "")

    # ------------------------------------------------------------------ BusService hooks

    def setup(self) -> None:
        # httpx logs every request at INFO: one poll per second would flood the log
        logging.getLogger("httpx").setLevel(logging.WARNING)
        src = self.cfg.resolved_source()
        if self.cfg.journal == "on" or (self.cfg.journal == "auto" and src == "live"):
            self.journal = JournalWriter(self.runtime.path("journal"), flush_interval_s=self.cfg.journal_flush_s,
                                         fsync=self.cfg.journal_fsync)
        self.rpc("feed.status", lambda p: self.status())
        self.set_mode("down", "starting")

    def periodic(self) -> None:
        if self.passive and self._held and time.monotonic() - self._passive_flushed >= self.cfg.passive_cadence_s:
            self.flush_passive()  # the stream went quiet: what is held still goes out within a cadence
        self._flush_counters()
        self._availability_now()
        day = self.availability.current()
        if day is not None and day.pct is not None:
            self.m_avail.set(day.pct)
            self.m_gap.set(day.longest_gap_s)
        now = time.monotonic()
        self._rate_window.append((now, self._published))
        while len(self._rate_window) > 2 and now - self._rate_window[0][0] > 5.0:
            self._rate_window.popleft()
        st = self.publish_status()
        self.m_rate.set(st.events_per_s)
        j = self.journal
        if j is not None:
            self.m_journal_dropped.set(j.dropped)
            if j.errors > self.m_journal_errors.value():
                self._rate_log.warning("journal", f"journal write failed ({j.errors} so far): {j.last_error}")
            self.m_journal_errors.set(j.errors)
        if self.live is not None:
            self.live.periodic()
            idle_ns = self.cfg.watermark_idle_ms * 1_000_000
            if self._last_event_wall is None or (now - self._last_event_wall) * 1e9 > idle_ns:
                # nothing arrived for a while: the stream is silent, not behind; consumers move on
                self.publish_watermark(max(self.watermark_ns(), time.time_ns() - idle_ns))

    def _metrics_rpc(self, params: dict) -> str:
        self._flush_counters()
        return super()._metrics_rpc(params)

    def faults(self) -> list[str]:
        out = super().faults()
        if self.journal is not None and self.journal.fault:
            out.append(self.journal.fault)
        return out

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update({
            "mode": self.mode,
            "source": self.cfg.resolved_source() if self.source_override is None else self.source_override.name,
            "provenance": self.provenance(),
            "run_id": self.run_id,
            "connected": self.connected,
            "reconnects": self.reconnects,
            "published": self._published,
            "drops": dict(self.pipeline.drops),
            "trades_excluded": dict(self._excluded_total),
            "event_ns": self.clock.now_ns(),
            "replay_done": self.replay_done,
            "availability": None if self.availability.current() is None else self.availability.current().as_dict(),
            "availability_days": list(self._avail_days),
            "passive": self.passive,
            "journal": None if self.journal is None else {
                "dir": str(self.journal.directory), "written": self.journal.written,
                "pending": self.journal.pending, "dropped": self.journal.dropped, "errors": self.journal.errors},
        })
        if self.live is not None:
            out["live"] = self.live.status()
        return out

    async def main(self) -> None:
        src = self.source_override
        if src is None:
            kind = self.cfg.resolved_source()
            if kind == "live":
                from services.feed.live import LiveIngest

                self.live = LiveIngest(self)
                await self.live.run()
                return
            src = self.build_source(kind)
        await self.run_replay(src, self.progress)
        if self.exit_when_done:
            self.request_stop()
        await self.stop_event.wait()

    def build_source(self, kind: str) -> Source:
        cfg = self.cfg
        if kind == "synthetic":
            session = SyntheticSession(cfg.synthetic_seed, cfg.synthetic_date, compress=cfg.synthetic_compress,
                                       strikes_each_side=cfg.strikes_each_side, strike_step=cfg.strike_step,
                                       root=cfg.option_root)
            return SyntheticSource(session, loop=cfg.replay_loop)
        if cfg.replay_path is None:
            raise RuntimeError(f"[feed] source={kind} needs replay_path (SPX_FEED_REPLAY_PATH)")
        if kind == "journal":
            return JournalSource(cfg.replay_path)
        from services.feed.replay import FlatFileSource

        path = cfg.replay_path
        files = sorted([*path.glob("*.csv"), *path.glob("*.csv.gz")]) if path.is_dir() else [path]
        return FlatFileSource(files, quote_sizes=cfg.flatfile_quote_sizes)

    async def run_replay(self, src: Source, progress=None) -> int:
        """Publish a replay source at the configured speed; returns events published."""
        self.replay_source = src
        self.connected = True
        self.set_mode("replay", f"{src.name} x{self.cfg.replay_speed}")
        if self.cfg.replay_start_delay_s:
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.replay_start_delay_s)
            except TimeoutError:
                pass
        chain_every = int(self.cfg.chain_every_s * 1e9)
        root = self.cfg.option_root

        def before(last_ts: int) -> None:
            for doc in src.chain_docs(last_ts, chain_every, root):
                self.publish_chain(doc)
            if progress is not None:
                progress(last_ts)

        n = await pace(src.events(), self.ingest, speed=self.cfg.speed(),
                       batch_ns=self.cfg.replay_batch_ms * 1_000_000, stop=self.stop_event, on_batch=before)
        self.replay_done = not self.stop_event.is_set()
        if self.replay_done:  # the stream ended: consumers release (and the aggregator closes) everything held
            self.publish_watermark(FINAL_NS)
        self.connected = False
        self.status_detail = f"{src.name} replay {'finished' if self.replay_done else 'stopped'}: {n} events"
        self.log.info(self.status_detail)
        return n

    def publish_chain(self, doc: dict) -> None:
        """Publish a chain document on ``chain.<root>`` and journal it (so journal replays have it)."""
        self.publish(chain_topic(doc['root']), "doc", doc, doc["ts"])
        self.m_chain.inc()
        if self.journal is not None:
            self.journal.append_doc("chain", doc)

    async def drain(self) -> None:
        if self.live is not None:
            await self.live.close()
        if self.journal is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.journal.close)
