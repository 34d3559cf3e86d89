"""The frame envelope: round trips, batches, and every way a frame can be refused."""

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spx_common import codec, schemas
from spx_common.codec import FrameError, decode_frames, encode_payload
from spx_common.models import IndexValue, MicroBar, Quote, SetupTransition, Trade


def _frame(type_name, body, topic=b"tick.SPY", **kw):
    args = dict(src="feed", session="s1", seq=7, event_ns=123)
    args.update(kw)
    return [topic, encode_payload(type_name, body, **args)]


def test_batch_of_mixed_events_round_trips_in_order():
    batch = [
        Quote(sym="SPY", bid=590.0, ask=590.02, bid_size=300, ask_size=200, ts=1),
        Trade(sym="SPY", price=590.02, size=100, ts=2, seq=9, cond=[12]),
        IndexValue(sym="I:SPX", value=5900.5, ts=3),
    ]
    frame = decode_frames(_frame("ticks", batch))
    assert frame.topic == "tick.SPY"
    assert (frame.type, frame.src, frame.session, frame.seq, frame.event_ns) == ("ticks", "feed", "s1", 7, 123)
    assert frame.pub_ns > 0
    assert frame.body() == batch


@pytest.mark.parametrize(
    "parts, reason",
    [
        ([b"tick.SPY", b"\xc1\xc1garbage"], "garbage"),
        ([b"tick.SPY"], "frames"),
        ([b"a", b"b", b"c"], "frames"),
        ([b"\xff\xfe", encode_payload("ticks", [], src="x", session="s", seq=1, event_ns=0)], "garbage"),
        ([b"tick.SPY", msgspec.msgpack.encode([1, "ticks"])], "schema"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(parts, reason):
    with pytest.raises(FrameError) as exc:
        decode_frames(parts)
    assert exc.value.reason == reason


def test_wrong_protocol_version_is_refused():
    env = msgspec.msgpack.encode([99, "ticks", "feed", "s", 1, 0, 0, msgspec.msgpack.encode([])])
    with pytest.raises(FrameError) as exc:
        decode_frames([b"tick.SPY", env])
    assert exc.value.reason == "version"
    assert "99" in exc.value.message


def test_missing_body_fields_and_constraint_violations_fail_on_body_decode():
    frame = decode_frames(_frame("ticks", [{"k": "t", "sym": "SPY", "price": 1.0}]))  # no ts
    with pytest.raises(FrameError) as exc:
        frame.body()
    assert exc.value.reason == "schema" and "ts" in exc.value.message
    frame = decode_frames(_frame("ticks", [{"k": "t", "sym": "SPY", "price": -5.0, "ts": 1}]))
    with pytest.raises(FrameError, match="price"):
        frame.body()


def test_unknown_message_type_is_refused_on_body_decode():
    frame = decode_frames(_frame("no_such_type", {"a": 1}))
    with pytest.raises(FrameError) as exc:
        frame.body()
    assert exc.value.reason == "unknown_type"


def test_register_refuses_a_second_schema_for_a_name():
    codec.register("bar", MicroBar)  # same schema: fine
    with pytest.raises(ValueError):
        codec.register("bar", Trade)


def test_pydantic_twins_mirror_structs_and_give_field_errors():
    assert set(schemas.MODELS) >= {"Trade", "Quote", "MicroBar", "SetupTransition", "Order", "Fill", "CoachEvent"}
    t = schemas.validate(SetupTransition, {
        "setup_id": "a", "detector": "orb", "family": "orb", "sym": "I:SPX", "direction": "long",
        "to_state": "triggered", "reason": "price above trigger", "ts": 5})
    assert isinstance(t, SetupTransition) and t.to_state == "triggered"
    with pytest.raises(Exception) as exc:
        schemas.validate(Trade, {"sym": "SPY", "price": -1, "ts": 1, "bogus": 1})
    text = str(exc.value)
    assert "price" in text and "bogus" in text
    schema = schemas.json_schema(Quote)
    assert schema["properties"]["bid"]["minimum"] == 0
    assert schema["properties"]["k"]["const"] == "q"


def test_codec_self_check_passes():
    codec.check_codec()


# ``ticks`` frames are decoded in one pass with a typed envelope; everything a caller sees must be what
# the general path (envelope with the body as ``Raw``, then the body) gives.


def _general(parts):
    """The general path's view of a frame: header and ``Raw`` body, decoded as before the ticks path."""
    return codec._ENVELOPE_DECODER.decode(parts[1])


@settings(max_examples=200, deadline=None)
@given(
    src=st.text(max_size=300), session=st.text(max_size=70000 // 60),
    seq=st.integers(0, 2**64 - 1), event_ns=st.integers(-(2**63), 2**64 - 1), pub_ns=st.integers(-(2**63), 2**63 - 1),
    n=st.integers(0, 3),
)
@example(src="f" * 31, session="s" * 255, seq=127, event_ns=-32, pub_ns=2**32, n=1)  # fixstr, str8, fixints
@example(src="f" * 256, session="\u00e9" * 40000, seq=2**64 - 1, event_ns=-(2**63), pub_ns=-33, n=2)  # str16/32
def test_ticks_frames_decode_in_one_pass_with_the_same_header_body_and_body_bytes(src, session, seq, event_ns,
                                                                                  pub_ns, n):
    batch = [Trade(sym="SPY", price=1.5 + i, size=i, ts=i, cond=[i]) for i in range(n)]
    parts = _frame("ticks", batch, src=src, session=session, seq=seq, event_ns=event_ns, pub_ns=pub_ns)
    frame = decode_frames(parts)
    assert type(frame.env) is codec.TicksEnvelope
    old = _general(parts)
    assert (frame.src, frame.session, frame.seq, frame.event_ns, frame.pub_ns) == (
        old.src, old.session, old.seq, old.event_ns, old.pub_ns)
    assert bytes(frame.raw_body()) == bytes(old.body)
    first = frame.body()
    assert first == batch
    again = frame.body()  # a new object each call, as when every call decoded the body
    assert again == batch and again is not first


def test_ticks_frame_with_a_bad_body_takes_the_general_path_and_fails_on_body_decode():
    frame = decode_frames(_frame("ticks", [{"k": "t", "sym": "SPY", "price": -5.0, "ts": 1}]))
    assert type(frame.env) is codec.Envelope
    with pytest.raises(FrameError, match="price") as exc:
        frame.body()
    assert exc.value.reason == "schema"


def test_ticks_frame_from_a_buffer_that_is_not_bytes_decodes_on_the_general_path():
    parts = _frame("ticks", [Quote(sym="SPY", bid=1.0, ask=1.1, ts=5)])
    frame = decode_frames([parts[0], memoryview(parts[1])])
    assert type(frame.env) is codec.Envelope
    assert frame.body() == [Quote(sym="SPY", bid=1.0, ask=1.1, ts=5)]
    assert bytes(frame.raw_body()) == bytes(_general(parts).body)


@pytest.mark.parametrize("type_name, body", [
    ("ticks", [Trade(sym="SPY", price=590.25, size=100, ts=2**62, cond=[12, 37]),
               Quote(sym="O:SPXW261204C05900000", bid=0.0, ask=1.05, ts=1)]),
    ("ticks", []),
    ("bar", MicroBar(sym="SPY", interval="1s", start_ns=1, open=1.0, high=2.0, low=0.5, close=1.5, closed=True)),
    ("doc", {"levels": [1.5, 2.5], "regime": "trend", "nested": {"a": None}}),
    ("doc", {}),
])
def test_payload_is_the_envelope_with_its_body_encoded_inline(type_name, body):
    """encode_payload encodes in one pass; the bytes are those of the Envelope with a pre-encoded Raw body."""
    enc = msgspec.msgpack.Encoder()
    for kw in (dict(src="feed", session="s" * 40, seq=2**40, event_ns=-1, pub_ns=2**63 - 1),
               dict(src="", session="", seq=1, event_ns=0, pub_ns=0)):
        old = enc.encode(codec.Envelope(codec.PROTOCOL_VERSION, type_name, kw["src"], kw["session"], kw["seq"],
                                        kw["event_ns"], kw["pub_ns"], msgspec.Raw(enc.encode(body))))
        assert encode_payload(type_name, body, **kw) == old


# ``lazy_ticks``: a ``ticks`` frame is accepted on its header alone and its body validated when read; what a
# caller sees (header, body bytes, body, refusals and their reasons) must be what the other paths give.


@settings(max_examples=100, deadline=None)
@given(
    src=st.text(max_size=300), session=st.text(max_size=70000 // 60),
    seq=st.integers(0, 2**63 - 1), event_ns=st.integers(-(2**63), 2**63 - 1), pub_ns=st.integers(-(2**63), 2**63 - 1),
    n=st.integers(0, 3),
)
@example(src="f" * 31, session="s" * 255, seq=127, event_ns=-32, pub_ns=2**32, n=1)  # fixstr, str8, fixints
def test_lazy_ticks_frames_keep_the_body_as_bytes_and_decode_it_on_demand(src, session, seq, event_ns, pub_ns, n):
    batch = [Quote(sym="SPY", bid=1.0, ask=1.5 + i, ts=i) if i % 2 else Trade(sym="SPY", price=1.5 + i, size=i, ts=i)
             for i in range(n)]
    parts = _frame("ticks", batch, src=src, session=session, seq=seq, event_ns=event_ns, pub_ns=pub_ns)
    frame = decode_frames(parts, lazy_ticks=True)
    assert type(frame.env) is codec.TicksHeader and frame.payload is parts[1]
    old = _general(parts)
    assert (frame.type, frame.src, frame.session, frame.seq, frame.event_ns, frame.pub_ns) == (
        "ticks", old.src, old.session, old.seq, old.event_ns, old.pub_ns)
    assert frame.raw_body() == parts[1][frame.body_at:] == bytes(old.body)
    first = frame.body()
    assert first == batch
    again = frame.body()
    assert again == batch and again is not first


_BAD_TICKS_BODIES = {
    "negative price": msgspec.msgpack.encode([{"k": "t", "sym": "SPY", "price": -5.0, "ts": 1}]),
    "no ts": msgspec.msgpack.encode([{"k": "t", "sym": "SPY", "price": 1.0}]),
    "unknown kind": msgspec.msgpack.encode([{"k": "z", "sym": "SPY", "ts": 1}]),
    "a map, not a list": msgspec.msgpack.encode({"k": "t"}),
    "never-used byte": b"\xc1",
    "cut short": msgspec.msgpack.encode([{"k": "t", "sym": "SPY", "price": 1.0, "ts": 1}])[:-3],
    "trailing bytes": msgspec.msgpack.encode([]) + b"\x01",
    "no body": b"",
}


def _reason(fn):
    try:
        fn()
    except FrameError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("name", list(_BAD_TICKS_BODIES))
def test_lazy_ticks_bad_bodies_are_refused_with_the_general_paths_reason(name):
    """A bad body passes the header read and is refused by ``body()`` with the reason the general path gives
    (which refuses a frame whose body breaks the envelope already when decoding the frame)."""
    parts = _frame("ticks", msgspec.Raw(_BAD_TICKS_BODIES[name]))
    general = _reason(lambda: decode_frames(parts).body())
    assert general in ("schema", "garbage")
    try:
        lazy = decode_frames(parts, lazy_ticks=True)
    except FrameError as exc:  # a frame whose header cannot be followed by a body is refused as before
        assert exc.reason == general and name == "no body"
        return
    assert type(lazy.env) is codec.TicksHeader
    assert _reason(lazy.body) == general


def test_lazy_ticks_frames_take_the_other_paths_when_the_header_is_not_read(monkeypatch):
    parts = _frame("ticks", [Quote(sym="SPY", bid=1.0, ask=1.1, ts=5)])
    frame = decode_frames([parts[0], memoryview(parts[1])], lazy_ticks=True)  # not bytes: general path
    assert type(frame.env) is codec.Envelope and frame.body_at == -1
    assert frame.body() == [Quote(sym="SPY", bid=1.0, ask=1.1, ts=5)]
    monkeypatch.setattr(codec, "ticks_header", lambda payload: None)  # a header the parser does not take
    frame = decode_frames(parts, lazy_ticks=True)
    assert type(frame.env) is codec.TicksEnvelope and frame.body_at == -1
    assert frame.body() == [Quote(sym="SPY", bid=1.0, ask=1.1, ts=5)]
    other = decode_frames(_frame("bar", MicroBar(sym="SPY", interval="1s", start_ns=1, open=1.0, high=1.0, low=1.0,
                                                 close=1.0)), lazy_ticks=True)
    assert type(other.env) is codec.Envelope and other.body().sym == "SPY"  # only ticks frames are lazy
