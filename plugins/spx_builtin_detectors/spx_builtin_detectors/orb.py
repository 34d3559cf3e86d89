"""Opening-range breakout: a close out of the completed opening range.

With the opening range ``[lo, hi]`` complete (``ctx.state["opening_range"]``) and at least
``after_min`` minutes since the open:

* long when the previous close was at or below ``hi`` and this bar closes above it;
* short when the previous close was at or above ``lo`` and this bar closes below it.

Each crossing from inside the range fires once (the next bar's previous close is already
outside). Entry zone: the broken edge to the close; stop: the range midpoint; targets 1R and 2R
from the close. Microstructure confirmation on the breakout bar (``_common.confirm``: buyers must
lead a long, sellers a short, the book must not lean hard against it, quotes must be there and
tight); without microstructure the breakout still fires with lower confidence. Config
(``[detector.plugin_config.orb]``): ``after_min`` (15), ``confidence`` (0.6) and the confirm keys
``min_skew`` (0.0), ``min_imbalance`` (-0.2), ``min_coverage_pct`` (50), ``max_spread_bps`` (25).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, candidate, confirm, settings

NAME = "orb"
DEFAULTS = {"after_min": 15.0, "confidence": 0.6, **CONFIRM_DEFAULTS}
EVIDENCE = ("or_high", "or_low", "or_width") + MICRO_EVIDENCE


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "orb", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "opening_range", "microstructure"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)  # first, so a bad config fails on the first bar
    orng = ctx.state.get("opening_range")
    if not orng or not orng.get("complete") or len(ctx.bars) < 2:
        return None
    hi, lo = orng.get("high"), orng.get("low")
    if hi is None or lo is None or not hi > lo:
        return None
    prev = ctx.bars[-2].close
    close = bar.close
    if prev <= hi < close:
        direction, zone = "long", (hi, close)
    elif prev >= lo > close:
        direction, zone = "short", (close, lo)
    else:
        return None
    if ctx.minutes_since_open < cfg["after_min"]:
        return None
    ok, penalty, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"or_high": hi, "or_low": lo, "or_width": hi - lo})
    return candidate(direction, zone, (hi + lo) / 2, cfg["confidence"], penalty, ev)
