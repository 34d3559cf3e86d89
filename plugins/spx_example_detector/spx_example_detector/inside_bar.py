"""Inside-bar breakout: after ``inside_count`` bars inside a mother bar, a close beyond it.

Long above the mother bar's high, short below its low; stop at the other side; targets 1R and 2R.
"""

from services.detector.hookspecs import API_VERSION, hookimpl

NAME = "inside_bar"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "inside_bar", "version": "0.1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    n = ctx.config.get(NAME, {}).get("inside_count", 3)
    if len(ctx.bars) < n + 2:
        return None
    mother = ctx.bars[-n - 2]
    inside = ctx.bars[-n - 1:-1]
    if not all(b.high <= mother.high and b.low >= mother.low for b in inside):
        return None
    if bar.close > mother.high:
        risk = bar.close - mother.low
        return [{"direction": "long", "entry_low": mother.high, "entry_high": bar.close, "stop": mother.low,
                 "targets": [bar.close + risk, bar.close + 2 * risk], "confidence": 0.5,
                 "evidence": {"mother_high": mother.high, "mother_low": mother.low, "inside_bars": n}}]
    if bar.close < mother.low:
        risk = mother.high - bar.close
        return [{"direction": "short", "entry_low": bar.close, "entry_high": mother.low, "stop": mother.high,
                 "targets": [bar.close - risk, bar.close - 2 * risk], "confidence": 0.5,
                 "evidence": {"mother_high": mother.high, "mother_low": mother.low, "inside_bars": n}}]
    return None
