"""Issue 18 item 8: only option positions are adopted (equities reported, never touched), average price =
cost basis / (quantity x multiplier); the sandbox/production decision parses the URL's scheme and host,
for the base URL and every stored user's URL alike."""

from __future__ import annotations

import pytest

from services.broker import portfolio as pf
from services.broker.config import BrokerConfig, is_sandbox_url, url_origin
from services.broker.credentials import user_allowed, user_send_allowed
from spx_common.flags import FlagStore
from tests.broker.harness import SYM, T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier

SPY_ROW = {"symbol": "SPY", "quantity": 10.0, "cost_basis": 5910.0, "id": 1}


def test_adoption_takes_long_options_only_with_per_share_average_price():
    rows = [SPY_ROW,
            {"symbol": SYM, "quantity": 3.0, "cost_basis": 600.0},
            {"symbol": "SPXW260220P04900000", "quantity": -1.0, "cost_basis": -100.0},
            {"symbol": "SPXW260220C05100000", "quantity": 2.0, "cost_basis": 50.0, "multiplier": 10},  # mini
            {"symbol": "SPXW260220C05200000", "quantity": 4.0, "cost_basis": 400.0}]
    plan = pf.adoption(rows, {"SPXW260220C05200000"})  # the ledger already knows that one
    assert plan["adopt"] == [(SYM, 3.0, 2.0), ("SPXW260220C05100000", 2.0, 2.5)]
    assert plan["shorts"] == [("SPXW260220P04900000", -1.0)]
    assert plan["others"] == [("SPY", 10.0)]  # never 5910 / (10 x 100) = 5.91 as an option
    options, others = pf.split_positions(rows)
    assert "SPY" not in options and others == {"SPY": 10.0} and options[SYM] == 3.0
    assert pf.multiplier(SPY_ROW) == 1.0 and pf.multiplier({"symbol": SYM}) == 100.0


@pytest.mark.parametrize("url,sandbox", [
    ("https://sandbox.tradier.com/v1", True),
    ("https://sandbox.tradier.com/v1/", True),
    ("HTTPS://Sandbox.Tradier.com:443/v1", True),
    ("https://sandbox.tradier.com@api.tradier.com/v1", False),  # userinfo: the client connects to api.
    ("https://api.tradier.com/v1", False),
    ("http://sandbox.tradier.com/v1", False),  # another scheme
    ("https://sandbox.tradier.com:8443/v1", False),
    ("https://sandbox.tradier.com.evil.example/v1", False),  # a prefix is not the host
    ("https://sandbox.tradier.comx/v1", False),
    ("sandbox.tradier.com/v1", False),
    ("", False),
    ("https://[::1/v1", False),
])
def test_sandbox_decision_parses_scheme_and_host(url, sandbox):
    assert is_sandbox_url(url) is sandbox
    assert BrokerConfig(base_url=url).is_sandbox is sandbox
    send = BrokerConfig(base_url=url, access_token="t", execution_enabled=True).tradier_send_allowed()
    assert send == ((True, "") if sandbox else (False, "production_not_enabled"))


def test_every_user_url_is_checked_the_same_way():
    on = {"auto_execution": True, "kill_switch": False}
    rec = {"enabled": True, "auto_execution": True, "broker": "tradier", "environment": "sandbox"}
    assert user_allowed(BrokerConfig(execution_enabled=True), rec, token_stored=True, flags=on) == (True, "")
    # a "sandbox" URL configured onto the production host (or past it with userinfo) is production
    for bad in ("https://api.tradier.com/v1", "https://sandbox.tradier.com@api.tradier.com/v1"):
        cfg = BrokerConfig(execution_enabled=True, sandbox_url=bad)
        assert not cfg.user_is_sandbox("sandbox")
        assert user_allowed(cfg, rec, token_stored=True, flags=on) == (False, "production_not_enabled")
        assert user_send_allowed(cfg, rec, token_stored=True) == (False, "production_not_enabled")  # exits too
        assert user_allowed(cfg.model_copy(update={"production_enabled": True}), rec, token_stored=True,
                            flags=on) == (True, "")
    assert url_origin("https://sandbox.tradier.com@api.tradier.com/v1") == ("https", "api.tradier.com", 443)


def _env(fake, **extra):
    return {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
            "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
            "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true", "SPX_BROKER_AUTO_EXECUTION_USERS": "default",
            "SPX_BROKER_RECONCILE_INTERVAL_S": "0.5", **extra}


def test_fake_tradier_spy_shares_untouched_option_adopted_at_cost_per_share(run_dir):
    with FakeTradier() as fake:
        fake.positions["SPY"] = {**SPY_ROW, "date_acquired": "2026-02-20T15:00:00.000Z"}
        fake.add_position(SYM, 3, 600.0)
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _env(fake))
        try:
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"], 10, what="option adopted")
            trades = h.call("status")["broker"]["engine"]["trades"]
            assert [(t["symbol"], t["held"], t["avg_price"]) for t in trades] == [(SYM, 3.0, 2.0)]
            eventually(lambda: [a for a in h.seen("alert.default") if a["kind"] == "not_an_option:SPY"], 10,
                       what="SPY reported")
            eventually(lambda: h.call("status")["broker"]["accounts"]["shared"]["not_managed"] == {"SPY": 10.0}, 10)
            assert [p.option_symbol for p in h.seen("position.default")] == [SYM]
            eventually(lambda: [o for o in fake.orders.values() if o["type"] == "stop"], 10, what="protective stop")
            h.quote(1.5, 1.6, T0)
            res = h.call("flatten", {})
            assert len(res["cancels"]) == 1  # the adopted option's protective stop first, then its exit
            def exits():
                return [i for i, o in fake.orders.items() if o["side"] == "sell_to_close" and o["type"] != "stop"]
            eventually(exits, 10)
            fake.fill(exits()[0], 3, 1.5)
            eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10, what="option flattened")
            n = fake.count("GET", "/positions")
            eventually(lambda: fake.count("GET", "/positions") >= n + 3, 10, what="reconciles with SPY still held")
            assert {o["option_symbol"] for o in fake.orders.values()} == {SYM}  # nothing ever sent for SPY
            assert fake.positions["SPY"]["quantity"] == 10.0
            assert not [a for a in h.seen("alert.default") if a["kind"].startswith("drift:")]
        finally:
            h.close()
        assert fake.violations == []
