"""Protocol tests with real websocket clients against a real gateway fed by real bus frames."""

import json
import socket
import threading
import time

import pytest
import websockets
import websockets.sync.client as wsc

from services.gateway import auth
from spx_common.models import CoachEvent, Position
from tests.conftest import eventually
from tests.gateway.harness import SECRET, T0, GatewayRunner, WsClient


def token(user: str, ttl: int = 3600) -> str:
    return auth.mint(user, SECRET.encode(), int(time.time()) + ttl)


@pytest.fixture
def gw(run_dir, request):
    g = GatewayRunner(run_dir, **getattr(request, "param", {"price_throttle_ms": 0}))
    yield g
    g.close()


@pytest.mark.parametrize("gw", [{"price_throttle_ms": 0, "history_bars": 20_000}], indirect=True)
def test_snapshot_then_live_stitch_without_gap_or_duplicate(gw):
    subscribed = threading.Event()
    produced = []

    def produce():
        i, extra = 0, 0
        while extra < 300 and i < 20_000:  # keeps streaming until 300 bars after the subscription
            gw.bar(i, 600 + i * 0.01, closed=False)
            gw.bar(i, 600 + i * 0.01, closed=True)
            gw.trade(600 + i * 0.01)
            i += 1
            extra += subscribed.is_set()
            time.sleep(0.001)
        produced.append(i)

    t = threading.Thread(target=produce)
    t.start()
    eventually(lambda: len(gw.svc.hub.series.get("microbar:SPY:1s", ()) and gw.svc.hub.series["microbar:SPY:1s"].bars) > 50,
               10, 0.005, what="stream under way")
    c = WsClient(gw.url)
    c.subscribe("microbar:SPY:1s", "price:SPY")
    subscribed.set()
    t.join(30)
    n = produced[0]
    eventually(lambda: gw.svc.hub.channels["microbar:SPY:1s"].seq == 2 * n, 10, what="all bars in")
    c.until(lambda m: m["channel"] == "microbar:SPY:1s" and m["seq"] == 2 * n, 10)
    bars = c.on("microbar:SPY:1s")
    snap, updates = bars[0], bars[1:]
    assert snap["type"] == "snapshot" and all(u["type"] == "update" for u in updates)
    assert 0 < snap["seq"] < 2 * n, "subscribed mid-stream"
    # sequence: contiguous from the snapshot on, except partial bars folded into a later one
    expected = snap["seq"] + 1
    for u in updates:
        assert u["seq"] >= expected, "duplicate or out of order"
        if u["seq"] > expected:
            assert u.get("conflated") and not u["data"]["closed"], f"gap at {expected}: {u}"
        expected = u["seq"] + 1
    # content: snapshot bars then closed updates are every bar exactly once, in order
    starts = [b["startNs"] for b in snap["data"]["bars"]] + [u["data"]["startNs"] for u in updates if u["data"]["closed"]]
    assert starts == sorted(set(starts)) and len(starts) == n
    assert starts[0] == T0  # the history covers the whole session
    prices = c.on("price:SPY")
    assert [p["seq"] for p in prices] == sorted({p["seq"] for p in prices})
    final = 600 + (n - 1) * 0.01
    if c.on("price:SPY")[-1]["data"]["price"] != final:
        c.until(lambda m: m["channel"] == "price:SPY" and m["data"]["price"] == final, 5)
    c.close()


@pytest.mark.parametrize("gw", [{"price_throttle_ms": 300}], indirect=True)
def test_price_throttle_leading_edge_and_latest(gw):
    c = WsClient(gw.url)
    c.subscribe("price:SPY")
    t0 = time.monotonic()
    for i in range(60):
        gw.trade(600 + i)
    first = c.until(lambda m: m["type"] == "update")
    assert first["data"]["price"] == 600  # leading edge: the first price at once
    last = c.until(lambda m: m["type"] == "update" and m["data"]["price"] == 659, 3)
    assert time.monotonic() - t0 >= 0.25  # the latest waited for the window to end
    time.sleep(0.4)
    gw.trade(700)
    c.until(lambda m: m["type"] == "update" and m["data"]["price"] == 700, 3)
    updates = c.on("price:SPY", ("update",))
    assert len(updates) <= 4, [u["data"]["price"] for u in updates]
    assert last["seq"] == first["seq"] + 1
    assert eventually(lambda: "ws_price_broadcast_rate" in gw.svc.metrics.render(), 3)
    c.close()


def _tiny_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.parametrize("gw", [{"price_throttle_ms": 0, "write_limit_bytes": 1024, "send_buffer_bytes": 4096}], indirect=True)
def test_slow_consumer_gets_conflated_latest_price(gw):
    ws = wsc.connect(gw.url, sock=_tiny_socket(gw.port), max_queue=1, open_timeout=5).__enter__()
    ws.send(json.dumps({"op": "subscribe", "channels": ["price:SPY"]}))
    n = 20_000
    for i in range(n):
        gw.trade(round(500 + i * 0.01, 2))
    eventually(lambda: gw.svc.hub.prices.get("SPY", {}).get("price") == round(500 + (n - 1) * 0.01, 2), 20,
               what="gateway ingested every tick")
    got = []
    while True:
        msg = json.loads(ws.recv(timeout=5))
        got.append(msg)
        if msg["channel"] == "price:SPY" and msg["data"] and msg["data"]["price"] == round(500 + (n - 1) * 0.01, 2):
            break
    updates = [m for m in got if m["type"] == "update"]
    assert len(updates) < n / 2, "a slow client must not get every tick"
    assert any(m.get("conflated") for m in updates)
    seqs = [m["seq"] for m in updates]
    assert seqs == sorted(set(seqs))
    assert gw.svc.m_conflated.total() > 0
    ws.close()


@pytest.mark.parametrize("gw", [{"price_throttle_ms": 0, "queue_max": 8, "write_limit_bytes": 1024, "send_buffer_bytes": 4096}], indirect=True)
def test_client_that_stays_too_slow_is_disconnected_and_others_keep_streaming(gw):
    slow = wsc.connect(gw.url, sock=_tiny_socket(gw.port), max_queue=1, open_timeout=5).__enter__()
    slow.send(json.dumps({"op": "subscribe", "channels": ["microbar:SPY:1s"]}))
    fast = WsClient(gw.url)
    fast.subscribe("price:SPY")
    eventually(lambda: gw.svc.hub.subscribers("microbar:SPY:1s") == 1, 5)
    for i in range(3000):  # closed bars are never conflated: the queue must overflow
        gw.bar(i, 600, closed=True)
    eventually(lambda: gw.svc.m_disconnects.value(reason="overflow") == 1, 10, what="slow client dropped")
    with pytest.raises(websockets.ConnectionClosed) as exc:
        for _ in range(100_000):
            slow.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 4008
    gw.trade(612.5)
    fast.until(lambda m: m["type"] == "update" and m["data"]["price"] == 612.5)
    fast.close()


@pytest.mark.parametrize("gw", [{"client_msgs_per_s": 5, "max_message_bytes": 256}], indirect=True)
def test_malformed_messages_get_errors_and_the_connection_survives(gw):
    c = WsClient(gw.url)
    cases = [
        ("not json", "bad_json"),
        (json.dumps({"op": "dance"}), "bad_request"),
        (json.dumps({"op": "subscribe"}), "bad_request"),
        (json.dumps({"op": "subscribe", "channels": "price:SPY", "id": "r1"}), "bad_request"),
        (json.dumps([1, 2]), "bad_request"),
        (json.dumps({"op": "subscribe", "channels": ["x" * 400]}), "too_large"),
    ]
    for raw, code in cases:
        c.send(raw)
        err = c.until(lambda m: m["type"] in ("error", "subscribed"))
        assert err["type"] == "error" and err["data"]["code"] == code, (raw, err)
        time.sleep(0.2)  # stay under the rate limit
    c.send({"op": "subscribe", "channels": ["price:SPY", "nope:1", "microbar:SPY:1x"]})
    errs = [c.until(lambda m: m["type"] == "error") for _ in range(2)]
    assert {e["channel"] for e in errs} == {"nope:1", "microbar:SPY:1x"} and errs[0]["data"]["code"] == "bad_channel"
    assert c.until(lambda m: m["type"] == "subscribed")["data"]["channels"] == ["price:SPY"]
    time.sleep(1.0)
    for _ in range(25):  # burst 10, then refused
        c.send({"op": "ping"})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "rate_limited"
    time.sleep(1.5)
    c.send({"op": "ping", "id": "alive"})
    assert c.until(lambda m: m["type"] == "pong")["data"]["id"] == "alive"
    gw.trade(601.0)
    assert c.until(lambda m: m["type"] == "update")["data"]["price"] == 601.0
    assert gw.svc.m_errors.value(code="bad_json") == 1
    c.close()


def test_user_channels_need_a_valid_token(gw):
    anon = WsClient(gw.url)
    anon.send({"op": "subscribe", "channels": ["coach", "positions"]})
    errs = [anon.until(lambda m: m["type"] == "error") for _ in range(2)]
    assert {e["data"]["code"] for e in errs} == {"unauthorized"}
    assert anon.welcome["data"]["user"] is None
    forged = WsClient(gw.url, token=token("alice").replace("alice", "bob__"))
    assert forged.until(lambda m: m["type"] == "error")["data"]["code"] == "bad_token"
    forged.send({"op": "subscribe", "channels": ["coach"]})
    assert forged.until(lambda m: m["type"] == "error")["data"]["code"] == "unauthorized"
    expired = WsClient(gw.url, token=auth.mint("alice", SECRET.encode(), int(time.time()) - 1))
    assert expired.until(lambda m: m["type"] == "error")["data"]["code"] == "token_expired"
    assert gw.svc.m_auth.value(code="bad_token") == 1 and gw.svc.m_auth.value(code="token_expired") == 1
    for c in (anon, forged, expired):
        c.close()


def test_users_only_receive_their_own_channels(gw):
    alice = WsClient(gw.url, token=token("alice"))
    bob = WsClient(gw.url, token=token("bob"))
    assert alice.welcome["data"]["user"] == "alice"
    for c in (alice, bob):
        c.subscribe("coach", "positions")
    coach = gw.pubs["coach"]
    coach.publish("coach.bob", "coach", CoachEvent(user="bob", kind="stop_threat", message="bob's", ts=5), 5)
    coach.publish("coach.alice", "coach", CoachEvent(user="alice", kind="entry_window_opened", message="alice's", ts=6), 6)
    gw.pubs["broker"].publish("position.bob", "position",
                              Position(user="bob", option_symbol="SPXW260220C05000000", quantity=2, avg_price=1.5, ts=7), 7)
    got = alice.until(lambda m: m["channel"] == "coach" and m["type"] == "update")
    assert got["data"]["user"] == "alice" and got["data"]["message"] == "alice's"
    bob.until(lambda m: m["channel"] == "positions" and m["type"] == "update")
    bob_coach = [m for m in bob.on("coach", ("update",))]
    assert [m["data"]["message"] for m in bob_coach] == ["bob's"]
    with pytest.raises(TimeoutError):
        alice.until(lambda m: m["channel"] == "positions" and m["type"] == "update", 0.5)
    assert all(m["data"]["user"] == "alice" for m in alice.messages if m["channel"] == "coach" and m["type"] == "update")
    late = WsClient(gw.url, token=token("bob"))
    late.subscribe("coach")
    snap = late.on("coach", ("snapshot",))[0]
    assert [e["message"] for e in snap["data"]["events"]] == ["bob's"] and snap["seq"] == 1
    for c in (alice, bob, late):
        c.close()


def test_origin_allow_list(gw):
    with pytest.raises(websockets.InvalidStatus) as exc:
        wsc.connect(gw.url, origin="http://evil.example", open_timeout=5)
    assert exc.value.response.status_code == 403
    own = wsc.connect(gw.url, origin=f"http://127.0.0.1:{gw.port}", open_timeout=5).__enter__()
    assert json.loads(own.recv(timeout=5))["type"] == "welcome"
    own.close()


def test_setups_snapshot_latency_and_status(gw):
    gw.transition("s1", "forming", ts=1)
    gw.transition("s1", "ready", ts=2)
    gw.transition("s2", "forming", ts=3)
    eventually(lambda: len(gw.svc.hub.setups) == 2, 5)
    c = WsClient(gw.url)
    c.subscribe("setups", "price:SPY", "status", latency=True)
    snap = c.on("setups", ("snapshot",))[0]
    assert {s["setup_id"]: s["to_state"] for s in snap["data"]["setups"]} == {"s1": "ready", "s2": "forming"}
    assert snap["seq"] == 3
    gw.transition("s2", "triggered", ts=4)
    upd = c.until(lambda m: m["channel"] == "setups" and m["type"] == "update")
    assert upd["seq"] == 4 and upd["data"]["to_state"] == "triggered" and upd["latencyMs"] >= 0
    gw.trade(600.0)
    assert c.until(lambda m: m["channel"] == "price:SPY" and m["type"] == "update")["latencyMs"] < 1000
    status = c.until(lambda m: m["channel"] == "status" and m["type"] == "update", 3)
    assert status["data"]["clients"] == 1 and "feed" in status["data"]["services"]
    c.close()
