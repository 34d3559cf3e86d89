"""Users in the store (both engines): the Store API, validation, and ``spx users`` incl. credentials
against the fake Tradier sandbox (balances, account type, buying power; the token never printed)."""

from __future__ import annotations

import io
import json

import pytest

from services.cli.main import main
from spx_common.crypto import generate_key
from spx_common.store.users import UserError
from spx_testing.fakes.tradier import FakeTradier


def spx(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_store_users_api(store):
    assert store.users() == []
    u = store.add_user("alice", now_ns=10, max_risk_per_trade="750", max_contracts=3)
    assert u["auto_execution"] is False and u["broker"] == "paper" and u["environment"] == "sandbox"
    assert u["display_name"] == "alice" and u["coach"]["min_severity"] == "info"
    store.add_user("bob", broker="tradier", auto_execution="on", coach={"min_severity": "warning", "quiet": True})
    with pytest.raises(UserError, match="already exists"):
        store.add_user("alice")
    for bad, msg in [({"max_contracts": 0}, "max_contracts"), ({"max_risk_per_trade": "nan"}, "max_risk_per_trade"),
                     ({"daily_loss_limit": -5}, "daily_loss_limit"), ({"broker": "ibkr"}, "broker"),
                     ({"environment": "live"}, "environment"), ({"day_trading_policy": "yolo"}, "day_trading_policy"),
                     ({"coach": {"volume": 11}}, "coach"), ({"coach": {"min_severity": "loud"}}, "min_severity"),
                     ({"password": "x"}, "unknown setting")]:
        with pytest.raises(UserError, match=msg):
            store.update_user("alice", **bad)
    with pytest.raises(UserError, match="user id"):
        store.add_user("al ice")
    with pytest.raises(UserError, match="no user"):
        store.update_user("carol", enabled=False)
    assert store.user("alice")["max_risk_per_trade"] == 750.0  # refused changes left it alone
    b = store.user("bob")
    assert b["auto_execution"] is True and b["coach"] == {"channels": ["ws"], "kinds": [], "min_severity": "warning",
                                                          "quiet": True}
    store.update_user("alice", enabled=False, now_ns=20)
    assert [x["user"] for x in store.users(enabled_only=True)] == ["bob"]
    assert store.user("alice")["updated_ns"] == 20 and store.user("alice")["created_ns"] == 10
    store.set_credential_status("bob", ok_ns=123)
    store.set_credential_status("bob", error="HTTP 401", now_ns=456)
    b = store.user("bob")
    assert (b["last_ok_ns"], b["last_error"], b["last_error_ns"]) == (123, "HTTP 401", 456)
    assert not store.delete_credentials("bob", "tradier")


def test_users_cli(db_url, run_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    code, out = spx(capsys, "users", "list")
    assert code == 0 and "no users" in out
    code, out = spx(capsys, "users", "add", "alice", "--max-risk", "600", "--max-contracts", "4",
                    "--daily-loss", "900", "--coach", '{"min_severity": "warning"}')
    assert code == 0 and "auto-exec off" in out and "max 4 contracts" in out
    code, out = spx(capsys, "users", "add", "alice")
    assert code == 2 and "already exists" in out
    code, out = spx(capsys, "users", "add", "bob", "--max-contracts", "many")
    assert code == 2 and "max_contracts" in out and "whole number" in out
    code, out = spx(capsys, "users", "add", "bob", "--coach", "{not json")
    assert code == 2 and "coach: not JSON" in out
    code, out = spx(capsys, "users", "set", "alice", "--auto-execution", "on", "--day-trading", "off")
    assert code == 0 and "auto-exec ON" in out and "day-trading off" in out
    code, out = spx(capsys, "users", "set", "alice")
    assert code == 2 and "nothing to change" in out
    code, out = spx(capsys, "users", "set", "nobody", "--max-contracts", "2")
    assert code == 2 and "no user 'nobody'" in out
    code, out = spx(capsys, "users", "show", "alice", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["auto_execution"] is True and doc["coach"]["min_severity"] == "warning"
    assert doc["credentials_stored"] is False
    assert spx(capsys, "users", "disable", "alice")[0] == 0
    code, out = spx(capsys, "users", "list")
    assert code == 0 and "DISABLED" in out
    assert spx(capsys, "users", "show", "ghost")[0] == 2


def test_users_credentials_cli_against_the_fake_sandbox(db_url, run_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SPX_CREDENTIALS_KEYS", generate_key("k1"))
    token = "tok-SECRET-9f8e7d"
    with FakeTradier(token=token, account="VA777") as fake:
        monkeypatch.setenv("SPX_BROKER_SANDBOX_URL", fake.base_url)
        monkeypatch.setenv("SPX_BROKER_PRODUCTION_URL", fake.base_url + "/nowhere")
        outputs = []
        assert spx(capsys, "users", "add", "carol", "--broker", "tradier", "--auto-execution", "on")[0] == 0
        code, out = spx(capsys, "users", "credentials", "test", "carol")
        outputs.append(out)
        assert code == 1 and "no token stored" in out
        code, out = spx(capsys, "users", "credentials", "status", "carol", "--json")
        outputs.append(out)
        st = json.loads(out)
        assert st["environment"] == "sandbox" and st["token_stored"] is False
        assert st["execution_allowed"] is False and st["reason"] == "auto_execution_flag_off"
        monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
        code, out = spx(capsys, "users", "credentials", "set", "carol", "--account", "VA777")
        outputs.append(out)
        assert code == 0 and "sealed" in out
        code, out = spx(capsys, "users", "credentials", "test", "carol")
        outputs.append(out)
        assert code == 0 and "sandbox OK" in out and "type margin" in out and "$40,000.00" in out
        assert spx(capsys, "flags", "set", "auto_execution", "on")[0] == 0
        code, out = spx(capsys, "users", "credentials", "status", "carol", "--json")
        outputs.append(out)
        st = json.loads(out)
        assert st["token_stored"] and st["last_ok_ns"] and st["last_error"] is None
        assert st["execution_allowed"] is False and st["reason"] == "execution_disabled"
        monkeypatch.setenv("TRADIER_EXECUTION_ENABLED", "true")
        code, out = spx(capsys, "users", "credentials", "status", "carol")
        outputs.append(out)
        assert "execution ALLOWED" in out
        assert spx(capsys, "users", "set", "carol", "--environment", "production")[0] == 0
        code, out = spx(capsys, "users", "credentials", "status", "carol", "--json")
        assert json.loads(out)["reason"] == "production_not_enabled"
        code, out = spx(capsys, "users", "credentials", "test", "carol")  # the production URL answers 404
        outputs.append(out)
        assert code == 1 and "production test failed" in out
        code, out = spx(capsys, "users", "credentials", "status", "carol", "--json")
        outputs.append(out)
        assert json.loads(out)["last_error"]
        code, out = spx(capsys, "users", "credentials", "remove", "carol")
        outputs.append(out)
        assert code == 0 and "token removed" in out
        code, out = spx(capsys, "users", "credentials", "status", "carol", "--json")
        assert json.loads(out)["token_stored"] is False
        monkeypatch.setenv("VAR_TOKEN", token)
        code, out = spx(capsys, "users", "credentials", "set", "carol", "--account", "VA777", "--token-env", "VAR_TOKEN")
        outputs.append(out)
        assert code == 0
        assert [v for v in fake.violations if "/nowhere/" not in v] == []  # the 404 was the production URL's
    assert all(token not in o for o in outputs)
