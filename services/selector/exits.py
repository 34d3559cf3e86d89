"""Exit advisor: deterministic 1R/2R mechanics on underlying prices, pure and event-time driven.

One :class:`ExitPlan` per triggered setup. Feed it closed bars of the *price* interval
(:meth:`on_price_bar`, high/low checked against stop and targets) and closed bars of the *pivot*
interval (:meth:`on_pivot_bar`); each returns the :class:`~spx_common.models.ExitAdvice` events
due. The same class is what the backtester calls offline -- no I/O, no wall clock.

Mechanics (long; mirrored for short), with R = |entry - stop|:

* target 1 (first target, else entry + 1R): scale out ``scale1_fraction``, stop to breakeven;
* target 2 (second target, else entry + 2R): scale out ``scale2_fraction`` of the rest, runner trails;
* runner: each newly confirmed swing low (``pivot_left`` higher lows before, ``pivot_right`` after)
  above the current stop raises the stop to ``pivot - trail_buffer`` (``trailing_stop_path`` records
  every level);
* stop touched (bar low <= stop): ``exit_all``. A bar touching both the stop and a target counts
  the stop first (conservative).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from spx_common.errors import Refused
from spx_common.models import ExitAction, ExitAdvice


@dataclass(frozen=True, slots=True)
class ExitRules:
    """Exit knobs (see :class:`services.selector.config.SelectorConfig`)."""

    scale1_fraction: float = 0.5
    scale2_fraction: float = 0.5
    pivot_left: int = 2
    pivot_right: int = 2
    trail_buffer: float = 0.5


class ExitPlanError(Refused, ValueError):
    """A setup whose exits cannot be planned (stop on the wrong side, non-finite prices)."""


@dataclass
class ExitPlan:
    """The exit state machine of one setup (see module docstring)."""

    setup_id: str
    direction: str
    entry: float
    stop: float
    targets: list[float] = field(default_factory=list)
    rules: ExitRules = field(default_factory=ExitRules)

    def __post_init__(self) -> None:
        if self.direction not in ("long", "short"):
            raise ExitPlanError(f"direction {self.direction!r} is not long/short")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (self.entry, self.stop, *self.targets)):
            raise ExitPlanError("entry, stop and targets must be finite numbers")
        self.sign = 1.0 if self.direction == "long" else -1.0
        self.r = (self.entry - self.stop) * self.sign
        if self.r <= 0:
            raise ExitPlanError(f"stop_wrong_side: {self.direction} entry {self.entry} needs its stop "
                                f"{'below' if self.sign > 0 else 'above'} it (stop {self.stop})")
        good = [t for t in self.targets if (t - self.entry) * self.sign > 0]
        self.t1 = good[0] if good else self.entry + self.sign * self.r
        self.t2 = good[1] if len(good) > 1 else self.entry + self.sign * 2 * self.r
        if (self.t2 - self.t1) * self.sign <= 0:
            self.t2 = self.t1 + self.sign * self.r
        self.initial_stop = self.stop
        self.stage = 0  # 0 open, 1 after target 1, 2 runner after target 2, 3 closed
        self.trailing_stop_path: list[float] = [self.stop]
        n = self.rules.pivot_left + self.rules.pivot_right + 1
        self._window: deque[tuple[float, float]] = deque(maxlen=n)
        self.last_pivot: float | None = None

    @property
    def closed(self) -> bool:
        return self.stage >= 3

    def _advice(self, action: ExitAction, reason: str, ts: int, price: float, **kw: Any) -> ExitAdvice:
        r_mult = round((price - self.entry) * self.sign / self.r, 3)
        return ExitAdvice(setup_id=self.setup_id, action=action, reason=reason, ts=ts, price=price,
                          r_multiple=kw.pop("r_multiple", r_mult), trailing_stop_path=list(self.trailing_stop_path),
                          **kw)

    def _beyond(self, price: float, level: float) -> bool:
        """``price`` has reached ``level`` in the trade's favour."""
        return (price - level) * self.sign >= 0

    def on_price_bar(self, high: float, low: float, ts: int) -> list[ExitAdvice]:
        """Check one closed price bar (its extremes) against stop and targets."""
        if self.closed or not (math.isfinite(high) and math.isfinite(low)) or high < low:
            return []
        adverse, favourable = (low, high) if self.sign > 0 else (high, low)
        if (adverse - self.stop) * self.sign <= 0:
            kind = ("initial stop" if self.stage == 0 else "breakeven stop" if self.stage == 1 else "trailing stop")
            self.stage = 3
            return [self._advice("exit_all", f"{kind} {self.stop} touched", ts, self.stop)]
        out: list[ExitAdvice] = []
        if self.stage == 0 and self._beyond(favourable, self.t1):
            self.stage = 1
            out.append(self._advice("scale_out", f"target 1 ({self.t1}) reached: scale out "
                                    f"{self.rules.scale1_fraction:.0%}", ts, self.t1,
                                    fraction=self.rules.scale1_fraction, r_multiple=1.0))
            self.stop = self.entry
            self.trailing_stop_path.append(self.stop)
            out.append(self._advice("move_stop", f"stop to breakeven {self.entry} after target 1", ts, self.t1,
                                    stop=self.stop, r_multiple=1.0))
        if self.stage == 1 and self._beyond(favourable, self.t2):
            self.stage = 2
            out.append(self._advice("scale_out", f"target 2 ({self.t2}) reached: scale out "
                                    f"{self.rules.scale2_fraction:.0%} of the rest, runner trails pivots", ts, self.t2,
                                    fraction=self.rules.scale2_fraction, r_multiple=2.0))
        return out

    def on_pivot_bar(self, high: float, low: float, ts: int) -> list[ExitAdvice]:
        """Feed one closed bar of the pivot interval; trail the runner under a newly confirmed pivot."""
        if self.closed or not (math.isfinite(high) and math.isfinite(low)) or high < low:
            return []
        self._window.append((high, low))
        L, R = self.rules.pivot_left, self.rules.pivot_right
        if len(self._window) < L + R + 1:
            return []
        w = list(self._window)
        if self.sign > 0:
            p = w[L][1]
            confirmed = all(b[1] > p for b in w[:L]) and all(b[1] > p for b in w[L + 1:])
        else:
            p = w[L][0]
            confirmed = all(b[0] < p for b in w[:L]) and all(b[0] < p for b in w[L + 1:])
        if not confirmed:
            return []
        self.last_pivot = p
        if self.stage != 2:
            return []
        level = p - self.sign * self.rules.trail_buffer
        if (level - self.stop) * self.sign <= 0:
            return []
        self.stop = level
        self.trailing_stop_path.append(level)
        kind = "swing low" if self.sign > 0 else "swing high"
        return [self._advice("trail_stop", f"runner stop to {level} under confirmed {kind} {p}", ts, p, stop=level)]


def run_path(plan: ExitPlan, bars: list[tuple[int, float, float]], pivot_every: int = 1) -> list[ExitAdvice]:
    """Offline helper for backtests and tests: ``(ts, high, low)`` price bars; every ``pivot_every``
    of them are merged into one pivot-interval bar (1 = the same series)."""
    out: list[ExitAdvice] = []
    agg_hi, agg_lo = -math.inf, math.inf
    for i, (ts, hi, lo) in enumerate(bars):
        out += plan.on_price_bar(hi, lo, ts)
        agg_hi, agg_lo = max(agg_hi, hi), min(agg_lo, lo)
        if (i + 1) % pivot_every == 0:
            out += plan.on_pivot_bar(agg_hi, agg_lo, ts)
            agg_hi, agg_lo = -math.inf, math.inf
    return out
