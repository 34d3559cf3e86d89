"""Volume climax: a volume and range spike at the end of a move that exhausts it — fade it.

With ``b = ctx.state["baseline"]`` (mean volume and range of the previous ``[detector]
baseline_bars`` bars) and at least ``min_bars`` of them:

* the bar's volume >= ``volume_mult`` x the mean volume and its range >= ``range_mult`` x the
  mean range (a climax bar);
* selling climax (long): price fell into it — the close ``run`` bars back is above this bar's
  close — and the bar closes in the upper ``1 - close_frac`` of its range (buyers absorbed the
  selling: a long lower wick);
* buying climax (short): mirrored.

Entry zone: the close to the bar's midpoint; stop beyond the climax extreme by ``stop_pad`` of
the mean range; targets 1R and 2R. Microstructure confirmation (``_common.confirm``) reads the
bar's skew and imbalance as the *absorption* side: after a selling climax the bid/ask imbalance
must not be strongly negative. Index bars (volume 0) never fire. Config: ``min_bars`` (30),
``volume_mult`` (4.0), ``range_mult`` (2.0), ``run`` (10), ``close_frac`` (0.5), ``stop_pad``
(0.25), ``confidence`` (0.5), and the ``_common.confirm`` keys (``min_skew`` defaults to -1 here:
the climax bar itself is dominated by the exhausted side).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import candidate, confirm

NAME = "volume_climax"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "climax", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "baseline"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = ctx.config.get(NAME, {})
    base = ctx.state.get("baseline") or {}
    vavg, ravg = base.get("volume_avg"), base.get("range_avg")
    run = int(cfg.get("run", 10))
    if (base.get("bars", 0) < cfg.get("min_bars", 30) or not vavg or not ravg or bar.volume <= 0
            or len(ctx.bars) < run + 1):
        return None
    rng = bar.high - bar.low
    if bar.volume < cfg.get("volume_mult", 4.0) * vavg or rng < cfg.get("range_mult", 2.0) * ravg:
        return None
    pos = (bar.close - bar.low) / rng  # 0 = closed at the low, 1 = at the high
    frac = cfg.get("close_frac", 0.5)
    start = ctx.bars[-run - 1].close
    if start > bar.close and pos >= 1 - frac:
        direction, extreme = "long", bar.low
    elif start < bar.close and pos <= frac:
        direction, extreme = "short", bar.high
    else:
        return None
    ccfg = {"min_skew": -1.0, **cfg}
    ok, present, ev = confirm(bar, direction, ccfg)
    if not ok:
        return None
    pad = cfg.get("stop_pad", 0.25) * ravg
    mid = (bar.high + bar.low) / 2
    ev.update({"volume": bar.volume, "volume_avg": vavg, "volume_ratio": bar.volume / vavg,
               "range_ratio": rng / ravg, "close_position": pos, "move_from": start})
    stop = extreme - pad if direction == "long" else extreme + pad
    return candidate(direction, (mid, bar.close), stop, cfg.get("confidence", 0.5), present, ev)
