"""Backtest statistics: hit rates, expectancy, drawdown, confidence intervals, promotion criteria.

Formulas (docs/backtest.md):

* a *resolved trade* is a triggered setup whose exit plan closed (stop, targets + runner stop) or
  whose session ended (closed at the last price);
* T1 hit rate = trades that reached target 1 / resolved trades; T2 rate likewise;
* expectancy = mean realised R per resolved trade;
* max drawdown = the largest fall of cumulative R from a running peak, trades in exit order;
* rate intervals: Wilson score 95%; the difference of two rates: Newcombe's hybrid score interval
  (method 10); expectancy and its difference: percentile bootstrap, 2,000 resamples, fixed seed
  (deterministic: the same trades always give the same interval).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z95 = 1.959963984540054
BOOT = 2000
SEED = 20261123


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """95% interval of p1 - p2 (Newcombe 1998, method 10)."""
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def bootstrap_mean(xs: list[float], seed: int = SEED) -> tuple[float, float]:
    if len(xs) < 2:
        return (float(xs[0]), float(xs[0])) if xs else (0.0, 0.0)
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(_mean([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(BOOT))
    return (means[int(0.025 * BOOT)], means[int(0.975 * BOOT) - 1])


def bootstrap_diff(xs: list[float], ys: list[float], seed: int = SEED) -> tuple[float, float]:
    if not xs or not ys:
        return (-math.inf, math.inf)
    rng = random.Random(seed)
    nx, ny = len(xs), len(ys)
    diffs = sorted(_mean([xs[rng.randrange(nx)] for _ in range(nx)]) - _mean([ys[rng.randrange(ny)] for _ in range(ny)])
                   for _ in range(BOOT))
    return (diffs[int(0.025 * BOOT)], diffs[int(0.975 * BOOT) - 1])


def max_drawdown(rs: list[float]) -> float:
    peak = cum = dd = 0.0
    for r in rs:
        cum += r
        peak = max(peak, cum)
        dd = max(dd, peak - cum)
    return dd


@dataclass(frozen=True)
class Summary:
    trades: int
    t1_hits: int
    t2_hits: int
    stops: int
    sum_r: float
    expectancy_r: float
    max_drawdown_r: float
    t1_rate: float
    t2_rate: float
    t1_ci: tuple[float, float]
    t2_ci: tuple[float, float]
    expectancy_ci: tuple[float, float]

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("t1_ci", "t2_ci", "expectancy_ci"):
            d[k] = [round(x, 6) for x in d[k]]
        for k in ("sum_r", "expectancy_r", "max_drawdown_r", "t1_rate", "t2_rate"):
            d[k] = round(d[k], 6)
        return d


def summarize(trades: list[dict]) -> Summary:
    rs = [t["r"] for t in trades]
    n = len(trades)
    t1 = sum(1 for t in trades if t["t1_hit"])
    t2 = sum(1 for t in trades if t["t2_hit"])
    stops = sum(1 for t in trades if t["r"] < 0)
    return Summary(trades=n, t1_hits=t1, t2_hits=t2, stops=stops, sum_r=sum(rs), expectancy_r=_mean(rs),
                   max_drawdown_r=max_drawdown(rs), t1_rate=t1 / n if n else 0.0, t2_rate=t2 / n if n else 0.0,
                   t1_ci=wilson(t1, n), t2_ci=wilson(t2, n), expectancy_ci=bootstrap_mean(rs))


@dataclass(frozen=True)
class Criteria:
    min_t1_delta_pp: float = 1.0
    min_expectancy_delta_r: float = 0.05
    min_trades: int = 30


def compare(current: list[dict], baseline: list[dict], criteria: Criteria, *, fallback: bool) -> dict:
    """Deltas against the baseline with intervals, and the promotion decision with its reasons."""
    a, b = summarize(current), summarize(baseline)
    t1_delta = (a.t1_rate - b.t1_rate) * 100
    lo, hi = newcombe(a.t1_hits, a.trades, b.t1_hits, b.trades)
    e_lo, e_hi = bootstrap_diff([t["r"] for t in current], [t["r"] for t in baseline])
    refusals = []
    if fallback:
        refusals.append("data fell back to vendor minute bars for at least one day (second bars or ticks required)")
    if a.trades < criteria.min_trades:
        refusals.append(f"sample {a.trades} resolved trades < minimum {criteria.min_trades}")
    if t1_delta < criteria.min_t1_delta_pp:
        refusals.append(f"T1 delta {t1_delta:+.2f} pp < +{criteria.min_t1_delta_pp:.2f} pp")
    if a.expectancy_r - b.expectancy_r < criteria.min_expectancy_delta_r:
        refusals.append(f"expectancy delta {a.expectancy_r - b.expectancy_r:+.3f} R < "
                        f"+{criteria.min_expectancy_delta_r:.3f} R")
    return {"t1_delta_pp": round(t1_delta, 6), "t1_delta_ci_pp": [round(lo * 100, 6), round(hi * 100, 6)],
            "expectancy_delta_r": round(a.expectancy_r - b.expectancy_r, 6),
            "expectancy_delta_ci_r": [round(e_lo, 6), round(e_hi, 6)],
            "significant": {"t1": lo > 0, "expectancy": e_lo > 0},
            "baseline_trades": b.trades, "promote": not refusals, "refusals": refusals}


def promotion_without_baseline(current: list[dict], criteria: Criteria, *, fallback: bool) -> dict:
    a = summarize(current)
    refusals = ["no baseline to compare with (pass --baseline FILE)"]
    if fallback:
        refusals.append("data fell back to vendor minute bars for at least one day (second bars or ticks required)")
    if a.trades < criteria.min_trades:
        refusals.append(f"sample {a.trades} resolved trades < minimum {criteria.min_trades}")
    return {"promote": False, "refusals": refusals}
