"""Returns garbage: not a list, items that are not maps, unencodable values, an out-of-range time."""
from tests.detector.hostile import bad, candidate, describe, hookimpl


@hookimpl
def spx_detector_describe():
    return describe("garbage")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    if not bad(ctx, "garbage"):
        return []
    if bar.start_ns // 10**9 % 2:
        return "junk"
    return [object(), 42, {**candidate(bar), "ts": 10**33}, {**candidate(bar), "evidence": {"x": {1, 2}}}]
