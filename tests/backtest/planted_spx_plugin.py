"""A detector that fires on the planted I:SPX bars of the options backtest tests (volume 777, or a close
whose fraction is .777 for bars built from index values, which have no volume): a long setup around the
bar's close, stop 5 points under it, targets 5 and 10 points over it."""

from services.detector.hookspecs import API_VERSION, hookimpl


@hookimpl
def spx_detector_describe():
    return {"name": "planted_spx", "family": "planted", "version": "1.0", "api_version": API_VERSION}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bar.sym != "I:SPX" or not (bar.volume == 777 or round(bar.close * 1000) % 1000 == 777):
        return None
    c = round(bar.close, 2)
    return [{"direction": "long", "entry_low": c - 0.05, "entry_high": c + 0.05, "stop": c - 5,
             "targets": [c + 5, c + 10], "confidence": 0.9}]
