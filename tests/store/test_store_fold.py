"""Property: a setup instance does not depend on how its transitions arrive (order, batches, repeats)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spx_common import models as m

_ids = itertools.count()

ENDINGS = {
    "t2": [("target1_hit", 102.0), ("target2_hit", 104.0)],
    "t1_then_stop": [("target1_hit", 102.0), ("stopped", 100.0)],
    "stop": [("stopped", 97.5)],
    "expire": [("expired", 100.5)],
}


def lifecycle(sid: str, ending: str, direction: str) -> list[m.SetupTransition]:
    sign = 1 if direction == "long" else -1

    def px(p):
        return 100.0 + sign * (p - 100.0)

    base = dict(setup_id=sid, detector="d", family="f", sym="I:SPX", direction=direction)
    out = [m.SetupTransition(**base, to_state="forming", reason="r", ts=10, price=100.0, entry_low=99.0,
                             entry_high=101.0, stop=px(98.0), targets=[px(102.0), px(104.0)]),
           m.SetupTransition(**base, to_state="triggered", reason="r", ts=20, price=100.0,
                             microstructure={"bid_ask_imbalance": 0.2, "aggressor_skew": 0.4})]
    for i, (state, p) in enumerate(ENDINGS[ending]):
        out.append(m.SetupTransition(**base, to_state=state, reason="r", ts=30 + 10 * i, price=px(p)))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ending=st.sampled_from(sorted(ENDINGS)), direction=st.sampled_from(["long", "short"]), data=st.data())
def test_instance_independent_of_arrival(store, ending, direction, data):
    n = next(_ids)
    ref_id, sid = f"ref{n}", f"perm{n}"
    store.record_transitions(lifecycle(ref_id, ending, direction))
    events = lifecycle(sid, ending, direction)
    arrival = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=4))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(arrival) - 1, 1)), max_size=3)))
    for a, b in zip([0, *cuts], [*cuts, len(arrival)], strict=True):
        store.record_transitions(arrival[a:b])
    ref, got = store.setup_instance(ref_id), store.setup_instance(sid)
    ref.pop("setup_id"), got.pop("setup_id")
    assert got == ref
    assert got["resolved_at"] is not None and got["r_multiple"] is not None
