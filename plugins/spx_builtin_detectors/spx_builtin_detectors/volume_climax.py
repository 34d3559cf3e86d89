"""Volume climax: a volume and range spike at the end of a move that exhausts it — fade it.

With ``b = ctx.state["baseline"]`` (mean volume and range of the previous ``[detector]
baseline_bars`` bars, this one excluded, kept by the host in O(1) per bar) and at least
``min_bars`` of them:

* the bar's volume >= ``volume_mult`` x the mean volume and its range >= ``range_mult`` x the
  mean range (a climax bar);
* selling climax (long, pattern ``selling_climax``): price fell into it — the close ``run`` bars
  back is above this bar's close — and the bar closes in the upper ``1 - close_frac`` of its
  range (buyers absorbed the selling: a long lower wick, the reversal);
* buying climax (short, pattern ``buying_climax``): mirrored.

Entry zone: the close to the bar's midpoint; stop beyond the climax extreme by ``stop_pad`` of
the mean range; targets 1R and 2R. Microstructure confirmation (``_common.confirm``) reads the
book as the *absorption* side: after a selling climax the bid/ask imbalance must not be strongly
negative (``min_imbalance`` -0.2), quotes must be there and tight. ``min_skew`` defaults to -1
(off): the climax bar's own trades are dominated by the side that is exhausting. Index bars
(volume 0) never fire. Config (``[detector.plugin_config.volume_climax]``): ``min_bars`` (30),
``volume_mult`` (4.0), ``range_mult`` (2.0), ``run`` (10), ``close_frac`` (0.5), ``stop_pad``
(0.25), ``confidence`` (0.5), ``min_skew`` (-1.0), ``min_imbalance`` (-0.2),
``min_coverage_pct`` (50), ``max_spread_bps`` (25).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, candidate, confirm, settings

NAME = "volume_climax"
DEFAULTS = {"min_bars": 30, "volume_mult": 4.0, "range_mult": 2.0, "run": 10, "close_frac": 0.5,
            "stop_pad": 0.25, "confidence": 0.5, **CONFIRM_DEFAULTS, "min_skew": -1.0}
EVIDENCE = ("pattern", "volume", "volume_avg", "volume_ratio", "range_ratio", "close_position",
            "move_from") + MICRO_EVIDENCE


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "climax", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "baseline", "microstructure"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)
    base = ctx.state.get("baseline")
    if not base or not bar.volume > 0:
        return None
    vavg, ravg = base.get("volume_avg"), base.get("range_avg")
    run = cfg["run"]
    if base.get("bars", 0) < cfg["min_bars"] or not vavg or not ravg or len(ctx.bars) < run + 1:
        return None
    rng = bar.high - bar.low
    if bar.volume < cfg["volume_mult"] * vavg or rng < cfg["range_mult"] * ravg or not rng > 0:
        return None
    pos = (bar.close - bar.low) / rng  # 0 = closed at the low, 1 = at the high
    frac = cfg["close_frac"]
    start = ctx.bars[-run - 1].close
    if start > bar.close and pos >= 1 - frac:
        direction, extreme = "long", bar.low
    elif start < bar.close and pos <= frac:
        direction, extreme = "short", bar.high
    else:
        return None
    ok, penalty, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    pad = cfg["stop_pad"] * ravg
    ev.update({"pattern": "selling_climax" if direction == "long" else "buying_climax", "volume": bar.volume,
               "volume_avg": vavg, "volume_ratio": bar.volume / vavg, "range_ratio": rng / ravg,
               "close_position": pos, "move_from": start})
    stop = extreme - pad if direction == "long" else extreme + pad
    return candidate(direction, ((bar.high + bar.low) / 2, bar.close), stop, cfg["confidence"], penalty, ev)
