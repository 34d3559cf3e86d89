"""The detector host process.

Closed bars (``bar.<interval>.<sym>``) drive the plugins; ticks (``tick.<sym>``) drive the
lifecycle of active setups; the chain (``chain.SPXW``) feeds GEX. Publishes
``setup.candidate``, ``setup.transition``, ``state.market`` (on a cadence) and
``block.detector`` for every refusal (reason counted in ``detector_blocked_total``).

Requests: ``plugins`` (loaded plugins with version, status, error counts), ``active``
(active setups), ``state`` (last market-state snapshot).
"""

from __future__ import annotations

import asyncio
import time

from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from spx_common.config import load
from spx_common.models import BlockEvent
from spx_common.service import BusService


class DetectorService(BusService):
    """Detector host: plugins, market state, gating and the setup lifecycle."""

    name = "detector"
    subscriptions = {"aggregator": ["bar."], "feed": ["tick.", "chain."]}

    def __init__(self, *args, config: DetectorConfig | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.cfg = config or load(DetectorConfig)
        self.host = PluginHost(max_failures=self.cfg.max_failures, budget_ms=self.cfg.budget_ms,
                               max_slow=self.cfg.max_slow)
        if self.cfg.entry_points:
            self.host.load_entry_points()
        for mod in self.cfg.plugins:
            self.host.load_module(mod)
        self.engine = DetectorEngine(self.cfg, self.host)
        m = self.metrics
        self.transitions = m.counter("setup_transitions_total", "Setup transitions published.", ["to_state"])
        self.blocked = m.counter("detector_blocked_total", "Candidates or plugin outputs refused, by reason.",
                                 ["reason"])
        self.latency = m.histogram("setup_transition_latency_ms",
                                   "Tick publish (feed) to transition publish, wall ms.")
        self.plugin_status = m.gauge("detector_plugins", "Plugins by status.", ["status"])
        self._last_state: dict = {}

    def setup(self) -> None:
        for err in self.host.load_errors:
            self.log.error("plugin not loaded: %s", err)
        self.on("bar.", self._on_bar)
        self.on("tick.", self._on_ticks)
        self.on("chain.", lambda f, doc: self.engine.on_chain(doc))
        self.rpc("plugins", lambda p: {"plugins": self.host.describe(), "load_errors": self.host.load_errors})
        self.rpc("active", lambda p: [{"setup_id": s.id, "state": s.state, "detector": s.cand.detector,
                                       "sym": s.cand.sym, "direction": s.cand.direction}
                                      for syms in self.engine.lifecycle.active.values() for s in syms.values()])
        self.rpc("state", lambda p: self._last_state)
        self.refresh_profile()

    def refresh_profile(self) -> None:
        try:
            from spx_common.store import get_active_profile

            self.engine.profile = get_active_profile()
        except Exception as exc:  # keep the last profile; the database may be down
            self.log.warning("optimizer profile unavailable: %r", exc)

    def _on_bar(self, frame, bar) -> None:
        if not bar.closed:
            return
        for tr in self.engine.on_bar(bar):
            self._publish_transition(tr, frame.pub_ns)
        self._flush_refusals()

    def _on_ticks(self, frame, events) -> None:
        if events and events[0].sym in self.engine.watched:
            for tr in self.engine.on_ticks(events):
                self._publish_transition(tr, frame.pub_ns)

    def _publish_transition(self, tr, origin_pub_ns: int) -> None:
        if tr.to_state == "forming":
            self.publish("setup.candidate", "setup_candidate", self.engine.candidates[tr.setup_id], tr.ts)
        topic = "setup.shadow" if self.flags.get("evaluator_logging_only") else "setup.transition"
        self.publish(topic, "setup_transition", tr, tr.ts)
        self.transitions.inc(to_state=tr.to_state)
        self.latency.observe((time.time_ns() - origin_pub_ns) / 1e6)

    def _flush_refusals(self) -> None:
        for reason, subject in self.engine.drain_blocks():
            self.blocked.inc(reason=reason)
            self.publish("block.detector", "block",
                         BlockEvent(service=self.instance, reason=reason, ts=self.engine.now_ns, subject=subject),
                         self.engine.now_ns)
        for st in self.host.events.status:
            self.log.warning("plugin %s disabled: %s", st["plugin"], st["reason"])
            self.publish("status.detector.plugin", "doc", st, self.engine.now_ns)
        self.host.events.status.clear()

    async def main(self) -> None:
        last_profile = time.monotonic()
        while not self.stop_event.is_set():
            await asyncio.sleep(self.cfg.state_every_s)
            self._last_state = self.engine.market_state()
            if self._last_state:
                self.publish("state.market", "doc", self._last_state, self.engine.now_ns)
            if time.monotonic() - last_profile > 30:
                last_profile = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, self.refresh_profile)

    def periodic(self) -> None:
        counts: dict[str, int] = {}
        for p in self.host.plugins.values():
            counts[p.status] = counts.get(p.status, 0) + 1
        for status in ("active", "disabled"):
            self.plugin_status.set(counts.get(status, 0), status=status)
        self.detail = f"{len(self.host.plugins)} plugins, {self.engine.lifecycle.count()} active setups"

