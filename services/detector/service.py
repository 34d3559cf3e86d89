"""The detector host process.

Closed bars (``bar.<interval>.<sym>``) drive the plugins; ticks (``tick.<sym>``) drive the
lifecycle of active setups; the chain (``chain.SPXW``) feeds GEX. The three are handled in event-time
order across the feed and the aggregator (``aligned``; docs/protocol.md, "Event-time alignment"): a closed
bar ``[start, end)`` before the ticks at or after its end, ticks in runs of one bar bucket, so the same data
gives the same transitions at any replay speed and in ``spx backtest --resolution tick``. Publishes
``setup.candidate``, ``setup.transition``, ``state.market`` (on a cadence) and
``block.detector`` for every refusal (reason counted in ``detector_blocked_total``).

Requests: ``plugins`` (loaded plugins with version, status, error counts), ``active``
(active setups), ``state`` (last market-state snapshot).

Restart: before the first frame is handled, unresolved setups of the newest session are restored
from the store, brought up to date with the transitions this detector published itself (its
outbox journal, which the recorder may not have written yet: ``restore_setups``), so their
lifecycle continues exactly where the published sequence stopped; then the recent closed bars are re-read from the aggregator (``bars_since``) to rebuild
market state and plugin context (``warmup``). Live bars arriving during the warm-up are held
(bounded) and handled after it, so the bar order plugins see is the event-time order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import msgspec

from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine, newest_of
from services.aggregator.pybars import parse_interval
from services.detector.host import NO_PLUGINS_WARNING
from services.detector.isolation import build_host
from spx_common.align import FINAL_NS
from spx_common.codec import FrameError, decode_frames
from spx_common.config import load
from spx_common.models import BlockEvent, MicroBar
from spx_common.service import BusService
from spx_common.topics import (BAR, CHAIN, SETUP_CANDIDATE, SETUP_SHADOW, SETUP_TRANSITION, STATE_MARKET,
                               STATUS_DETECTOR_PLUGIN, STATUS_FEED, TICK, block_topic, is_one_symbol, tick_topic)
from spx_common import provenance


class DetectorService(BusService):
    """Detector host: plugins, market state, gating and the setup lifecycle."""

    name = "detector"
    subscriptions = {"aggregator": [BAR], "feed": [TICK, CHAIN, STATUS_FEED]}
    replayable = (SETUP_TRANSITION, SETUP_SHADOW)  # the recorder catches up after a restart or a gap
    aligned = (TICK, BAR, CHAIN)
    #: a relay (docs/protocol.md): the selector, broker and coach align our transitions and market state
    #: with the feed's and the aggregator's frames by our watermark
    watermarks = True

    def __init__(self, *args, config: DetectorConfig | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.cfg = config or load(DetectorConfig)
        # ticks of the watched symbols only: the lifecycle reads nothing else, and at load the option
        # quotes (most of the tick traffic) would cost a receive and a decode each for nothing
        self.subscriptions = {"aggregator": [BAR],
                              "feed": sorted({tick_topic(s) for s in self.cfg.symbols}) + [CHAIN, STATUS_FEED]}
        self.host = build_host(self.cfg)
        self.engine = DetectorEngine(self.cfg, self.host)
        m = self.metrics
        self.transitions = m.counter("setup_transitions_total", "Setup transitions published.", ["to_state"])
        self.blocked = m.counter("detector_blocked_total", "Candidates or plugin outputs refused, by reason.",
                                 ["reason"])
        self.latency = m.histogram("setup_transition_latency_ms",
                                   "Tick publish (feed) to transition publish, wall ms.")
        self.plugin_status = m.gauge("detector_plugins", "Plugins by status.", ["status"])
        self.plugin_calls = m.gauge("detector_plugin_calls", "Calls of each plugin since start.", ["plugin"])
        self.plugin_errors = m.gauge("detector_plugin_errors", "Calls that raised (or were stopped), per plugin.",
                                     ["plugin"])
        self.plugin_overruns = m.gauge("detector_plugin_overruns", "Calls over the plugin's CPU budget.", ["plugin"])
        self.plugin_crashes = m.gauge("detector_plugin_crashes", "Worker crashes and hangs during the plugin's "
                                      "calls (each disables it until a probe succeeds).", ["plugin"])
        self.restored = m.counter("detector_setups_restored_total", "Unresolved setups restored from the store "
                                  "at start.")
        self._last_state: dict = {}
        self._warming = self.cfg.warmup
        self._held: deque = deque(maxlen=10_000)
        self._iv = parse_interval(self.cfg.interval)
        self.align_hold = self._warming  # aligned input waits for the warm-up (bounded by the aligner)

    def align_items(self, frame, body) -> list[tuple[int, tuple, object]]:
        """Items in event-time order: a closed bar of the detectors' interval keyed by its end, before the ticks
        at that time and ordered by symbol among bars of one end; a tick frame's watched events in runs of one
        bar bucket, keyed by the bucket start (ticks of one symbol stay in stream order; the lifecycle of one
        symbol never reads another's ticks, so runs of different symbols commute); a chain in its bucket too."""
        topic = frame.topic
        if topic.startswith(BAR):
            if not body.closed or body.interval != self.cfg.interval or body.sym not in self.engine.watched:
                return []
            return [(body.start_ns + self._iv, (0, body.sym), body)]
        if topic.startswith(TICK):
            watched = self.engine.watched
            events = body if is_one_symbol(topic, body) else [ev for ev in body if ev.sym in watched]
            if not events or events[0].sym not in watched:
                return []
            iv = self._iv
            out, run, bucket = [], [], None
            for ev in events:
                b = ev.ts // iv
                if b != bucket and run:
                    out.append((bucket * iv, (1, ""), run))
                    run = []
                bucket = b
                run.append(ev)
            out.append((bucket * iv, (1, ""), run))
            return out
        ts = body.get("ts") if isinstance(body, dict) else None
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else frame.event_ns
        # in its bar bucket, like the ticks: only the market state reads it, published at the bucket's end
        return [(ts // self._iv * self._iv, (1, ""), body)]

    def setup(self) -> None:
        for err in self.host.load_errors:
            self.log.error("plugin not loaded: %s", err)
        if not self.host.plugins:
            self.log.error(NO_PLUGINS_WARNING)
        self.on(BAR, self._on_bar)
        self.on(TICK, self._on_ticks)
        self.on(CHAIN, lambda f, doc: self.engine.on_chain(doc))
        self.on(STATUS_FEED, lambda f, st: self.engine.on_feed_status(st.mode, st.detail))
        self.rpc("plugins", lambda p: {"plugins": self.host.describe(), "load_errors": self.host.load_errors,
                                         "available": self.host.available})
        self.rpc("active", lambda p: [{"setup_id": s.id, "state": s.state, "detector": s.cand.detector,
                                       "sym": s.cand.sym, "direction": s.cand.direction}
                                      for syms in self.engine.lifecycle.active.values() for s in syms.values()])
        self.rpc("state", lambda p: self._last_state)
        self.refresh_profile()
        if self.cfg.restore_setups:
            self.restore_setups()

    def restore_setups(self) -> int:
        """Restore unresolved setups from the store rows brought up to date with this detector's own
        outbox (``newest_of``): never one state behind the recorder's write lag, never a state
        published twice. With the database down, the outbox alone (the refusal is published)."""
        rows: list[dict] = []
        try:
            from spx_common.store import open_store

            store = open_store()
            try:  # setups of the run this detector continues: a demo's setups never come back in live
                rows = store.active_setups(limit=self.cfg.max_active, source=provenance.configured()[0])
            finally:
                store.close()
        except Exception as exc:  # the database may be down: restore what we published, say so
            self.log.error("could not restore active setups from the store: %r", exc)
            self.engine.refuse("restore_failed", repr(exc)[:300])  # published and counted in main()
        published = []
        for topic, payload in self.outbox_frames:
            try:
                frame = decode_frames([topic.encode(), payload])
                if frame.type == "setup_transition":
                    published.append(frame.body())
            except FrameError as exc:  # the outbox validated it at load; a schema change can still refuse it
                self.engine.refuse("restore_refused", f"outbox frame on {topic}: {exc.reason}")
        # every setup we published, resolved ones too: a bar evaluated again must not form them again
        self.engine.remember(tr.setup_id for tr in sorted(published, key=lambda x: x.ts))
        self.engine.remember(r["setup_id"] for r in rows)
        n = self.engine.restore(newest_of(rows, published, limit=self.cfg.max_active))
        self.restored.inc(n)
        if n:
            self.log.info("restored %d active setups (%d store rows, %d transitions of our outbox)", n,
                          len(rows), len(published))
        return n

    async def warmup(self) -> None:
        """Re-read recent closed bars from the aggregator; live bars wait (bounded) meanwhile."""
        try:
            client = self.client("aggregator", timeout_s=2.0, retries=1)
            for sym in sorted(self.engine.watched):
                try:
                    doc = await client.call("bars_since", {"sym": sym, "interval": self.cfg.interval,
                                                           "limit": self.cfg.bars_kept})
                except Exception as exc:
                    self.log.warning("warm-up of %s skipped: %r", sym, exc)
                    continue
                held = [b.start_ns for b in self._held if b.sym == sym]
                if self.aligner is not None:  # live bars waiting in the aligner (their frames' parts)
                    held += [p.start_ns for _, p, _, _ in self.aligner.held() if isinstance(p, MicroBar) and p.sym == sym]
                first_live = min(held, default=None)
                for raw in doc.get("bars", []) if isinstance(doc, dict) else []:
                    try:
                        bar = msgspec.convert(raw, MicroBar)
                    except msgspec.ValidationError:
                        continue
                    if first_live is None or bar.start_ns < first_live:
                        self.engine.warm(bar)
        finally:
            self._warming = False
            held, self._held = list(self._held), deque(maxlen=self._held.maxlen)
            for bar in held:
                self._handle_bar(bar, time.time_ns())
            self.align_hold = False
            self.release_aligned()

    def refresh_profile(self) -> None:
        try:
            from spx_common.store import get_active_profile

            self.engine.profile = get_active_profile()
        except Exception as exc:  # keep the last profile; the database may be down
            self.log.warning("optimizer profile unavailable: %r", exc)

    def _on_bar(self, frame, bar) -> None:
        if not bar.closed:
            return
        if self._warming:
            self._held.append(bar)
            return
        self._handle_bar(bar, frame.pub_ns)

    def _handle_bar(self, bar, origin_pub_ns: int) -> None:
        if self._item_key is not None:  # aligned: sessions closed before this bar's end (exclusive) come first
            for tr in self.engine.lifecycle.session_end(self._item_key - 1):
                self._publish_transition(tr, origin_pub_ns)
        for tr in self.engine.on_bar(bar):
            self._publish_transition(tr, origin_pub_ns)
        self._flush_refusals()
        if self._item_key is not None:
            # the market state in event time (the regime moves on bars only): consumers see each bar's
            # regime at its end whatever the replay speed, not at the wall cadence of main()
            self._last_state = self.engine.market_state()
            if self._last_state:
                self.publish(STATE_MARKET, "doc", self._last_state, self.engine.now_ns)

    def event_time_passed(self, ns: int) -> None:
        """Every input before ``ns`` was handled: setups whose session closed before it expire now, at
        their close, before our watermark ``ns`` goes out (a finished replay: ``FINAL_NS``, every close)."""
        if self._warming or not self.engine.lifecycle.active:
            return
        for tr in self.engine.lifecycle.session_end(ns - 1 if ns < FINAL_NS else ns):
            self._publish_transition(tr, time.time_ns())

    def _on_ticks(self, frame, events) -> None:
        watched = self.engine.watched
        if not is_one_symbol(frame.topic, events):  # an option root's batch: the watched contracts only
            events = [ev for ev in events if ev.sym in watched]
        if events and events[0].sym in watched:
            for tr in self.engine.on_ticks(events):
                self._publish_transition(tr, frame.pub_ns)

    def _publish_transition(self, tr, origin_pub_ns: int) -> None:
        if tr.to_state == "forming":
            self.publish(SETUP_CANDIDATE, "setup_candidate", self.engine.candidates[tr.setup_id], tr.ts)
        topic = SETUP_SHADOW if self.flags.get("evaluator_logging_only") else SETUP_TRANSITION
        self.publish(topic, "setup_transition", tr, tr.ts)
        self.transitions.inc(to_state=tr.to_state)
        self.latency.observe((time.time_ns() - origin_pub_ns) / 1e6)

    def _flush_refusals(self) -> None:
        for reason, subject in self.engine.drain_blocks():
            self.blocked.inc(reason=reason)
            self.publish(block_topic("detector"), "block",
                         BlockEvent(service=self.instance, reason=reason, ts=self.engine.now_ns, subject=subject),
                         self.engine.now_ns)
        for st in self.host.events.status:
            self.log.warning("plugin %s %s: %s", st["plugin"], st["status"], st["reason"])
            self.publish(STATUS_DETECTOR_PLUGIN, "doc", st, self.engine.now_ns)
        self.host.events.status.clear()

    async def main(self) -> None:
        self._flush_refusals()  # refusals of the restore, before any frame
        if self._warming:
            await self.warmup()
        last_profile = time.monotonic()
        while not self.stop_event.is_set():
            await asyncio.sleep(self.cfg.state_every_s)
            self._last_state = self.engine.market_state()
            if self._last_state:
                self.publish(STATE_MARKET, "doc", self._last_state, self.engine.now_ns)
            if time.monotonic() - last_profile > 30:
                last_profile = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, self.refresh_profile)

    def _session_end(self) -> None:
        """Setups still open at their session's close expire (16:00 ET, 13:00 on early closes). Event time,
        advanced by the wall-clock time since the last input (an idle input after the close, as live at
        16:00, still reaches the close; a replay that keeps feeding runs on its own event time)."""
        lc = self.engine.lifecycle
        if not lc.active or not self.engine.now_ns or self._warming:
            return
        if self.aligner is not None and self.aligner.frontier <= FINAL_NS:
            return  # event time moves by the watermarks (a silent live feed's too): event_time_passed()
        idle_ns = int((time.monotonic() - self._last_input) * 1e9) if self._last_input is not None else 0
        now = self.engine.now_ns + max(idle_ns, 0)
        if self.aligner is not None and self.aligner.ended():
            now = FINAL_NS  # the inputs ended (a finished replay): every session close has passed, as in a backtest
        for tr in lc.session_end(now):
            self._publish_transition(tr, time.time_ns())

    async def drain(self) -> None:
        close = getattr(self.host, "close", None)
        if close is not None:
            close()  # the plugin workers (they also die with this process: PR_SET_PDEATHSIG)

    def periodic(self) -> None:
        self._session_end()
        counts: dict[str, int] = {}
        for p in self.host.plugins.values():
            counts[p.status] = counts.get(p.status, 0) + 1
            h = p.health
            for metric, value in ((self.plugin_calls, h.calls), (self.plugin_errors, h.errors),
                                  (self.plugin_overruns, h.slow), (self.plugin_crashes, h.crashes)):
                metric.set(value, plugin=p.name)
        for status in ("active", "disabled", "probing"):
            self.plugin_status.set(counts.get(status, 0), status=status)
        if not self.host.plugins:  # degraded, with the reason, in every heartbeat ('spx status' exits 1)
            self.state, self.detail = "degraded", NO_PLUGINS_WARNING
            return
        self.detail = f"{len(self.host.plugins)} plugins, {self.engine.lifecycle.count()} active setups"

