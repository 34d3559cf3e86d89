"""The coach's pure event-time core: setup transitions, closed bars, exit advice and broker alerts
in; :class:`~spx_common.models.CoachEvent` lists out.

Only derived tactical events leave the coach:

* ``entry_window_opened``: a setup became ``ready`` (or ``triggered`` without passing ``ready``);
* ``stop_threat``: while triggered, a closed bar ends within ``stop_threat_fraction`` of the risk
  distance from the stop (the stop follows ``move_stop``/``trail_stop`` exit advice);
* ``target1_touched``: the detector reports ``target1_hit`` or a closed bar reaches the first target;
* ``flow_divergence_detected``: ``divergence_bars`` closed bars whose delta volume opposes the setup
  while price has not followed the flow;
* behavioural alerts from the broker's ``alert.<user>`` documents: ``pdt_alert`` (``pdt_*``) and
  ``portfolio_alert`` (buying power, drift, flatten, failed exits).

Coalescing: one alert per (user, setup, kind) per ``cooldown_s`` of event time, so one transition
window yields one alert; everything suppressed is counted. Time only comes from the inputs.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from spx_common.models import (CoachEvent, CoachFeedback, ExitAdvice, MicroBar, SetupTransition, Severity,
                               coach_event_id)

TACTICAL = ("entry_window_opened", "stop_threat", "target1_touched", "flow_divergence_detected")
ACTIVE = {"forming", "ready", "triggered", "target1_hit"}
SEVERITY: dict[str, Severity] = {"entry_window_opened": "info", "stop_threat": "warning", "target1_touched": "info",
            "flow_divergence_detected": "warning"}


@dataclass(slots=True)
class Watched:
    """What the coach remembers of one live setup."""

    setup_id: str
    sym: str
    direction: str
    state: str
    entry_low: float | None
    entry_high: float | None
    stop: float | None
    targets: list[float]
    flow: deque[Any] = field(default_factory=lambda: deque(maxlen=50))

    @property
    def entry(self) -> float | None:
        if self.entry_low is None or self.entry_high is None:
            return self.entry_low if self.entry_high is None else self.entry_high
        return (self.entry_low + self.entry_high) / 2


class CoachCore:
    """See the module docstring. Construct with the ``[coach]`` values; feed inputs in event order."""

    def __init__(self, users: list[str], *, cooldown_s: float = 60.0, stop_threat_fraction: float = 0.25,
                 divergence_bars: int = 3, divergence_min_delta: float = 0.0, max_setups: int = 500,
                 max_users: int = 1000) -> None:
        self.users: OrderedDict[str, None] = OrderedDict((u, None) for u in users)
        self.cooldown_ns = int(cooldown_s * 1e9)
        self.stop_threat_fraction = stop_threat_fraction
        self.divergence_bars = divergence_bars
        self.divergence_min_delta = divergence_min_delta
        self.max_setups = max_setups
        self.max_users = max_users
        self.setups: OrderedDict[str, Watched] = OrderedDict()
        self._last: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self.emitted: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}
        self.market: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers

    def see_user(self, user: str) -> None:
        """A user seen on the broker's topics is coached from now on (bounded, oldest seen dropped)."""
        if user in self.users:
            return
        self.users[user] = None
        while len(self.users) > self.max_users:
            self.users.popitem(last=False)

    def _emit(self, kind: str, ts: int, message: str, setup_id: str | None, users: list[str] | None = None,
              severity: Severity | None = None, **data: Any) -> list[CoachEvent]:
        out = []
        for user in users if users is not None else list(self.users):
            key = (user, setup_id or "", kind)
            last = self._last.get(key)
            if last is not None and ts - last < self.cooldown_ns:
                self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
                continue
            self._last[key] = ts
            self._last.move_to_end(key)
            out.append(CoachEvent(user=user, kind=kind, message=message, ts=ts, setup_id=setup_id,
                                  severity=severity or SEVERITY.get(kind, "info"),
                                  data={k: v for k, v in data.items() if v is not None},
                                  id=coach_event_id(user, kind, ts, setup_id)))
            self.emitted[kind] = self.emitted.get(kind, 0) + 1
        while len(self._last) > 20 * self.max_setups + self.max_users * 16:
            self._last.popitem(last=False)
        return out

    # ------------------------------------------------------------------ inputs

    def on_market(self, doc: dict[str, Any]) -> None:
        """Remember the market-state document (its regime is attached to tactical alerts)."""
        self.market = doc

    def on_transition(self, t: SetupTransition) -> list[CoachEvent]:
        w = self.setups.get(t.setup_id)
        prev = w.state if w else t.from_state
        if t.to_state not in ACTIVE:
            self.setups.pop(t.setup_id, None)
            return []
        if w is None:
            w = self.setups[t.setup_id] = Watched(t.setup_id, t.sym, t.direction, t.to_state, t.entry_low,
                                                  t.entry_high, t.stop, list(t.targets))
            while len(self.setups) > self.max_setups:
                self.setups.popitem(last=False)
        else:
            w.state = t.to_state
            w.entry_low = t.entry_low if t.entry_low is not None else w.entry_low
            w.entry_high = t.entry_high if t.entry_high is not None else w.entry_high
            w.stop = t.stop if t.stop is not None else w.stop
            w.targets = list(t.targets) or w.targets
        regime = self.market.get("regime") if isinstance(self.market.get("regime"), str) else None
        if t.to_state == "ready" or (t.to_state == "triggered" and prev != "ready"):
            zone = (f" {w.entry_low:.2f}-{w.entry_high:.2f}" if w.entry_low is not None and w.entry_high is not None
                    else "")
            return self._emit("entry_window_opened", t.ts,
                              f"{t.family} {t.direction} on {t.sym}: entry window open{zone}, stop "
                              f"{'-' if w.stop is None else f'{w.stop:.2f}'}", t.setup_id,
                              family=t.family, direction=t.direction, sym=t.sym, entry_low=w.entry_low,
                              entry_high=w.entry_high, stop=w.stop, price=t.price, regime=regime,
                              confidence=t.confidence)
        if t.to_state == "target1_hit" and w.targets:
            return self._target(w, t.ts, t.price)
        return []

    def on_exit(self, advice: ExitAdvice) -> list[CoachEvent]:
        """Exit advice moves the stop the coach watches (``move_stop``/``trail_stop``); nothing is forwarded."""
        w = self.setups.get(advice.setup_id)
        if w is not None and advice.action in ("move_stop", "trail_stop") and advice.stop is not None:
            w.stop = advice.stop
        return []

    def on_bar(self, bar: MicroBar) -> list[CoachEvent]:
        """A closed bar: check stop threat, target touch and flow for setups on its symbol."""
        if not bar.closed:
            return []
        out: list[CoachEvent] = []
        for w in [w for w in self.setups.values() if w.sym == bar.sym]:
            long = w.direction == "long"
            if w.state in ("ready", "triggered", "target1_hit") and bar.delta_volume is not None:
                w.flow.append((bar.open, bar.close, bar.delta_volume))
                out += self._divergence(w, bar)
            if w.state not in ("triggered", "target1_hit"):
                continue
            if w.targets and w.state == "triggered" and (bar.high >= w.targets[0] if long else bar.low <= w.targets[0]):
                out += self._target(w, bar.start_ns, bar.close)
            entry = w.entry
            if w.stop is not None and entry is not None:
                risk = abs(entry - w.stop)
                left = (bar.close - w.stop) if long else (w.stop - bar.close)
                if risk > 0 and left <= self.stop_threat_fraction * risk:
                    out += self._emit("stop_threat", bar.start_ns,
                                      f"{w.sym} {bar.close:.2f} is {max(left, 0):.2f} from the {w.stop:.2f} stop "
                                      f"({max(left, 0) / risk:.0%} of risk left)", w.setup_id,
                                      sym=w.sym, price=bar.close, stop=w.stop, risk_left_pct=round(max(left, 0) / risk * 100, 1))
        return out

    def _target(self, w: Watched, ts: int, price: float | None) -> list[CoachEvent]:
        return self._emit("target1_touched", ts, f"{w.sym} touched target 1 at {w.targets[0]:.2f}: consider scaling "
                          "out and moving the stop", w.setup_id, sym=w.sym, target=w.targets[0], price=price)

    def _divergence(self, w: Watched, bar: MicroBar) -> list[CoachEvent]:
        n = self.divergence_bars
        if len(w.flow) < n:
            return []
        recent = list(w.flow)[-n:]
        sign = 1 if w.direction == "long" else -1
        deltas = [d for _, _, d in recent]
        opposed = all(d * sign < 0 for d in deltas)
        total = sum(deltas)
        price_move = (recent[-1][1] - recent[0][0]) * sign  # >= 0: price still going the setup's way
        if not opposed or abs(total) < self.divergence_min_delta or price_move < 0:
            return []
        flow = "selling" if sign > 0 else "buying"
        return self._emit("flow_divergence_detected", bar.start_ns,
                          f"{w.sym}: {n} bars of net {flow} ({total:+.0f} delta) against the {w.direction} setup "
                          "while price has not followed", w.setup_id, sym=w.sym, delta_sum=total, bars=n)

    def on_alert(self, user: str, doc: dict[str, Any]) -> list[CoachEvent]:
        """A broker behavioural alert for ``user`` -> ``pdt_alert`` or ``portfolio_alert`` (raises ValueError when malformed)."""
        kind, message, ts = doc.get("kind"), doc.get("message"), doc.get("ts")
        if not isinstance(kind, str) or not isinstance(message, str) or not isinstance(ts, int) or ts < 0:
            raise ValueError("alert needs string kind and message and integer ts")
        given = doc.get("severity")
        severity: Severity = given if given in ("info", "warning", "critical") else "warning"
        self.see_user(user)
        coach_kind = "pdt_alert" if kind.startswith("pdt") else "portfolio_alert"
        return self._emit(coach_kind, ts, message, None, users=[user], severity=severity, alert=kind)


class FeedbackRates:
    """Acknowledgment and dismiss rates per alert kind over a rolling window (the rollout plan's gate:
    coach alert relevance "measured by acknowledgment rate"). Pure: the caller passes the clock.

    ``sent(kind, event_id, now)`` for every published alert, ``answered(fb, now)`` for every user
    answer; ``rates(now)`` -> ``{kind: {"sent", "acked", "dismissed", "ack_rate", "dismiss_rate"}}``
    over the alerts sent in the last ``window_s`` (an answer counts for the alert it answers, once).
    Bounded: at most ``max_events`` alerts are remembered."""

    def __init__(self, window_s: float = 3600.0, max_events: int = 100_000) -> None:
        self.window_s = window_s
        self.max_events = max_events
        self._sent: OrderedDict[str, tuple[str, float]] = OrderedDict()  # event id -> (kind, when)
        self._answer: dict[str, str] = {}  # event id -> action

    def sent(self, kind: str, event_id: str, now: float) -> None:
        if not event_id:
            return
        self._sent[event_id] = (kind, now)
        self._sent.move_to_end(event_id)
        while len(self._sent) > self.max_events:
            old, _ = self._sent.popitem(last=False)
            self._answer.pop(old, None)

    def answered(self, fb: CoachFeedback, now: float) -> bool:
        """Count an answer to an alert we sent (first answer only); False when unknown or repeated."""
        if fb.event_id not in self._sent or fb.event_id in self._answer:
            return False
        self._answer[fb.event_id] = fb.action
        return True

    def rates(self, now: float) -> dict[str, dict[str, Any]]:
        while self._sent:
            eid, (_, when) = next(iter(self._sent.items()))
            if now - when <= self.window_s:
                break
            self._sent.popitem(last=False)
            self._answer.pop(eid, None)
        out: dict[str, dict[str, Any]] = {}
        for eid, (kind, _) in self._sent.items():
            r = out.setdefault(kind, {"sent": 0, "acked": 0, "dismissed": 0})
            r["sent"] += 1
            a = self._answer.get(eid)
            if a == "ack":
                r["acked"] += 1
            elif a == "dismiss":
                r["dismissed"] += 1
        for r in out.values():
            r["ack_rate"] = round(r["acked"] / r["sent"], 4)
            r["dismiss_rate"] = round(r["dismissed"] / r["sent"], 4)
        return out

