"""Property: no recommendation has contracts x (loss to the stop + spread) above the risk budget.

Random chains (spot, IV smile, spreads, missing IVs, 0DTE or later expiries), random setups (entry
away from the spot, stops near and far), random risk contexts (budget, buying power, PDT state)
and random selector settings. The loss is recomputed here from the chosen contract's quote and IV,
not taken from the answer.
"""

from __future__ import annotations

import datetime as dt
import math

from hypothesis import given, settings, strategies as st

from services.selector.chain import Chain, Contract, expiry_ns
from services.selector.select import Policy, RiskContext, SetupSpec, select
from spx_common import greeks, occ

NOW = int(dt.datetime(2026, 2, 20, 15, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY = dt.date(2026, 2, 20)


@st.composite
def chains(draw):
    spot = draw(st.floats(1000, 8000))
    exp = DAY + dt.timedelta(days=draw(st.sampled_from([0, 0, 1, 3, 30])))
    t = greeks.year_fraction(NOW, expiry_ns(exp))
    base_iv = draw(st.floats(0.05, 0.8))
    width = draw(st.sampled_from([1, 5, 10, 25]))
    c = Chain("SPXW", spot, NOW, "test")
    atm = round(spot / width) * width
    for i in range(-12, 13):
        k = atm + i * width
        if k <= 0:
            continue
        for right in "CP":
            iv = base_iv * (1 + 0.3 * abs(i) / 12)
            fair = greeks.bs_price(spot, k, t, iv, 0.04, 0.0, right == "C")
            spread = max(draw(st.floats(0.0, 0.15)) * fair, 0.05)
            bid = max(round(fair - spread / 2, 2), 0.0)
            ask = round(max(fair + spread / 2, bid + 0.05), 2)
            g = greeks.bs_greeks(spot, k, t, iv, 0.04, 0.0, right == "C")
            sym = occ.build("SPXW", exp, right, k)
            c.contracts[sym.tradier] = Contract(sym, bid=bid, ask=ask, open_interest=1000, volume=10,
                                                iv=iv if draw(st.booleans()) else None, delta=g.delta,
                                                gamma=g.gamma, quote_ts=NOW)
    return c


@settings(max_examples=300, deadline=None)
@given(chain=chains(), direction=st.sampled_from(["long", "short"]), off=st.floats(-40, 40),
       dist=st.floats(0.05, 40), budget=st.floats(50, 20_000), dtbp=st.one_of(st.none(), st.floats(0, 500_000)),
       obp=st.floats(0, 500_000), pdt=st.one_of(st.none(), st.booleans()),
       equity=st.one_of(st.none(), st.floats(0, 100_000)),
       regime=st.sampled_from([None, "trending", "ranging", "volatile", "compression"]),
       floor=st.floats(0.5, 100), cap=st.one_of(st.none(), st.floats(50, 50_000)),
       max_contracts=st.integers(1, 200), dt_policy=st.sampled_from(["buying_power", "pdt", "off"]))
def test_property_no_recommendation_risks_more_than_the_budget(chain, direction, off, dist, budget, dtbp, obp, pdt,
                                                                equity, regime, floor, cap, max_contracts, dt_policy):
    entry = chain.underlying + off
    stop = entry - dist if direction == "long" else entry + dist
    setup = SetupSpec(setup_id="p", direction=direction, entry=entry, stop=stop)
    risk = RiskContext(maxRiskDollars=budget, dayTradeBuyingPower=dtbp, optionBuyingPower=obp, pdtQualified=pdt,
                       equity=equity)
    policy = Policy(max_spread_pct=0.5, max_contracts=max_contracts, min_risk_per_contract=floor,
                    max_premium_per_trade=cap, day_trade_policy=dt_policy, min_chain_contracts=1)
    r = select(setup, chain, regime, risk, policy, NOW)
    if not r.ok:
        assert r.suggestedContracts == 0 and r.reason.split(":", 1)[0]
        return
    n = r.suggestedContracts
    assert n >= 1 and r.option_type == ("call" if direction == "long" else "put")
    c = chain.contracts[r.tradier_symbol]
    if c.iv is not None:
        t = greeks.year_fraction(NOW, expiry_ns(c.symbol.expiration))
        ve = greeks.bs_price(entry, c.strike, t, c.iv, 0.04, 0.0, c.call)
        vs = greeks.bs_price(stop, c.strike, t, c.iv, 0.04, 0.0, c.call)
    else:
        ve = max(c.mid + c.delta * (entry - chain.underlying) + c.gamma * (entry - chain.underlying) ** 2 / 2, 0.0)
        vs = max(c.mid + c.delta * (stop - chain.underlying) + c.gamma * (stop - chain.underlying) ** 2 / 2, 0.0)
    loss_to_stop, spread = max(ve - vs, 0.0) * 100, (c.ask - c.bid) * 100
    assert loss_to_stop + spread > floor
    assert n * (loss_to_stop + spread) <= budget * (1 + 1e-9)
    debit = c.ask * 100
    assert n * debit <= (cap if cap is not None else 4 * budget) * (1 + 1e-9)
    known = [x for x in (obp, dtbp) if x is not None]
    assert known and n * debit <= max(known) * (1 + 1e-9)
    assert n <= max_contracts and math.isfinite(r.sizing.perContractLoss)
