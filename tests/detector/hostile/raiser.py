"""Raises on every call."""
from tests.detector.hostile import bad, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("raiser")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bad(ctx, "raiser"):
        raise RuntimeError("raiser: bug")
    return []
