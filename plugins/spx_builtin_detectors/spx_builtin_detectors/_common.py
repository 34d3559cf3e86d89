"""Shared helpers of the built-in detectors: config, microstructure confirmation, candidate geometry.

**Config.** Each detector declares ``DEFAULTS`` (every key it reads, with its default) and reads
``[detector.plugin_config.<name>]`` through :func:`settings`: unknown keys and values of the wrong
type raise :class:`ConfigError` naming the detector and the key, so a misspelt key is never
silently ignored (the host counts the error and disables the plugin after ``max_failures``, with
the message in ``spx plugins``). The validated map is memoised on the identity of the frozen
config map, so a bar costs one identity check.

**Microstructure.** Every built-in confirms with microstructure when the bar carries it and
degrades gracefully when it is null (:func:`confirm`): a present field must agree with the
direction or pass its quality gate; a null (or non-finite) field is skipped, never treated as
zero, and lowers the confidence by its weight in :data:`MICRO_WEIGHTS` (all four null:
``NO_MICRO_PENALTY`` = 0.2). The evidence says which fields were null
(``microstructure_note``) and ``microstructure`` is false when neither directional field
(aggressor skew, bid/ask imbalance) was there, so users and the backtester can tell a
price-only candidate from a confirmed one.

Nothing here keeps state between bars: a detector is a pure function of its context.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

MICRO_WEIGHTS = {"aggressor_skew": 0.075, "bid_ask_imbalance": 0.075, "quote_coverage_pct": 0.025,
                 "avg_spread_bps": 0.025}
NO_MICRO_PENALTY = sum(MICRO_WEIGHTS.values())

CONFIRM_DEFAULTS = {"min_skew": 0.0, "min_imbalance": -0.2, "min_coverage_pct": 50.0, "max_spread_bps": 25.0}
"""The :func:`confirm` keys every built-in accepts (a detector may override a default)."""

MICRO_EVIDENCE = ("aggressor_skew", "bid_ask_imbalance", "quote_coverage_pct", "avg_spread_bps",
                  "microstructure", "microstructure_note")
"""The evidence keys :func:`confirm` fills."""


class ConfigError(ValueError):
    """A built-in detector's config map has an unknown key or a value of the wrong type."""


_MEMO: dict[str, tuple[Any, Any, dict]] = {}


def settings(ctx, name: str, defaults: Mapping[str, Any]) -> dict:
    """The detector's config: ``defaults`` overlaid with ``ctx.config[name]``, validated once."""
    sub = ctx.config.get(name)
    hit = _MEMO.get(name)
    if hit is not None and hit[0] is sub and hit[1] is defaults:
        return hit[2]
    cfg = validate(name, defaults, sub)
    _MEMO[name] = (sub, defaults, cfg)  # holds ``sub``: its identity cannot be reused while memoised
    return cfg


def validate(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict:
    """``defaults`` overlaid with ``given``; raises :class:`ConfigError` on unknown keys or bad types."""
    out = dict(defaults)
    if given is None:
        return out
    if not isinstance(given, Mapping):
        raise ConfigError(f"[detector.plugin_config.{name}] must be a map, got {type(given).__name__}")
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(f"[detector.plugin_config.{name}] unknown key {key!r}; known keys: "
                              f"{', '.join(sorted(defaults))}")
        default = defaults[key]
        where = f"[detector.plugin_config.{name}] {key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where} must be a whole number >= 1, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            value = float(value)
        elif isinstance(default, tuple):
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings, got {value!r}")
            value = tuple(value)
        out[key] = value
    return out


def num(x: float | None) -> float | None:
    """``x`` when it is a finite number, else None (null and NaN/inf microstructure count as absent)."""
    if x is None or x != x or x in (math.inf, -math.inf):
        return None
    return x


def skew(bar) -> float | None:
    """Aggressor skew (buy - sell) / (buy + sell) in [-1, 1]; None without aggressor volumes."""
    bv, sv = num(bar.buy_volume), num(bar.sell_volume)
    if bv is None or sv is None or bv < 0 or sv < 0 or bv + sv <= 0:
        return None
    return (bv - sv) / (bv + sv)


def confirm(bar, direction: str, cfg: Mapping[str, Any]) -> tuple[bool, float, dict]:
    """(confirmed, confidence penalty, evidence) for ``direction`` on ``bar``.

    Present fields must agree: aggressor skew >= ``min_skew`` and bid/ask imbalance >=
    ``min_imbalance`` (both signed by the direction), quote coverage >= ``min_coverage_pct`` and
    average spread <= ``max_spread_bps``. Null fields are skipped and cost their weight in
    :data:`MICRO_WEIGHTS`.
    """
    sign = 1.0 if direction == "long" else -1.0
    sk, imb = skew(bar), num(bar.bid_ask_imbalance)
    cov, spread = num(bar.quote_coverage_pct), num(bar.avg_spread_bps)
    ok = True
    if sk is not None and sign * sk < cfg["min_skew"]:
        ok = False
    elif imb is not None and sign * imb < cfg["min_imbalance"]:
        ok = False
    elif cov is not None and cov < cfg["min_coverage_pct"]:
        ok = False
    elif spread is not None and spread > cfg["max_spread_bps"]:
        ok = False
    ev = {"aggressor_skew": sk, "bid_ask_imbalance": imb, "quote_coverage_pct": cov, "avg_spread_bps": spread,
          "microstructure": sk is not None or imb is not None}
    missing = [k for k in MICRO_WEIGHTS if ev[k] is None]
    penalty = sum(MICRO_WEIGHTS[k] for k in missing)
    ev["microstructure_note"] = (f"null: {', '.join(missing)} — confidence -{penalty:.3f}" if missing
                                 else "complete")
    return ok, penalty, ev


def candidate(direction: str, entry: tuple[float, float], stop: float, confidence: float, penalty: float,
              evidence: dict, targets: list[float] | None = None) -> list[dict] | None:
    """One candidate with 1R/2R targets from the far edge of the entry zone (unless given).

    None when the geometry is degenerate (stop on the wrong side, zero risk, a target inside the
    zone): a detector never hands the host a candidate the host would refuse.
    """
    lo, hi = min(entry), max(entry)
    if direction == "long":
        risk = hi - stop
        if not risk > 0 or not stop < lo:
            return None
        tg = targets or [hi + risk, hi + 2 * risk]
        if not all(t > hi for t in tg):
            return None
    else:
        risk = stop - lo
        if not risk > 0 or not stop > hi:
            return None
        tg = targets or [lo - risk, lo - 2 * risk]
        if not all(t < lo for t in tg):
            return None
    conf = confidence - penalty
    return [{"direction": direction, "entry_low": lo, "entry_high": hi, "stop": stop, "targets": tg,
             "confidence": round(max(0.05, min(1.0, conf)), 4), "evidence": evidence}]
