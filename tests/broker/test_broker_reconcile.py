"""Reconcile, adopt and take over as pure functions (issue 18, item 10): what the broker holds against what
the engine holds (``reconcile.plan``/``alignment``), the working orders taken over after a restart
(``reconcile.takeovers``), the broker's positions adopted at start (``portfolio.adoption``), and the
two gates (``gates``)."""

from __future__ import annotations

import asyncio

from services.broker import gates, reconcile
from services.broker import portfolio as pf
from services.broker.accounts import Account
from services.broker.config import BrokerConfig
from services.broker.paper import PaperBroker
from tests.broker.harness import SYM

PUT = "SPXW260220P04990000"


def test_plan_adds_what_the_broker_holds_more_and_takes_off_what_it_holds_less():
    assert reconcile.plan({SYM: 2, PUT: 3}, {SYM: 5, PUT: 1, "SPY": 10}) == {PUT: -2.0, SYM: 3.0}
    assert reconcile.plan({SYM: 2}, {SYM: -1}) == {SYM: -2.0}  # a short counts as 0 long, never managed
    assert reconcile.plan({SYM: 2}, {SYM: 2}) == {}


def test_alignment_prices_found_contracts_per_share_from_the_cost_basis():
    rows = [{"symbol": SYM, "quantity": 5, "cost_basis": 1000.0}, {"symbol": PUT, "quantity": 1}]
    changes = reconcile.plan({SYM: 2, PUT: 3}, {SYM: 5, PUT: 1})
    assert reconcile.alignment(changes, {SYM: 5, PUT: 1}, rows, pf.multiplier) == [(SYM, 3.0, 2.0), (PUT, -2.0, 0.0)]
    assert reconcile.alignment({SYM: 1.0}, {SYM: 1}, [], pf.multiplier) == [(SYM, 1.0, 0.0)]  # no cost basis


def test_takeovers_pick_working_sells_and_our_entries_only():
    def o(i, side, type_="limit", tag="", status="open", sym=SYM, **kw):
        return {"id": i, "side": side, "type": type_, "tag": tag, "status": status, "option_symbol": sym,
                "quantity": 2, "exec_quantity": 0, "avg_fill_price": 0, "price": 1.5, "stop_price": 0, **kw}

    orders = [o(1, "sell_to_close", "stop", "spx-bob-s1-stop-3-x", stop_price=1.2),
              o(2, "buy_to_open", tag="spx-bob-s2-entry-4-x", exec_quantity=1, avg_fill_price=2.0),
              o(3, "buy_to_open", tag="by-hand"),  # an entry placed by hand: not ours
              o(4, "sell_to_close", tag="spx-bob-s3-exit-5-x"),
              o(5, "sell_to_close", status="filled"), o(6, "sell_to_close", sym="SPY"),
              o(7, "sell_to_open"), o(8, "sell_to_close", tag="known"),
              o(9, "sell_to_close", "market", tag="by-hand-too", price=None)]
    got = reconcile.takeovers(orders, ["alice", "bob"], "alice", lambda bid, tag: tag == "known",
                              lambda u: f"spx-{u}")
    assert [(t.broker_id, t.user, t.side, t.type, t.filled, t.price, t.stop, t.exiting) for t in got] == [
        ("1", "bob", "sell_to_close", "stop", 0.0, 1.5, 1.2, False),
        ("2", "bob", "buy_to_open", "limit", 1.0, 1.5, None, False),
        ("4", "bob", "sell_to_close", "limit", 0.0, 1.5, None, True),
        ("9", "alice", "sell_to_close", "market", 0.0, None, None, False)]


def test_gates_entries_need_every_switch_sends_need_only_send():
    async def make():
        return Account("shared", ["default"], asyncio.Queue(1), paper=PaperBroker())

    a = asyncio.run(make())
    cfg = BrokerConfig()
    on = {"paper_auto_execution": True, "kill_switch": True}
    assert gates.entry_allowed(cfg, a, "default", on) == (True, "")  # the engine applies the kill switch
    assert gates.entry_allowed(cfg, a, "default", {**on, "paper_auto_execution": False}) == \
        (False, "paper_auto_execution_off")
    assert gates.entry_allowed(cfg, a, "eve", on) == (False, "not_opted_in")
    assert gates.send_allowed(cfg, a) == (True, "")
    a.token_expired = "expired"
    assert gates.send_allowed(cfg, a) == (False, "token_expired") == gates.entry_allowed(cfg, a, "default", on)
    assert gates.send_allowed(cfg, None) == (False, "unknown_user")
    tradier = BrokerConfig(access_token="t")
    b = Account("shared", ["default"], None)  # type: ignore[arg-type]
    assert gates.send_allowed(tradier, b) == (False, "execution_disabled")
    sandbox = tradier.model_copy(update={"execution_enabled": True, "auto_execution_users": ["default"]})
    assert gates.send_allowed(sandbox, b) == (True, "")
    assert gates.entry_allowed(sandbox, b, "default", {}) == (False, "auto_execution_flag_off")
    assert gates.entry_allowed(sandbox, b, "default", {"auto_execution": True}) == (True, "")


def test_adoption_plan_and_its_alerts():
    rows = [{"symbol": SYM, "quantity": 3, "cost_basis": 600.0}, {"symbol": PUT, "quantity": -1, "cost_basis": -90.0},
            {"symbol": "SPY", "quantity": 10, "cost_basis": 5910.0}]
    plan = pf.adoption(rows, set())
    assert plan == {"adopt": [(SYM, 3.0, 2.0)], "shorts": [(PUT, -1.0)], "others": [("SPY", 10.0)]}
    alerts = pf.adoption_alerts(plan, "u1", 7)
    assert [(x["kind"], x["severity"], x["user"], x["ts"]) for x in alerts] == [
        (f"short:{PUT}", "critical", "u1", 7), ("not_an_option:SPY", "info", "u1", 7)]
