"""ORB + pullback: after an opening-range breakout, a pullback that holds the broken edge and
resumes — a second, lower-risk entry than the breakout itself.

Long, with the opening range ``[lo, hi]`` complete and ``tol = hi * tol_bps / 10^4``:

* the breakout happened and price came back from it: the session high is above
  ``hi + breakout_frac x (hi - lo)`` and above the highs of this bar and the previous one;
* the pullback reached the edge: the low of this bar or the previous one is at or below
  ``hi + tol``, and it held: neither closed below ``hi - tol``;
* the resumption: this bar closes above the previous bar's high and above ``hi + tol``.

Short mirrored at ``lo`` (session low below ``lo - breakout_frac x width``, a rally back to
``lo - tol`` that does not close above ``lo + tol``, a close below the previous bar's low).
Every such pullback fires (a later one too, while the session extreme stands); the lifecycle
deduplicates overlapping setups. Entry zone ``[hi, close]`` (``[close, lo]`` short); stop beyond
the pullback extreme by ``tol`` and never closer than a quarter of the range beyond the edge;
targets 1R and 2R. Microstructure confirmation on the resumption bar (``_common.confirm``),
degraded confidence without it. Family ``orb_pullback`` (gated and quarantined separately from
the plain breakout). Config (``[detector.plugin_config.orb_pullback]``): ``breakout_frac``
(0.25), ``tol_bps`` (2.0), ``confidence`` (0.6) and the confirm keys ``min_skew`` (0.0),
``min_imbalance`` (-0.2), ``min_coverage_pct`` (50), ``max_spread_bps`` (25).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, candidate, confirm, settings

NAME = "orb_pullback"
DEFAULTS = {"breakout_frac": 0.25, "tol_bps": 2.0, "confidence": 0.6, **CONFIRM_DEFAULTS}
EVIDENCE = ("or_high", "or_low", "session_extreme", "pullback_extreme") + MICRO_EVIDENCE


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "orb_pullback", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "opening_range", "session high/low", "microstructure"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)
    st = ctx.state
    orng = st.get("opening_range")
    if not orng or not orng.get("complete") or len(ctx.bars) < 3:
        return None
    hi, lo = orng.get("high"), orng.get("low")
    if hi is None or lo is None or not hi > lo:
        return None
    width = hi - lo
    prev = ctx.bars[-2]
    frac, tol_bps = cfg["breakout_frac"], cfg["tol_bps"] / 1e4
    shigh, slow = st.get("high"), st.get("low")
    direction = None
    tol = hi * tol_bps
    if shigh is not None and shigh > hi + frac * width and shigh > max(bar.high, prev.high):
        pull = min(bar.low, prev.low)
        if (pull <= hi + tol and bar.close >= hi - tol and prev.close >= hi - tol
                and bar.close > prev.high and bar.close > hi + tol):
            direction, zone, ext = "long", (hi, bar.close), shigh
            stop = min(pull - tol, hi - width / 4)
    if direction is None and slow is not None and slow < lo - frac * width and slow < min(bar.low, prev.low):
        tol = lo * tol_bps
        pull = max(bar.high, prev.high)
        if (pull >= lo - tol and bar.close <= lo + tol and prev.close <= lo + tol
                and bar.close < prev.low and bar.close < lo - tol):
            direction, zone, ext = "short", (bar.close, lo), slow
            stop = max(pull + tol, lo + width / 4)
    if direction is None:
        return None
    ok, penalty, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"or_high": hi, "or_low": lo, "session_extreme": ext, "pullback_extreme": pull})
    return candidate(direction, zone, stop, cfg["confidence"], penalty, ev)
