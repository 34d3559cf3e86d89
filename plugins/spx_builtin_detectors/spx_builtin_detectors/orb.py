"""Opening-range breakout: the first close beyond the opening range after it completes.

Long when a bar closes above the opening-range high with buyers in control (aggressor skew
>= ``min_skew`` when microstructure is present; ignored when it is null), short mirrored.
Entry zone: the broken level to the close; stop: the range midpoint; targets: 1R and 2R.
"""

from services.detector.hookspecs import API_VERSION, hookimpl

NAME = "orb"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "orb", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "opening_range"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    orng = ctx.state.get("opening_range") or {}
    hi, lo = orng.get("high"), orng.get("low")
    cfg = ctx.config.get(NAME, {})
    if hi is None or lo is None or hi <= lo or ctx.minutes_since_open < cfg.get("after_min", 15):
        return None
    prev = ctx.bars[-2].close if len(ctx.bars) >= 2 else None
    if prev is None:
        return None
    skew = None
    if bar.buy_volume is not None and (bar.buy_volume + bar.sell_volume) > 0:
        skew = (bar.buy_volume - bar.sell_volume) / (bar.buy_volume + bar.sell_volume)
    min_skew = cfg.get("min_skew", 0.0)
    mid = (hi + lo) / 2
    if prev <= hi < bar.close and (skew is None or skew >= min_skew):
        risk = bar.close - mid
        return [{"direction": "long", "entry_low": hi, "entry_high": bar.close, "stop": mid,
                 "targets": [bar.close + risk, bar.close + 2 * risk], "confidence": 0.6,
                 "evidence": {"or_high": hi, "or_low": lo, "aggressor_skew": skew,
                              "microstructure": skew is not None}}]
    if prev >= lo > bar.close and (skew is None or -skew >= min_skew):
        risk = mid - bar.close
        return [{"direction": "short", "entry_low": bar.close, "entry_high": lo, "stop": mid,
                 "targets": [bar.close - risk, bar.close - 2 * risk], "confidence": 0.6,
                 "evidence": {"or_high": hi, "or_low": lo, "aggressor_skew": skew,
                              "microstructure": skew is not None}}]
    return None
