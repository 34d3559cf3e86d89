"""Bus helpers over real ZeroMQ sockets: loss and duplicate detection, peers, lazy-pirate RPC."""

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from spx_common.bus import (AsyncRpcClient, Publisher, RpcClient, RpcError, RpcServer, RpcTimeout, Subscriber,
                            SubscriberCore)
from spx_common.codec import encode_payload
from spx_common.models import Heartbeat, Trade
from tests.conftest import eventually


def _trade(i):
    return [Trade(sym="SPY", price=500 + i, size=1, ts=i + 1)]


def _connected_pair(zctx, run_dir, prefixes=("tick.",)):
    ep = f"ipc://{run_dir}/t.pub"
    pub = Publisher(zctx, ep, "feed", hwm=10_000)
    sub = Subscriber(zctx, [ep], list(prefixes))
    # slow joiner: publish probes until one arrives
    eventually(lambda: pub.publish("tick.PROBE", "ticks", _trade(0), 1) and sub.recv(0.05), 5)
    return pub, sub


def test_sequence_numbers_are_per_topic_and_nothing_is_lost(zctx, run_dir):
    pub, sub = _connected_pair(zctx, run_dir)
    for i in range(1000):
        pub.publish("tick.SPY" if i % 2 else "tick.QQQ", "ticks", _trade(i), i + 1)
    got = [sub.recv(2) for _ in range(1000)]
    assert all(f is not None for f in got)
    spy = [f.seq for f in got if f.topic == "tick.SPY"]
    assert spy == list(range(1, 501))
    assert sub.core.lost.total() == 0 and sub.core.dups.total() == 0


@pytest.mark.parametrize("lazy_ticks", [False, True])
def test_gaps_duplicates_and_restarts_are_detected(lazy_ticks):
    """The same accounting whether ticks frames are decoded or accepted on their header (``lazy_ticks``)."""
    core = SubscriberCore("t", lazy_ticks=lazy_ticks)

    def frame(seq, session="A", topic=b"tick.SPY"):
        return [topic, encode_payload("ticks", _trade(seq), src="feed", session=session, seq=seq, event_ns=seq)]

    first = core.accept(frame(5))  # late join: no loss counted
    assert first is not None and (first.body_at > 0) == lazy_ticks and first.body() == _trade(5)
    assert core.accept(frame(6)) is not None
    assert core.accept(frame(10)) is not None
    assert core.lost.value(src="feed") == 3
    assert core.accept(frame(10)) is None and core.dups.value(src="feed") == 1
    # publisher restart: new session restarts numbering without a false loss
    hb = Heartbeat(service="feed", session="A", pid=1, started_ns=1, ts=1)
    core.accept([b"hb.feed", encode_payload("heartbeat", hb, src="feed", session="A", seq=1, event_ns=1)])
    hb2 = Heartbeat(service="feed", session="B", pid=2, started_ns=2, ts=2)
    core.accept([b"hb.feed", encode_payload("heartbeat", hb2, src="feed", session="B", seq=1, event_ns=2)])
    assert core.restarts.value(src="feed") == 1
    assert core.accept(frame(1, session="B")) is not None
    assert core.lost.value(src="feed") == 3


def test_peer_goes_down_after_timeout_and_comes_back():
    core = SubscriberCore("t", peer_timeout_s=0.2)
    changes = []
    core.on_peer_change = lambda p: changes.append((p.service, p.alive))
    hb = Heartbeat(service="aggregator", session="A", pid=1, started_ns=1, ts=1)
    core.accept([b"hb.aggregator", encode_payload("heartbeat", hb, src="aggregator", session="A", seq=1, event_ns=1)])
    assert core.peer_alive("aggregator")
    time.sleep(0.3)
    assert [p.service for p in core.check_peers()] == ["aggregator"]
    assert not core.peer_alive("aggregator")
    core.accept([b"hb.aggregator", encode_payload("heartbeat", hb, src="aggregator", session="A", seq=2, event_ns=2)])
    assert changes == [("aggregator", True), ("aggregator", False), ("aggregator", True)]


def test_high_water_mark_is_set_deliberately(zctx, run_dir):
    pub = Publisher(zctx, f"ipc://{run_dir}/h.pub", "x", hwm=123_456)
    assert pub.sock.getsockopt(zmq.SNDHWM) == 123_456


def test_garbage_is_counted_and_good_frames_around_it_kept(zctx, run_dir):
    ep = f"ipc://{run_dir}/raw.pub"
    raw = zctx.socket(zmq.PUB)
    raw.bind(ep)
    sub = Subscriber(zctx, [ep], ["tick."])
    good = encode_payload("ticks", _trade(1), src="feed", session="s", seq=1, event_ns=1)
    eventually(lambda: raw.send_multipart([b"tick.P", good]) or sub.recv(0.05), 5)
    raw.send_multipart([b"tick.SPY", b"\x00garbage"])
    raw.send_multipart([b"tick.SPY", encode_payload("ticks", _trade(2), src="feed", session="s2", seq=1, event_ns=1)])
    raw.send_multipart([b"tick.SPY"])
    raw.send_multipart([b"tick.SPY", encode_payload("ticks", _trade(3), src="feed", session="s2", seq=2, event_ns=1)])
    frames = [sub.recv(2), sub.recv(2)]
    assert [f.body()[0].price for f in frames] == [502, 503]
    assert sub.core.bad.value(reason="frames") == 1
    assert sub.core.bad.total() == 2


def _server(run_dir, actx, handlers):
    srv = RpcServer(actx, f"ipc://{run_dir}/r.rep")
    for k, v in handlers.items():
        srv.register(k, v)
    return srv


def test_rpc_round_trip_error_shape_and_handler_crash_isolation(run_dir):
    async def scenario():
        actx = zmq.asyncio.Context()
        stop = asyncio.Event()

        def boom(p):
            raise ZeroDivisionError("x")

        def refuse(p):
            raise RpcError("refused", "kill switch on")

        async def slow_add(p):
            await asyncio.sleep(0.01)
            return {"sum": p["a"] + p["b"]}

        srv = _server(run_dir, actx, {"add": slow_add, "boom": boom, "refuse": refuse})
        task = asyncio.ensure_future(srv.serve(stop))
        c = AsyncRpcClient(actx, srv.endpoint, timeout_s=1, retries=0)
        assert await c.call("add", {"a": 2, "b": 3}) == {"sum": 5}
        codes = []
        for method in ("boom", "refuse", "nope"):
            try:
                await c.call(method)
            except RpcError as exc:
                codes.append(exc.code)
        assert codes == ["internal", "refused", "unknown_method"]
        assert await c.call("add", {"a": 1, "b": 1}) == {"sum": 2}  # loop survived
        assert srv.requests.value(method="boom", outcome="internal") == 1
        stop.set()
        await task
        c.close()
        srv.close()
        actx.term()

    asyncio.run(scenario())


def test_lazy_pirate_never_wedges_and_recovers_when_server_returns(run_dir):
    ctx = zmq.Context()
    ep = f"ipc://{run_dir}/r.rep"
    client = RpcClient(ctx, ep, timeout_s=0.2, retries=1)
    t0 = time.monotonic()
    with pytest.raises(RpcTimeout) as exc:
        client.call("ping")
    assert exc.value.code == "timeout" and "2 attempt" in exc.value.message
    assert time.monotonic() - t0 < 2

    async def serve_once():
        actx = zmq.asyncio.Context()
        stop = asyncio.Event()
        srv = _server(run_dir, actx, {"ping": lambda p: "pong"})
        task = asyncio.ensure_future(srv.serve(stop))
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, lambda: client.call("ping", timeout_s=1))
        stop.set()
        await task
        srv.close()
        actx.term()
        return result

    assert asyncio.run(serve_once()) == "pong"  # same client object, after timeouts
    client.close()
    ctx.term()


def test_the_lazy_pirate_core_without_sockets():
    """The sync and async clients' shared core: the plan of a call, a reply's result or error, the timeout."""
    from spx_common.rpc import PirateCore, encode_reply

    core = PirateCore("tcp://127.0.0.1:1", timeout_s=0.5, retries=2)
    plan = core.plan("ping", {"a": 1}, None, None)
    assert (plan.attempts, plan.timeout_ms) == (3, 500) and plan.request[0] == b"ping"
    assert core.plan("ping", None, 0.1, 0).attempts == 1 and core.plan("ping", None, 0.1, 0).timeout_ms == 100
    assert core.reply([b"reply", encode_reply(True, {"pong": 1})]) == {"pong": 1}
    with pytest.raises(RpcError) as exc:
        core.reply([b"reply", encode_reply(False, None, "refused", "no")])
    assert (exc.value.code, exc.value.message) == ("refused", "no")
    with pytest.raises(RpcError) as exc:
        core.reply([b"reply", b"\xc1garbage"])
    assert exc.value.code == "bad_reply"
    err = core.timed_out(plan)
    assert isinstance(err, RpcTimeout) and "after 3 attempt(s) of 0.5s" in err.message
