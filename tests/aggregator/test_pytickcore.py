"""The bar core's byte and hold API (docs: /tmp/spec/core_api.md, pybars.PyTickCore): ``feed`` refusing a
body changes nothing, the hold hands each symbol's events over ``hold_max`` at a time as one msgpack array,
``hold_flush``, ``newest``, ``take_dirty`` and refused symbols.

Every test runs on the plain-Python core and, when it is built, on the compiled one (``bars.BarAggregator``):
both must behave as written here."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services.aggregator.bars as bars
from services.aggregator import pybars
from services.aggregator.pybars import PyTickCore
from spx_common import codec
from spx_common.models import IndexValue, MarketEvent, Quote, Trade

S = 1_000_000_000
ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(list[MarketEvent])

CORES = [pytest.param(PyTickCore, id="python")]
if bars.COMPILED:
    CORES.append(pytest.param(bars.BarAggregator, id="compiled"))


def t(ts, price=100.0, size=100.0, sym="SPY", **kw):
    return Trade(sym=sym, price=price, size=size, ts=ts, **kw)


def q(ts, bid=99.99, ask=100.01, sym="SPY", **kw):
    return Quote(sym=sym, bid=bid, ask=ask, bid_size=100.0, ask_size=200.0, ts=ts, **kw)


def v(ts, value=5900.25, sym="I:SPX"):
    return IndexValue(sym=sym, value=value, ts=ts)


class Holds:
    """``on_hold`` recorder: (sym, body, count, last_ts) per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, sym, body, count, last_ts):
        assert type(body) is bytes
        self.calls.append((sym, body, count, last_ts))


def make(core, holds=None, **kw):
    kw.setdefault("allowed_lateness_ns", 0)
    return core(["1s", "5s"], on_hold=holds, **kw)


def state(agg):
    """Everything observable of a core, consuming nothing that matters to the caller's comparison."""
    names = agg.symbol_names()
    return (agg.watermark, agg.late, agg.refused_symbols, agg.next_due, names, agg.symbol_count(),
            [agg.newest(s) for s in names],
            [ENC.encode(agg.current(s, iv)) for s in names for iv, _ in agg.intervals],
            ENC.encode(agg.closed))


@pytest.mark.parametrize("core", CORES)
def test_a_refused_body_changes_nothing(core):
    good = [q(S, sym="SPY"), t(S + 1, sym="SPY"), t(S + 2, sym="QQQ"), v(S + 3)]
    later = [t(3 * S, 101.0, sym="SPY"), q(3 * S + 1, sym="QQQ"), t(9 * S, sym="NEW")]
    body = ENC.encode(later)
    bad_bodies = [
        b"",
        b"\xc1",  # never used
        body[:-1],  # truncated
        body + b"\x00",  # trailing bytes
        ENC.encode([t(4 * S, -1.0)]),  # price < 0 (Meta ge=0)
        ENC.encode([{"k": "x", "sym": "SPY", "price": 1.0, "ts": 4 * S}]),  # unknown tag
        ENC.encode([{"k": "t", "sym": "SPY", "ts": 4 * S}]),  # price missing
        ENC.encode([{"k": "t", "sym": "SPY", "price": "1", "ts": 4 * S}]),  # wrong type
        ENC.encode({"k": "t"}),  # not an array
        body.replace(b"\xa3NEW", b"\xa3N\xffW"),  # a symbol that is not UTF-8
    ]
    holds_a, holds_b = Holds(), Holds()
    a, b = make(core, holds_a, hold_max=3), make(core, holds_b, hold_max=3)
    for agg in (a, b):
        assert agg.feed(ENC.encode(good)) == 4
    a.take_dirty(), b.take_dirty()
    for bad in bad_bodies:
        assert a.feed(bad) == -1, bad
    assert a.feed(body, len(body) + 1) == -1  # start past the end
    assert state(a) == state(b) and holds_a.calls == holds_b.calls and a.take_dirty() == []
    for agg in (a, b):  # and it goes on exactly as a core that never saw them
        assert agg.feed(body) == 3
        agg.hold_flush()
    assert state(a) == state(b) and holds_a.calls == holds_b.calls
    assert a.take_dirty() == b.take_dirty() == ["SPY", "QQQ", "NEW"]
    assert ENC.encode(a.flush()) == ENC.encode(b.flush())


@pytest.mark.parametrize("core", CORES)
def test_feed_reads_the_body_from_start_and_any_buffer(core):
    events = [q(S), t(S + 1), t(S + 2, 100.02, 3.5)]
    body = ENC.encode(events)
    payload = codec.encode_payload("ticks", events, src="feed", session="s1", seq=1, event_ns=S + 2)
    at = codec.ticks_header(payload)[1]
    want = make(core)
    want.on_events(events)
    for buf, start in ((body, 0), (payload, at), (bytearray(payload), at), (memoryview(payload), at)):
        agg = make(core)
        assert agg.feed(buf, start) == 3
        assert state(agg) == state(want)
        assert ENC.encode(agg.flush()) == ENC.encode(bars.bars_from_events(events, ["1s", "5s"],
                                                                             allowed_lateness_ns=0))
    assert make(core).feed(ENC.encode([])) == 0


@pytest.mark.parametrize("core", CORES)
def test_hold_hands_over_hold_max_events_per_symbol_as_one_array(core):
    holds = Holds()
    agg = make(core, holds, hold_max=3)
    spy = [q(S, seq=4), t(S + 10, exch=4, cond=[12, 37]), t(S + 20, 100.02, 0.5), q(S + 30, bid_exch=1),
           t(S + 40, source="replay", backfilled=True), t(S + 50)]
    qqq = [t(S + 15, sym="QQQ"), q(S + 25, sym="QQQ")]
    stream = [spy[0], spy[1], qqq[0], spy[2], qqq[1], spy[3], spy[4], spy[5]]
    agg.feed(ENC.encode(stream[:4]))
    assert holds.calls == [("SPY", ENC.encode(spy[:3]), 3, S + 20)]
    agg.feed(ENC.encode(stream[4:]))
    assert holds.calls[1:] == [("SPY", ENC.encode(spy[3:6]), 3, S + 50)]  # QQQ holds 2: not yet
    assert DEC.decode(holds.calls[1][1]) == spy[3:6]  # the body is the ticks body of those events
    agg.hold_flush("SPY")  # nothing held for SPY: no call
    agg.hold_flush("NOPE")
    assert len(holds.calls) == 2
    agg.hold_flush("QQQ")
    assert holds.calls[2:] == [("QQQ", ENC.encode(qqq), 2, S + 25)]
    agg.hold_flush()
    assert len(holds.calls) == 3


@pytest.mark.parametrize("core", CORES)
def test_hold_flush_emits_every_symbol_in_first_seen_order(core):
    holds = Holds()
    agg = make(core, holds, hold_max=100)
    agg.feed(ENC.encode([t(S, sym="B"), t(S + 1, sym="A"), v(S + 2), t(S + 3, sym="C")]))
    agg.feed(ENC.encode([t(S + 4, sym="C"), t(S + 5, sym="A")]))
    agg.hold_flush()
    assert [(s, n) for s, _, n, _ in holds.calls] == [("B", 1), ("A", 2), ("I:SPX", 1), ("C", 2)]
    assert holds.calls[1][1:] == (ENC.encode([t(S + 1, sym="A"), t(S + 5, sym="A")]), 2, S + 5)
    agg.hold_flush()
    assert len(holds.calls) == 4


@pytest.mark.parametrize("core", CORES)
def test_late_events_are_held_and_counted_late(core):
    holds = Holds()
    agg = make(core, holds, hold_max=100)
    events = [t(S), t(3 * S), t(S + 5, 99.0)]  # the last is late for the closed 1s bar
    assert agg.feed(ENC.encode(events)) == 3
    assert agg.late == 1
    agg.hold_flush()
    assert holds.calls == [("SPY", ENC.encode(events), 3, S + 5)]  # last_ts: the last event's, not the max


@pytest.mark.parametrize("core", CORES)
def test_events_and_bytes_in_give_the_same_holds(core):
    events = [q(S), t(S + 1), v(S + 2), t(S + 3, sym="QQQ"), q(2 * S), t(2 * S + 1)]
    out = []
    for how in ("feed", "on_events", "on_event"):
        holds = Holds()
        agg = make(core, holds, hold_max=2)
        if how == "feed":
            agg.feed(ENC.encode(events))
        elif how == "on_events":
            agg.on_events(iter(events))
        else:
            for ev in events:
                agg.on_event(ev)
        agg.hold_flush()
        out.append((holds.calls, state(agg), ENC.encode(agg.flush())))
    assert out[0] == out[1] == out[2]


@pytest.mark.parametrize("core", CORES)
def test_newest_is_the_last_map_of_each_kind_held_or_emitted(core):
    holds = Holds()
    agg = make(core, holds, hold_max=2)
    assert agg.newest("SPY") == (None, None, None)
    tr, q1, q2 = t(S, cond=[1]), q(S + 1), q(S + 2, 99.98)
    agg.feed(ENC.encode([tr, q1]))  # emitted (hold_max 2)
    assert len(holds.calls) == 1 and agg.newest("SPY") == (ENC.encode(tr), ENC.encode(q1), None)
    agg.feed(ENC.encode([q2]))  # held
    assert agg.newest("SPY") == (ENC.encode(tr), ENC.encode(q2), None)
    agg.feed(ENC.encode([v(S + 3), v(S + 4, 5901.0)]))
    assert agg.newest("I:SPX") == (None, None, ENC.encode(v(S + 4, 5901.0)))
    agg.feed(ENC.encode([t(S - 1, 98.0)]))  # stream order, not time order: a late trade is the newest fed
    assert agg.newest("SPY")[0] == ENC.encode(t(S - 1, 98.0))
    assert agg.newest("QQQ") == (None, None, None)


@pytest.mark.parametrize("core", CORES)
def test_without_on_hold_nothing_is_held_but_dirty_symbols_are_tracked(core):
    agg = make(core)
    agg.feed(ENC.encode([t(S), q(S + 1, sym="QQQ"), t(S + 2)]))
    agg.hold_flush()
    assert agg.newest("SPY") == (None, None, None)
    assert agg.take_dirty() == ["SPY", "QQQ"]


@pytest.mark.parametrize("core", CORES)
def test_take_dirty_lists_symbols_in_first_event_order_since_the_last_call(core):
    agg = make(core, Holds())
    assert agg.take_dirty() == []
    agg.feed(ENC.encode([t(S, sym="B"), t(S + 1, sym="A"), t(S + 2, sym="B")]))
    agg.on_event(t(S + 3, sym="C"))
    assert agg.take_dirty() == ["B", "A", "C"]
    assert agg.take_dirty() == []
    agg.feed(ENC.encode([t(S + 4, sym="C"), t(S - S // 2, sym="A")]))  # a late event marks its symbol too
    assert agg.take_dirty() == ["C", "A"]
    assert agg.symbol_names() == ["B", "A", "C"] and agg.symbol_count() == 3


@pytest.mark.parametrize("core", CORES)
def test_refused_symbols_move_the_watermark_and_are_neither_aggregated_nor_held(core):
    holds = Holds()
    agg = make(core, holds, hold_max=1, max_symbols=2)
    n = agg.feed(ENC.encode([t(S, sym="A"), t(S + 1, sym="B"), t(7 * S, sym="C"), t(S + 2, sym="A"),
                             q(8 * S, sym="C")]))
    assert n == 5  # the events of the body, refused ones included
    assert agg.watermark == 8 * S and agg.refused_symbols == 2
    assert agg.symbol_names() == ["A", "B"] and agg.symbol_count() == 2
    agg.hold_flush()
    assert [s for s, *_ in holds.calls] == ["A", "B", "A"]
    assert agg.newest("C") == (None, None, None) and agg.current("C", "1s") is None
    assert agg.take_dirty() == ["A", "B"]
    assert {b.sym for b in agg.flush()} == {"A", "B"}


@pytest.mark.parametrize("core", CORES)
def test_constructor_bounds(core):
    with pytest.raises(ValueError):
        core(["1s", "2s", "3s", "4s", "5s", "6s", "7s", "8s", "9s"])
    with pytest.raises(ValueError):
        core(["1s"], hold_max=0)
    with pytest.raises(ValueError):
        core(["2x"])
    agg = core(["250ms", "1s", "2s", "3s", "4s", "5s", "6s", "1m"], hold_max=1)
    assert [name for name, _ in agg.intervals] == ["250ms", "1s", "2s", "3s", "4s", "5s", "6s", "1m"]
    assert agg.intervals[0] == ("250ms", 250_000_000) and agg.hold_max == 1
    agg.l2 = False
    agg.on_events([q(S), t(S + 1)])
    assert all(b.bid_ask_imbalance is None for b in agg.flush())


@pytest.mark.parametrize("core", CORES)
def test_event_times_from_2116_on_are_refused_by_both_cores(core):
    """Event times are ``ge=0`` on the wire; both cores take them below 2**62 ns (2116-02-20) so bucket ends
    and close times stay inside int64: ``feed`` answers -1 (the service refuses the frame) and ``on_events``
    raises, with nothing changed. The last time before the bound makes bars as any other."""
    agg = core(["1s", "5s"], allowed_lateness_ns=250_000_000)
    for ts in (2**62, 2**63 - 1, 2**64 - 1):
        assert agg.feed(ENC.encode([t(S, 1.0), t(ts, 2.0)])) == -1
        with pytest.raises(ValueError):
            agg.on_events([t(S, 1.0), t(ts, 2.0)])
        assert agg.watermark == 0 and agg.flush() == []
    last = 2**62 - 1
    assert agg.feed(ENC.encode([t(S, 1.0), t(last, 2.0), q(last), t(last, 3.0)])) == 4
    agg.advance(agg.watermark)
    assert [(b.start_ns, b.close) for b in agg.drain()] == [(S, 1.0), (0, 1.0)]
    assert [(b.start_ns, b.close, b.trades) for b in agg.flush()] == [(last // iv * iv, 3.0, 2)
                                                                      for _, iv in agg.intervals]


# ------------------------------------------------------------------ ticks header


def payload(events=(), **kw):
    head = dict(src="feed", session="a1b2c3", seq=17, event_ns=5 * S, pub_ns=5 * S + 12345)
    head.update(kw)
    return codec.encode_payload("ticks", list(events), **head)


# ------------------------------------------------------------------ helpers kept in pybars


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("tqv"), max_size=30))
def test_newest_by_kind_agrees_with_a_reverse_scan(kinds):
    """The last event of each kind of a batch (the tick cache's last trade, quote and index value)."""
    make_ev = {"t": lambda i: t(i, 1.0 + i), "q": lambda i: q(i, 1.0, 2.0 + i), "v": lambda i: v(i, 1.0 + i)}
    batch = [make_ev[k](i) for i, k in enumerate(kinds)]
    want = tuple(next((ev for ev in reversed(batch) if type(ev) is cls), None) for cls in (Trade, Quote, IndexValue))
    got = bars.newest_by_kind(batch)
    assert len(got) == 3 and all(g is w for g, w in zip(got, want, strict=True))


def test_one_name_one_class():
    """``bars.BarAggregator`` is the core in use; the specification is ``pybars.PyBarAggregator`` under no
    other name."""
    assert not hasattr(pybars, "BarAggregator") and issubclass(PyTickCore, pybars.PyBarAggregator)
    assert bars.BarAggregator is (PyTickCore if not bars.COMPILED else bars.BarAggregator)
    assert bars.parse_interval("250ms") == 250_000_000 and bars.NS_PER_S == 1_000_000_000


@pytest.mark.parametrize("core", CORES)
def test_fill_gaps_fills_at_most_max_gap_bars_buckets_and_counts_a_longer_gap(core):
    """``fill_gaps`` is bounded: a gap of more than ``max_gap_bars`` buckets (a session break, or one event
    stamped far away) gets no gap bars and is counted in ``gaps_unfilled``; a gap at the bound is filled."""
    agg = core(["1s"], fill_gaps=True, max_gap_bars=3)
    agg.on_events([t(S, 1.0), t(5 * S, 2.0), t(10 * S, 3.0), t(10 * S + 1, 4.0)])
    bars = agg.flush()
    assert [(b.start_ns // S, b.close, b.gap_fill) for b in bars] == [
        (1, 1.0, False), (2, 1.0, True), (3, 1.0, True), (4, 1.0, True), (5, 2.0, False), (10, 4.0, False)]
    assert agg.gaps_unfilled == 1
    with pytest.raises(ValueError):
        core(["1s"], max_gap_bars=-1)
