"""Table-driven selection: delta by regime, sizing arithmetic, day-trade gating, bad input, cache isolation."""

import math

import pytest

from services.selector.chain import expiry_ns
from services.selector.select import DELTA_TABLE, Policy, RecoCache, RiskContext, SetupSpec, regime_key, select
from spx_common import greeks
from tests.selector.helpers import T, chain

RICH = RiskContext(maxRiskDollars=100_000, dayTradeBuyingPower=1_000_000, equity=200_000)


def spec(direction="long", entry=None, stop=None, sid="s1"):
    spot = chain().underlying
    entry = spot if entry is None else entry
    stop = (entry - 10 if direction == "long" else entry + 10) if stop is None else stop
    return SetupSpec(setup_id=sid, direction=direction, entry=entry, stop=stop, targets=[])


POLICY = Policy(min_open_interest=100, max_spread_pct=0.10, max_contracts=10_000)


@pytest.mark.parametrize("regime,expect_key", [
    ("trending", "trending"), ("trend_up", "trending"), ("ranging", "ranging"), ("chop", "ranging"),
    ("compression", "compression"), ("volatile", "volatile"), (None, "unknown"), ("martian", "unknown")])
@pytest.mark.parametrize("direction", ["long", "short"])
def test_delta_targeting_by_regime(regime, expect_key, direction):
    assert regime_key(regime) == expect_key
    target, lo, hi = DELTA_TABLE[expect_key]
    c = chain()
    r = select(spec(direction), c, regime, RICH, POLICY, T)
    assert r.ok, r.reason
    assert r.option_type == ("call" if direction == "long" else "put")
    assert lo <= abs(r.delta) <= hi
    # it is the eligible contract closest to the target
    side = [x for x in c.contracts.values() if x.call == (direction == "long") and x.quote_ok
            and x.spread_pct <= 0.10 and x.open_interest >= 100 and lo <= abs(x.delta) <= hi]
    assert abs(abs(r.delta) - target) == pytest.approx(min(abs(abs(x.delta) - target) for x in side), abs=1e-4)
    assert r.occ_symbol.replace(" ", "") == r.tradier_symbol and r.massive_symbol == "O:" + r.tradier_symbol
    assert r.bid < r.mid < r.ask


def test_regimes_pick_different_strikes():
    deltas = {k: abs(select(spec(), chain(), k, RICH, POLICY, T).delta) for k in ("compression", "ranging",
                                                                                  "trending", "volatile")}
    assert deltas["compression"] < deltas["ranging"] < deltas["trending"] < deltas["volatile"]


@pytest.mark.parametrize("max_risk,bp,bound", [
    (1_000, 1_000_000, "risk"),       # risk-bound
    (100_000, 3_000, "buying power"),  # buying-power-bound -> margin_limit_blocked
    (5_000, 5_000, None),
])
def test_sizing_arithmetic(max_risk, bp, bound):
    """Behaviour changed by issue 18: the loss is priced from the entry to the stop (both repriced with the
    contract's IV) plus the spread, and a premium cap (4 x the budget) also bounds the size."""
    risk = RiskContext(maxRiskDollars=max_risk, dayTradeBuyingPower=bp)
    r = select(spec(), chain(), "trending", risk, POLICY, T)
    s = r.sizing
    assert s.perContractDebit == pytest.approx(r.ask * 100)
    assert s.contractsByBuyingPower == math.floor(bp / s.perContractDebit)
    assert s.maxRiskDollars == max_risk
    best = chain().contracts[r.tradier_symbol]
    t = greeks.year_fraction(T, expiry_ns(best.symbol.expiration))
    v_entry = greeks.bs_price(spec().entry, best.strike, t, best.iv, POLICY.rate, 0.0, True)
    v_stop = greeks.bs_price(spec().stop, best.strike, t, best.iv, POLICY.rate, 0.0, True)
    loss = (v_entry - v_stop + best.ask - best.bid) * 100
    assert s.pricing == "iv" and s.perContractLoss == pytest.approx(loss, abs=0.01)
    assert (s.valueAtEntry, s.valueAtStop) == (pytest.approx(v_entry, abs=1e-4), pytest.approx(v_stop, abs=1e-4))
    assert s.contractsByRisk == math.floor(max_risk / s.perContractLoss)
    assert s.contractsByPremium == math.floor(4 * max_risk / s.perContractDebit)
    assert r.suggestedContracts == min(s.contractsByRisk, s.contractsByBuyingPower, s.contractsByPremium)
    assert r.suggestedContracts * s.perContractLoss <= max_risk
    assert s.margin_limit_blocked == (s.contractsByBuyingPower < s.contractsByRisk)
    if bound == "risk":
        assert s.contractsByRisk < s.contractsByBuyingPower and "risk-bound" in r.reason
    if bound == "buying power":
        assert s.margin_limit_blocked and "buying power-bound" in r.reason


def test_loss_is_repriced_from_the_entry_not_the_current_quote():
    """The reproduced case of issue 18: SPX far below the entry; the old code priced the stop against the
    current quote, got a negative loss, clamped it to $0.01 and sized 30 contracts of $19,800 premium."""
    spot = chain().underlying
    entry, stop = spot + 23, spot + 15  # like --entry 5900 --stop 5892 with SPX near 5877
    risk = RiskContext(maxRiskDollars=500, dayTradeBuyingPower=20_000)
    r = select(spec(entry=entry, stop=stop), chain(), None, risk, Policy(), T)
    s = r.sizing
    assert s.entry == entry and s.stop == stop and s.valueAtEntry > s.valueAtStop > 0
    assert r.suggestedContracts * s.perContractLoss <= 500
    assert r.suggestedContracts * s.perContractDebit <= 2000  # premium cap = 4 x $500
    tight = select(spec(stop=spot - 2), chain(), "trending", RICH, POLICY, T).sizing
    wide = select(spec(stop=spot - 200), chain(), "trending", RICH, POLICY, T).sizing
    assert tight.contractsByRisk > wide.contractsByRisk


def test_tiny_stop_is_refused_below_the_floor_and_premium_capped_above_it():
    spot = chain().underlying
    r = select(spec(stop=spot - 0.01), chain(), "trending", RICH, Policy(min_risk_per_contract=100), T)
    assert not r.ok and r.reason.startswith("risk_below_floor") and r.suggestedContracts == 0
    r = select(spec(stop=spot - 0.25), chain(), "trending", RiskContext(maxRiskDollars=500, dayTradeBuyingPower=1e6),
               Policy(), T)
    assert r.ok and r.sizing.bound == "premium"
    assert r.suggestedContracts == math.floor(2000 / r.sizing.perContractDebit) < r.sizing.contractsByRisk
    capped = select(spec(stop=spot - 0.25), chain(), "trending", RiskContext(maxRiskDollars=500,
                    dayTradeBuyingPower=1e6), Policy(max_premium_per_trade=700), T)
    assert capped.suggestedContracts == math.floor(700 / capped.sizing.perContractDebit)


@pytest.mark.parametrize("policy,risk,ok,code", [
    ("buying_power", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, pdtQualified=False), True, None),
    ("buying_power", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=0, optionBuyingPower=50_000), False,
     "no_buying_power"),
    ("buying_power", RiskContext(maxRiskDollars=1000, optionBuyingPower=50_000), True, None),
    ("pdt", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, pdtQualified=False), False,
     "day_trade_blocked"),
    ("pdt", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, pdtQualified=True), True, None),
    ("pdt", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, equity=10_000), False, "day_trade_blocked"),
    ("pdt", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, equity=30_000), True, None),
    ("off", RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000, pdtQualified=False), True, None),
    ("off", RiskContext(maxRiskDollars=1000), False, "no_buying_power"),
])
def test_day_trade_policy(policy, risk, ok, code):
    r = select(spec(), chain(), "trending", risk, Policy(day_trade_policy=policy), T)
    assert r.ok is ok, r.reason
    if code:
        assert r.reason.startswith(code) and r.suggestedContracts == 0
        assert r.occ_symbol  # the contract it would have been is still shown


def _bad_chain(mut):
    c = chain()
    for x in c.contracts.values():
        mut(x)
    return c


@pytest.mark.parametrize("make,setup,risk,code", [
    (lambda: None, None, RICH, "empty_chain"),
    (lambda: _bad_chain(lambda x: None).__class__("SPXW", 5900, T, "feed"), None, RICH, "empty_chain"),
    (lambda: _bad_chain(lambda x: setattr(x, "bid", x.ask + 1)), None, RICH, "no_contract"),  # crossed
    (lambda: _bad_chain(lambda x: (setattr(x, "bid", 0.0), setattr(x, "ask", 0.0))), None, RICH, "no_contract"),
    (lambda: _bad_chain(lambda x: setattr(x, "delta", None)), None, RICH, "no_contract"),  # missing greeks
    (lambda: _bad_chain(lambda x: setattr(x, "open_interest", 0)), None, RICH, "no_contract"),
    (chain, "wrong_long", RICH, "stop_wrong_side"),
    (chain, "wrong_short", RICH, "stop_wrong_side"),
    (chain, "nan", RICH, "bad_setup"),
    (chain, None, RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=0), "no_buying_power"),
    (chain, None, RiskContext(maxRiskDollars=0, dayTradeBuyingPower=1e6), "bad_risk"),
    (chain, None, RiskContext(maxRiskDollars=float("nan"), dayTradeBuyingPower=1e6), "bad_risk"),
    (chain, None, RiskContext(maxRiskDollars=1, dayTradeBuyingPower=1e6), "zero_size"),
])
def test_bad_input_gets_a_clear_reason(make, setup, risk, code):
    s = {None: spec(), "wrong_long": spec("long", 5900, 5910), "wrong_short": spec("short", 5900, 5890),
         "nan": spec("long", float("nan"), 5890)}[setup]
    r = select(s, make(), "trending", risk, POLICY, T)
    assert not r.ok and r.reason.startswith(code), r.reason
    assert r.suggestedContracts == 0


def test_stale_chain_is_refused():
    r = select(spec(), chain(), "trending", RICH, Policy(stale_s=30), T + 31 * 10**9)
    assert not r.ok and r.reason.startswith("stale_chain")


def test_no_contract_reason_counts_rejections():
    c = _bad_chain(lambda x: setattr(x, "ask", x.bid + 50))
    r = select(spec(), c, "trending", RICH, POLICY, T)
    assert "wide_spread" in r.reason and "regime trending" in r.reason


def test_cache_isolates_risk_contexts_and_expires():
    cache = RecoCache(ttl_s=10)
    a = RiskContext(maxRiskDollars=500, dayTradeBuyingPower=10_000)
    b = RiskContext(maxRiskDollars=5000, dayTradeBuyingPower=100_000)
    s = spec()
    ra = select(s, chain(), "trending", a, POLICY, T)
    cache.put(cache.key(s, "trending", a), T, ra)
    assert cache.get(cache.key(s, "trending", b), T) is None  # another user's sizing never leaks
    assert cache.get(cache.key(s, "trending", a), T + 9 * 10**9) is ra
    assert cache.get(cache.key(s, "trend", a), T) is ra  # same regime row
    assert cache.get(cache.key(s, "ranging", a), T) is None
    assert cache.get(cache.key(s, "trending", a), T + 11 * 10**9) is None
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == RiskContext(**{
        "maxRiskDollars": 500, "dayTradeBuyingPower": 10_000}).fingerprint()
    small = RecoCache(max_items=2)
    for i in range(5):
        small.put(("k", i), T, ra)
    assert len(small) == 2 and small.get(("k", 0), T) is None and small.get(("k", 4), T) is ra
