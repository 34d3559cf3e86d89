"""Microbar formulas on named edge cases, and properties every core keeps (the compiled core is compared with
the specification, ``pybars.PyBarAggregator``, in test_aggregator_compiled.py)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.msgpack import Decoder, Encoder

from services.aggregator.bars import BarAggregator, bars_from_events, parse_interval
from services.aggregator.cache import BarRing, TickCache
from spx_common.models import IndexValue, MarketEvent, MicroBar, Quote, Trade
from spx_common.topics import group_by_symbol
from services.aggregator.pybars import PyBarAggregator, PyTickCore

S = 1_000_000_000
ENCODER = Encoder()
DECODER = Decoder(list[MarketEvent])
PRICES = [99.98, 99.99, 100.0, 100.01, 100.02]


@st.composite
def streams(draw, sizes=(0, 1, 100, 250), excl=(0, 0, 0, 0, 0, 1, 3, 4, 4)):
    n = draw(st.integers(0, 60))
    ts = 10 * S
    events = []
    for _ in range(n):
        ts += draw(st.sampled_from([0, 0, 1, 1_000_000, 250_000_000, 700_000_000, S, 3 * S]))
        sym = draw(st.sampled_from(["SPY", "QQQ"]))
        if draw(st.booleans()):
            events.append(Trade(sym=sym, price=draw(st.sampled_from(PRICES)), size=draw(st.sampled_from(sizes)),
                                ts=ts, excl=draw(st.sampled_from(excl))))
        else:
            bid = draw(st.sampled_from([0.0] + PRICES))
            ask = draw(st.sampled_from([0.0] + PRICES))  # crossed and zero quotes included
            events.append(Quote(sym=sym, bid=bid, ask=ask, bid_size=draw(st.sampled_from([0, 100, 300])),
                                ask_size=draw(st.sampled_from([0, 100, 500])), ts=ts))
    return events


CORES = [pytest.param(PyBarAggregator, id="spec"), pytest.param(PyTickCore, id="python")]
if BarAggregator is not PyTickCore:
    CORES.append(pytest.param(BarAggregator, id="compiled"))


def one_pass(core, events, intervals, l2):
    agg = core(intervals, l2=l2)
    agg.on_events(events)
    return agg.flush()


@pytest.mark.parametrize("core", CORES)
@settings(max_examples=150, deadline=None)
@given(streams(sizes=[0, 1, 100, 250, 0.1, 0.3, 1.7]),
       st.sampled_from([["1s", "5s"], ["5s", "1s"], ["250ms", "1s"], ["250ms", "1s", "5s"], ["1s", "1m"]]),
       st.booleans(), st.lists(st.integers(1, 25), min_size=1, max_size=8))
def test_several_intervals_batched_with_watermarks_equal_one_pass(core, events, intervals, l2, cuts):
    """Live shape: several intervals at once, events in batches of any size, the watermark advanced between
    batches: the same bars as one pass over the stream (in-order input is never late, whatever the
    watermark); fractional sizes make any change in the order of the float additions visible."""
    events = DECODER.decode(ENCODER.encode(events))  # as received: the floats the wire gives (0, not 0.0)
    agg = core(intervals, l2=l2, allowed_lateness_ns=0)
    got, i, k = [], 0, 0
    while i < len(events):
        n = cuts[k % len(cuts)]
        agg.on_events(events[i:i + n])
        i, k = i + n, k + 1
        if agg.watermark >= agg.next_due:
            agg.advance(agg.watermark)
        got.extend(agg.drain())
    got.extend(agg.flush())
    assert agg.late == 0
    want = one_pass(PyBarAggregator, events, intervals, l2)
    key = lambda b: (b.interval, b.sym, b.start_ns)  # noqa: E731
    assert ENCODER.encode(sorted(got, key=key)) == ENCODER.encode(sorted(want, key=key))


@settings(max_examples=100, deadline=None)
@given(streams())
def test_imbalance_in_range_and_volumes_add_up(events):
    for bar in bars_from_events(events, ["1s"]):
        if bar.bid_ask_imbalance is not None:
            assert -1 <= bar.bid_ask_imbalance <= 1
        assert math.isclose(bar.buy_volume + bar.sell_volume + bar.neutral_volume, bar.volume)
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high


def q(ts, bid, ask, bs=100, as_=200, sym="SPY"):
    return Quote(sym=sym, bid=bid, ask=ask, bid_size=bs, ask_size=as_, ts=ts)


def t(ts, price, size=100, sym="SPY"):
    return Trade(sym=sym, price=price, size=size, ts=ts)


def one(events, **kw):
    bars = bars_from_events(events, ["1s"], **kw)
    assert len(bars) == 1, bars
    return bars[0]


def test_no_quotes_at_all_every_trade_neutral_microstructure_null():
    bar = one([t(S, 100.0), t(S + 1, 100.5, 50)])
    assert (bar.buy_volume, bar.sell_volume, bar.neutral_volume, bar.delta_volume) == (0, 0, 150, 0)
    assert bar.bid_ask_imbalance is None and bar.avg_spread_bps is None
    assert bar.bid_size_at_close is None and bar.ask_bid_size_ratio is None
    assert bar.quote_coverage_pct == 0.0
    assert bar.vwap == pytest.approx((100 * 100 + 100.5 * 50) / 150)


def test_trade_exactly_at_ask_is_buyer_at_bid_is_seller_inside_is_neutral():
    bar = one([q(S, 100.0, 100.02), t(S + 1, 100.02, 10), t(S + 2, 100.0, 20), t(S + 3, 100.01, 30)])
    assert (bar.buy_volume, bar.sell_volume, bar.neutral_volume, bar.delta_volume) == (10, 20, 30, -10)


def test_crossed_and_zero_quotes():
    # zero bid: price <= bid cannot make a seller; crossed quote excluded from spread but counted in sizes
    bar = one([q(S, 0.0, 100.02, 0, 100), t(S + 1, 99.0, 5), q(S + 2, 100.05, 100.0, 300, 100), t(S + 3, 100.0, 7)])
    assert bar.buy_volume == 7  # 100.0 >= ask 100.0 (crossed quote) -> buyer by the rule
    assert bar.neutral_volume == 5
    assert bar.avg_spread_bps is None  # no observation with bid > 0, ask > 0, ask >= bid
    assert bar.bid_ask_imbalance == pytest.approx((300 - 200) / (300 + 200))
    assert bar.quote_coverage_pct == 50.0


def test_zero_size_trades_count_in_trades_and_ohlc_not_volume():
    bar = one([t(S, 100.0, 0), t(S + 5, 101.0, 0)])
    assert (bar.trades, bar.volume, bar.high, bar.close, bar.vwap) == (2, 0, 101.0, 101.0, None)


def test_quote_at_bar_start_is_inside_and_quote_in_force_at_start_counts():
    events = [q(S - 1, 100.0, 100.02, 100, 100), q(2 * S, 100.0, 100.02, 500, 100), t(2 * S + 1, 100.01)]
    bar = one(events)
    assert bar.start_ns == 2 * S
    # observations: in force at start (S-1) + the one stamped exactly at the start
    assert bar.bid_ask_imbalance == pytest.approx((600 - 200) / 800)
    assert (bar.bid_size_at_close, bar.ask_size_at_close, bar.ask_bid_size_ratio) == (500, 100, 0.2)


def test_burst_in_one_bucket_and_gaps_with_and_without_fill():
    burst = [t(S + i, 100.0 + (i % 3) * 0.01, 1) for i in range(1000)] + [t(4 * S, 101.0, 1)]
    bars = bars_from_events(burst, ["1s"])
    assert [b.start_ns for b in bars] == [S, 4 * S] and bars[0].trades == 1000
    filled = bars_from_events(burst, ["1s"], fill_gaps=True)
    assert [b.start_ns for b in filled] == [S, 2 * S, 3 * S, 4 * S]
    gap = filled[1]
    assert gap.gap_fill and gap.volume == 0 and gap.open == gap.close == bars[0].close
    assert gap.bid_ask_imbalance is None and gap.buy_volume is None


def test_flag_off_nulls_microstructure_and_keeps_ohlcv():
    events = [q(S, 100.0, 100.02), t(S + 1, 100.02, 10), t(S + 2, 100.0, 20)]
    on, off = one(events), one(events, l2=False)
    assert (off.open, off.high, off.low, off.close, off.volume, off.trades, off.vwap) == (
        on.open, on.high, on.low, on.close, on.volume, on.trades, on.vwap)
    assert all(getattr(off, f) is None for f in ("buy_volume", "delta_volume", "bid_ask_imbalance",
                                                 "avg_spread_bps", "quote_coverage_pct", "bid_size_at_close"))


def test_index_values_make_ohlc_bars_with_zero_volume():
    bars = bars_from_events([IndexValue(sym="I:SPX", value=v, ts=S + i) for i, v in enumerate([5900, 5905, 5899])],
                            ["1s"])
    b = bars[0]
    assert (b.open, b.high, b.low, b.close, b.volume, b.trades, b.vwap, b.bid_ask_imbalance) == (
        5900, 5905, 5899, 5899, 0, 3, None, None)


def test_watermark_closes_quiet_bars_and_late_events_are_counted_and_dropped():
    agg = BarAggregator(["1s"], allowed_lateness_ns=200_000_000)
    agg.on_event(t(S, 100.0))
    agg.advance(2 * S + 100_000_000)
    assert agg.drain() == []  # end + lateness not yet passed
    agg.advance(2 * S + 200_000_000)
    closed = agg.drain()
    assert [b.start_ns for b in closed] == [S] and closed[0].closed
    agg.on_event(t(S + 5, 99.0))  # late for a closed bar
    assert agg.late == 1 and agg.flush() == []


def test_in_progress_bar_is_exposed_not_closed():
    agg = BarAggregator(["1s"])
    agg.on_event(t(S, 100.0))
    cur = agg.current("SPY", "1s")
    assert cur is not None and not cur.closed and cur.close == 100.0
    assert agg.current("SPY", "5s") is None


def _cache(max_symbols=5000, **kw) -> TickCache:
    """A tick cache fed by a real bar core (its ``on_hold``), as in the service."""
    cache = TickCache(**kw)
    cache.core = BarAggregator(["1s"], max_symbols=max_symbols, hold_max=1 << 30, on_hold=cache.add_body)
    return cache


def _add(cache: TickCache, events: list) -> None:
    """Feed one frame's body to the cache's core and have it hand the events over now: one cache batch per
    symbol per call (the core otherwise holds them up to ``hold_max``)."""
    assert cache.core.feed(ENCODER.encode(events)) == len(events)
    cache.core.hold_flush()


def test_memory_bounds_hold_under_far_more_input_than_the_buffers_hold():
    cache = _cache(window_ns=10 * S, max_events=1000, max_symbols=3)
    for i in range(50_000):
        _add(cache, [t(S + i * 1_000_000, 100.0, sym="SPY")])
    assert len(cache.syms["SPY"]) == 1000 and cache.evicted == 49_000
    st_spy = cache.syms["SPY"]  # the spent prefix of the position arrays was dropped, segments freed
    assert st_spy.batches == 1000 and len(st_spy.pos) < 5 * 8192 and len(st_spy.segs) <= 2
    got = cache.since("SPY", seq=0, limit=10**6)["events"]
    assert [e["seq"] for e in got] == list(range(49_001, 50_001))
    assert [e["event"].ts for e in got] == [S + i * 1_000_000 for i in range(49_000, 50_000)]
    for i in range(20):  # the core tracks at most max_symbols: the others are neither aggregated nor cached
        _add(cache, [t(S, 100.0, sym=f"X{i}")])
    assert len(cache.syms) == 3 and cache.refused == cache.core.refused_symbols == 18
    # time bound: events older than the window are evicted
    cache2 = _cache(window_ns=S, max_events=10**6)
    for i in range(100):
        _add(cache2, [t(i * 100_000_000, 100.0)])
    assert cache2.syms["SPY"].events()[0].ts >= 99 * 100_000_000 - S
    agg = BarAggregator(["1s"], max_symbols=2)
    agg.on_events([t(S, 1.0, sym=f"S{i}") for i in range(10)])
    assert agg.symbol_count() == 2 and agg.refused_symbols == 8


def test_byte_bound_across_symbols_evicts_the_oldest_batches_first():
    """Far more input than ``max_bytes`` over many symbols: the kept bytes never exceed the bound and are
    exactly the kept bodies; what goes is the oldest by event time, whatever the symbol; each symbol still
    answers a contiguous newest tail of its sequence numbers."""
    cache = _cache(window_ns=10**6 * S, max_events=10**6, max_bytes=20_000)
    for i in range(3000):
        sym = f"S{i % 7}" if i % 3 else "SPY"
        _add(cache, [t(S + i * 1_000_000 + j, 100.0 + j, sym=sym) for j in range(1 + i % 5)])
        assert cache.bytes <= cache.max_bytes
    kept = [(state.body(i), count, last_ts) for state in cache.syms.values() for i, count, last_ts in state.iter_batches()]
    assert cache.bytes == sum(len(body) for body, _, _ in kept) > cache.max_bytes * 0.8
    assert cache.shrinks > 0 and cache.evicted > 0
    assert cache.size() + cache.evicted == sum(1 + i % 5 for i in range(3000))
    oldest_kept = min(last_ts for _, _, last_ts in kept)
    assert oldest_kept > S + 2000 * 1_000_000  # every symbol lost its old batches, not one symbol all of its
    for sym, state in cache.syms.items():
        got = cache.since(sym, seq=0, limit=10**6)
        seqs = [e["seq"] for e in got["events"]]
        assert seqs == list(range(state.seq - state.n + 1, state.seq + 1)) and got["truncated"]
        assert all(e["event"].ts >= oldest_kept - 5 for e in got["events"][-1:])


def test_cache_since_by_seq_and_time():
    cache = _cache(window_ns=100 * S, max_events=5)
    for i in range(8):
        _add(cache, [t(S + i, 100.0 + i)])
    r = cache.since("SPY", seq=5)
    assert [e["seq"] for e in r["events"]] == [6, 7, 8] and not r["truncated"]
    assert cache.since("SPY", seq=1)["truncated"]  # seqs 2..3 were evicted
    assert [e["seq"] for e in cache.since("SPY", ts_ns=S + 6)["events"]] == [7, 8]
    assert cache.last("SPY")["trade"].price == 107.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(0, 3 * S), st.booleans()), max_size=40),
       st.integers(1, 12), st.integers(1, 4 * S))
def test_cache_batches_evict_like_a_plain_buffer(batches, max_events, window_ns):
    """The cache keeps whole batches as bytes; what it holds must equal a plain buffer with the same bounds (the
    count bound per event, the time bound per batch: a batch goes once its last event is out of the window)."""
    # segments of 200 bytes: a few batches each, so segments fill, roll over and are freed all the time
    cache = _cache(window_ns=window_ns, max_events=max_events, segment_bytes=200)
    model, ts, seq = [], S, 0  # (seq, event, its batch's last ts) oldest first
    last_trade = last_quote = None
    for size, step, quote in batches:
        batch = []
        for _ in range(size):
            ts += step // size
            batch.append(q(ts, 99.0, 100.0) if quote and not batch else t(ts, 100.0 + len(batch)))
        _add(cache, batch)
        for ev in batch:
            seq += 1
            model.append((seq, ev, batch[-1].ts))
        model = model[-max_events:]  # exact count bound
        while model and model[0][2] < batch[-1].ts - window_ns:  # time bound: whole batches
            model.pop(0)
        assert len(cache.syms["SPY"]) == len(model) and cache.size() == len(model)
        spy = cache.syms["SPY"]  # a segment is freed once no live batch lies in it
        assert len(spy.segs) <= spy.batches and spy.pos[spy.first] == spy.seg0
        assert cache.evicted == seq - len(model)
        got = cache.since("SPY", seq=0, limit=100)
        assert [(e["seq"], e["event"]) for e in got["events"]] == [(s, ev) for s, ev, _ in model]
        assert got["truncated"] == (bool(model) and model[0][0] > 1)
        for k in (0, len(model) // 2, len(model) - 1):  # queries from inside the buffer skip older batches
            if model:
                since_seq = cache.since("SPY", seq=model[k][0])["events"]
                assert [(e["seq"], e["event"]) for e in since_seq] == [(s, ev) for s, ev, _ in model[k + 1:]]
                since_ts = cache.since("SPY", ts_ns=model[k][1].ts)["events"]
                assert [e["event"] for e in since_ts] == [ev for _, ev, _ in model if ev.ts >= model[k][1].ts]
        newest = {type(ev): ev for ev in batch}
        last_trade, last_quote = newest.get(Trade, last_trade), newest.get(Quote, last_quote)
        assert (cache.last("SPY")["trade"], cache.last("SPY")["quote"]) == (last_trade, last_quote)


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="bad bar interval"):
        parse_interval("2x")


def test_bar_ring_keeps_the_newest_bars_exactly():
    ring = BarRing(maxlen=50, segment_bytes=300)  # a few bars per segment: segments roll and are freed
    bars = [MicroBar(sym="SPY", interval="1s", start_ns=i * S, open=1.0 + i, high=2.0 + i, low=0.5, close=1.5,
                     volume=float(i), trades=i, vwap=None if i % 3 else 1.25, closed=True) for i in range(400)]
    for b in bars:
        ring.append(b)
    assert len(ring) == 50 and len(ring.segs) <= 50
    assert ring.since() == bars[-50:]
    assert ring.since(start_ns=380 * S) == bars[380:]
    assert ring.since(start_ns=0, limit=7) == bars[-7:] and ring.since(limit=0) == []


def test_root_batches_held_by_the_core_answer_as_if_added_on_arrival():
    """The core holds each symbol's events of several-symbol batches (an option root's frame) and hands them
    to the cache in runs of up to ``hold_max``; every query (last, since, size) answers exactly as a cache fed
    one symbol's batch at a time."""
    held, plain = TickCache(window_ns=50 * S, max_events=300), _cache(window_ns=50 * S, max_events=300)
    runs = []

    def on_hold(sym, body, count, last_ts):
        runs.append(count)
        held.add_body(sym, body, count, last_ts)

    held.core = BarAggregator(["1s"], on_hold=on_hold)  # default hold_max: 64
    syms = [f"O:SPXW261120C0{5800 + k}000" for k in range(5)]
    ts = S
    for i in range(2000):
        batch = []
        for j in range(1 + i % 4):
            ts += 7_000_000
            sym = syms[(i * 3 + j) % 5]
            batch.append(q(ts, 1.0 + j, 1.2 + j, sym=sym) if (i + j) % 3 else t(ts, 1.1 + j, sym=sym))
        assert held.core.feed(ENCODER.encode(batch)) == len(batch)
        for evs in group_by_symbol(batch).values():
            _add(plain, evs)
        if i % 97 == 0:
            s = syms[i % 5]
            assert held.last(s) == plain.last(s)
            assert held.since(s, seq=0, limit=10**6) == plain.since(s, seq=0, limit=10**6)
    assert max(runs) == 64 and len(runs) < 2000  # held runs are bounded, and far fewer than the batches
    assert held.size() == plain.size() and held.evicted == plain.evicted
    for s in syms:
        assert held.since(s, ts_ns=ts - 20 * S) == plain.since(s, ts_ns=ts - 20 * S)
        assert held.last(s) == plain.last(s)


def test_symbols_answers_a_map_also_when_empty_and_counts_held_events():
    cache = TickCache(window_ns=50 * S, max_events=300)
    cache.core = BarAggregator(["1s"], on_hold=cache.add_body)
    assert cache.symbols() == {} and cache.size() == 0
    cache.core.feed(ENCODER.encode([q(S, 1.0, 1.1, sym="O:SPXW261120C05800000"),
                                    t(S + 1, 1.05, sym="O:SPXW261120P05800000")]))
    assert cache.symbols() == {"O:SPXW261120C05800000": 1, "O:SPXW261120P05800000": 1}


def test_last_is_the_newest_of_each_kind_also_after_eviction():
    """``last`` answers the newest trade, quote and index value the core saw for the symbol (decoded from
    its bytes), also when the count bound has evicted them from the log; an unknown symbol answers nothing."""
    cache = _cache(window_ns=50 * S, max_events=2)
    trade, quote = t(S, 100.0), q(S + 1, 99.9, 100.1)
    _add(cache, [trade, quote] + [q(S + 2 + i, 99.0 + i, 101.0) for i in range(3)])
    _add(cache, [IndexValue(sym="I:SPX", value=5900.25, ts=S + 9)])
    assert cache.last("SPY") == {"sym": "SPY", "seq": 5, "trade": trade, "quote": q(S + 4, 101.0, 101.0),
                                 "value": None}
    assert [e["event"] for e in cache.since("SPY", seq=0)["events"]] == [q(S + 3, 100.0, 101.0),
                                                                         q(S + 4, 101.0, 101.0)]
    assert cache.last("I:SPX")["value"] == IndexValue(sym="I:SPX", value=5900.25, ts=S + 9)
    assert cache.last("QQQ") == {"sym": "QQQ", "seq": 0, "trade": None, "quote": None, "value": None}