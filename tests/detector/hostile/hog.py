"""Leaks memory: keeps 64 MiB more on every call."""
from tests.detector.hostile import bad, describe, hookimpl

KEPT = []


@hookimpl
def spx_detector_describe():
    return describe("hog")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if bad(ctx, "hog"):
        KEPT.append(bytearray(64 * 2**20))
    return []
