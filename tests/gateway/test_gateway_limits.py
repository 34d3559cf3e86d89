"""Connection-level limits on a real gateway: token expiry mid-session, connection cap, abusive rate,
oversized frames."""

import time

import pytest
import websockets
import websockets.sync.client as wsc

from services.gateway import auth
from spx_common.models import CoachEvent
from tests.conftest import eventually
from tests.gateway.harness import SECRET, GatewayRunner, WsClient


@pytest.fixture
def gw(run_dir):
    g = GatewayRunner(run_dir, max_clients=2, client_msgs_per_s=2, max_frame_bytes=2048)
    yield g
    g.close()


def test_token_expiring_mid_session_drops_user_channels(gw):
    c = WsClient(gw.url, token=auth.mint("alice", SECRET.encode(), int(time.time()) + 2))
    c.subscribe("coach")
    err = c.until(lambda m: m["type"] == "error", 6)
    assert err["data"]["code"] == "token_expired" and "coach" in err["data"]["message"]
    gw.pubs["coach"].publish("coach.alice", "coach", CoachEvent(user="alice", kind="stop_threat", message="x", ts=1), 1)
    with pytest.raises(TimeoutError):
        c.until(lambda m: m["channel"] == "coach" and m["type"] == "update", 0.5)
    c.close()


def test_connection_cap_abusive_rate_and_oversized_frames(gw):
    a, b = WsClient(gw.url), WsClient(gw.url)
    with pytest.raises(websockets.InvalidStatus) as exc:
        wsc.connect(gw.url, open_timeout=5)
    assert exc.value.response.status_code == 503
    b.send("x" * 5000)  # over the hard frame cap: closed with 1009
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(10):
            b.recv(2)
    assert closed.value.rcvd.code == 1009
    try:
        for _ in range(40):  # 20x the allowed rate: closed with 1008 (maybe before the last of them is sent)
            a.send({"op": "ping"})
    except websockets.ConnectionClosed:
        pass
    eventually(lambda: gw.svc.m_disconnects.value(reason="abuse") == 1, 5, what="abusive client dropped")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(100):
            a.recv(2)
    assert closed.value.rcvd.code == 1008
    assert gw.svc.m_disconnects.value(reason="abuse") == 1
    eventually(lambda: len(gw.svc.conns) == 0, 5, what="closed connections forgotten")
    WsClient(gw.url).close()  # room again
