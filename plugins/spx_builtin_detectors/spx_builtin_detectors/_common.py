"""Shared helpers of the built-in detectors: microstructure confirmation and candidate geometry.

Every built-in confirms with microstructure when the bar carries it and degrades gracefully when
it is null: the candidate still fires on price alone, with ``confidence`` lowered by
``NO_MICRO_PENALTY`` and ``evidence["microstructure"] = False`` so users and the backtester can
tell the two apart. Nothing here keeps state: a detector is a pure function of its context.
"""

from __future__ import annotations

NO_MICRO_PENALTY = 0.15


def skew(bar) -> float | None:
    """Aggressor skew (buy - sell) / (buy + sell) in [-1, 1]; None without microstructure or flow."""
    bv, sv = bar.buy_volume, bar.sell_volume
    if bv is None or sv is None or bv + sv <= 0:
        return None
    return (bv - sv) / (bv + sv)


def confirm(bar, direction: str, cfg) -> tuple[bool, bool, dict]:
    """(confirmed, microstructure present, evidence) for ``direction`` on ``bar``.

    Present fields must agree with the direction: aggressor skew >= ``min_skew`` (signed),
    bid/ask imbalance >= ``min_imbalance`` (signed), quote coverage >= ``min_coverage_pct`` and
    average spread <= ``max_spread_bps``. Null fields are skipped, never treated as zero.
    """
    sign = 1.0 if direction == "long" else -1.0
    sk, imb = skew(bar), bar.bid_ask_imbalance
    cov, spread = bar.quote_coverage_pct, bar.avg_spread_bps
    ok = True
    if sk is not None and sign * sk < cfg.get("min_skew", 0.0):
        ok = False
    if imb is not None and sign * imb < cfg.get("min_imbalance", -0.2):
        ok = False
    if cov is not None and cov < cfg.get("min_coverage_pct", 50.0):
        ok = False
    if spread is not None and spread > cfg.get("max_spread_bps", 25.0):
        ok = False
    present = sk is not None or imb is not None
    return ok, present, {"aggressor_skew": sk, "bid_ask_imbalance": imb, "quote_coverage_pct": cov,
                         "avg_spread_bps": spread, "microstructure": present}


def candidate(direction: str, entry: tuple[float, float], stop: float, confidence: float, present: bool,
              evidence: dict, targets: list[float] | None = None) -> list[dict] | None:
    """One candidate with 1R/2R targets from the far edge of the entry zone (unless given)."""
    lo, hi = min(entry), max(entry)
    if direction == "long":
        risk = hi - stop
        if risk <= 0 or stop >= lo:
            return None
        tg = targets or [hi + risk, hi + 2 * risk]
        if any(t <= hi for t in tg):
            return None
    else:
        risk = stop - lo
        if risk <= 0 or stop <= hi:
            return None
        tg = targets or [lo - risk, lo - 2 * risk]
        if any(t >= lo for t in tg):
            return None
    conf = confidence if present else confidence - NO_MICRO_PENALTY
    return [{"direction": direction, "entry_low": lo, "entry_high": hi, "stop": stop, "targets": tg,
             "confidence": round(max(0.05, min(1.0, conf)), 4), "evidence": evidence}]
