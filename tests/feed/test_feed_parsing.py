"""The pure parser and pipeline: round trips, unit conversions and no crash on any input (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from spx_common.models import IndexValue, Quote, Trade

from services.feed.parsing import SHARES_SINCE_NS, MassiveParser, to_wire
from services.feed.pipeline import Dedupe, TickPipeline

MS = 1_000_000
ts_ms = st.integers(min_value=0, max_value=9_999_999_999_999)
price = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
sym = st.sampled_from(["SPY", "QQQ", "O:SPXW261120C05900000", "O:SPXW261120P05850000"])
trades = st.builds(lambda s, p, z, t, q, x, c: Trade(sym=s, price=p, size=z, ts=t * MS, seq=q, exch=x, cond=c),
                   sym, price, size, ts_ms, st.integers(0, 2**53), st.integers(0, 400),
                   st.lists(st.integers(0, 300), max_size=4))
quotes = st.builds(lambda s, b, a, bs, az, t, q: Quote(sym=s, bid=b, ask=a, bid_size=bs, ask_size=az, ts=t * MS, seq=q),
                   sym, price, price, size, size, ts_ms.filter(lambda t: t * MS >= SHARES_SINCE_NS),
                   st.integers(0, 2**53))
values = st.builds(lambda v, t: IndexValue(sym="I:SPX", value=v, ts=t * MS), price, ts_ms)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(trades, quotes, values), max_size=30))
def test_vendor_arrays_round_trip(events):
    p = MassiveParser()
    got, statuses = p.parse(json.dumps([to_wire(e) for e in events]))
    assert got == events and not statuses and not p.errors and not p.unknown


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["ev", "sym", "T", "p", "s", "t", "q", "bp", "ap", "bs", "as", "val", "status", "c", "x"]),
        children, max_size=6),
    max_leaves=20)
events_ish = st.fixed_dictionaries({"ev": st.sampled_from(["T", "Q", "V", "status", "A", "AM", "XX"])},
                                   optional={k: json_values for k in ("sym", "T", "p", "s", "t", "q", "bp", "ap",
                                                                      "bs", "as", "val", "status", "c")})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(events_ish, json_values), max_size=10), st.one_of(trades, values))
def test_any_input_never_raises_and_good_events_are_kept(junk, good):
    p = MassiveParser()
    got, _ = p.parse(json.dumps([*junk, to_wire(good)], allow_nan=False))  # valid JSON, any shape
    assert got[-1] == good  # whatever surrounds it, the good event survives
    for ev in got:  # and everything that came out satisfies the bus schema's constraints
        assert ev.ts >= 0 and ev.sym
        assert min(getattr(ev, f, 0) for f in ("price", "size", "bid", "ask", "bid_size", "ask_size", "value")) >= 0


def test_units_ms_to_ns_and_round_lots_before_the_cutover():
    p = MassiveParser()
    before = (SHARES_SINCE_NS - 10**9) // MS
    after = (SHARES_SINCE_NS + 10**9) // MS
    got, _ = p.parse(json.dumps([
        {"ev": "Q", "sym": "SPY", "bp": 1, "ap": 2, "bs": 3, "as": 4, "t": before},
        {"ev": "Q", "sym": "SPY", "bp": 1, "ap": 2, "bs": 3, "as": 4, "t": after},
        {"ev": "Q", "sym": "O:SPXW261120C05900000", "bp": 1, "ap": 2, "bs": 3, "as": 4, "t": before},
    ]))
    assert [(q.bid_size, q.ask_size) for q in got] == [(300, 400), (3, 4), (3, 4)]
    assert got[1].ts == after * MS


def test_dedupe_is_bounded_and_pipeline_policy():
    d = Dedupe(max_keys=4, content_keys=3)
    t = [Trade(sym="SPY", price=1, size=1, ts=i, seq=i) for i in range(12)]
    assert [d.seen(e) for e in t[1:8]] == [False] * 7
    assert len(d) == 3 and d.trims == 2  # full twice: each time the older half went, [5, 6, 7] are left
    assert d.seen(t[7]) and d.seen(t[5])  # duplicates
    assert not d.seen(t[1])  # fell out of the bounded memory: passes again
    assert not d.seen(t[10]) and not d.seen(t[8])  # a gap event arriving late is new, once
    assert d.seen(t[8]) and d.seen(t[10])
    assert not d.seen(Quote(sym="SPY", bid=1, ask=2, ts=8, seq=8))  # quotes and trades number apart
    v = [IndexValue(sym="I:SPX", value=5900 + i, ts=i) for i in range(8)]  # no vendor seq: keyed by content
    assert [d.seen(e) for e in v[1:8]] == [False] * 7
    assert d.seen(v[7]) and d.seen(v[4]) and not d.seen(v[1])  # generations {4, 5, 6} and {7}
    p = TickPipeline(reorder_tolerance_ns=1000)
    out = p.process([Trade(sym="SPY", price=1, size=1, ts=10_000, seq=1),
                     Trade(sym="SPY", price=1, size=1, ts=9_500, seq=2),  # within tolerance: kept
                     Trade(sym="SPY", price=1, size=1, ts=8_000, seq=3),  # too old: stale
                     Trade(sym="SPY", price=1, size=1, ts=8_000, seq=4, backfilled=True),  # backfill bypasses
                     Trade(sym="SPY", price=1, size=1, ts=10_000, seq=1),  # duplicate
                     IndexValue(sym="I:SPX", value=1, ts=1)])
    assert [(s, [e.ts for e in evs]) for s, evs in out] == [("tick.SPY", [10_000, 9_500, 8_000]),
                                                           ("tick.I:SPX", [1])]
    assert p.drops == {"stale": 1, "duplicate": 1}
    # option contracts of one root share a frame, in arrival order; another root gets its own
    c1, c2, m1 = "O:SPXW261120C05900000", "O:SPXW261120P05850000", "O:SPX261218C05900000"
    out = p.process([Quote(sym=s, bid=1, ask=2, ts=20_000 + i, seq=10 + i) for i, s in enumerate((c1, c2, m1, c1))])
    assert [(t, [e.sym for e in evs]) for t, evs in out] == [("tick.O:SPXW", [c1, c2, c1]), ("tick.O:SPX", [m1])]
