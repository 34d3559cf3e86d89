"""Always behaves: one candidate per bar (its transitions must keep flowing)."""
from tests.detector.hostile import candidate, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("good")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    return [candidate(bar)]
