"""``codec.ticks_header``: the one reader of a ``ticks`` envelope's header for consumers of the body as bytes
(``decode_frames(..., lazy_ticks=True)``, the aggregator). Its oracle is the general path: whatever it reads
must be what ``decode_frames`` reads from the same payload, the body must be the payload's suffix after
``body_at``, and on anything else it answers None without raising (the frame then takes the general path)."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from spx_common import codec
from spx_common.codec import Envelope, TicksHeader, decode_frames, encode_payload, ticks_header
from spx_common.models import MarketEvent, Quote, Trade

S = 1_000_000_000
ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(list[MarketEvent])
EVENTS = [Quote(sym="SPY", bid=99.99, ask=100.01, bid_size=100.0, ask_size=200.0, ts=S),
          Trade(sym="SPY", price=100.0, size=100.0, ts=S + 1)]


def payload(events=EVENTS, **kw) -> bytes:
    head = dict(src="feed", session="a1b2c3", seq=17, event_ns=5 * S, pub_ns=5 * S + 12345)
    head.update(kw)
    return encode_payload("ticks", list(events), **head)


def fields(head: TicksHeader) -> tuple:
    return (head.src, head.session, head.seq, head.event_ns, head.pub_ns)


def general(p: bytes) -> tuple:
    """What the general path (an Envelope, body kept raw) reads from ``p``: the header and where the body is."""
    env = msgspec.msgpack.decode(p, type=Envelope)
    return (env.src, env.session, env.seq, env.event_ns, env.pub_ns), len(p) - len(env.body)


def test_reads_the_header_and_finds_the_body():
    for kw in ({}, {"src": "x" * 40, "session": "é" * 200, "seq": 0, "event_ns": 2**63 - 1, "pub_ns": -5},
               {"src": "", "session": "s" * 70_000, "seq": 2**40, "pub_ns": 200},
               {"seq": 2**64 - 1, "event_ns": -(2**63)}):  # every int msgspec reads, as the general path
        p = payload(**kw)
        head, at = ticks_header(p)
        assert (fields(head), at) == general(p)
        assert (head.v, head.type, head.body) == (codec.PROTOCOL_VERSION, "ticks", None)
        assert DEC.decode(p[at:]) == EVENTS


def test_refuses_what_it_cannot_read_and_never_raises():
    p = payload([EVENTS[1]])
    assert ticks_header(p) is not None
    for bad in (
        bytearray(p), memoryview(p), p.decode("latin-1"), None, 1, [p],  # not bytes
        b"", p[:3], b"\x98\x02" + p[2:],  # another protocol version
        p.replace(b"\xa5ticks", b"\xa5tickz", 1), b"\x99" + p[1:],  # another type, another array length
        encode_payload("bars", [EVENTS[1]], src="feed", session="s", seq=1, event_ns=1),
        p.replace(b"\xa4feed", b"\xa4fe\xff\xfe"),  # src not UTF-8
        p.replace(b"\xa4feed", b"\xc4\x04feed"),  # src as bin
        p.replace(b"\xa4feed", b"\x84feed"),  # src a fixmap where a fixstr is expected
        payload(event_ns=1.5),  # not an int
        payload()[:-len(ENC.encode(EVENTS))],  # no body
    ):
        assert ticks_header(bad) is None, bad
    for n in range(ticks_header(p)[1] + 1):  # truncated in the header or right after it: None, no exception
        assert ticks_header(p[:n]) is None


text_st = st.one_of(st.text(max_size=40), st.text(min_size=200, max_size=300), st.sampled_from(["", "feed", "日本"]))
int_st = st.one_of(st.integers(-2**63, 2**64 - 1), st.integers(-40, 300), st.sampled_from([-2**63, 2**64 - 1]))


@settings(max_examples=150, deadline=None)
@given(src=text_st, session=text_st, seq=int_st, event_ns=int_st, pub_ns=int_st, n=st.integers(0, 3))
def test_matches_the_general_path_on_valid_frames(src, session, seq, event_ns, pub_ns, n):
    events = [Trade(sym="SPY", price=1.0, ts=i) for i in range(n)]
    p = payload(events, src=src, session=session, seq=seq, event_ns=event_ns, pub_ns=pub_ns)
    head, at = ticks_header(p)
    assert (fields(head), at) == general(p)
    frame = decode_frames([b"tick.SPY", p], lazy_ticks=True)
    assert frame.env == head and frame.body_at == at and frame.body() == events
    for cut in {0, 1, codec._TICKS_HEAD_LEN, at - 1, at, *random.Random(seq).sample(range(at), 8)}:
        assert ticks_header(p[:cut]) is None
    if len(p) - 1 > at:
        assert ticks_header(p[:-1]) == (head, at)  # the body is not read


def _consistent(p: bytes) -> None:
    """None, or the fields an Envelope decodes from the same header bytes with any body after them."""
    got = ticks_header(p)
    if got is None:
        return
    head, at = got
    assert codec._TICKS_HEAD_LEN < at < len(p)
    env = msgspec.msgpack.decode(p[:at] + b"\x90", type=Envelope)
    assert (env.v, env.type) == (codec.PROTOCOL_VERSION, "ticks")
    assert fields(head) == (env.src, env.session, env.seq, env.event_ns, env.pub_ns), p.hex()


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=80), seed=st.integers(0, 2**32), src=text_st, seq=int_st, cut=st.integers(0, 60))
def test_never_raises_on_garbage_and_mutations(junk, seed, src, seq, cut):
    assert ticks_header(junk) is None or junk.startswith(codec._TICKS_HEAD)
    _consistent(junk)
    _consistent(codec._TICKS_HEAD + junk)
    _consistent(payload()[:cut] + junk)
    p = bytearray(payload(src=src, seq=seq))
    rnd = random.Random(seed)
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(3)
        i = rnd.randrange(len(p))
        if op == 0:
            p[i] = rnd.randrange(256)
        elif op == 1:
            del p[i]
        else:
            p.insert(i, rnd.randrange(256))
    _consistent(bytes(p))
