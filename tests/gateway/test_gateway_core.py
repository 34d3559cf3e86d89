"""The gateway's pure parts: throttle, client queue conflation/ordering/bounds, tokens, channel names."""

import json

import msgspec

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import auth
from services.gateway.hub import Client, Hub, Throttle
from services.gateway.protocol import ChannelError, PriceData, bar_json, parse_channel
from spx_common.models import IndexValue, MicroBar, Quote, Trade


def test_throttle_leading_edge_then_latest():
    t = Throttle(0.25)
    assert t.offer("SPY", 1, now=10.0) is True  # leading edge goes out at once
    assert t.offer("SPY", 2, now=10.1) is False
    assert t.offer("SPY", 3, now=10.2) is False  # replaces the held value
    assert t.due(10.2) == []
    assert t.due(10.25) == [("SPY", 3)]  # the latest, when the window ends
    assert t.offer("SPY", 4, now=10.3) is False  # a new window started at 10.25
    assert t.offer("QQQ", 1, now=10.3) is True  # per symbol
    assert t.due(10.5) == [("SPY", 4)]


def test_client_conflates_in_place_and_keeps_order_behind_sealed_messages():
    c = Client(1, None, queue_max=100)
    c.push(b'{"n":1}', conflate="bar")
    c.push(b'{"n":2}', conflate="bar")  # folds into n=1's slot
    c.push(b'{"n":3}', seal="bar")  # a closed bar: later partials must queue behind it
    c.push(b'{"n":4}', conflate="bar")
    c.push(b'{"n":5}', conflate="bar")
    out = [json.loads(c.pop()) for _ in range(3)]
    assert out == [{"n": 2, "conflated": 1}, {"n": 3}, {"n": 5, "conflated": 1}]
    assert c.pop() is None and c.conflated == 2


def test_client_overflow_clears_and_flags():
    woke = []
    c = Client(1, None, queue_max=3, wake=lambda: woke.append(1))
    for i in range(3):
        c.push(f'{{"n":{i}}}'.encode())
    assert not c.overflowed
    c.push(b'{"n":3}')
    assert c.overflowed and len(c) == 0 and woke
    c.push(b'{"n":4}')
    assert len(c) == 0  # nothing more is queued for a client being disconnected


def test_client_slow_detection_needs_sustained_backlog():
    c = Client(1, None, queue_max=10)
    for i in range(6):
        c.push(f'{{"n":{i}}}'.encode())
    assert c.check_slow(0.0, 5.0) is False
    assert c.check_slow(4.0, 5.0) is False
    assert c.check_slow(5.5, 5.0) is True
    while c.pop():
        pass
    assert c.check_slow(6.0, 5.0) is False and c.high_since is None


def test_latency_is_spliced_per_client():
    c = Client(1, None, queue_max=10)
    c.latency = True
    c.push(b'{"a":1}', pub_ns=1_000_000)
    assert json.loads(c.pop(now_ns=3_500_000)) == {"a": 1, "latencyMs": 2.5}


def test_hub_snapshot_seq_stitches_with_updates():
    hub = Hub(price_throttle_s=0)
    bars = [MicroBar(sym="SPY", interval="1s", start_ns=i * 10**9, open=1, high=2, low=0.5, close=1.5, closed=True)
            for i in range(5)]
    for b in bars[:3]:
        hub.on_bar(b, 0)
    c = Client(1, None, queue_max=100)
    hub.subscribe(c, "microbar:SPY:1s")
    for b in bars[3:]:
        hub.on_bar(b, 0)
    msgs = [json.loads(t) for t in iter(c.pop, None)]
    snap, *updates = msgs
    assert snap["type"] == "snapshot" and snap["seq"] == 3 and [b["startNs"] for b in snap["data"]["bars"]] == [0, 10**9, 2 * 10**9]
    assert [u["seq"] for u in updates] == [4, 5] and [u["data"]["startNs"] for u in updates] == [3 * 10**9, 4 * 10**9]


def test_hub_price_prefers_trades_and_falls_back_to_mid():
    hub = Hub(price_throttle_s=0)
    c = Client(1, None, queue_max=100)
    hub.subscribe(c, "price:SPY")
    hub.on_ticks("SPY", [Trade(sym="SPY", price=600.5, size=3, ts=5)], 0, now=1.0)
    msgs = [json.loads(t) for t in iter(c.pop, None)]
    assert msgs[-1]["data"] == {"sym": "SPY", "price": 600.5, "bid": None, "ask": None, "size": 3, "ts": 5}
    late = Client(2, None, queue_max=100)
    hub.subscribe(late, "price:SPY")
    snap = json.loads(late.pop())
    assert snap["type"] == "snapshot" and snap["data"] == msgs[-1]["data"] and snap["seq"] == msgs[-1]["seq"]
    PriceData.model_validate(snap["data"])  # the documented schema


def _price_reference(batches) -> dict:
    """The price rule read forward, event by event (what Hub.on_ticks computes from the batch's end)."""
    d = {"sym": "X", "price": None, "bid": None, "ask": None, "size": None, "ts": 0}
    have_trade = False
    for batch in batches:
        for ev in batch:
            if isinstance(ev, Trade):
                d["price"], d["size"], have_trade = ev.price, ev.size, True
            elif isinstance(ev, Quote):
                d["bid"], d["ask"] = ev.bid, ev.ask
                if not have_trade and ev.bid > 0 and ev.ask > 0:
                    d["price"] = round((ev.bid + ev.ask) / 2, 4)
            else:
                d["price"], have_trade = ev.value, True
            d["ts"] = ev.ts
    return d


_px = st.sampled_from([0.0, 1.25, 2.5, 600.5])
_tick = st.one_of(
    st.builds(lambda p, s: Trade(sym="X", price=p, size=s, ts=1), _px, st.sampled_from([0.0, 1.0, 7.0])),
    st.builds(lambda b, a: Quote(sym="X", bid=b, ask=a, ts=1), _px, _px),
    st.builds(lambda v: IndexValue(sym="X", value=v, ts=1), _px))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_tick, max_size=6), max_size=5))
def test_hub_price_from_the_batch_end_equals_the_forward_rule(batches):
    hub = Hub(price_throttle_s=0)
    ts = 0
    stamped = []
    for batch in batches:
        out = []
        for ev in batch:
            ts += 1
            out.append(msgspec.structs.replace(ev, ts=ts))
        stamped.append(out)
        hub.on_ticks("X", out, 0, now=1.0)
    got = hub.prices.get("X")
    want = _price_reference(stamped)
    if not any(stamped):
        assert got is None
    else:
        assert {k: v for k, v in got.items() if k != "_trade"} == want


def test_bar_json_is_camel_case_and_complete():
    b = MicroBar(sym="SPY", interval="1s", start_ns=1, open=1, high=1, low=1, close=1, delta_volume=3.0)
    d = bar_json(b)
    assert d["deltaVolume"] == 3.0 and d["bidAskImbalance"] is None and d["startNs"] == 1
    assert not any("_" in k for k in d)


def test_channel_names():
    assert parse_channel("price:I:SPX") == ("price", ("I:SPX",))
    assert parse_channel("microbar:SPY:5s") == ("microbar", ("SPY", "5s"))
    assert parse_channel("coach") == ("coach", ())
    for bad in ("coach:bob", "price:", "microbar:SPY", "microbar:SPY:1x", "price:a b", "x" * 300, 7):
        with pytest.raises(ChannelError):
            parse_channel(bad)


def test_tokens_sign_expire_and_refuse_tampering(tmp_path):
    secret = auth.load_secret("", tmp_path / "k" / "gw.key")
    assert auth.load_secret("", tmp_path / "k" / "gw.key") == secret  # created once, then read
    assert (tmp_path / "k" / "gw.key").stat().st_mode & 0o777 == 0o600
    tok = auth.mint("alice", secret, 2000)
    assert auth.verify(tok, secret, 1999) == ("alice", 2000)
    with pytest.raises(auth.TokenError) as exc:
        auth.verify(tok, secret, 2000)
    assert exc.value.code == "token_expired"
    forged = tok.replace("alice", "bob")
    for bad in (forged, tok + "x", "v2." + tok[3:], "garbage", auth.mint("alice", b"other", 2000)):
        with pytest.raises(auth.TokenError) as exc:
            auth.verify(bad, secret, 1000)
        assert exc.value.code == "bad_token"
    with pytest.raises(ValueError):
        auth.mint("bad user", secret, 10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans(), st.integers(0, 3)), max_size=60),
       st.integers(1, 80))
def test_queue_keeps_stream_order_and_always_ends_with_the_latest(ops, pops_every):
    """Any interleaving of sealed (closed bar) and conflatable (partial) updates on two streams: per
    stream, delivered seqs increase, every sealed update arrives, and the last update is delivered."""
    c = Client(1, None, queue_max=10_000)
    seq = {"a": 0, "b": 0}
    sent_sealed = {"a": [], "b": []}
    got = {"a": [], "b": []}
    for i, (stream, sealed, _) in enumerate(ops):
        seq[stream] += 1
        text = json.dumps({"s": stream, "seq": seq[stream], "sealed": sealed}).encode()
        if sealed:
            c.push(text, seal=stream)
            sent_sealed[stream].append(seq[stream])
        else:
            c.push(text, conflate=stream)
        if i % pops_every == 0:
            msg = c.pop()
            if msg:
                m = json.loads(msg)
                got[m["s"]].append(m)
    for msg in iter(c.pop, None):
        m = json.loads(msg)
        got[m["s"]].append(m)
    for stream in ("a", "b"):
        seqs = [m["seq"] for m in got[stream]]
        assert seqs == sorted(set(seqs))
        assert [m["seq"] for m in got[stream] if m["sealed"]] == sent_sealed[stream]
        if seq[stream]:
            assert seqs[-1] == seq[stream]


def test_client_queue_is_bounded_in_bytes_conflation_first():
    """Issue 22 item 3: queues were bounded by message count only (a bar snapshot is ~290 KB)."""
    c = Client(1, None, queue_max=1000, queue_max_bytes=1000)
    c.push(b"x" * 400, conflate="price:SPY")
    for _ in range(50):  # conflated in place: the bytes do not add up
        c.push(b"y" * 400, conflate="price:SPY")
    assert c.queued_bytes == 400 and not c.overflowed
    c.push(b"z" * 500)
    assert c.queued_bytes == 900 and not c.overflowed
    assert c.pop().startswith(b"y" * 399) and c.queued_bytes == 500  # (with "conflated" spliced in)
    c.push(b"w" * 400)
    assert not c.overflowed and c.queued_bytes == 900
    c.push(b"v" * 101)  # one byte over: overflowed, queue dropped
    assert c.overflowed and len(c) == 0 and c.queued_bytes == 0


def test_unknown_symbols_leave_nothing_behind():
    """Issue 22 item 3: 20 connections subscribing unique microbar names grew the series map to 122k."""
    hub = Hub(history_bars=10, max_symbols=10)
    c = Client(1, None, queue_max=10_000)
    for i in range(500):
        name = f"microbar:JUNK{i}:1s"
        assert hub.seed_bars(name, [], None) == 0  # the aggregator does not know it
        hub.subscribe(c, name)
        hub.unsubscribe(c, name)
    assert hub.series == {} and hub.channels == {}
    bar = MicroBar(sym="SPY", interval="1s", start_ns=10**18, open=1.0, high=2.0, low=0.5, close=1.5, volume=3.0,
                   closed=True)
    for i in range(30):  # real series stay LRU-bounded, whichever way they arrive
        hub.seed_bars(f"microbar:S{i}:1s", [bar], None)
    assert len(hub.series) == 10
    hub.subscribe(c, "price:NOPE")
    hub.remove(c)
    assert "price:NOPE" not in hub.channels


def test_bar_snapshot_splices_the_cached_history_exactly():
    hub = Hub(history_bars=5)
    bars = [MicroBar(sym="SPY", interval="1s", start_ns=10**18 + i * 10**9, open=1.0, high=2.0, low=0.5, close=1.5,
                     volume=3.0, closed=i < 6) for i in range(7)]
    for b in bars:
        hub.on_bar(b, 0)
    first, second = Client(1, None, queue_max=100), Client(2, None, queue_max=100)
    hub.subscribe(first, "microbar:SPY:1s")
    hub.subscribe(second, "microbar:SPY:1s")
    a, b = json.loads(first.pop()), json.loads(second.pop())
    assert a == b
    assert a["type"] == "snapshot" and a["seq"] == 7 and a["ts"] == bars[6].start_ns
    assert a["data"] == {"bars": [bar_json(x) for x in bars[1:6]], "current": bar_json(bars[6])}
    hub.on_bar(MicroBar(sym="SPY", interval="1s", start_ns=bars[6].start_ns, open=1.0, high=2.0, low=0.5,
                        close=1.7, volume=4.0, closed=True), 0)  # the cache follows the history
    late = Client(3, None, queue_max=100)
    hub.subscribe(late, "microbar:SPY:1s")
    snap = json.loads(late.pop())
    assert snap["data"]["current"] is None and snap["data"]["bars"][-1]["close"] == 1.7
    assert len(snap["data"]["bars"]) == 5
