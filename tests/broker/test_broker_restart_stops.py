"""A protective stop rests on positions adopted or restored after a broker restart (issue 18, item 5 after a
restart): the pure engine steps (``Engine.adopt`` with the newest stop level, ``Engine.take_over`` of the
orders still working at the broker, ``Engine.protect``) and the real broker process against the fake
Tradier. The paper broker's restore is covered in ``test_broker_outbox.py`` and
``test_broker_service.py::test_restart_restores_the_ledger_from_the_store``; the hypothesis property with
random restarts in ``test_broker_exits_always.py``."""

from __future__ import annotations

from services.broker.engine import Cancel, Engine, Gates, Limits, Place
from spx_common.flags import FlagStore
from tests.broker.harness import SYM, Harness
from tests.broker.test_broker_engine import ACCOUNT, T0
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier


def _engine(**limits) -> Engine:
    return Engine(["u1"], Limits(**{"protective_stop": "advisor", "protective_stop_pct": 0.5, **limits}),
                  Gates(lambda u: (True, ""), balances=lambda u: ACCOUNT), session="r1")


def _stops(intents):
    return [(i.payload["quantity"], i.payload["stop"]) for i in intents if isinstance(i, Place)
            and i.payload["type"] == "stop"]


def test_adopted_position_gets_a_stop_at_the_known_level_else_premium_pct():
    eng = _engine()
    eng.adopt("u1", SYM, 3, 2.0, T0)  # no level known: premium_pct, 2.00 x (1 - 0.5)
    assert _stops(eng.protect(T0)) == [("3", "1.00")]
    assert eng.protect(T0) == []  # idempotent: covered
    other = "SPXW260220P04990000"
    eng.adopt("u1", other, 2, 2.0, T0, stop_price=1.37)  # the setup's stop as last moved (store / outbox)
    assert _stops(eng.protect(T0)) == [("2", "1.35")]  # rounded down onto the grid
    capped = _engine(max_contracts_per_order=2)
    capped.adopt("u1", SYM, 5, 2.0, T0)
    assert _stops(capped.protect(T0)) == [("2", "1.00"), ("2", "1.00"), ("1", "1.00")]
    off = Engine(["u1"], Limits(), Gates(lambda u: (True, "")))  # no automatic stop configured
    off.adopt("u1", SYM, 3, 2.0, T0, stop_price=1.0)
    assert off.protect(T0) == []
    blocked = Engine(["u1"], Limits(protective_stop="premium_pct"),
                     Gates(lambda u: (True, ""), send=lambda u: (False, "execution_disabled")))
    blocked.adopt("u1", SYM, 3, 2.0, T0)
    assert blocked.protect(T0) == []  # nothing is sent when sending is not allowed


def test_a_stop_working_at_the_broker_is_taken_over_and_topped_up_to_the_open_quantity():
    eng = _engine()
    eng.adopt("u1", SYM, 3, 2.0, T0)
    order = eng.take_over("u1", SYM, "sell_to_close", "stop", 2, 0, 0.0, None, 1.2, T0)
    assert order is not None and order.type == "stop" and order.setup_id == f"adopted-{SYM}" and order.quantity == 2
    assert _stops(eng.protect(T0)) == [("1", "1.20")]  # the taken-over level, for the one uncovered contract
    assert eng.protect(T0) == []
    # the old stop fills: the held quantity follows, the remaining stop covers what is left
    assert eng.on_order_event(order.order_id, "filled", 2, 1.2, T0) == []
    assert eng.trades[("u1", f"adopted-{SYM}")].held == 1


def test_a_stop_larger_than_the_position_is_cancelled_and_re_placed():
    eng = _engine()
    eng.adopt("u1", SYM, 3, 2.0, T0)
    big = eng.take_over("u1", SYM, "sell_to_close", "stop", 5, 1, 1.2, None, 1.2, T0)  # 4 left, 3 held
    [c] = eng.protect(T0)
    assert isinstance(c, Cancel) and c.order_id == big.order_id
    assert _stops(eng.on_order_event(big.order_id, "canceled", 1, 1.2, T0)) == [("3", "1.20")]


def test_an_entry_working_at_the_broker_is_managed_and_its_fill_protected():
    eng = _engine()
    entry = eng.take_over("u1", SYM, "buy_to_open", "limit", 2, 0, 0.0, 2.0, None, T0)
    assert entry is not None and eng.protect(T0) == []  # nothing held yet
    assert _stops(eng.on_order_event(entry.order_id, "filled", 2, 2.0, T0)) == [("2", "1.00")]
    # a sell for nothing held is not ours to manage; odd quantities are refused
    assert eng.take_over("u1", "SPXW260220P04990000", "sell_to_close", "stop", 1, 0, 0, None, 1.0, T0) is None
    assert eng.take_over("u1", SYM, "sell_to_open", "limit", 1, 0, 0, 1.0, None, T0) is None
    assert eng.take_over("u1", SYM, "sell_to_close", "stop", float("nan"), 0, 0, None, 1.0, T0) is None


def _working_stops(fake):
    return sum(o["remaining_quantity"] for o in fake.orders.values()
               if o["type"] == "stop" and o["status"] in ("open", "partially_filled"))


def test_tradier_restart_takes_over_the_resting_stop_and_keeps_stops_equal_to_the_position(run_dir):
    with FakeTradier() as fake:
        fake.add_position(SYM, 3, 600.0)  # held before this broker process started
        base = {"symbol": "SPX", "class": "option", "option_symbol": SYM, "duration": "day", "avg_fill_price": 0.0,
                "exec_quantity": 0.0, "last_fill_price": 0.0, "last_fill_quantity": 0.0,
                "create_date": "2026-02-20T15:00:00.000Z", "transaction_date": "2026-02-20T15:00:00.000Z"}
        # working at Tradier from before the restart: our protective stop for 2 of the 3, and our entry for 2 more
        fake.orders[1] = {**base, "id": 1, "tag": "spx-default-s1-stop-7-old", "status": "open", "type": "stop",
                          "side": "sell_to_close", "quantity": 2.0, "remaining_quantity": 2.0, "price": 0.0,
                          "stop_price": 1.2}
        fake.orders[2] = {**base, "id": 2, "tag": "spx-default-s2-entry-8-old", "status": "open", "type": "limit",
                          "side": "buy_to_open", "quantity": 2.0, "remaining_quantity": 2.0, "price": 2.0,
                          "stop_price": 0.0}
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
                              "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
                              "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true",
                              "SPX_BROKER_AUTO_EXECUTION_USERS": "default", "SPX_BROKER_RECONCILE_INTERVAL_S": "0.5"})
        try:
            # the old stop covers 2: one stop for the third contract, at the old stop's level; nothing re-sent
            eventually(lambda: _working_stops(fake) == 3, 10, what="stops cover the adopted position")
            new = [o for i, o in fake.orders.items() if i > 2]
            assert [(o["type"], o["quantity"], o["stop_price"]) for o in new] == [("stop", 1.0, 1.2)]
            trades = h.call("status")["broker"]["engine"]["trades"]
            assert [(t["held"], t["stop"]) for t in trades] == [(3.0, 1.2)]
            fake.fill(2, 2, 2.0)  # the old entry fills after the restart: its contracts get their stop
            eventually(lambda: _working_stops(fake) == 5, 10, what="the old entry's fill protected")
            fake.fill(1, 2, 1.2)  # the taken-over stop triggers: the position and the ledger follow
            eventually(lambda: [p for p in h.seen("position.default") if p.quantity == 3], 10, what="ledger")
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"][0]["held"] == 3.0, 10)
            assert _working_stops(fake) == 3 == fake.positions[SYM]["quantity"]
            assert not [b for b in h.seen("block.broker")]
        finally:
            h.close()
        assert fake.violations == []


def test_an_exit_working_at_the_broker_keeps_the_trade_closing():
    eng = _engine()
    eng.adopt("u1", SYM, 3, 2.0, T0)
    ex = eng.take_over("u1", SYM, "sell_to_close", "market", 3, 0, 0.0, None, None, T0, exiting=True)
    assert eng.protect(T0) == []  # being closed: no stop re-rested
    # the broker refuses the old exit: the exit is retried (not replaced by a stop)
    [again] = eng.on_order_event(ex.order_id, "rejected", 0, 0.0, T0)
    assert isinstance(again, Place) and again.role == "exit" and again.payload["quantity"] == "3"
