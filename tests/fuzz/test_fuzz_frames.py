"""Fuzzing the frame boundary: arbitrary bytes and structurally valid but hostile msgpack.

Property: ``SubscriberCore.accept`` and ``Frame.body`` never raise anything but FrameError,
every refusal is counted by reason, and good frames interleaved with bad ones all arrive.
"""

import asyncio

import msgspec
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spx_common.bus import RpcServer, SubscriberCore
from spx_common.codec import FrameError, encode_payload, registered_types
from spx_common.models import Trade

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=20,
)


def _good(seq):
    return [b"tick.SPY", encode_payload("ticks", [Trade(sym="SPY", price=float(seq), ts=seq)], src="feed",
                                        session="good", seq=seq, event_ns=seq)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.lists(st.binary(max_size=64), max_size=4),
    st.tuples(st.sampled_from(sorted(registered_types())), msgpack_values).map(
        lambda tb: [b"tick.X", msgspec.msgpack.encode([1, tb[0], "fz", "s", 1, 0, 0, msgspec.Raw(
            msgspec.msgpack.encode(tb[1]))])]),
    msgpack_values.map(lambda v: [b"tick.Y", msgspec.msgpack.encode(v)]),
), max_size=20))
def test_hostile_frames_never_crash_and_good_frames_around_them_arrive(bad_frames):
    core = SubscriberCore("fuzz")
    received = []
    seq = 0
    for bad in bad_frames:
        seq += 1
        for parts in (bad, _good(seq)):
            frame = core.accept(list(parts))
            if frame is None:
                continue
            try:
                body = frame.body()
            except FrameError as exc:
                assert exc.reason in {"schema", "garbage", "unknown_type"}
                continue
            if frame.session == "good":
                received.append(body[0].price)
    assert received == [float(i) for i in range(1, seq + 1)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=6), msgpack_values)
def test_rpc_server_answers_every_malformed_request_with_an_error_reply(parts, params):
    async def run():
        actx = zmq.asyncio.Context()
        srv = RpcServer(actx, "inproc://fuzz")
        srv.register("echo", lambda p: p)
        try:
            out = await srv.handle([b"id", b""] + list(parts))
            assert out[0] == b"id" and out[2] == b"reply"
            payload = encode_payload("doc", params, src="x", session="s", seq=0, event_ns=0)
            out = await srv.handle([b"id", b"", b"echo", payload])
            reply = msgspec.msgpack.decode(out[3])
            assert reply[0] == 1  # protocol version of the answer
        finally:
            srv.close()
            actx.term()

    asyncio.run(run())
