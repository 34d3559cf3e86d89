"""Backtest statistics: hit rates, expectancy, drawdown, confidence intervals, promotion criteria.

Formulas (docs/backtest.md):

* a *resolved trade* is a triggered setup whose exit plan closed (stop, targets + runner stop) or
  whose session ended (closed at the last price);
* T1 hit rate = trades that reached target 1 / resolved trades; T2 rate likewise;
* expectancy = mean realised R per resolved trade; *net* expectancy subtracts each trade's modelled
  slippage in R (``slippage_usd / risk_usd``: its option fills against the mid at decision over the dollars
  it risked): the expectancy delta and the expected-value floor are judged net;
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


def slippage_r(t: dict) -> float:
    """A trade's modelled slippage and spread cost in R: its fills' slippage against the option mid at decision
    over the dollars it risked to the stop (0 without an option trade or a sized risk)."""
    slip, risk = t.get("slippage_usd"), t.get("risk_usd")
    if slip is None or not risk or not isinstance(risk, (int, float)) or risk <= 0:
        return 0.0
    return float(slip) / float(risk)


def net_r(t: dict) -> float:
    """Realised R less the trade's slippage in R (:func:`slippage_r`): what the expected-value floor judges."""
    return float(t["r"]) - slippage_r(t)


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
    slippage_r: float = 0.0  # mean modelled slippage per trade, in R (0 without option trades)
    expectancy_net_r: float = 0.0  # expectancy less slippage: what the EV floor judges

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("t1_ci", "t2_ci", "expectancy_ci"):
            d[k] = [round(x, 6) for x in d[k]]
        for k in ("sum_r", "expectancy_r", "max_drawdown_r", "t1_rate", "t2_rate", "slippage_r", "expectancy_net_r"):
            d[k] = round(d[k], 6)
        return d


def summarize(trades: list[dict]) -> Summary:
    rs = [t["r"] for t in trades]
    n = len(trades)
    t1 = sum(1 for t in trades if t["t1_hit"])
    t2 = sum(1 for t in trades if t["t2_hit"])
    stops = sum(1 for t in trades if t["r"] < 0)
    slip = _mean([slippage_r(t) for t in trades])
    return Summary(trades=n, t1_hits=t1, t2_hits=t2, stops=stops, sum_r=sum(rs), expectancy_r=_mean(rs),
                   max_drawdown_r=max_drawdown(rs), t1_rate=t1 / n if n else 0.0, t2_rate=t2 / n if n else 0.0,
                   t1_ci=wilson(t1, n), t2_ci=wilson(t2, n), expectancy_ci=bootstrap_mean(rs), slippage_r=slip,
                   expectancy_net_r=_mean(rs) - slip)


def option_summary(trades: list[dict]) -> dict:
    """The option side of ``trades`` (those with ``pnl_usd``): count, dollars, fees and slippage against the
    mid at decision (total, and per contract per fill: the modelled slippage)."""
    opt = [t for t in trades if t.get("pnl_usd") is not None]
    n = len(opt)
    fills = [f for t in opt for f in t.get("fills") or []]
    contracts = sum(float(f["quantity"]) for f in fills)
    slip = sum(float(t.get("slippage_usd") or 0.0) for t in opt)
    pnl = sum(float(t["pnl_usd"]) for t in opt)
    return {"trades": n, "pnl_usd": round(pnl, 2), "expectancy_usd": round(pnl / n, 2) if n else 0.0,
            "fees_usd": round(sum(float(t.get("fees_usd") or 0.0) for t in opt), 2), "slippage_usd": round(slip, 2),
            "slippage_per_contract": round(slip / contracts / 100, 4) if contracts else 0.0,
            "contracts_filled": contracts, "slippage_by_time": _slippage_by(opt, _time_bucket),
            "slippage_by_moneyness": _slippage_by(opt, _moneyness)}


#: time-of-day buckets (New York) of the slippage breakdown: the open, the middle of the day, the close
TIME_BUCKETS = (("09:30-10:30", 10 * 60 + 30), ("10:30-14:30", 14 * 60 + 30), ("14:30-16:00", 24 * 60))


def _time_bucket(t: dict) -> str:
    import datetime as dt
    from zoneinfo import ZoneInfo

    ts = t.get("triggered_ns")
    if not isinstance(ts, int):
        return "unknown"
    d = dt.datetime.fromtimestamp(ts / 1e9, ZoneInfo("America/New_York"))
    minute = d.hour * 60 + d.minute
    return next(name for name, end in TIME_BUCKETS if minute < end)


def _moneyness(t: dict) -> str:
    """By the contract's |delta| at decision: out of (< 0.30), near (0.30-0.50) or in the money (>= 0.50)."""
    d = t.get("option_delta")
    if not isinstance(d, (int, float)):
        return "unknown"
    a = abs(float(d))
    return "|delta| < 0.30" if a < 0.3 else "|delta| 0.30-0.50" if a < 0.5 else "|delta| >= 0.50"


def _slippage_by(trades: list[dict], key) -> dict[str, dict]:
    """Slippage per contract per fill (option price units, as ``paper_slippage``) and the fills, by ``key``."""
    acc: dict[str, list[float]] = {}
    for t in trades:
        q = sum(float(f["quantity"]) for f in t.get("fills") or [])
        a = acc.setdefault(key(t), [0.0, 0.0, 0])
        a[0] += float(t.get("slippage_usd") or 0.0)
        a[1] += q
        a[2] += len(t.get("fills") or [])
    return {k: {"per_contract": round(v[0] / v[1] / 100, 4) if v[1] else 0.0, "fills": int(v[2])}
            for k, v in sorted(acc.items())}


@dataclass(frozen=True)
class Criteria:
    """The promotion rule's thresholds (docs/backtest.md, "Promotion")."""

    min_t1_delta_pp: float = 1.0  # the T1-rate delta's 95% lower bound must reach this
    min_expectancy_delta_r: float = 0.05  # the expectancy delta's 95% lower bound must reach this
    min_trades: int = 30
    min_throughput_share: float = 0.8  # trades per day at least this share of the baseline's
    min_expectancy_delta_usd: float = 0.0  # with option P&L in dollars on both sides (pnl_usd)
    target_t1_rate: float = 0.64  # the seeds' absolute floors: shown as targets, not gating
    target_expectancy_r: float = 0.50


def compare(current: list[dict], baseline: list[dict], criteria: Criteria, *, fallback: bool,
            days: int | None = None, baseline_days: int | None = None) -> dict:
    """Confidence-aware promotion: each delta's 95% interval and the decision with its reasons.

    Promote only when, at once: no minute-bar fallback; at least ``min_trades`` resolved trades; the
    lower bound of the T1-rate delta's interval (Newcombe) reaches ``min_t1_delta_pp``; the lower
    bound of the expectancy delta's interval (bootstrap) reaches ``min_expectancy_delta_r``; the
    same for dollars when every trade on both sides carries ``pnl_usd``; and trades per day are at
    least ``min_throughput_share`` of the baseline's (when both day counts are known). An interval
    that straddles its threshold is not a promotion, whatever the point delta says."""
    a, b = summarize(current), summarize(baseline)
    t1_delta = (a.t1_rate - b.t1_rate) * 100
    lo, hi = newcombe(a.t1_hits, a.trades, b.t1_hits, b.trades)
    # expectancy judged net of each trade's modelled slippage (slippage_r): the EV floor accounts for it
    e_lo, e_hi = bootstrap_diff([net_r(t) for t in current], [net_r(t) for t in baseline])
    checks: list[dict] = []
    refusals = []

    def check(name: str, ok: bool, value, rule: str, interval=None, refusal: str = "") -> None:
        checks.append({"criterion": name, "value": value, "interval": interval, "rule": rule, "pass": bool(ok)})
        if not ok:
            refusals.append(refusal)

    check("data", not fallback, "minute-bar fallback" if fallback else "second bars or ticks",
          "no day on vendor minute bars",
          refusal="data fell back to vendor minute bars for at least one day (second bars or ticks required)")
    check("sample", a.trades >= criteria.min_trades, a.trades, f">= {criteria.min_trades} resolved trades",
          refusal=f"sample {a.trades} resolved trades < minimum {criteria.min_trades}")
    check("T1 hit rate delta", lo * 100 >= criteria.min_t1_delta_pp, round(t1_delta, 6),
          f"95% lower bound >= +{criteria.min_t1_delta_pp:.2f} pp", [round(lo * 100, 6), round(hi * 100, 6)],
          f"T1 delta {t1_delta:+.2f} pp, 95% interval [{lo * 100:+.2f}, {hi * 100:+.2f}] pp: lower bound < "
          f"+{criteria.min_t1_delta_pp:.2f} pp")
    e_delta = a.expectancy_net_r - b.expectancy_net_r
    check("expectancy delta (R)", e_lo >= criteria.min_expectancy_delta_r, round(e_delta, 6),
          f"95% lower bound >= +{criteria.min_expectancy_delta_r:.3f} R, net of slippage "
          f"({a.slippage_r:.3f} R vs the baseline's {b.slippage_r:.3f} R per trade)", [round(e_lo, 6), round(e_hi, 6)],
          f"expectancy delta {e_delta:+.3f} R, 95% interval [{e_lo:+.3f}, {e_hi:+.3f}] R: lower bound < "
          f"+{criteria.min_expectancy_delta_r:.3f} R")
    usd = None
    if current and baseline and all(t.get("pnl_usd") is not None for t in current + baseline):
        xs, ys = [float(t["pnl_usd"]) for t in current], [float(t["pnl_usd"]) for t in baseline]
        d_lo, d_hi = bootstrap_diff(xs, ys)
        usd = round(_mean(xs) - _mean(ys), 6)
        check("expectancy delta ($)", d_lo >= criteria.min_expectancy_delta_usd, usd,
              f"95% lower bound >= +${criteria.min_expectancy_delta_usd:.2f}", [round(d_lo, 6), round(d_hi, 6)],
              f"dollar expectancy delta {usd:+.2f}, 95% interval [{d_lo:+.2f}, {d_hi:+.2f}]: lower bound < "
              f"+{criteria.min_expectancy_delta_usd:.2f}")
    throughput = None
    if days and baseline_days:
        per, base_per = a.trades / days, b.trades / baseline_days
        throughput = round(per / base_per, 6) if base_per > 0 else None
        check("throughput", base_per == 0 or per >= criteria.min_throughput_share * base_per,
              round(per, 6), f"trades/day >= {criteria.min_throughput_share:.0%} of the baseline's "
              f"({base_per:.2f})", refusal=f"throughput {per:.2f} trades/day < {criteria.min_throughput_share:.0%} "
              f"of the baseline's {base_per:.2f}")
    targets = {"t1_rate": {"value": round(a.t1_rate, 6), "target": criteria.target_t1_rate,
                           "meets": a.t1_rate >= criteria.target_t1_rate},
               # the EV floor is met net of the modelled slippage: gross expectancy >= floor + slippage
               "expectancy_r": {"value": round(a.expectancy_net_r, 6), "gross": round(a.expectancy_r, 6),
                                "slippage_r": round(a.slippage_r, 6), "target": criteria.target_expectancy_r,
                                "floor_gross": round(criteria.target_expectancy_r + a.slippage_r, 6),
                                "meets": a.expectancy_net_r >= criteria.target_expectancy_r}}
    return {"t1_delta_pp": round(t1_delta, 6), "t1_delta_ci_pp": [round(lo * 100, 6), round(hi * 100, 6)],
            "expectancy_delta_r": round(e_delta, 6),
            "expectancy_delta_ci_r": [round(e_lo, 6), round(e_hi, 6)], "expectancy_delta_usd": usd,
            "throughput_share": throughput, "significant": {"t1": lo > 0, "expectancy": e_lo > 0},
            "baseline_trades": b.trades, "criteria": checks, "targets": targets,
            "promote": not refusals, "refusals": refusals}


def promotion_without_baseline(current: list[dict], criteria: Criteria, *, fallback: bool) -> dict:
    a = summarize(current)
    refusals = ["no baseline to compare with (pass --baseline FILE)"]
    if fallback:
        refusals.append("data fell back to vendor minute bars for at least one day (second bars or ticks required)")
    if a.trades < criteria.min_trades:
        refusals.append(f"sample {a.trades} resolved trades < minimum {criteria.min_trades}")
    return {"promote": False, "refusals": refusals}
