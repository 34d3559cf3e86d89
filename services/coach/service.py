"""The coach process: a thin shell around :class:`services.coach.core.CoachCore`.

Consumes ``setup.transition`` and ``state.market`` (detector), closed ``bar.<interval>.*`` (aggregator),
``exit.*`` (selector) and ``alert.<user>``/``position.<user>`` (broker); publishes ``coach.<user>``.
They are handled in event-time order across those four publishers (``aligned``, docs/protocol.md), so the
alerts (their cooldowns run in event time) depend on the data only, never on the replay speed.

The ``tactical_alerts`` rollout switch (docs/rollout.md): when off, tactical alerts are still computed
(cooldowns, setup tracking and counts move on exactly as when on) but withheld from users: counted in
``coach_alerts_withheld_total{kind}`` and kept in a bounded list shown by the ``status`` request.
Behavioural alerts from the broker (``pdt_alert``, ``portfolio_alert``) are risk notices and are
always published.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from services.coach.config import CoachConfig
from services.coach.core import TACTICAL, CoachCore, FeedbackRates
from spx_common import models as m
from spx_common.codec import Frame
from spx_common.config import BusConfig, RuntimeConfig, load
from spx_common.service import BusService
from spx_common.topics import ALERT, BAR, EXIT, FEEDBACK_COACH, POSITION, SETUP_TRANSITION, STATE_MARKET, coach_topic


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def preference_filter(prefs: dict | None, kind: str, severity: str) -> str | None:
    """Why a user's coach preferences hold an event back (``quiet``, ``kind``, ``severity``), or None.

    ``quiet``: only critical events; ``kinds`` (non-empty): only those kinds; ``min_severity``: at least
    that severity. Critical events always pass ``kinds`` (a PDT or flatten alert is never filtered out).
    """
    if not prefs:
        return None
    rank = SEVERITY_RANK.get(severity, 0)
    if prefs.get("quiet") and rank < 2:
        return "quiet"
    kinds = prefs.get("kinds") or []
    if kinds and kind not in kinds and rank < 2:
        return "kind"
    if rank < SEVERITY_RANK.get(prefs.get("min_severity", "info"), 0):
        return "severity"
    return None


class CoachService(BusService):
    """Coach: tactical alerts per user and setup, with cooldowns (never raw ticks)."""

    name = "coach"
    subscriptions: dict[str, list[str]] = {}
    aligned = ("setup.transition", "state.market", "bar.", "exit.", "alert.", "position.")

    def __init__(self, runtime: RuntimeConfig | None = None, bus: BusConfig | None = None, *,
                 instance: str | None = None, config: CoachConfig | None = None) -> None:
        self.config = config or load(CoachConfig)
        self.subscriptions = {
            "detector": [SETUP_TRANSITION, STATE_MARKET],
            "aggregator": [f"bar.{self.config.bar_interval}."],
            "selector": [EXIT],
            "broker": [ALERT, POSITION],
            "gateway": [FEEDBACK_COACH],  # users' ack / dismiss of alerts (issue 28)
            # heartbeats only: a process reporting itself degraded (a full disk) is a critical alert
            "feed": [], "recorder": [],
        }
        super().__init__(runtime, bus, instance=instance)
        c = self.config
        self.coach = CoachCore(c.users, cooldown_s=c.cooldown_s, stop_threat_fraction=c.stop_threat_fraction,
                              divergence_bars=c.divergence_bars, divergence_min_delta=c.divergence_min_delta,
                              max_setups=c.max_setups, max_users=c.max_users)
        reg = self.metrics
        self.m_alerts = reg.counter("coach_alerts_total", "Coach events published, by kind.", ["kind"])
        self.m_suppressed = reg.counter("coach_alerts_coalesced_total", "Alerts suppressed by the cooldown, by kind.", ["kind"])
        self.m_rate = reg.gauge("coach_tactical_alert_rate", "Tactical alerts per minute over the last minute (all users).")
        self.m_bad = reg.counter("coach_bad_input_total", "Inputs refused by the coach (kept running), by topic.", ["topic"])
        self.m_filtered = reg.counter("coach_alerts_filtered_total", "Events held back by the user's coach "
                                      "preferences (quiet, kinds, min_severity), by reason.", ["reason"])
        self.prefs: dict[str, dict] = {}
        self._prefs_at = time.monotonic()
        self.m_withheld = reg.counter("coach_alerts_withheld_total", "Tactical alerts computed but not published "
                                      "because the tactical_alerts switch is off, by kind.", ["kind"])
        self._recent: deque[float] = deque(maxlen=100_000)
        self.tactical = bool(self.flag_store.get("tactical_alerts"))
        self.withheld: deque[dict[str, Any]] = deque(maxlen=100)  # latest withheld alerts (status request)
        self.feedback = FeedbackRates(window_s=c.feedback_window_s)
        self.rates: dict[str, dict[str, Any]] = {}
        self.m_ack = reg.gauge("coach_alert_ack_rate", "Share of alerts sent in the last [coach] feedback_window_s "
                               "that their user acknowledged (op: ack), by kind.", ["kind"])
        self.m_dismiss = reg.gauge("coach_alert_dismiss_rate", "Share of alerts sent in the last "
                                   "[coach] feedback_window_s that their user dismissed as noise, by kind.", ["kind"])
        self.m_answers = reg.counter("coach_alert_answers_total", "User answers to alerts counted, by action.",
                                     ["action"])

    def load_preferences(self) -> None:
        """Each user's coach preferences from the store (``spx users set USER --coach ...``); kept as they
        were when the database cannot be read. Users without a record get everything."""
        try:
            from sqlalchemy import inspect

            from spx_common.store import Store, make_engine
            from spx_common.store.engine import database_url

            url = database_url()
            if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///"):]):
                return
            engine = make_engine(url)
            try:
                if not inspect(engine).has_table("users"):
                    return
                rows = Store(engine).users()
            finally:
                engine.dispose()
        except Exception as exc:  # the database may be down: keep the last preferences
            self._rate_log.warning("prefs", f"coach preferences not refreshed: {exc!r}")
            return
        self.prefs = {r["user"]: r.get("coach") or {} for r in rows if r.get("enabled", True)}

    def setup(self) -> None:
        self.load_preferences()
        core = self.coach
        self.on(SETUP_TRANSITION, lambda f, b: self._publish(core.on_transition(b)))
        self.on(STATE_MARKET, lambda f, b: core.on_market(b))
        self.on(BAR, lambda f, b: self._publish(core.on_bar(b)))
        self.on(EXIT, lambda f, b: self._publish(core.on_exit(b)))
        self.on(ALERT, self._on_alert)
        self.on(POSITION, lambda f, b: core.see_user(f.topic[len(POSITION):]))
        self.on(FEEDBACK_COACH, self._on_feedback)

    def _on_feedback(self, frame: Frame, fb: Any) -> None:
        if self.feedback.answered(fb, time.monotonic()):
            self.m_answers.inc(action=fb.action)

    def _on_alert(self, frame: Frame, doc: dict[str, Any]) -> None:
        user = frame.topic[len(ALERT):]
        try:
            events = self.coach.on_alert(user, doc)
        except ValueError as exc:
            self.m_bad.inc(topic="alert")
            self._rate_log.warning("bad:alert", f"refused alert on {frame.topic}: {exc}")
            return
        self._publish(events)

    def _publish(self, events: list) -> None:
        now = time.monotonic()
        for ev in events:
            if not self.tactical and ev.kind in TACTICAL:
                self.m_withheld.inc(kind=ev.kind)
                self.withheld.append({"user": ev.user, "kind": ev.kind, "setup_id": ev.setup_id, "ts": ev.ts})
                continue
            why = preference_filter(self.prefs.get(ev.user), ev.kind, getattr(ev, "severity", "info"))
            if why is not None:
                self.m_filtered.inc(reason=why)
                continue
            self.publish(coach_topic(ev.user), "coach", ev, ev.ts)
            self.m_alerts.inc(kind=ev.kind)
            self.feedback.sent(ev.kind, ev.id, now)
            if ev.kind in TACTICAL:
                self._recent.append(now)

    def on_flags(self, changed: dict[str, Any]) -> None:
        if "tactical_alerts" in changed:
            self.tactical = bool(changed["tactical_alerts"])

    _degraded: dict[str, str] = {}

    def _watch_health(self) -> None:
        """A critical ``system_degraded`` event to every user when a process says it is degraded (its
        heartbeat state; e.g. it cannot write to a full disk), ``system_recovered`` when it is healthy again."""
        events = []
        ts = time.time_ns()
        for peer in self.core.peers.values():
            hb = peer.heartbeat
            degraded = hb is not None and peer.alive and hb.state == "degraded"
            was = self._degraded.get(peer.service)
            if degraded and was is None and hb is not None:  # degraded implies a heartbeat
                self._degraded = {**self._degraded, peer.service: hb.detail}
                events += [m.CoachEvent(user=u, kind="system_degraded", severity="critical", ts=ts,
                                        message=f"{peer.service} is degraded: {hb.detail}"[:300],
                                        data={"service": peer.service}) for u in self.coach.users]
            elif not degraded and was is not None and hb is not None and hb.state == "running":
                self._degraded = {k: v for k, v in self._degraded.items() if k != peer.service}
                events += [m.CoachEvent(user=u, kind="system_recovered", severity="info", ts=ts,
                                        message=f"{peer.service} is healthy again", data={"service": peer.service})
                           for u in self.coach.users]
        if events:
            self._publish(events)

    def periodic(self) -> None:
        self._watch_health()
        now = time.monotonic()
        if now - self._prefs_at > self.config.prefs_refresh_s:
            self._prefs_at = now
            self.load_preferences()
        while self._recent and now - self._recent[0] > 60:
            self._recent.popleft()
        self.m_rate.set(len(self._recent))
        self.rates = self.feedback.rates(now)
        for kind, r in self.rates.items():
            self.m_ack.set(r["ack_rate"], kind=kind)
            self.m_dismiss.set(r["dismiss_rate"], kind=kind)
        for kind, n in self.coach.suppressed.items():
            delta = n - self.m_suppressed.value(kind=kind)
            if delta > 0:
                self.m_suppressed.inc(delta, kind=kind)

    def status(self) -> dict[str, Any]:
        doc = super().status()
        doc["coach"] = {"users": list(self.coach.users), "active_setups": len(self.coach.setups),
                        "emitted": dict(self.coach.emitted), "coalesced": dict(self.coach.suppressed),
                        "tactical_alerts": self.tactical,
                        "withheld": {k: self.m_withheld.value(kind=k) for k in TACTICAL},
                        "recent_withheld": list(self.withheld)[-10:],
                        "feedback": {"window_s": self.feedback.window_s, "by_kind": self.rates}}
        return doc
