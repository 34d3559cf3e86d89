"""Coach alert acknowledgment (issue 28): ``op: ack`` / ``op: dismiss`` over a real websocket on a real
gateway. User-scoped (one user cannot answer another's alert), idempotent (the first answer is final),
published on the bus as ``feedback.coach`` exactly once per alert, and shown in later ``coach`` snapshots;
the coach's rolling rates per kind follow the answers."""

from __future__ import annotations

import time

from services.coach.core import FeedbackRates
from services.gateway import auth
from spx_common.bus import Subscriber
from spx_common.models import CoachEvent, CoachFeedback, coach_event_id
from tests.conftest import eventually
from tests.gateway.harness import SECRET, GatewayRunner, WsClient


def alert(user: str, kind: str, ts: int) -> CoachEvent:
    return CoachEvent(user=user, kind=kind, message=f"{user}'s {kind}", ts=ts, setup_id="s1",
                      id=coach_event_id(user, kind, ts, "s1"))


def test_ack_and_dismiss_round_trip_user_scoped_and_idempotent(run_dir):
    gw = GatewayRunner(run_dir)
    listener = Subscriber(gw.ctx, [gw.bus.pub_endpoint("gateway", gw.rt)], ["feedback.coach"])
    alice = bob = None
    try:
        eventually(lambda: gw.svc.pub.heartbeat(0) or listener.recv(0.05) is not None or
                   "gateway" in listener.core.peers, 10, what="listener hears the gateway")
        exp = int(time.time()) + 600
        alice = WsClient(gw.url, token=auth.mint("alice", SECRET.encode(), exp))
        bob = WsClient(gw.url, token=auth.mint("bob", SECRET.encode(), exp))
        alice.subscribe("coach")
        bob.subscribe("coach")
        a1, a2 = alert("alice", "stop_threat", 10), alert("alice", "entry_window_opened", 11)
        b1 = alert("bob", "stop_threat", 12)
        for ev in (a1, a2, b1):
            gw.pubs["coach"].publish(f"coach.{ev.user}", "coach", ev, ev.ts)
        alice.until(lambda m: m["type"] == "update" and m["data"]["id"] == a2.id)
        bob.until(lambda m: m["type"] == "update" and m["data"]["id"] == b1.id)

        alice.send({"op": "ack", "eventId": a1.id, "id": "r1"})
        got = alice.until(lambda m: m["type"] == "feedback")
        assert got["data"] == {"eventId": a1.id, "action": "ack", "kind": "stop_threat", "first": True, "id": "r1"}
        # idempotent: a repeat, or a different answer later, gets the first answer back
        alice.send({"op": "dismiss", "eventId": a1.id, "id": "r2"})
        got = alice.until(lambda m: m["type"] == "feedback")
        assert got["data"]["action"] == "ack" and got["data"]["first"] is False
        alice.send({"op": "dismiss", "eventId": a2.id})
        assert alice.until(lambda m: m["type"] == "feedback")["data"]["action"] == "dismiss"
        # user isolation: bob cannot answer alice's alert, alice cannot answer bob's
        bob.send({"op": "ack", "eventId": a2.id, "id": "x"})
        err = bob.until(lambda m: m["type"] == "error")
        assert err["data"]["code"] == "unknown_event" and err["data"]["id"] == "x"
        alice.send({"op": "ack", "eventId": b1.id})
        assert alice.until(lambda m: m["type"] == "error")["data"]["code"] == "unknown_event"
        # without a user on the connection: refused
        anon = WsClient(gw.url)
        anon.send({"op": "ack", "eventId": a1.id})
        assert anon.until(lambda m: m["type"] == "error")["data"]["code"] == "unauthorized"
        anon.close()

        published: list[CoachFeedback] = []
        eventually(lambda: (published.extend(f.body() for f in iter(lambda: listener.recv(0.05), None)),
                            len(published) >= 2)[1], 10, what="two feedback frames")
        time.sleep(0.2)
        published.extend(f.body() for f in iter(lambda: listener.recv(0.05), None))
        assert [(f.user, f.event_id, f.action, f.kind, f.event_ts) for f in published] == [
            ("alice", a1.id, "ack", "stop_threat", 10), ("alice", a2.id, "dismiss", "entry_window_opened", 11)]

        # a new subscription's snapshot shows which alerts were answered
        again = WsClient(gw.url, token=auth.mint("alice", SECRET.encode(), exp))
        again.subscribe("coach")
        snaps = again.on("coach", types=("snapshot",))
        snap = snaps[0] if snaps else again.until(lambda m: m["type"] == "snapshot" and m["channel"] == "coach")
        assert {e["id"]: e.get("feedback") for e in snap["data"]["events"]} == {a1.id: "ack", a2.id: "dismiss"}
        again.close()
    finally:
        for c in (alice, bob):
            if c is not None:
                c.close()
        listener.close()
        gw.close()


def test_rates_per_kind_over_a_rolling_window():
    r = FeedbackRates(window_s=100)
    for i in range(4):
        r.sent("stop_threat", f"s{i}", now=float(i))
    r.sent("entry_window_opened", "e0", now=5.0)

    def fb(eid, action, kind="stop_threat"):
        return CoachFeedback(user="u", event_id=eid, action=action, kind=kind, event_ts=0, ts=0)

    assert r.answered(fb("s0", "ack"), 6.0) and r.answered(fb("s1", "dismiss"), 6.0)
    assert not r.answered(fb("s0", "dismiss"), 7.0)  # the first answer is final
    assert not r.answered(fb("nope", "ack"), 7.0)  # an alert this coach never sent
    rates = r.rates(10.0)
    assert rates["stop_threat"] == {"sent": 4, "acked": 1, "dismissed": 1, "ack_rate": 0.25, "dismiss_rate": 0.25}
    assert rates["entry_window_opened"]["ack_rate"] == 0.0
    # alerts older than the window leave it with their answers
    assert r.rates(101.5)["stop_threat"] == {"sent": 2, "acked": 0, "dismissed": 0, "ack_rate": 0.0,
                                              "dismiss_rate": 0.0}
