"""spx_common.sizing: the one sizing function of the selector and the broker.

Hand-checkable cases for each term and refusal, and hypothesis properties over random contracts,
setups and budgets: contracts x (loss to the stop + spread) never exceeds the risk budget, nor the
premium cap, buying power or max contracts; every refusal is zero contracts with a reason code.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings, strategies as st

from spx_common import greeks, sizing
from spx_common.sizing import Budget, Leg, size

NOW = int(dt.datetime(2026, 2, 20, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)  # 10:00 ET
EXP = sizing.expiry_ns(dt.date(2026, 2, 20))
BIG = Budget(risk_dollars=500, buying_power=1e9, max_contracts=10_000, max_premium=1e12)


def test_delta_gamma_terms_by_hand():
    leg = Leg(call=True, strike=5000, expiry_ns=EXP, bid=1.9, ask=2.0, delta=0.5, gamma=0.01, underlying=5000)
    s = size(leg, "long", 5000, 4990, BIG, NOW, 0.04)
    b = s.breakdown
    # value(S) = mid + 0.5 (S - 5000) + 0.005 (S - 5000)^2: 1.95 at entry, 1.95 - 5 + 0.5 -> 0 (floored) at stop
    assert b.pricing == "delta_gamma" and b.valueAtEntry == 1.95 and b.valueAtStop == 0.0
    assert b.spread == pytest.approx(0.1) and b.perContractLoss == pytest.approx((1.95 + 0.1) * 100)
    assert s.contracts == b.contractsByRisk == 2 and s.reason is None and s.bound == "risk"
    assert b.perContractDebit == 200 and b.contractsByBuyingPower == int(1e9 // 200)


def test_iv_pricing_uses_time_to_expiry_and_rate():
    leg = Leg(call=False, strike=5000, expiry_ns=EXP, bid=9.0, ask=9.4, iv=0.2, underlying=5010)
    s = size(leg, "short", 5000, 5008, BIG, NOW, 0.04)
    t = greeks.year_fraction(NOW, EXP)
    ve = greeks.bs_price(5000, 5000, t, 0.2, 0.04, 0.0, False)
    vs = greeks.bs_price(5008, 5000, t, 0.2, 0.04, 0.0, False)
    assert s.breakdown.pricing == "iv"
    assert s.breakdown.perContractLoss == pytest.approx((ve - vs + 0.4) * 100, abs=0.01)
    assert s.contracts == math.floor(500 / s.breakdown.perContractLoss)


def test_caps_premium_buying_power_and_max_contracts():
    leg = Leg(call=True, strike=5000, expiry_ns=EXP, bid=1.9, ask=2.0, delta=0.5, underlying=5000)
    # loss = (0.5 x 1 + 0.1) x 100 = $60 -> 8 by risk; premium cap 4 x 500 = 2000 -> 10 at $200
    s = size(leg, "long", 5000, 4999, Budget(500, 1e6, 100), NOW, 0.0)
    assert (s.contracts, s.bound, s.breakdown.contractsByPremium) == (8, "risk", 10)
    s = size(leg, "long", 5000, 4999.5, Budget(500, 1e6, 100), NOW, 0.0)  # $35 -> 14 by risk, 10 by premium
    assert (s.contracts, s.bound, s.breakdown.maxPremiumDollars) == (10, "premium", 2000)
    s = size(leg, "long", 5000, 4999.5, Budget(500, 1000, 100), NOW, 0.0)
    assert (s.contracts, s.bound) == (5, "buying power") and s.breakdown.margin_limit_blocked
    s = size(leg, "long", 5000, 4999.5, Budget(500, 1e6, 3), NOW, 0.0)
    assert (s.contracts, s.bound) == (3, "max_contracts")
    s = size(leg, "long", 5000, 4999.5, Budget(500, 1e6, 100), NOW, 0.0, price=1.95)  # the entry limit, not the ask
    assert s.breakdown.perContractDebit == 195


@pytest.mark.parametrize("direction,entry,stop,leg_kw,budget,code", [
    ("long", 5000, 5001, {}, BIG, "stop_wrong_side"),
    ("short", 5000, 4999, {}, BIG, "stop_wrong_side"),
    ("long", 5000, 5000, {}, BIG, "stop_wrong_side"),
    ("long", float("nan"), 4990, {}, BIG, "bad_setup"),
    ("long", 5000, float("inf"), {}, BIG, "bad_setup"),
    ("up", 5000, 4990, {}, BIG, "bad_setup"),
    ("long", 5000, 4990, {"ask": float("nan")}, BIG, "bad_price"),
    ("long", 5000, 4990, {"bid": 2.1}, BIG, "bad_price"),  # crossed
    ("long", 5000, 4990, {"delta": float("inf")}, BIG, "bad_price"),
    ("long", 5000, 4990, {"delta": None}, BIG, "bad_price"),  # nothing to reprice with
    ("long", 5000, 4999.9, {}, Budget(500, 1e9, 100, min_risk_per_contract=20), "risk_below_floor"),
    ("long", 5000, 4990, {}, Budget(float("nan"), 1e9, 100), "bad_risk"),
    ("long", 5000, 4990, {}, Budget(-5, 1e9, 100), "bad_risk"),
    ("long", 5000, 4990, {}, Budget(100, 1e9, 100), "zero_size"),
    ("long", 5000, 4990, {}, Budget(500, 100, 100), "zero_size"),
])
def test_refusals_name_their_reason(direction, entry, stop, leg_kw, budget, code):
    kw = dict(call=True, strike=5000, expiry_ns=EXP, bid=1.9, ask=2.0, delta=0.5, underlying=5000)
    s = size(Leg(**{**kw, **leg_kw}), direction, entry, stop, budget, NOW, 0.0)
    assert s.contracts == 0 and s.reason is not None and s.reason.startswith(code), s.reason


def test_usable_buying_power_and_dtbp_floor():
    assert sizing.usable_buying_power(40_000, 20_000, True) == (20_000, None)
    assert sizing.usable_buying_power(40_000, 20_000, False) == (40_000, None)
    assert sizing.usable_buying_power(None, 20_000, False) == (20_000, None)
    assert sizing.usable_buying_power(40_000, 20_000, True, dtbp_floor=5_000) == (15_000, None)
    bp, why = sizing.usable_buying_power(40_000, 5_000, True, dtbp_floor=5_000)
    assert bp == 0 and why.startswith("dtbp_floor")
    bp, why = sizing.usable_buying_power(None, None, True)
    assert bp == 0 and why.startswith("no_buying_power")
    bp, why = sizing.usable_buying_power(float("nan"), None, False)
    assert bp == 0 and why.startswith("no_buying_power")


def test_pdt_qualified():
    assert sizing.pdt_qualified(True, 1.0, 25_000) and not sizing.pdt_qualified(False, 1e9, 25_000)
    assert sizing.pdt_qualified(None, 25_000, 25_000) and not sizing.pdt_qualified(None, 24_999, 25_000)
    assert not sizing.pdt_qualified(None, None, 25_000) and sizing.pdt_qualified(None, 100, 25_000, "cash")


finite = st.floats(allow_nan=False, allow_infinity=False)
anything = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")))


@st.composite
def setups(draw):
    spot = draw(st.floats(500, 8000))
    call = draw(st.booleans())
    strike = round(spot * draw(st.floats(0.9, 1.1)) / 5) * 5 or 5.0
    minutes = draw(st.integers(1, 60 * 24 * 40))
    expiry = NOW + minutes * 60 * 10**9
    t = greeks.year_fraction(NOW, expiry)
    iv = draw(st.floats(0.03, 2.0))
    fair = greeks.bs_price(spot, strike, t, iv, 0.04, 0.0, call)
    spread = draw(st.floats(0.0, 3.0))
    bid = max(round(fair - spread / 2, 2), 0.0)
    ask = round(max(fair + spread / 2, bid + 0.01), 2)
    g = greeks.bs_greeks(spot, strike, t, iv, 0.04, 0.0, call)
    with_iv = draw(st.booleans())
    leg = Leg(call=call, strike=strike, expiry_ns=expiry, bid=bid, ask=ask, iv=iv if with_iv else None,
              delta=g.delta, gamma=g.gamma, underlying=draw(st.one_of(st.none(), st.just(spot))))
    direction = "long" if call else "short"
    entry = spot + draw(st.floats(-30, 30))
    dist = draw(st.floats(-2, 60))  # negative: a stop on the wrong side
    stop = entry - dist if direction == "long" else entry + dist
    budget = Budget(risk_dollars=draw(st.floats(-10, 50_000)), buying_power=draw(st.floats(-100, 1e6)),
                    max_contracts=draw(st.integers(1, 500)),
                    max_premium=draw(st.one_of(st.none(), st.floats(1, 1e6))),
                    min_risk_per_contract=draw(st.floats(0.01, 200)))
    return leg, direction, entry, stop, budget


@settings(max_examples=400, deadline=None)
@given(setups())
def test_property_contracts_times_loss_to_stop_never_exceeds_the_budget(case):
    leg, direction, entry, stop, budget = case
    s = size(leg, direction, entry, stop, budget, NOW, 0.04)
    assert s.contracts >= 0
    if s.contracts == 0:
        assert s.reason and s.reason.split(":", 1)[0] in {
            "bad_setup", "stop_wrong_side", "bad_risk", "bad_price", "risk_below_floor", "zero_size"}
        return
    # recompute the loss independently: the same repricing the docs state, from greeks directly
    if leg.iv is not None:
        t = greeks.year_fraction(NOW, leg.expiry_ns)
        ve = greeks.bs_price(entry, leg.strike, t, leg.iv, 0.04, 0.0, leg.call)
        vs = greeks.bs_price(stop, leg.strike, t, leg.iv, 0.04, 0.0, leg.call)
    else:
        s0 = leg.underlying if leg.underlying is not None else entry
        mid = (leg.bid + leg.ask) / 2
        ve = max(mid + leg.delta * (entry - s0) + leg.gamma * (entry - s0) ** 2 / 2, 0.0)
        vs = max(mid + leg.delta * (stop - s0) + leg.gamma * (stop - s0) ** 2 / 2, 0.0)
    loss = (max(ve - vs, 0.0) + (leg.ask - leg.bid)) * 100
    assert loss > budget.min_risk_per_contract
    assert s.contracts * loss <= budget.risk_dollars * (1 + 1e-9)
    debit = leg.ask * 100
    cap = budget.max_premium if budget.max_premium is not None else 4 * budget.risk_dollars
    assert s.contracts * debit <= min(budget.buying_power, cap) * (1 + 1e-9)
    assert s.contracts <= budget.max_contracts and s.reason is None
    assert (direction == "long") == (stop < entry)


@settings(max_examples=200, deadline=None)
@given(bid=anything, ask=anything, delta=st.one_of(st.none(), anything), iv=st.one_of(st.none(), anything),
       entry=anything, stop=anything, risk=anything, bp=anything)
def test_property_garbage_in_never_raises_and_never_sizes_past_the_budget(bid, ask, delta, iv, entry, stop, risk, bp):
    leg = Leg(call=True, strike=5000, expiry_ns=EXP, bid=bid, ask=ask, iv=iv, delta=delta, underlying=5000)
    s = size(leg, "long", entry, stop, Budget(risk, bp, 50), NOW, 0.04)
    if s.contracts:
        assert s.contracts * s.breakdown.perContractLoss <= risk * (1 + 1e-9) + 0.01 * s.contracts
        assert math.isfinite(s.breakdown.perContractLoss) and stop < entry
