"""Blocks without using CPU (a network call that never returns)."""
import time

from tests.detector.hostile import bad, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("sleeper")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bad(ctx, "sleeper"):
        time.sleep(30)
    return []
