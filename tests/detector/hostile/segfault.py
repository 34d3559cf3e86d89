"""Crashes its process (a NULL read through ctypes)."""
import ctypes

from tests.detector.hostile import bad, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("segfault")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bad(ctx, "segfault"):
        ctypes.string_at(0)
    return []
