"""The compiled core (``services/aggregator/fastcore.pyx``, ``TickCore``, built by setup.py) against the
plain-Python one (``pybars.PyTickCore``): on the same streams, byte-identical bars, the same late and refused
counts, the same held bodies, newest maps and dirty symbols; the compiled ``feed`` accepts only bodies that
msgspec decodes to the same values.

Without the compiled core these tests skip, except the first, which fails when ``fastcore.pyx`` is in the tree
but was not built (or is older than the built module): a build that silently fell back to plain Python."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services.aggregator.bars as bars
from services.aggregator import pybars
from services.aggregator.pybars import PyTickCore
from services.feed.synthetic import SyntheticSession
from spx_common.models import IndexValue, MarketEvent, Quote, Trade
from tests.aggregator.test_aggregator_bars import streams

SOURCE = Path(pybars.__file__).with_name("fastcore.pyx")
ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(list[MarketEvent])
S = 1_000_000_000

compiled = pytest.mark.skipif(not bars.COMPILED, reason="services.aggregator.fastcore is not built (plain-Python "
                              "install): nothing to compare; test_the_installed_core_is_compiled... says if that "
                              "is a failure")


def test_the_installed_core_is_compiled_and_built_from_the_current_source():
    if not SOURCE.is_file():
        pytest.skip(f"no {SOURCE.name} in this tree: the plain-Python core is the only one")
    assert bars.COMPILED, (f"services.aggregator.bars runs the plain-Python core although {SOURCE.name} is here: "
                           "build it with `pip install -e .` or `python setup.py build_ext --inplace` "
                           "(needs a C compiler and Cython)")
    from services.aggregator import fastcore

    built = Path(fastcore.__file__)
    assert built.suffix in (".so", ".pyd") and built.stat().st_mtime >= SOURCE.stat().st_mtime, (
        f"{built.name} is older than {SOURCE.name}: the compiled core is stale; rebuild with `pip install -e .`")
    assert bars.BarAggregator is fastcore.TickCore


# ------------------------------------------------------------------ streams


TRADE_EXTRAS = [{}, {}, {"seq": 7, "exch": 4}, {"cond": [12, 37]}, {"source": "replay", "backfilled": True}]
QUOTE_EXTRAS = [{}, {}, {"seq": 9, "bid_exch": 1, "ask_exch": 2}, {"source": "backfill"}]


@st.composite
def tick_streams(draw):
    """The bar tests' trade/quote streams with index values, a third symbol and optional fields mixed in,
    normalised through msgspec (as a subscriber sees them: every float field a float)."""
    out = []
    for ev in draw(streams(sizes=[0, 1, 100, 250, 0.1, 0.3, 1.7])):
        r = draw(st.integers(0, 19))
        if r == 0:
            out.append(IndexValue(sym="I:SPX", value=draw(st.sampled_from([5900.0, 5900.25, 5899.5])), ts=ev.ts))
        elif r == 1:
            ev = msgspec.structs.replace(ev, sym="O:SPXW261204C05900000")
        extras = TRADE_EXTRAS if type(ev) is Trade else QUOTE_EXTRAS
        out.append(msgspec.structs.replace(ev, **draw(st.sampled_from(extras))))
    return DEC.decode(ENC.encode(out))


def run(core, events, intervals, cuts, how, hold_max=64, **kw):
    """Feed ``events`` in batches of ``cuts`` sizes ("bytes": ``feed`` at an offset; "events": ``on_events``
    and ``on_event``), advancing and draining as the service does; everything observable, encoded."""
    holds = []
    agg = core(intervals, hold_max=hold_max, on_hold=lambda *a: holds.append(a), **kw)
    out, i, k = [], 0, 0
    while i < len(events):
        n = cuts[k % len(cuts)]
        chunk = events[i:i + n]
        if how == "bytes":
            junk = b"\xc1" * (k % 3)
            assert agg.feed(junk + ENC.encode(chunk), len(junk)) == len(chunk)
        else:
            agg.on_events(chunk)
            if n == 1 and i + 1 < len(events):
                agg.on_event(events[i + 1])  # the one-event path too
                i += 1
        i, k = i + n, k + 1
        if agg.watermark >= agg.next_due:
            agg.advance(agg.watermark)
        dirty = agg.take_dirty()
        out.append((agg.watermark, agg.late, agg.refused_symbols, dirty, [agg.newest(s) for s in dirty],
                    [agg.current(s, name) for s in dirty for name, _ in agg.intervals], agg.drain()))
        if k % 4 == 0:
            agg.hold_flush(dirty[0] if dirty and k % 8 else None)
    agg.hold_flush()
    out.append((agg.symbol_names(), agg.symbol_count(), agg.late, agg.refused_symbols, agg.flush(), holds))
    return ENC.encode(out)


INTERVALS = st.sampled_from([["1s"], ["1s", "5s"], ["5s", "1s"], ["250ms", "1s", "5s"], ["1s", "1m"]])


@compiled
@settings(max_examples=300, deadline=None)
@given(tick_streams(), INTERVALS, st.booleans(), st.booleans(), st.lists(st.integers(1, 25), min_size=1, max_size=8),
       st.sampled_from(["bytes", "events"]), st.sampled_from([1, 3, 64]), st.sampled_from([1, 2, 5000]),
       st.sampled_from([0, 250_000_000]))
def test_compiled_and_python_give_byte_identical_output(events, intervals, l2, fill_gaps, cuts, how, hold_max,
                                                         max_symbols, lateness):
    kw = dict(l2=l2, fill_gaps=fill_gaps, allowed_lateness_ns=lateness, max_symbols=max_symbols)
    assert (run(bars.BarAggregator, events, intervals, cuts, how, hold_max, **kw)
            == run(PyTickCore, events, intervals, cuts, how, hold_max, **kw))


@compiled
def test_a_synthetic_session_gives_byte_identical_output_compiled_and_python():
    """Realistic density: SPY trades and quotes, I:SPX values, many quote-only option contracts, with
    out-of-order (late) events spliced in."""
    events = []
    for ev in SyntheticSession(seed=5, spy_trades_per_s=40.0, spy_quotes_per_s=60.0,
                               option_quote_every_s=0.5).events():
        events.append(ev)
        if len(events) >= 40_000:
            break
    events[20_000:20_000] = events[15_000:15_050]  # late for their bars: counted and dropped alike
    events = DEC.decode(ENC.encode(events))
    for how in ("bytes", "events"):
        a = run(bars.BarAggregator, events, ["1s", "5s"], [50, 7, 1], how, allowed_lateness_ns=250_000_000)
        b = run(PyTickCore, events, ["1s", "5s"], [50, 7, 1], how, allowed_lateness_ns=250_000_000)
        assert a == b, how
    late = PyTickCore(["1s", "5s"])
    late.on_events(events)
    assert late.late > 0


@compiled
def test_next_due_is_the_same_in_both_cores():
    """``next_due`` (when ``advance`` can next close something) is part of the API: the service skips
    ``advance`` before it."""
    events = DEC.decode(ENC.encode([Trade(sym="SPY", price=1.0, size=1.0, ts=S + 3 * i * 100_000_000)
                                    for i in range(40)] + [Quote(sym="X", bid=1.0, ask=1.1, ts=30 * S)]))
    cores = [core(["1s", "5s"], allowed_lateness_ns=100) for core in (bars.BarAggregator, PyTickCore)]
    for ev in events:
        dues = []
        for agg in cores:
            agg.on_event(ev)
            if agg.watermark >= agg.next_due:
                agg.advance(agg.watermark)
            dues.append(agg.next_due)
        assert dues[0] == dues[1], ev


# ------------------------------------------------------------------ what the compiled feed accepts


def mutations(body: bytes, rnd: random.Random, n: int):
    """``n`` damaged copies of ``body``: a byte changed, removed or inserted, or the body cut."""
    for _ in range(n):
        b = bytearray(body)
        op = rnd.randrange(4)
        at = rnd.randrange(len(b))
        if op == 0:
            b[at] = rnd.randrange(256)
        elif op == 1:
            del b[at]
        elif op == 2:
            b.insert(at, rnd.randrange(256))
        else:
            del b[at:]
        yield bytes(b)


def _decoded(holds: list) -> list:
    return [(sym, DEC.decode(body), count, last) for sym, body, count, last in holds]


_EVENT = msgspec.msgpack.Decoder(MarketEvent)


def snapshot(agg) -> bytes:
    """Everything a core shows; its newest maps as events (the compiled core keeps a map's bytes as they
    arrived, the plain one re-encodes it: an accepted non-canonical int, e.g. 9 as int8, differs in bytes only)."""
    names = agg.symbol_names()
    newest = [[None if m is None else _EVENT.decode(m) for m in agg.newest(s)] for s in names]
    return ENC.encode((agg.watermark, agg.late, agg.refused_symbols, names, newest,
                       [agg.current(s, iv) for s in names for iv, _ in agg.intervals], agg.closed))


@compiled
@settings(max_examples=150, deadline=None)
@given(tick_streams(), st.integers(0, 2**32))
def test_the_compiled_feed_accepts_only_what_msgspec_reads_the_same(events, seed):
    """For damaged bodies: when the compiled core accepts one, msgspec accepts it and the plain-Python core
    ends in the same state; when msgspec refuses one, so does the compiled core, changing nothing."""
    body = ENC.encode(events[:12])
    rnd = random.Random(seed)
    for bad in mutations(body, rnd, 20):
        cores = []
        for core in (bars.BarAggregator, PyTickCore):
            holds = []
            agg = core(["1s", "5s"], hold_max=2, on_hold=lambda *a, holds=holds: holds.append(a))
            agg.feed(ENC.encode(events[12:16]))
            before = snapshot(agg)
            cores.append((agg, holds, before, agg.feed(bad)))
        (c, c_holds, c_before, c_n), (p, p_holds, _, p_n) = cores
        if c_n < 0:
            assert snapshot(c) == c_before, bad  # refused: nothing changed
        else:
            assert p_n == c_n, bad
        if p_n < 0:
            assert c_n < 0, bad
        if c_n >= 0:
            c.hold_flush(), p.hold_flush()
            # held batches as events: the compiled core holds maps as they arrived, the plain one re-encodes them
            # (an accepted non-canonical map, e.g. keys reordered by the damage, differs in bytes, not in events)
            assert (snapshot(c), _decoded(c_holds)) == (snapshot(p), _decoded(p_holds)), bad


@compiled
def test_bodies_msgspec_reads_but_the_compiled_core_refuses_take_the_callers_path():
    """Unknown keys (msgspec ignores them), a non-canonical encoding: the compiled ``feed`` says -1; decoded
    with msgspec and re-encoded, the same events are accepted and give what the plain-Python core gives."""
    cases = [
        ENC.encode([{"k": "t", "sym": "SPY", "price": 1.5, "ts": S, "oops": [1, 2]}]),
        ENC.encode([{"k": "q", "sym": "SPY", "bid": 1.0, "ask": 1.1, "ts": S, "cond": [1]}]),  # a trade's key
    ]
    for body in cases:
        c, p = bars.BarAggregator(["1s"], on_hold=lambda *a: None), PyTickCore(["1s"], on_hold=lambda *a: None)
        assert p.feed(body) == 1
        assert c.feed(body) == -1
        assert c.feed(ENC.encode(DEC.decode(body))) == 1
        assert snapshot(c) == snapshot(p)
