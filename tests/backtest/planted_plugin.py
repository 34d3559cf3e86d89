"""A detector that fires exactly on the planted bars of the backtest tests (volume 777)."""

from services.detector.hookspecs import API_VERSION, hookimpl


@hookimpl
def spx_detector_describe():
    return {"name": "planted", "family": "planted", "version": "1.0", "api_version": API_VERSION}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bar.volume != 777:
        return None
    return [{"direction": "long", "entry_low": 101.0, "entry_high": 101.1, "stop": 100.3,
             "targets": [102.3, 103.3], "confidence": 0.9}]
