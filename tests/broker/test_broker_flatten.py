"""Flatten and the kill switch against the fake Tradier (issue 18, items 3 and 4): the operator's flatten
is gated only by whether sending is allowed at all (never the kill switch, the auto-execution switch or
opt-in), reconciles with the broker's positions first, closes every SPXW position exactly once and never
touches an equity; ``flatten --direct`` does the same without the broker process; an expired token and
5xx answers during a flatten are retried without a double submission; a malformed flags file keeps the
kill switch on across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from services.broker import direct
from services.broker.tradier import TradierClient
from spx_common.crypto import KeyRing, generate_key
from spx_common.flags import FlagStore
from spx_common.store import open_store
from tests.broker.harness import SYM, T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier

S = 1_000_000_000
PUT = "SPXW260220P04990000"
LATE = "SPXW260220C05010000"


def _env(fake, **extra):
    return {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
            "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
            "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true", **extra}


def _sells(fake, sym=None):
    """Exits at the broker (not the protective stops, not the orders from before the restart)."""
    return [o for o in fake.orders.values() if o["side"] == "sell_to_close" and (sym is None or o["option_symbol"] == sym)
            and "old" not in str(o.get("tag")) and o["type"] != "stop"]


def _stop_rests(fake, sym):
    return [o for o in fake.orders.values() if o["type"] == "stop" and o["option_symbol"] == sym
            and o["status"] == "open"]


def _cli(*args, env=None, timeout=60):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def test_operator_flatten_with_auto_execution_off_closes_every_spxw_position_once_spy_untouched(run_dir):
    with FakeTradier() as fake:
        fake.add_position(SYM, 3, 600.0)
        fake.add_position(PUT, 2, 300.0)
        fake.add_position("SPY", 10, 5910.0)  # an equity: never adopted, never sold
        fake.orders[7] = {"id": 7, "tag": "spx-default-old-stop-1-abc", "status": "open", "side": "sell_to_close",
                          "option_symbol": SYM, "symbol": "SPXW", "quantity": 3.0, "exec_quantity": 0.0,
                          "remaining_quantity": 3.0, "type": "stop", "class": "option"}  # rests from before
        h = Harness(run_dir, _env(fake))  # the auto_execution switch is off (its default); nobody opted in
        try:
            assert h.call("status")["broker"]["refusal_reason"] == {"default": "auto_execution_flag_off"}
            eventually(lambda: len(h.call("status")["broker"]["engine"]["trades"]) == 2, 10, what="adopted")
            # the stop resting from before is taken over for SYM; PUT gets one (switches off: stops need only send)
            eventually(lambda: _stop_rests(fake, PUT), 10, what="PUT's protective stop")
            assert [o["id"] for o in fake.orders.values() if o["type"] == "stop" and o["option_symbol"] == SYM] == [7]
            fake.add_position(LATE, 1, 150.0)  # opened by hand after the broker started: flatten finds it
            res = h.call("flatten", {})
            # LATE's exit at once; SYM's and PUT's after their stops' cancels are confirmed
            assert res["blocked"] == [] and len(res["orders"]) == 1 and len(res["cancels"]) == 2, res
            assert res["reconciled"] == {"shared": {LATE: 1.0}}
            eventually(lambda: len(_sells(fake)) == 3, 10, what="three exits at the broker")
            assert fake.orders[7]["status"] == "canceled"  # a resting stop would have blocked the exit
            assert sorted((o["option_symbol"], o["quantity"]) for o in _sells(fake)) == \
                [(SYM, 3.0), (LATE, 1.0), (PUT, 2.0)]
            for o in _sells(fake):
                fake.fill(o["id"], o["quantity"], 1.0)
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"] == [], 10, what="all closed")
            again = h.call("flatten", {})
            assert again["orders"] == [] and again["blocked"] == []  # exactly once
            assert len(_sells(fake)) == 3 and set(fake.positions) == {"SPY"}
            assert fake.positions["SPY"]["quantity"] == 10
            assert not [o for o in fake.orders.values() if o.get("symbol") == "SPY"]
        finally:
            h.close()
        assert fake.violations == []


def test_flatten_under_the_kill_switch_for_a_stored_user_via_the_cli(run_dir):
    from services.broker import credentials

    key = generate_key("k1")
    with FakeTradier(token="carol-token", account="VA333") as fake:
        fake.add_position(SYM, 2, 400.0)
        store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
        try:
            store.add_user("carol", broker="tradier", environment="sandbox", auto_execution=True)
            store.add_user("alice", auto_execution=True)
            credentials.save(store, KeyRing.parse(key), "carol", fake.token, fake.account)
        finally:
            store.close()
        FlagStore(run_dir / "flags.json").set("kill_switch", True)
        env = {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
               "TRADIER_EXECUTION_ENABLED": "true"}
        h = Harness(run_dir, env)
        try:
            st = h.call("status")["broker"]
            assert st["refusal_reason"] == {"carol": "kill_switch", "alice": "kill_switch"}
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"], 10, what="carol's position adopted")
            eventually(lambda: _stop_rests(fake, SYM), 10, what="a protective stop under the kill switch")
            out = _cli("broker", "flatten", "--user", "carol", env={"SPX_RUNTIME_RUN_DIR": str(run_dir), **env})
            assert out.returncode == 0 and "0 exit order(s) queued, 1 cancel(s) first" in out.stdout, \
                out.stdout + out.stderr
            assert "refused" not in out.stdout
            eventually(lambda: _sells(fake), 10, what="carol's exit at the broker")
            [o] = _sells(fake)
            assert (o["option_symbol"], o["quantity"]) == (SYM, 2.0)
            # the kill switch still refuses entries
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("k-1", T0 + S) or h.seen("block.broker"), 10)
            assert {b.reason for b in h.seen("block.broker")} == {"kill_switch"}
        finally:
            h.close()
        assert fake.violations == []


def test_flatten_retries_an_expired_token_and_a_5xx_without_a_double_submission(run_dir):
    with FakeTradier() as fake:
        fake.add_position(SYM, 4, 800.0)
        h = Harness(run_dir, _env(fake, SPX_BROKER_RECONCILE_INTERVAL_S="0.3"))
        try:
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"], 10, what="adopted")
            eventually(lambda: _stop_rests(fake, SYM), 10, what="the adopted position's protective stop")
            fake.script("401", "place")  # the token expired: refused, the exit is retried
            fake.script("500", "place")  # a 5xx: the order's fate is unknown, looked up by tag, then retried
            res = h.call("flatten", {})
            assert res["blocked"] == [] and len(res["cancels"]) == 1  # the stop first; the exit on its cancel
            eventually(lambda: _sells(fake), 30, what="an exit accepted after the 401 and the 500")
            assert fake.count("POST", "/orders") == 1 + 3  # the stop, then three exit attempts
            [o] = _sells(fake)  # exactly one sell ever reached the book
            assert o["quantity"] == 4.0
            fake.fill(o["id"], 4, 1.2)
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"] == [], 10, what="closed")
            kinds = {a["kind"] for a in h.seen("alert.default")}
            assert "exit_failed" in kinds
        finally:
            h.close()
        assert fake.violations == [] or all("Authorization" not in v for v in fake.violations)


def _client(fake):
    return lambda: TradierClient(fake.base_url, fake.token, fake.account, backoff_s=0.01, place_timeout_s=2.0)


def test_direct_flatten_with_the_broker_process_stopped_via_the_cli(run_dir):
    with FakeTradier() as fake:
        fake.add_position(SYM, 3, 600.0)
        fake.add_position("SPY", 10, 5910.0)
        fake.orders[7] = {"id": 7, "tag": "spx-default-s1-stop-3-abc", "status": "open", "side": "sell_to_close",
                          "option_symbol": SYM, "symbol": "SPXW", "quantity": 3.0, "exec_quantity": 0.0,
                          "remaining_quantity": 3.0, "type": "stop", "class": "option"}
        fake.orders[8] = {"id": 8, "tag": "spx-default-s2-entry-4-abc", "status": "open", "side": "buy_to_open",
                          "option_symbol": PUT, "symbol": "SPXW", "quantity": 2.0, "exec_quantity": 0.0,
                          "remaining_quantity": 2.0, "type": "limit", "class": "option"}
        env = {"SPX_RUNTIME_RUN_DIR": str(run_dir), **_env(fake)}
        out = _cli("broker", "flatten", "--direct", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "done" in out.stdout and "SPY" in out.stdout
        assert fake.orders[7]["status"] == "canceled" and fake.orders[8]["status"] == "canceled"
        [o] = [o for o in fake.orders.values() if o["side"] == "sell_to_close" and o["status"] == "open"]
        assert (o["option_symbol"], o["quantity"], o["type"]) == (SYM, 3.0, "market")
        assert o["tag"].startswith("spx-flatten-")
        out = _cli("broker", "flatten", "--direct", "--json", env=env)  # a second run: already covered
        assert out.returncode == 0 and json.loads(out.stdout)["account"]["covered"] == {SYM: 3.0}
        assert len([o for o in fake.orders.values() if o["side"] == "sell_to_close"]) == 2  # 7 + ours
        assert fake.positions["SPY"]["quantity"] == 10 and fake.violations == []
        off = _cli("broker", "flatten", "--direct", env={**env, "TRADIER_EXECUTION_ENABLED": "false"})
        assert off.returncode == 1 and "execution_disabled" in off.stdout


def test_direct_flatten_expired_token_and_5xx_retried_exactly_once():
    with FakeTradier() as fake:
        fake.add_position(SYM, 2, 400.0)
        fake.add_position(PUT, 1, 100.0)
        fake.script("401", "positions")  # round 1: the token is refused
        fake.script("500", "place")  # round 2: no order created, no answer: looked up by tag, then retried
        fake.script("html", "place")  # the order is created, the answer is garbage: found by its tag
        rep = asyncio.run(direct.flatten(_client(fake), rounds=4, backoff_s=0.01))
        assert rep["ok"], rep
        sells = [o for o in fake.orders.values() if o["side"] == "sell_to_close"]
        assert sorted((o["option_symbol"], o["quantity"]) for o in sells) == [(SYM, 2.0), (PUT, 1.0)]
        assert any("TradierAuthError" in e for e in rep["errors"])
        assert fake.violations == [v for v in fake.violations if "Authorization" in v]  # only the scripted 401


def test_malformed_flags_file_keeps_the_kill_switch_on_across_restarts(run_dir):
    (run_dir / "flags.json").write_text('{"kill_switch": false, "auto_execution": true,}')  # a trailing comma
    for attempt in range(2):  # a restart changes nothing
        h = Harness(run_dir)
        try:
            st = h.call("status")
            assert st["flags"]["kill_switch"] is True and "invalid" in st["flags_error"]
            assert st["broker"]["engine"]["kill_switch"] is True
            h.quote_live(1.95, 2.0, T0 + attempt * 100 * S)
            eventually(lambda h=h, k=attempt: h.trigger(f"m-{k}", T0 + (k * 100 + 1) * S) or h.seen("block.broker"), 10)
            # every entry switch is at its safe value: paper entries off and the kill switch on
            assert {b.reason for b in h.seen("block.broker")} <= {"kill_switch", "paper_auto_execution_off"}
            assert h.seen("order.") == []
            eventually(lambda h=h: [a for a in h.seen("alert.default") if a["kind"] == "flags_invalid"], 10,
                       what="critical alert")
            assert [a["severity"] for a in h.seen("alert.default") if a["kind"] == "flags_invalid"][0] == "critical"
        finally:
            h.close()
    out = _cli("flags", "list", env={"SPX_RUNTIME_RUN_DIR": str(run_dir)})
    assert out.returncode == 1 and "NOT USABLE" in out.stdout and "kill_switch              True" in out.stdout
    out = _cli("status", env={"SPX_RUNTIME_RUN_DIR": str(run_dir)})
    assert out.returncode != 0 and "FLAGS FILE NOT USABLE" in out.stdout
    h = Harness(run_dir)
    try:
        FlagStore(run_dir / "flags.json").set("kill_switch", False)  # a valid file ends it
        assert h.call("flags.reload")["flags"]["kill_switch"] is False
        assert h.call("status")["flags_error"] is None
        h.quote_live(1.95, 2.0, T0 + 300 * S)
        eventually(lambda: h.trigger("m-ok", T0 + 301 * S) or h.seen("fill.default"), 10, what="entries again")
    finally:
        h.close()
    out = _cli("flags", "list", env={"SPX_RUNTIME_RUN_DIR": str(run_dir)})
    assert out.returncode == 0 and "NOT USABLE" not in out.stdout


def test_paper_broker_honours_its_visible_switch_and_still_exits(run_dir):
    """Issue 18, item 9: paper entries have their own runtime switch, shown next to auto_execution; turning
    it off stops paper entries at once, never an exit."""
    from services.broker.config import BrokerConfig
    from services.broker.credentials import user_allowed

    paper = {"enabled": True, "auto_execution": True, "broker": "paper", "environment": "sandbox"}
    assert user_allowed(BrokerConfig(), paper, token_stored=False, flags={"paper_auto_execution": False}) == \
        (False, "paper_auto_execution_off")
    assert user_allowed(BrokerConfig(), paper, token_stored=False, flags={"paper_auto_execution": True}) == (True, "")
    out = _cli("flags", "list", env={"SPX_RUNTIME_RUN_DIR": str(run_dir)})
    assert "paper_auto_execution     True" in out.stdout and "auto_execution           False" in out.stdout
    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("p-1", T0 + S, qty=2) or h.seen("fill.default"), 10, what="paper entry")
        FlagStore(run_dir / "flags.json").set("paper_auto_execution", False)
        assert h.call("flags.reload")["flags"]["paper_auto_execution"] is False
        assert h.call("status")["broker"]["refusal_reason"] == {"default": "paper_auto_execution_off"}
        eventually(lambda: h.trigger("p-2", T0 + 2 * S) or h.seen("block.broker"), 10)
        assert {b.reason for b in h.seen("block.broker")} == {"paper_auto_execution_off"}
        h.quote(2.5, 2.6, T0 + 3 * S)
        eventually(lambda: h.advice("p-1", "exit_all", T0 + 4 * S) or h.seen("position.default")[-1].quantity == 0,
                   10, what="the exit goes through with the paper switch off")
        assert {o.setup_id for o in h.seen("order.default") if o.side == "buy_to_open"} == {"p-1"}  # no p-2
    finally:
        h.close()
