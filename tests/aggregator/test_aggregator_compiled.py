"""The microbar core runs compiled (Cython, setup.py) and must give exactly what the same source gives as
plain Python: one source, two ways to run it, identical bars to the last digit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import services.aggregator.bars as bars
from services.feed.synthetic import SyntheticSession
from tests.aggregator.test_aggregator_bars import streams

SOURCE = Path(bars.__file__).with_name("bars.py")


def _pure():
    spec = importlib.util.spec_from_file_location("spx_bars_pure_python", SOURCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PURE = _pure()


def run(mod, events, intervals, cuts, **kw):
    agg = mod.BarAggregator(intervals, **kw)
    out, i, k = [], 0, 0
    while i < len(events):
        n = cuts[k % len(cuts)]
        agg.on_events(events[i:i + n])
        if n == 1 and i + 1 < len(events):
            agg.on_event(events[i + 1])  # the one-event path too
            i += 1
        i, k = i + n, k + 1
        if agg.watermark >= agg.next_due:
            agg.advance(agg.watermark)
        out.extend(agg.drain())
    out.extend(agg.flush())
    return msgspec.msgpack.encode(out), agg.late


def test_the_installed_core_is_compiled_and_built_from_the_current_source():
    assert not PURE.COMPILED
    assert bars.COMPILED, (f"services.aggregator.bars runs as plain Python ({bars.__file__}): "
                           "rebuild it with `pip install -e .` (needs a C compiler)")
    built = Path(bars.__file__)
    assert built.stat().st_mtime >= SOURCE.stat().st_mtime, (
        f"{built.name} is older than bars.py: the compiled core is stale; rebuild with `pip install -e .`")


@settings(max_examples=150, deadline=None)
@given(streams(sizes=[0, 1, 100, 250, 0.1, 0.3, 1.7]),
       st.sampled_from([["1s"], ["1s", "5s"], ["250ms", "1s", "5s"], ["1s", "1m"]]),
       st.booleans(), st.booleans(), st.lists(st.integers(1, 25), min_size=1, max_size=8))
def test_compiled_and_pure_give_byte_identical_bars(events, intervals, l2, fill_gaps, cuts):
    kw = dict(l2=l2, fill_gaps=fill_gaps, allowed_lateness_ns=0)
    assert run(bars, events, intervals, cuts, **kw) == run(PURE, events, intervals, cuts, **kw)


def test_a_synthetic_session_gives_byte_identical_bars_compiled_and_pure():
    """Realistic density: SPY trades and quotes, I:SPX values, many quote-only option contracts, with
    out-of-order (late) events spliced in."""
    events = []
    for ev in SyntheticSession(seed=5, spy_trades_per_s=40.0, spy_quotes_per_s=60.0,
                               option_quote_every_s=0.5).events():
        events.append(ev)
        if len(events) >= 40_000:
            break
    events[20_000:20_000] = events[15_000:15_050]  # late for their bars: counted and dropped alike
    a = run(bars, events, ["1s", "5s"], [50, 7, 1], allowed_lateness_ns=250_000_000)
    b = run(PURE, events, ["1s", "5s"], [50, 7, 1], allowed_lateness_ns=250_000_000)
    assert a[1] > 0 and a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("tqv"), max_size=30))
def test_newest_by_kind_compiled_and_pure_agree_with_a_reverse_scan(kinds):
    """The tick cache's last trade, quote and index value of a batch: the last event of each kind."""
    make = {"t": lambda i: bars.Trade(sym="SPY", price=1.0 + i, ts=i),
            "q": lambda i: bars.Quote(sym="SPY", bid=1.0, ask=2.0 + i, ts=i),
            "v": lambda i: bars.IndexValue(sym="I:SPX", value=1.0 + i, ts=i)}
    batch = [make[k](i) for i, k in enumerate(kinds)]
    want = tuple(next((ev for ev in reversed(batch) if type(ev) is cls), None)
                 for cls in (bars.Trade, bars.Quote, bars.IndexValue))
    for mod in (bars, PURE):
        got = mod.newest_by_kind(batch)
        assert len(got) == 3 and all(g is w for g, w in zip(got, want))


def test_the_compiled_run_loop_reads_trade_and_quote_fields_at_their_offsets():
    """The offsets found at import point at each field's value (checked through the object's memory); a field
    deleted from an event fails as an attribute read does, in both builds."""
    import ctypes

    assert bars.FIELD_OFFSETS and not PURE.FIELD_OFFSETS
    q = bars.Quote(sym="O:SPXW261204C05900000", bid=1.25, ask=1.5, bid_size=10.0, ask_size=20.0, ts=7, seq=3)
    tr = bars.Trade(sym="SPY", price=590.5, size=100.0, ts=9, exch=4)
    for ev, names, offsets in ((q, ("sym", "bid", "ask", "bid_size", "ask_size", "ts"), bars._QUOTE_AT),
                               (tr, ("sym", "price", "size", "ts"), bars._TRADE_AT)):
        for name, off in zip(names, offsets):
            assert ctypes.c_void_p.from_address(id(ev) + off).value == id(getattr(ev, name)), name
    for mod in (bars, PURE):
        broken = bars.Quote(sym="SPY", bid=1.0, ask=2.0, ts=5)
        del broken.bid
        agg = mod.BarAggregator(["1s"])
        agg.on_events([bars.Trade(sym="SPY", price=1.5, size=1.0, ts=1)])
        try:
            agg.on_events([broken])
        except AttributeError as exc:
            assert "bid" in str(exc)
        else:
            raise AssertionError("a quote without bid was aggregated")
