"""The gateway hub's fan-out policy as a pure core (no sockets, no clock): which stream a subscriber
is on, moving subscribers when the policy changes, and the poll-cadence conflation."""

from __future__ import annotations

import json

from services.gateway.hub import Client, FanoutPolicy, Hub
from spx_common.models import Trade

T0 = 1_771_599_600_000_000_000


def _msgs(client: Client) -> list[dict]:
    out = []
    while (text := client.pop()) is not None:
        out.append(json.loads(text))
    return out


def _tick(hub: Hub, price: float, ts: int) -> None:
    hub.on_ticks("SPY", [Trade(sym="SPY", price=price, size=1, ts=ts)], 0, now=ts / 1e9)


def test_policy_values():
    assert FanoutPolicy("all").allows(None) and FanoutPolicy("ALL").allows("x")
    assert not FanoutPolicy("none").allows("alice")
    p = FanoutPolicy(" alice , bob ")
    assert p.allows("alice") and p.allows("bob") and not p.allows("carol") and not p.allows(None)


def test_streams_move_with_a_fresh_snapshot_and_poll_conflates():
    hub = Hub(price_throttle_s=0, poll_cadence_s=1.0, fanout="alice")
    alice, bob = Client(1, "alice", 100), Client(2, "bob", 100)
    for c in (alice, bob):
        hub.subscribe(c, "price:SPY")
    assert hub.fanout_counts() == {"tick": 1, "poll": 1}
    a, b = [], []
    for i in range(5):  # drained after each tick (a queued price update would be conflated in place)
        _tick(hub, 600 + i, T0 + i)
        a += _msgs(alice)
        b += _msgs(bob)
    assert [m["type"] for m in a] == ["snapshot"] + ["update"] * 5 and all("cadenceMs" not in m for m in a)
    assert [m["type"] for m in b] == ["snapshot"] and b[0]["cadenceMs"] == 1000 and b[0]["source"] == "poll"
    assert hub.poll_prices() == 1 and hub.poll_prices() == 0  # one conflated price, only when it changed
    [upd] = _msgs(bob)
    assert upd["seq"] == b[0]["seq"] + 1 and upd["data"]["price"] == 604 and upd["channel"] == "price:SPY"

    assert hub.set_fanout("none") == 1  # alice moves; bob stays
    [snap] = _msgs(alice)
    assert snap["type"] == "snapshot" and snap["cadenceMs"] == 1000 and snap["data"]["price"] == 604
    assert _msgs(bob) == []
    assert hub.set_fanout("all") == 2
    for c in (alice, bob):
        [snap] = _msgs(c)
        assert snap["type"] == "snapshot" and "cadenceMs" not in snap and snap["source"] == "tick"
    _tick(hub, 605, T0 + 9)
    assert [m["data"]["price"] for m in _msgs(bob)] == [605]
    # unsubscribing works whichever stream the client is on
    hub.set_fanout("alice")
    _msgs(bob)
    assert hub.unsubscribe(bob, "price:SPY") and hub.fanout_counts() == {"tick": 1, "poll": 0}
    assert hub.poll_prices() == 0 and not hub._poll_keys
