"""ORB + pullback: after an opening-range breakout, the first pullback that holds the broken edge
and resumes — a second, lower-risk entry than the breakout itself.

Long, with the opening range ``[lo, hi]`` complete and ``tol = hi * tol_bps / 10^4``:

* the breakout happened and price came back from it: the session high is above
  ``hi + breakout_frac x (hi - lo)`` and above the highs of this bar and the previous one;
* the pullback reached the edge: the low of this bar or the previous one is at or below
  ``hi + tol``, and it held: neither closed below ``hi - tol``;
* the resumption: this bar closes above the previous bar's high and above ``hi + tol``.

Short mirrored at ``lo``. Entry zone ``[hi, close]``; stop below the pullback low by ``tol`` and
never less than a quarter of the range below ``hi``; targets 1R and 2R (or the session high
for T1 when it lies beyond 1R). Microstructure confirmation on the resumption bar
(``_common.confirm``), degraded confidence without it. Family ``orb_pullback`` (gated and
quarantined separately from the plain breakout). Config: ``breakout_frac`` (0.25), ``tol_bps``
(2.0), ``confidence`` (0.6) and the ``_common.confirm`` keys.
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import candidate, confirm

NAME = "orb_pullback"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "orb_pullback", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "opening_range", "session high/low"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = ctx.config.get(NAME, {})
    st = ctx.state
    orng = st.get("opening_range") or {}
    if not orng.get("complete") or len(ctx.bars) < 3:
        return None
    hi, lo = orng["high"], orng["low"]
    width = hi - lo
    if width <= 0:
        return None
    prev = ctx.bars[-2]
    frac = cfg.get("breakout_frac", 0.25)
    tol_bps = cfg.get("tol_bps", 2.0)
    shigh, slow = st.get("high"), st.get("low")
    direction = None
    tol = hi * tol_bps / 1e4
    if shigh is not None and shigh > hi + frac * width and shigh > max(bar.high, prev.high):
        pull = min(bar.low, prev.low)
        if (pull <= hi + tol and bar.close >= hi - tol and prev.close >= hi - tol
                and bar.close > prev.high and bar.close > hi + tol):
            direction = "long"
            stop = min(pull - tol, hi - width / 4)
            zone = (hi, bar.close)
            ext = shigh
    if direction is None and slow is not None and slow < lo - frac * width and slow < min(bar.low, prev.low):
        tol = lo * tol_bps / 1e4
        pull = max(bar.high, prev.high)
        if (pull >= lo - tol and bar.close <= lo + tol and prev.close <= lo + tol
                and bar.close < prev.low and bar.close < lo - tol):
            direction = "short"
            stop = max(pull + tol, lo + width / 4)
            zone = (bar.close, lo)
            ext = slow
    if direction is None:
        return None
    ok, present, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"or_high": hi, "or_low": lo, "session_extreme": ext, "pullback_extreme": pull})
    return candidate(direction, zone, stop, cfg.get("confidence", 0.6), present, ev)
