"""Per-user limits in the pure engine and the users' opt-in decision (credentials.user_allowed)."""

from __future__ import annotations

from services.broker.accounts import limits_of
from services.broker.config import BrokerConfig
from services.broker.credentials import user_allowed
from services.broker.engine import Block, Engine, Gates, Limits, Place
from tests.broker.test_broker_engine import ACCOUNT, T0, reco, tr


def test_each_user_sized_by_their_own_limits():
    """Behaviour changed by issue 18: max_risk_per_trade is the user's risk budget to the stop (loss +
    spread), not premium; each entry is sized from it. The reco's setup loses $88.89 per contract."""
    loss = {"u3": 0.0}
    e = Engine(["u1", "u2", "u3", "u4"], Limits(max_contracts_per_order=10),
               Gates(lambda u: (True, ""), loss_today=lambda u: loss.get(u, 0.0), balances=lambda u: ACCOUNT),
               user_limits={"u1": Limits(max_contracts_per_order=3),  # $500 budget: 5 by risk, 3 by max contracts
                            "u2": Limits(max_risk_per_trade=200.0),  # 2 by risk
                            "u3": Limits(daily_loss_limit=100.0),
                            "u4": Limits(max_risk_per_trade=50.0)})  # less than one contract's loss
    loss["u3"] = 100.0
    out = e.on_transition(tr("s1", "triggered")) + e.on_recommendation(reco("s1", qty=4, ask=2.0))
    sizes = {i.order.user: i.order.quantity for i in out if isinstance(i, Place)}
    assert sizes == {"u1": 3, "u2": 2}
    blocks = {i.user: i.reason for i in out if isinstance(i, Block)}
    assert blocks == {"u3": "daily_loss_limit", "u4": "zero_size"}
    loss["u3"] = 99.0  # under the limit again (a new day): u3 enters on the next setup
    out = e.on_transition(tr("s2", "triggered", ts=T0 + 1)) + e.on_recommendation(reco("s2", qty=4, ts=T0 + 1))
    assert {i.order.user for i in out if isinstance(i, Place)} >= {"u3"}


def test_limits_of_a_record_never_exceed_the_config():
    cfg = BrokerConfig(max_contracts_per_order=5)
    rec = {"max_contracts": 50, "max_risk_per_trade": 700.0, "daily_loss_limit": 300.0}
    lim = limits_of(cfg, rec)
    assert (lim.max_contracts_per_order, lim.max_risk_per_trade, lim.daily_loss_limit) == (5, 700.0, 300.0)
    assert limits_of(cfg, None).max_contracts_per_order == 5


def test_user_allowed_names_the_first_failing_reason():
    cfg = BrokerConfig(execution_enabled=True)
    base = {"enabled": True, "auto_execution": True, "broker": "tradier", "environment": "sandbox"}
    on = {"auto_execution": True, "kill_switch": False}
    assert user_allowed(cfg, base, token_stored=True, flags=on) == (True, "")
    cases = [({**base, "enabled": False}, True, on, "user_disabled"),
             (base, True, {**on, "kill_switch": True}, "kill_switch"),
             ({**base, "auto_execution": False}, True, on, "not_opted_in"),
             (base, True, {**on, "auto_execution": False}, "auto_execution_flag_off"),
             (base, False, on, "no_token"),
             ({**base, "environment": "production"}, True, on, "production_not_enabled")]
    for rec, tok, flags, why in cases:
        assert user_allowed(cfg, rec, token_stored=tok, flags=flags) == (False, why)
    assert user_allowed(BrokerConfig(), base, token_stored=True, flags=on) == (False, "execution_disabled")
    paper = {**base, "broker": "paper"}
    assert user_allowed(BrokerConfig(), paper, token_stored=False, flags={}) == (True, "")  # paper sends nothing
    assert user_allowed(BrokerConfig(paper_auto_execution=False), paper, token_stored=False, flags={}) == \
        (False, "paper_auto_execution_off")
