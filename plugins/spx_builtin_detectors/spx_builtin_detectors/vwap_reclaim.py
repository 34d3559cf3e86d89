"""VWAP reclaim / reject: a close back across session VWAP after a run on the other side.

With ``v = ctx.state["vwap"]`` (session VWAP including this bar):

* **reclaim** (long): the previous ``min_bars`` closes were all below ``v`` and this bar closes
  above it;
* **reject** (short): the previous ``min_bars`` closes were all above ``v`` and this bar closes
  below it.

The run is only scanned on the bar that crosses (the previous close on the other side of VWAP
and this one across it), so the cost is O(1) on every other bar. Entry zone: VWAP to the close;
stop: beyond the run's extreme (lowest low for a reclaim, highest high for a reject) by
``tol_bps``; targets 1R and 2R. Microstructure confirmation on the crossing bar
(``_common.confirm``; here the bid/ask imbalance must not lean against the move at all:
``min_imbalance`` defaults to 0.0), degraded confidence without it. Evidence ``pattern`` says
``reclaim`` or ``reject``. Config (``[detector.plugin_config.vwap_reclaim]``): ``min_bars`` (20),
``tol_bps`` (1.0), ``confidence`` (0.55), ``min_skew`` (0.0), ``min_imbalance`` (0.0),
``min_coverage_pct`` (50), ``max_spread_bps`` (25).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, candidate, confirm, settings

NAME = "vwap_reclaim"
DEFAULTS = {"min_bars": 20, "tol_bps": 1.0, "confidence": 0.55, **CONFIRM_DEFAULTS, "min_imbalance": 0.0}
EVIDENCE = ("pattern", "vwap", "run_bars", "run_extreme") + MICRO_EVIDENCE


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "vwap", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "vwap", "microstructure"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)
    vwap = ctx.state.get("vwap")
    bars = ctx.bars
    n = cfg["min_bars"]
    if vwap is None or len(bars) < n + 1:
        return None
    prev, close = bars[-2].close, bar.close
    if prev < vwap < close:
        direction = "long"
    elif prev > vwap > close:
        direction = "short"
    else:
        return None
    run = bars[-n - 1:-1]
    if direction == "long":
        if not all(b.close < vwap for b in run):
            return None
        extreme = min(b.low for b in run)
        stop = extreme - extreme * cfg["tol_bps"] / 1e4
        zone = (vwap, close)
    else:
        if not all(b.close > vwap for b in run):
            return None
        extreme = max(b.high for b in run)
        stop = extreme + extreme * cfg["tol_bps"] / 1e4
        zone = (close, vwap)
    ok, penalty, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"pattern": "reclaim" if direction == "long" else "reject", "vwap": vwap, "run_bars": n,
               "run_extreme": extreme})
    return candidate(direction, zone, stop, cfg["confidence"], penalty, ev)
