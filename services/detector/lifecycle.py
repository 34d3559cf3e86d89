"""The setup lifecycle (the fast evaluator): a pure, event-time state machine.

States: ``forming -> ready -> triggered -> target1_hit -> target2_hit``, or the terminal
``invalidated`` (stop breached before the trigger), ``stopped`` (stop breached after it) and
``expired`` (not triggered within ``ttl``, or still open at the session close: 16:00 ET, 13:00 on
early closes, ``spx_common/calendar.py``; a setup never carries into the next session, so it can never
be "stopped" by tomorrow's prices). Transitions only move forward (each state has a
rank), are emitted once, and the trigger is debounced: price must stay beyond the trigger for
``confirm_ticks`` consecutive ticks *and* ``confirm_ns`` of event time, so prices jittering
around the trigger produce exactly one ``triggered``.

Evaluated on every tick, but only against the active setups of that symbol (a dict lookup),
never a full recompute.
"""

from __future__ import annotations

from typing import Any
import hashlib
from dataclasses import dataclass, field

from spx_common import calendar
from spx_common.models import SetupCandidate, SetupState, SetupTransition


def geometry_ok(c: SetupCandidate) -> bool:
    """A candidate's levels make a trade: entry zone ordered, the stop beyond it on the losing side and every
    target beyond it on the winning side. The host refuses a plugin's candidate that fails it; the engine
    refuses a setup restored from the store that fails it."""
    if not (c.entry_low <= c.entry_high):
        return False
    if c.direction == "long":
        return c.stop < c.entry_low and all(t > c.entry_high for t in c.targets)
    return c.stop > c.entry_high and all(t < c.entry_low for t in c.targets)


RANK = {"forming": 0, "ready": 1, "triggered": 2, "target1_hit": 3, "target2_hit": 4,
        "invalidated": 5, "stopped": 5, "expired": 5}
TERMINAL = {"target2_hit", "invalidated", "stopped", "expired"}


@dataclass
class Setup:
    id: str
    cand: SetupCandidate
    state: SetupState = "forming"
    created_ns: int = 0
    beyond_since_ns: int | None = None
    beyond_ticks: int = 0
    micro: dict[str, Any] = field(default_factory=dict)
    macro_score: float | None = None
    close_ns: int = 0  # the close of the session it was created in (0: computed when it is added)

    @property
    def long(self) -> bool:
        return self.cand.direction == "long"

    @property
    def trigger(self) -> float:
        return self.cand.entry_high if self.long else self.cand.entry_low


def session_close_ns(ts_ns: int) -> int:
    """The first session close after ``ts_ns`` (16:00 ET, 13:00 on an early close): the close of its own
    session, or for a setup formed after the close, on a weekend or a holiday (extended hours), the next
    session's. A setup never expires at a time before it formed."""
    s = calendar.session_at(ts_ns)
    if s is not None and ts_ns < s.close_ns:
        return s.close_ns
    nxt = calendar.session(calendar.DEFAULT.next_trading_day(calendar.et_date(ts_ns)))
    assert nxt is not None  # next_trading_day returns a trading day
    return nxt.close_ns


def close_reason(close_ns: int) -> str:
    s = calendar.session_at(close_ns - 1)
    return "session close (13:00 ET early close)" if s is not None and s.early else "session close (16:00 ET)"


def setup_id(c: SetupCandidate) -> str:
    raw = f"{c.detector}|{c.sym}|{c.direction}|{c.ts}|{c.entry_low}|{c.entry_high}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class Lifecycle:
    """Active setups per symbol and their transitions. ``max_active`` bounds memory."""

    def __init__(self, *, confirm_ticks: int = 3, confirm_ns: int = 500_000_000, ttl_ns: int = 30 * 60 * 10**9,
                 max_active: int = 200) -> None:
        self.confirm_ticks = confirm_ticks
        self.confirm_ns = confirm_ns
        self.ttl_ns = ttl_ns
        self.max_active = max_active
        self.active: dict[str, dict[str, Setup]] = {}
        self.duplicates = 0
        self.refused_full = 0
        self.last_price: dict[str, float] = {}  # newest price per symbol (the price of a session-end expiry)

    def count(self) -> int:
        return sum(len(v) for v in self.active.values())

    def add(self, cand: SetupCandidate, micro: dict[str, Any], macro_score: float | None) -> SetupTransition | None:
        """Open a setup from a candidate; None when it duplicates an active one (counted)."""
        syms = self.active.setdefault(cand.sym, {})
        for s in syms.values():
            if s.cand.detector == cand.detector and s.cand.direction == cand.direction:
                self.duplicates += 1
                return None
        if self.count() >= self.max_active:
            self.refused_full += 1
            return None
        s = Setup(setup_id(cand), cand, created_ns=cand.ts, micro=dict(micro), macro_score=macro_score,
                  close_ns=session_close_ns(cand.ts))
        syms[s.id] = s
        return self._tr(s, None, "forming", "candidate accepted", cand.ts, None)

    def restore(self, s: Setup) -> None:
        if not s.close_ns:
            s.close_ns = session_close_ns(s.created_ns)
        self.active.setdefault(s.cand.sym, {})[s.id] = s

    def session_end(self, now_ns: int) -> list[SetupTransition]:
        """Resolve every setup still forming, ready, triggered or at target 1 whose session closed at
        ``now_ns`` (event time): ``expired`` at the close (its time is the close), with the session-close
        reason, at the symbol's last price."""
        out: list[SetupTransition] = []
        for sym, syms in self.active.items():
            for s in list(syms.values()):
                if s.close_ns and now_ns >= s.close_ns:
                    out.append(self._tr(s, s.state, "expired", close_reason(s.close_ns), s.close_ns,
                                        self.last_price.get(sym)))
                    del syms[s.id]
        return out

    def on_price(self, sym: str, price: float, ts: int, micro: dict[str, Any] | None = None) -> list[SetupTransition]:
        before = self.last_price.get(sym)
        self.last_price[sym] = price
        syms = self.active.get(sym)
        if not syms:
            return []
        out: list[SetupTransition] = []
        for s in list(syms.values()):
            if s.close_ns and ts >= s.close_ns:  # a price after the close: the session ended first
                out.append(self._tr(s, s.state, "expired", close_reason(s.close_ns), s.close_ns, before))
                del syms[s.id]
                continue
            out.extend(self._step(s, price, ts, micro))
            if s.state in TERMINAL:
                del syms[s.id]
        return out

    def _step(self, s: Setup, p: float, ts: int, micro: dict[str, Any] | None) -> list[SetupTransition]:
        c, out = s.cand, []
        t1 = c.targets[0] if c.targets else None
        t2 = c.targets[1] if len(c.targets) > 1 else None
        stop_hit = p <= c.stop if s.long else p >= c.stop
        if RANK[s.state] < RANK["triggered"]:
            if stop_hit:
                return [self._tr(s, s.state, "invalidated", "stop breached before trigger", ts, p)]
            if ts - s.created_ns > self.ttl_ns:
                return [self._tr(s, s.state, "expired", "not triggered within ttl", ts, p)]
            in_zone = c.entry_low <= p <= c.entry_high
            if s.state == "forming" and in_zone:
                out.append(self._tr(s, "forming", "ready", "price in entry zone", ts, p))
            beyond = p > s.trigger if s.long else p < s.trigger
            if beyond:
                if s.beyond_since_ns is None:
                    s.beyond_since_ns, s.beyond_ticks = ts, 0
                s.beyond_ticks += 1
                if s.beyond_ticks >= self.confirm_ticks and ts - s.beyond_since_ns >= self.confirm_ns:
                    if micro:
                        s.micro = dict(micro)
                    out.append(self._tr(s, s.state, "triggered",
                                        f"price beyond {s.trigger:.2f} for {s.beyond_ticks} ticks", ts, p))
            else:
                s.beyond_since_ns, s.beyond_ticks = None, 0
            return out
        if stop_hit:
            return [self._tr(s, s.state, "stopped", "stop breached", ts, p)]
        if s.state == "triggered" and t1 is not None and (p >= t1 if s.long else p <= t1):
            out.append(self._tr(s, "triggered", "target1_hit", "target 1 reached", ts, p))
        if s.state == "target1_hit" and t2 is not None and (p >= t2 if s.long else p <= t2):
            out.append(self._tr(s, "target1_hit", "target2_hit", "target 2 reached", ts, p))
        return out

    def _tr(self, s: Setup, frm: SetupState | None, to: SetupState, reason: str, ts: int,
            price: float | None) -> SetupTransition:
        s.state = to
        c = s.cand
        return SetupTransition(
            setup_id=s.id, detector=c.detector, family=c.family, sym=c.sym, direction=c.direction, from_state=frm,
            to_state=to, reason=reason, ts=ts, price=price, entry_low=c.entry_low, entry_high=c.entry_high,
            stop=c.stop, targets=list(c.targets), microstructure=dict(s.micro), macro_alignment_score=s.macro_score,
            confidence=c.confidence,
        )
