"""A deterministic plugin for the restart test: a long setup on every bar that closes above 100.5."""

from services.detector.hookspecs import API_VERSION, hookimpl


@hookimpl
def spx_detector_describe():
    return {"name": "restore_probe", "family": "probe", "version": "1", "api_version": API_VERSION}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bar.close <= 100.5:
        return None
    return [{"direction": "long", "entry_low": 100.5, "entry_high": 101.0, "stop": 99.0,
             "targets": [102.0, 103.0], "confidence": 0.7, "evidence": {"close": bar.close}}]
