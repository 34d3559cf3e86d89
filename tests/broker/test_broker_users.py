"""Per-user accounts in a real broker process: users from the store, each with their own broker client,
queue, worker and limits. Two paper users and one user on the fake Tradier server that answers 500 to
every order: each opted-in user gets their own sized order within their own limits, the 500 user gets an
alert and a published block reason, the others fill; a user who did not opt in is refused with a reason."""

from __future__ import annotations

from spx_common.crypto import KeyRing, generate_key
from spx_common.flags import FlagStore
from spx_common.store import open_store
from tests.broker.harness import T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier

S = 1_000_000_000


def _users(run_dir, key: str, fake: FakeTradier) -> None:
    from services.broker import credentials

    store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
    try:
        store.add_user("alice", max_contracts=3, max_risk_per_trade=2000, auto_execution=True)
        # bob's risk budget: the harness setup loses $111 per contract to its stop (issue 18: risk, not premium)
        store.add_user("bob", max_contracts=10, max_risk_per_trade=250, auto_execution=True)  # $250 / $111 -> 2
        store.add_user("carol", broker="tradier", environment="sandbox", auto_execution=True)
        store.add_user("dave")  # auto-execution off by default
        store.add_user("erin", auto_execution=True, enabled=False)
        credentials.save(store, KeyRing.parse(key), "carol", fake.token, fake.account)
    finally:
        store.close()


def test_three_users_isolated_accounts_own_limits_and_a_failing_broker(run_dir):
    key = generate_key("k1")
    FlagStore(run_dir / "flags.json").set("auto_execution", True)
    with FakeTradier(token="carol-SECRET-token", account="VA333") as fake:
        fake.script("500", "place", times=1000)
        _users(run_dir, key, fake)
        h = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                              "TRADIER_EXECUTION_ENABLED": "true", "SPX_BROKER_RECONCILE_INTERVAL_S": "0.3"})
        try:
            st = h.call("status")["broker"]
            assert st["mode"] == "users"
            assert set(st["accounts"]) == {"alice", "bob", "carol", "dave"}  # erin is disabled
            assert st["accounts"]["carol"]["kind"] == "tradier" and st["accounts"]["alice"]["kind"] == "paper"
            assert st["send_allowed"] == {"alice": True, "bob": True, "carol": True, "dave": False}
            assert st["refusal_reason"] == {"dave": "not_opted_in"}
            assert fake.token not in str(st)
            h.quote_live(1.95, 2.0, T0)
            # entries are sized from each account's synced balances (issue 18): carol's are read at start
            eventually(lambda: h.call("status")["broker"]["accounts"]["carol"]["balances"], 10, what="carol's balances")
            h.trigger("u-1", T0 + S, qty=4)
            eventually(lambda: h.seen("fill.alice") and h.seen("fill.bob"), 15, what="paper users filled")
            [fa], [fb] = h.seen("fill.alice"), h.seen("fill.bob")
            assert (fa.user, fa.quantity, fa.price) == ("alice", 3, 2.0)  # her max_contracts
            assert (fb.user, fb.quantity) == ("bob", 2)  # his max risk per trade ($250 / $111 loss to the stop)
            assert all(o.user == "alice" for o in h.seen("order.alice"))
            assert all(p.user == "bob" for p in h.seen("position.bob"))
            # a 500 leaves the placement's fate unknown: carol is alerted at once, the order is looked up by
            # its tag (never re-sent) and after MAX_UNRESOLVED_CHECKS lookups refused with a published reason
            eventually(lambda: [a for a in h.seen("alert.carol") if a["kind"] == "order_unresolved"], 10,
                       what="carol alerted")
            eventually(lambda: [b for b in h.seen("block.broker") if b.subject.startswith("carol:")], 20,
                       what="carol's refusal published")
            carol_blocks = [b for b in h.seen("block.broker") if b.subject.startswith("carol:")]
            assert carol_blocks[0].reason == "placement_not_found"
            eventually(lambda: h.seen("order.carol")[-1].status == "rejected", 5, what="carol's order rejected")
            assert h.seen("fill.carol") == []
            assert fake.count("POST", "/orders") == 1  # never sent twice
            dave = [b for b in h.seen("block.broker") if b.subject.startswith("dave:")]
            assert [b.reason for b in dave] == ["not_opted_in"]
            assert h.seen("order.dave") == [] and h.seen("order.erin") == []
            # every alert frame names only its own user
            for topic, body in h.frames:
                if topic.startswith("alert."):
                    assert body["user"] == topic.split(".", 1)[1]
            assert fake.violations == []
            ledger = h.call("ledger", {"user": "alice"})
            assert set(ledger) == {"alice"}
        finally:
            h.close()
        out = h.proc.output()
        assert fake.token not in out


def test_no_users_in_the_store_keeps_the_config_lists(run_dir):
    open_store(f"sqlite:///{run_dir}/spx.sqlite3").close()  # migrated, empty users table
    h = Harness(run_dir)
    try:
        st = h.call("status")["broker"]
        assert st["mode"] == "paper" and st["send_allowed"] == {"default": True}
        assert list(st["accounts"]) == ["shared"]
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("d-1", T0 + S) or h.seen("fill.default"), 10, what="default filled")
        assert h.seen("fill.default")[0].quantity == 4
    finally:
        h.close()


def test_daily_loss_limit_and_unreadable_credentials(run_dir, capsys):
    key = generate_key("k1")
    FlagStore(run_dir / "flags.json").set("auto_execution", True)
    store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
    try:
        store.add_user("gil", max_contracts=3, max_risk_per_trade=5000, daily_loss_limit=100, auto_execution=True)
        store.add_user("hal", broker="tradier", auto_execution=True)
        from services.broker import credentials

        credentials.save(store, KeyRing.parse(generate_key("other")), "hal", "tok-h", "VA9")  # not our ring
    finally:
        store.close()
    h = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "TRADIER_EXECUTION_ENABLED": "true"})
    try:
        st = h.call("status")["broker"]
        assert st["refusal_reason"] == {"hal": "credentials_unreadable"}
        assert "not in the key ring" in st["accounts"]["hal"]["credential_error"]
        from services.cli.main import main

        assert main(["broker", "status"]) == 0
        out = capsys.readouterr().out
        assert "account     gil          paper sandbox" in out and "hal" in out and "not in the key ring" in out
        assert "orders refused: credentials_unreadable" in out
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("g-1", T0 + S) or h.seen("fill.gil"), 10, what="gil filled")
        assert h.seen("fill.gil")[0].quantity == 3
        # the option drops: gil is down ~$300 (> his $100 daily loss limit); the next setup is refused
        h.quote(0.95, 1.0, T0 + 10 * S)
        h.trigger("g-2", T0 + 11 * S, bid=0.95, ask=1.0)
        eventually(lambda: [b for b in h.seen("block.broker") if b.reason == "daily_loss_limit"], 10,
                   what="daily loss limit")
        assert [o for o in h.seen("order.gil") if o.setup_id == "g-2"] == []
        assert [b.subject for b in h.seen("block.broker") if b.reason == "credentials_unreadable"] == \
            ["hal:g-1", "hal:g-2"]
    finally:
        h.close()


def test_a_hanging_broker_never_delays_another_users_orders(run_dir):
    """ann's Tradier placement hangs; zed (paper, after ann in every user loop) fills meanwhile."""
    key = generate_key("k1")
    FlagStore(run_dir / "flags.json").set("auto_execution", True)
    with FakeTradier(token="ann-token") as fake:
        fake.script("hang", "place", delay_s=6.0)
        store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
        try:
            from services.broker import credentials

            store.add_user("ann", broker="tradier", auto_execution=True)
            store.add_user("zed", auto_execution=True, max_risk_per_trade=1000)
            credentials.save(store, KeyRing.parse(key), "ann", fake.token, fake.account)
        finally:
            store.close()
        h = Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                              "TRADIER_EXECUTION_ENABLED": "true", "SPX_BROKER_PLACE_TIMEOUT_S": "5"})
        try:
            h.quote_live(1.95, 2.0, T0)
            # entries are sized from each account's synced balances (issue 18): ann's are read at start
            eventually(lambda: h.call("status")["broker"]["accounts"]["ann"]["balances"], 10, what="ann's balances")
            h.trigger("h-1", T0 + S)
            eventually(lambda: h.seen("fill.zed"), 4, what="zed filled while ann's placement hangs")
            # ann's request may reach the fake after zed's fill on a loaded host: it is sent, and hangs
            eventually(lambda: fake.count("POST", "/orders") == 1, 4, what="ann's placement sent (hanging)")
            assert [o.status for o in h.seen("order.ann")] == ["new"]  # still waiting for its answer
        finally:
            fake._released.set()
            h.close()
