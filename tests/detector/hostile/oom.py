"""Runs out of memory on every call (a MemoryError, as a worker's data-segment limit raises)."""
from tests.detector.hostile import bad, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("oom")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bad(ctx, "oom"):
        raise MemoryError
    return []
