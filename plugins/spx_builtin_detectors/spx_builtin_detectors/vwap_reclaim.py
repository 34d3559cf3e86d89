"""VWAP reclaim / reject: a close back across session VWAP after ``min_bars`` on the other side.

Long (reclaim) when the previous ``min_bars`` closes were below VWAP and this bar closes above
it with non-negative bid/ask imbalance (ignored when null); short (reject) mirrored. Stop
beyond the lowest/highest close of the run; targets 1R and 2R.
"""

from services.detector.hookspecs import API_VERSION, hookimpl

NAME = "vwap_reclaim"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "vwap", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "vwap"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    vwap = ctx.state.get("vwap")
    n = ctx.config.get(NAME, {}).get("min_bars", 20)
    if vwap is None or len(ctx.bars) < n + 1:
        return None
    run = [b.close for b in ctx.bars[-n - 1:-1]]
    imb = bar.bid_ask_imbalance
    if all(c < vwap for c in run) and bar.close > vwap and (imb is None or imb >= 0):
        stop = min(run)
        risk = bar.close - stop
        if risk <= 0:
            return None
        return [{"direction": "long", "entry_low": vwap, "entry_high": bar.close, "stop": stop - 1e-9,
                 "targets": [bar.close + risk, bar.close + 2 * risk], "confidence": 0.55,
                 "evidence": {"vwap": vwap, "run_bars": n, "bid_ask_imbalance": imb}}]
    if all(c > vwap for c in run) and bar.close < vwap and (imb is None or imb <= 0):
        stop = max(run)
        risk = stop - bar.close
        if risk <= 0:
            return None
        return [{"direction": "short", "entry_low": bar.close, "entry_high": vwap, "stop": stop + 1e-9,
                 "targets": [bar.close - risk, bar.close - 2 * risk], "confidence": 0.55,
                 "evidence": {"vwap": vwap, "run_bars": n, "bid_ask_imbalance": imb}}]
    return None
