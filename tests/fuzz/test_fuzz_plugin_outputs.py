"""Fuzzing the plugin boundary of the detector host: whatever a plugin returns from ``on_bar``.

A plugin registered in the real ``PluginHost`` returns hypothesis-generated outputs: lists mixing
well-formed candidates with near-valid ones (one field hostile: NaN, infinities, wrong types, stops on
the wrong side, huge lists), arbitrary values, non-lists. Properties:

* ``on_bar`` never raises and the plugin is not disabled for bad output (bad output is not a crash);
* every item the host looked at is either accepted or refused with a reason (nothing silently lost);
* the well-formed candidates planted among the junk are all accepted, in order;
* every accepted candidate is publishable: finite prices, geometry right, and it survives the codec.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.detector.hookspecs import API_VERSION, hookimpl
from services.detector.host import PluginHost
from spx_common.codec import decode_frames, encode_payload
from spx_common.models import MicroBar, SetupCandidate

BAR = MicroBar(sym="SPY", interval="1s", start_ns=1_771_599_600_000_000_000, open=590.0, high=590.2, low=589.9,
               close=590.1, volume=1000.0, trades=10, closed=True)
FIELDS = ["direction", "entry_low", "entry_high", "stop", "targets", "confidence", "evidence", "sym", "ts", "detector"]
hostile = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, -1e308, 10**30, "590", None, True, [],
                           {}, [math.nan], [math.inf], [1.0] * 500, {"k": [1, 2]}, {"k": math.nan}, "long", "short",
                           "sideways", -5, 10**33, 2**63 - 1, 2**64 - 1, "x" * 5000, {"k": "x" * 5000},
                           {"k": 2**64 - 1}, {str(i): i for i in range(100)}])
anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=8)


def good(i: int) -> dict:
    c = 590.0 + i / 100
    return {"direction": "long", "entry_low": c - 0.02, "entry_high": c + 0.02, "stop": c - 0.30,
            "targets": [c + 0.10, c + 0.20], "confidence": 0.5, "evidence": {"fuzz": i}}


near_valid = st.tuples(st.integers(0, 99), st.sampled_from(FIELDS), st.one_of(hostile, anything), st.booleans()).map(
    lambda t: {k: v for k, v in {**good(t[0]), t[1]: t[2]}.items() if not (t[3] and k == t[1])})
items = st.one_of(near_valid, anything)


class Plugin:
    def __init__(self) -> None:
        self.output = None

    @hookimpl
    def spx_detector_describe(self):
        return {"name": "fuzz", "family": "fuzz", "version": "1", "api_version": API_VERSION}

    @hookimpl
    def spx_detector_on_bar(self, bar):
        return self.output


def publishable(c: SetupCandidate) -> bool:
    prices = [c.entry_low, c.entry_high, c.stop, *c.targets]
    if not all(isinstance(p, float) and math.isfinite(p) and abs(p) <= 1e7 for p in prices):
        return False
    if abs(c.ts - BAR.start_ns) > 86_400 * 10**9 or len(c.targets) > 8 or len(c.evidence) > 32:
        return False
    # published at the candidate's event time, as the detector does
    payload = encode_payload("doc", {"candidate": c.to_dict()}, src="detector", session="s", seq=1, event_ns=c.ts)
    decode_frames([b"x", payload]).body()
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.tuples(st.lists(items, max_size=25), st.lists(st.integers(0, 19), max_size=3, unique=True)),
    st.tuples(anything, st.just([])),
))
@example(([{**good(1), "ts": 10**33}], [0]))  # found by hypothesis on main: OverflowError when published
@example(([{**good(1), "ts": 2**64 - 1}, {**good(2), "ts": 2**63 - 1}, {**good(3), "ts": -1}], [1]))
@example(([{**good(1), "evidence": {"k": 2**64 - 1}}, {**good(2), "targets": [591.0] * 9}], [2]))
def test_any_plugin_output_is_validated_item_by_item(output_and_plants):
    output, plants = output_and_plants
    plugin = Plugin()
    host = PluginHost()
    host.register(plugin, source="fuzz")
    inserted = []
    if isinstance(output, list):
        output = list(output)
        for k, pos in enumerate(sorted(plants)):
            inserted.append(good(1000 + k))
            output.insert(min(pos, len(output)), inserted[-1])
    plugin.output = output
    refused0 = len(host.events.refused)
    accepted = host.on_bar(None, BAR)
    refused = host.events.refused[refused0:]
    assert host.plugins["fuzz"].status == "active" and host.plugins["fuzz"].errors == 0
    assert all(reason and isinstance(reason, str) for reason, _ in refused)
    if output is None:
        assert accepted == [] and refused == []
    elif not isinstance(output, (list, tuple)):
        assert accepted == [] and [r for r, _ in refused] == ["plugin_output_not_a_list"]
    else:
        assert len(accepted) + len(refused) == min(len(output), 20), "an item was neither accepted nor refused"
        planted = [c["evidence"]["fuzz"] for c in output[:20] if any(c is x for x in inserted)]
        got = [c.evidence["fuzz"] for c in accepted
               if isinstance(c.evidence.get("fuzz"), int) and c.evidence["fuzz"] >= 1000]
        assert got == planted
    for c in accepted:
        assert publishable(c), c
