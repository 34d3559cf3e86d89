"""Plugins for the blocked-setup test: between them, one bar makes every detector refusal reason.

Registered in this order (the host calls them in order), with the test's config family_cap=2,
max_active=3 and the default macro kill switch (-0.5), on a bar with close above VWAP and buy flow:

* ``shape``: not a list on the first bar; a non-map, an invalid, a non-finite and a wrong-geometry
  candidate on the second;
* ``quarantined``: a good long of the family the optimizer profile quarantines;
* ``capped``, ``capped_too``, ``capped_three``: good longs of one family (the third is over the cap);
* ``dup``: the same long twice (the second duplicates the first, now with the lifecycle full);
* ``contra``: a short against the flow (macro kill switch);
* ``overflow``: a good long of its own family with the lifecycle full (capacity).
"""

from services.detector.hookspecs import API_VERSION, hookimpl

LONG = {"direction": "long", "entry_low": 100.5, "entry_high": 101.0, "stop": 99.0, "targets": [102.0],
        "confidence": 0.6, "evidence": {}}
SHORT = {"direction": "short", "entry_low": 100.0, "entry_high": 100.5, "stop": 101.5, "targets": [99.0],
         "confidence": 0.6, "evidence": {}}


class _Probe:
    def __init__(self, name, family, out):
        self.name, self.family, self.out, self.calls = name, family, out, 0

    @hookimpl
    def spx_detector_describe(self):
        return {"name": self.name, "family": self.family, "version": "1", "api_version": API_VERSION}

    @hookimpl
    def spx_detector_on_bar(self, ctx, bar):
        self.calls += 1
        return self.out(self.calls)


def _shape(n):
    if n == 1:
        return {"direction": "long"}
    return [1, {"direction": "long"}, {**LONG, "stop": float("nan")}, {**LONG, "stop": 101.5}]


DETECTORS = [
    _Probe("shape", "shape", _shape),
    _Probe("quarantined", "quarantined_family", lambda n: [LONG] if n == 2 else None),
    _Probe("capped", "capped_family", lambda n: [LONG] if n == 2 else None),
    _Probe("capped_too", "capped_family", lambda n: [LONG] if n == 2 else None),
    _Probe("capped_three", "capped_family", lambda n: [LONG] if n == 2 else None),
    _Probe("dup", "dup_family", lambda n: [LONG, LONG] if n == 2 else None),
    _Probe("contra", "contra_family", lambda n: [SHORT] if n == 2 else None),
    _Probe("overflow", "overflow_family", lambda n: [LONG] if n == 2 else None),
]
