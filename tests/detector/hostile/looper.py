"""An infinite loop that even swallows exceptions."""
from tests.detector.hostile import bad, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("looper")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    while bad(ctx, "looper"):
        try:
            sum(range(1000))
        except Exception:
            pass
    return []
