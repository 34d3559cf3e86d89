"""``feed_columns`` (the column input ``spx bars`` uses for flat files) against ``on_events`` on both cores:
the same stream given as columns, cut anywhere, gives the same bars, late and refused counts, watermark and
symbol table as the same events given as objects."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services.aggregator.bars as bars
from services.aggregator.pybars import PyTickCore
from spx_common.models import IndexValue, Quote, Trade
from tests.aggregator.test_aggregator_compiled import tick_streams

ENC = msgspec.msgpack.Encoder()
CORES = [pytest.param(PyTickCore, id="python"),
         pytest.param(bars.BarAggregator, id="compiled",
                      marks=pytest.mark.skipif(not bars.COMPILED, reason="the compiled core is not built"))]


def columns(events: list) -> tuple[list[str], tuple]:
    """Names in first-seen order and the columns of ``events`` (symbol index, kind, ts, a, b, c, d, excl)."""
    names = list(dict.fromkeys(ev.sym for ev in events))
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for ev in events:
        if type(ev) is Trade:
            rows.append((index[ev.sym], 0, ev.ts, ev.price, ev.size, 0.0, 0.0, ev.excl))
        elif type(ev) is Quote:
            rows.append((index[ev.sym], 1, ev.ts, ev.bid, ev.ask, ev.bid_size, ev.ask_size, 0))
        else:
            rows.append((index[ev.sym], 2, ev.ts, ev.value, 0.0, 0.0, 0.0, 0))
    types = (np.int32, np.int8, np.int64, np.float64, np.float64, np.float64, np.float64, np.uint8)
    cols = tuple(np.array([r[i] for r in rows], dtype=t) for i, t in enumerate(types))
    return names, cols


def observed(agg, bars_out) -> tuple:
    return (ENC.encode(bars_out), agg.late, agg.refused_symbols, agg.watermark, agg.symbol_names())


@pytest.mark.parametrize("core", CORES)
@settings(max_examples=200, deadline=None)
@given(events=tick_streams(), intervals=st.sampled_from([["1s"], ["1s", "5s"], ["250ms", "1s", "5s"]]),
       l2=st.booleans(), fill=st.booleans(), max_symbols=st.sampled_from([5000, 2, 1]),
       cuts=st.lists(st.integers(1, 30), min_size=1, max_size=6))
def test_feed_columns_gives_the_bars_of_on_events(core, events, intervals, l2, fill, max_symbols, cuts):
    kw = dict(l2=l2, fill_gaps=fill, max_symbols=max_symbols)
    ref = core(intervals, **kw)
    ref.on_events(events)
    want = observed(ref, ref.flush())

    agg = core(intervals, **kw)
    names, cols = columns(events)
    out, i, k = [], 0, 0
    while i < len(events):  # batches of any size: names added before each batch, in first-seen order
        j = i + cuts[k % len(cuts)]
        batch = [c[i:j] for c in cols]
        first = list(dict.fromkeys(batch[0].tolist()))
        ids = dict(zip(first, agg.symbol_ids([names[s] for s in first]), strict=True))
        sids = np.array([ids[s] for s in batch[0].tolist()], dtype=np.int32)
        assert agg.feed_columns(sids, *batch[1:]) == len(sids)
        out += agg.drain()
        i, k = j, k + 1
    assert observed(agg, out + agg.flush()) == want


@pytest.mark.parametrize("core", CORES)
def test_feed_columns_refuses_what_the_byte_path_refuses_before_changing_anything(core):
    agg = core(["1s"])
    sid = agg.symbol_ids(["SPY"])[0]
    good = dict(sids=[sid], kinds=[0], ts=[10**18], a=[1.0], b=[1.0], c=[0.0], d=[0.0], excl=[0])
    types = dict(sids=np.int32, kinds=np.int8, ts=np.int64, a=float, b=float, c=float, d=float, excl=np.uint8)
    for field, bad in [("ts", 1 << 62), ("ts", -1), ("a", float("nan")), ("b", -1.0), ("kinds", 3), ("sids", 5)]:
        args = {k: np.array(bad if k == field else v[0], dtype=types[k]).reshape(1) for k, v in good.items()}
        with pytest.raises(ValueError):
            agg.feed_columns(*args.values())
    assert agg.watermark == 0 and agg.flush() == []
    args = {k: np.array(v, dtype=types[k]) for k, v in good.items()}
    agg.feed_columns(*args.values())
    assert [b.close for b in agg.flush()] == [1.0]


def test_index_values_take_the_column_path_too():
    events = [IndexValue(sym="I:SPX", value=5900.0 + i, ts=10**18 + i * 10**8) for i in range(25)]
    names, cols = columns(events)
    for core in (PyTickCore, bars.BarAggregator):
        ref, agg = core(["1s"]), core(["1s"])
        ref.on_events(events)
        sids = np.array(agg.symbol_ids(names), dtype=np.int32)[cols[0]]
        agg.feed_columns(sids, *cols[1:])
        assert ENC.encode(agg.flush()) == ENC.encode(ref.flush())
