"""kill_switch and auto_execution on a real broker process (paper broker; the fake Tradier server):
each flipped at runtime and back, with open positions and working orders kept."""

from __future__ import annotations

from tests.broker.harness import T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier
from tests.rollout.helpers import reload_set, spx_flags_set

S = 1_000_000_000


def test_kill_switch_refuses_entries_allows_exits_and_lifts(run_dir):
    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("k-1", T0 + S) or h.seen("fill.default"), 10, what="entry filled")
        assert "broker" in spx_flags_set(run_dir, "kill_switch", "true")
        assert h.call("status")["broker"]["engine"]["kill_switch"] is True
        h.trigger("k-2", T0 + 2 * S)
        block = eventually(lambda: h.seen("block.broker"), 10, what="entry refused")[0]
        assert block.reason == "kill_switch" and block.subject == "default:k-2"
        # exits are still allowed: the open position scales out
        h.quote(3.0, 3.1, T0 + 60 * S)
        eventually(lambda: h.advice("k-1", "scale_out", T0 + 61 * S, 0.5) or len(h.seen("fill.default")) >= 2, 10,
                   what="scale-out while the kill switch is on")
        assert h.seen("fill.default")[1].side == "sell_to_close"

        assert reload_set(run_dir, h.rpc, "kill_switch", False)["changed"] == {"kill_switch": False}
        h.quote(1.95, 2.0, T0 + 62 * S)
        eventually(lambda: h.trigger("k-3", T0 + 63 * S) or len(h.seen("fill.default")) >= 3, 10,
                   what="entries again")
        fills = h.seen("fill.default")
        assert [(f.side, f.quantity) for f in fills] == [("buy_to_open", 4), ("sell_to_close", 2), ("buy_to_open", 4)]
        assert [b.subject for b in h.seen("block.broker")] == ["default:k-2"]
        trades = {t["setup_id"]: t for t in h.call("status")["broker"]["engine"]["trades"]}
        assert trades["k-1"]["held"] == 2 and trades["k-3"]["held"] == 4  # the first position kept its half
    finally:
        h.close()


def _tradier_env(fake):
    return {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
            "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
            "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true", "SPX_BROKER_AUTO_EXECUTION_USERS": "default"}


def test_auto_execution_off_refuses_on_sends_and_off_again_keeps_the_order(run_dir):
    with FakeTradier() as fake:
        h = Harness(run_dir, _tradier_env(fake))
        try:
            assert h.call("status")["broker"]["refusal_reason"] == {"default": "auto_execution_flag_off"}
            h.quote_live(1.95, 2.0, T0)
            h.trigger("a-1", T0 + S)
            assert eventually(lambda: h.seen("block.broker"), 10)[0].reason == "auto_execution_flag_off"

            assert "broker" in spx_flags_set(run_dir, "auto_execution", "true")
            assert h.call("status")["broker"]["refusal_reason"] == {}
            eventually(lambda: h.trigger("a-2", T0 + 2 * S) or fake.orders, 10, what="order sent to Tradier")
            [(oid, order)] = fake.orders.items()
            assert order["tag"].startswith("spx-default-a-2-entry")

            reload_set(run_dir, h.rpc, "auto_execution", False)
            h.trigger("a-3", T0 + 3 * S)
            eventually(lambda: [b for b in h.seen("block.broker") if b.subject == "default:a-3"], 10,
                       what="refused again")
            assert fake.count("POST", "/orders") == 1
            fake.fill(oid, 4, 2.0)  # the order sent while on is still followed
            eventually(lambda: h.seen("fill.default"), 10, what="fill of the earlier order")
            assert h.seen("position.default")[-1].quantity == 4
        finally:
            h.close()
        assert fake.violations == []
