"""Three users on real processes: the broker (users from the store, one isolated account each), the coach
and the gateway. Two users trade on the paper broker, one on the fake Tradier server that answers 500 to
every order. A setup triggers: each opted-in user gets their own sized order within their own limits;
the 500 user gets alerts (broker -> coach -> their websocket) and a published block reason while the
others fill; over the gateway (each websocket client with its own token) nobody sees another user's
coach events, positions, orders or fills."""

from __future__ import annotations

import time

from services.gateway import auth
from spx_common.crypto import KeyRing, generate_key
from spx_common.flags import FlagStore
from spx_common.store import open_store
from spx_testing import ServiceProcess
from tests.broker.harness import T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier
from tests.gateway.harness import SECRET, GatewayRunner, WsClient

S = 1_000_000_000
USERS = ("alice", "bob", "carol")


def _store_users(run_dir, key: str, fake: FakeTradier) -> None:
    from services.broker import credentials

    store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
    try:
        store.add_user("alice", max_contracts=3, max_risk_per_trade=2000, auto_execution=True)
        # bob's risk budget: the harness setup loses $111 per contract to its stop (issue 18: risk, not premium)
        store.add_user("bob", max_contracts=10, max_risk_per_trade=250, auto_execution=True)
        store.add_user("carol", broker="tradier", auto_execution=True)
        credentials.save(store, KeyRing.parse(key), "carol", fake.token, fake.account)
    finally:
        store.close()


def test_three_users_on_broker_coach_and_gateway(run_dir):
    key = generate_key("k1")
    FlagStore(run_dir / "flags.json").set("auto_execution", True)
    env = {"SPX_BUS_HEARTBEAT_S": "0.2", "SPX_COACH_USERS": ",".join(USERS)}
    with FakeTradier(token="carol-SECRET-tok", account="VA303") as fake:
        fake.script("500", "place", times=1000)
        _store_users(run_dir, key, fake)
        broker = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                                   "TRADIER_EXECUTION_ENABLED": "true", "SPX_BROKER_RECONCILE_INTERVAL_S": "0.3"})
        coach = ServiceProcess.service("coach", run_dir=run_dir, env=env).start()
        gw = GatewayRunner(run_dir, stand_ins=("aggregator",))
        clients: dict[str, WsClient] = {}
        try:
            with coach:
                coach.wait_ready(lambda: {"broker", "coach"} <= set(gw.svc.core.peers), 20, "gateway hears broker, coach")
                for u in USERS:
                    c = WsClient(gw.url, auth.mint(u, SECRET.encode(), int(time.time()) + 600))
                    assert c.welcome["data"]["user"] == u
                    c.subscribe("coach", "positions", "orders", "fills")
                    clients[u] = c
                broker.quote_live(1.95, 2.0, T0)
                # entries are sized from each account's synced balances (issue 18): carol's are read at start
                eventually(lambda: broker.call("status")["broker"]["accounts"]["carol"]["balances"], 10,
                           what="carol's balances")
                broker.trigger("m-1", T0 + S, qty=4)
                eventually(lambda: broker.seen("fill.alice") and broker.seen("fill.bob"), 15, what="paper users filled")
                assert broker.seen("fill.alice")[0].quantity == 3 and broker.seen("fill.bob")[0].quantity == 2
                eventually(lambda: [b for b in broker.seen("block.broker") if b.subject.startswith("carol:")], 20,
                           what="carol's block reason published")
                assert [b.reason for b in broker.seen("block.broker") if b.subject.startswith("carol:")] == \
                    ["placement_not_found"]

                def got(user, channel, pred):
                    c = clients[user]
                    try:
                        c.recv(0.1)
                    except TimeoutError:
                        pass
                    return [m for m in c.on(channel) if pred(m)]

                def has_fill(user, qty):
                    return got(user, "fills", lambda m: any(f.get("quantity") == qty for f in m["data"].get("fills", [])
                                                            ) or m["data"].get("quantity") == qty)

                eventually(lambda: has_fill("alice", 3), 10, what="alice's fill on her websocket")
                eventually(lambda: has_fill("bob", 2), 10, what="bob's fill on his websocket")
                eventually(lambda: got("carol", "coach", lambda m: "got no answer" in str(m["data"])), 15,
                           what="carol's coach alert (order unresolved) on her websocket")
                for _ in range(10):  # drain what is in flight
                    for u in USERS:
                        got(u, "coach", lambda m: True)
                for u, c in clients.items():
                    for m in c.messages:
                        if m["channel"] in ("coach", "positions", "orders", "fills"):
                            text = str(m["data"])
                            for other in USERS:
                                if other != u:
                                    assert f"'{other}'" not in text and f"spx-{other}-" not in text, (u, m)
                assert not [m for m in clients["carol"].on("fills") if m["data"].get("fills") or m["data"].get("quantity")]
                assert "got no answer" not in str([m["data"] for m in clients["alice"].on("coach")])
                assert "got no answer" not in str([m["data"] for m in clients["bob"].on("coach")])
                assert fake.violations == []
        finally:
            for c in clients.values():
                c.close()
            gw.close()
            broker.close()
