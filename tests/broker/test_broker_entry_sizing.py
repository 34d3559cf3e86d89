"""Issue 18 item 2: the broker sizes each entry for its user (their balances, risk settings and PDT state at
decision time) with the selector's sizing function; a recommendation sized for the defaults is never used
as is. Hypothesis properties over random setups, quotes, greeks, balances and user settings: no entry has
contracts x (loss to the stop + spread) above the user's risk budget, none exceeds the usable buying power
or the premium cap, none is ever anything but buy_to_open; plus the DTBP floor and the PDT policy."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings, strategies as st

from services.broker.engine import Block, Engine, Gates, Limits, Place
from services.broker.entry_size import EntryRisk, size_entry
from spx_common import greeks, sizing
from spx_common.models import ContractRecommendation, SetupTransition, SizingBreakdown

T0 = int(dt.datetime(2026, 2, 20, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)  # 10:00 ET
CALL, PUT = "SPXW260220C05000000", "SPXW260220P05000000"  # 0DTE at T0
LATER = "SPXW260320C05000000"


def tr(sid, direction="long", entry=5000.0, stop=4995.0, ts=T0):
    return SetupTransition(setup_id=sid, detector="d", family="f", sym="I:SPX", direction=direction,
                           to_state="triggered", reason="r", ts=ts, price=entry, stop=stop)


def reco(sid, sym=CALL, bid=4.9, ask=5.0, delta=0.5, iv=None, gamma=None, underlying=None, qty=30, ok=True,
         reason="ok", ts=T0):
    return ContractRecommendation(setup_id=sid, ok=ok, reason=reason, tradier_symbol=sym, bid=bid, ask=ask,
                                  mid=(bid + ask) / 2, delta=delta, iv=iv, gamma=gamma, underlying=underlying,
                                  suggestedContracts=qty, ts=ts,
                                  sizing=SizingBreakdown(maxRiskDollars=500, contractsByRisk=qty,
                                                         contractsByBuyingPower=qty, perContractDebit=ask * 100))


MARGIN = {"account_type": "margin", "option_buying_power": 40_000.0, "day_trade_buying_power": 80_000.0,
          "total_equity": 50_000.0}


def one(limits: Limits, balances, t, r, users=("u1",)):
    e = Engine(list(users), Limits(max_open_risk=1e9), Gates(lambda u: (True, ""), balances=lambda u: balances),
               user_limits={u: limits for u in users})
    return e.on_transition(t) + e.on_recommendation(r)


def test_recommendation_size_is_never_used_as_is():
    # the selector sized 30 for its defaults; this user's $500 budget to a 5-point stop on a 0.5 delta
    # call (loss = (2.5 + 0.1) x 100 = $260) buys one contract
    [p] = [i for i in one(Limits(max_risk_per_trade=500), MARGIN, tr("s1"), reco("s1")) if isinstance(i, Place)]
    assert p.order.quantity == 1 and p.payload["side"] == "buy_to_open" and "loss $260.00/contract" in p.order.reason
    [p] = [i for i in one(Limits(max_risk_per_trade=2000), MARGIN, tr("s1"), reco("s1")) if isinstance(i, Place)]
    assert p.order.quantity == 7
    # a reco the selector refused only for its own default account is re-sized for this one
    r = reco("s1", ok=False, reason="zero_size: risk allows no contract", qty=0)
    [p] = [i for i in one(Limits(max_risk_per_trade=2000), MARGIN, tr("s1"), r) if isinstance(i, Place)]
    assert p.order.quantity == 7
    [b] = one(Limits(), MARGIN, tr("s1"), reco("s1", ok=False, reason="no_contract: none in band"))
    assert b.reason == "no_contract"


def test_dtbp_floor_and_pdt_policy_apply_to_0dte_entries_with_published_reasons():
    lim = Limits(max_risk_per_trade=2000, max_contracts_per_order=50)
    low = {**MARGIN, "day_trade_buying_power": 1_200.0}
    [p] = [i for i in one(lim, low, tr("s1"), reco("s1")) if isinstance(i, Place)]
    assert p.order.quantity == 2  # $1,200 of day-trade buying power buys two $500 contracts
    [p] = [i for i in one(Limits(**{**lim.__dict__, "dtbp_floor": 500.0}), low, tr("s1"), reco("s1"))
           if isinstance(i, Place)]
    assert p.order.quantity == 1  # $1,200 - $500 floor
    [b] = one(Limits(**{**lim.__dict__, "dtbp_floor": 1_200.0}), low, tr("s1"), reco("s1"))
    assert isinstance(b, Block) and b.reason == "dtbp_floor"
    poor = {**MARGIN, "total_equity": 20_000.0}
    assert [type(i) for i in one(Limits(pdt_policy="alert"), poor, tr("s1"), reco("s1"))] == [Place]
    [b] = one(Limits(pdt_policy="block"), poor, tr("s1"), reco("s1"))
    assert b.reason == "pdt_blocked" and "pattern-day-trader" in b.detail
    assert [type(i) for i in one(Limits(pdt_policy="block"), {**poor, "account_type": "cash"}, tr("s1"),
                                 reco("s1"))] == [Place]  # the rule does not apply to cash accounts
    assert [type(i) for i in one(Limits(pdt_policy="block"), poor, tr("s1"), reco("s1", sym=LATER))] == [Place]
    [b] = one(Limits(), None, tr("s1"), reco("s1"))
    assert b.reason == "balances_unknown"
    t = SetupTransition(setup_id="s1", detector="d", family="f", sym="I:SPX", direction="long",
                        to_state="triggered", reason="r", ts=T0)
    [b] = one(Limits(), MARGIN, t, ContractRecommendation(setup_id="s1", ok=True, reason="ok", tradier_symbol=CALL,
                                                        bid=4.9, ask=5.0, delta=0.5, suggestedContracts=3, ts=T0))
    assert b.reason == "no_stop"
    [b] = one(Limits(), MARGIN, tr("s1", stop=5001.0), reco("s1"))
    assert b.reason == "stop_wrong_side"
    [b] = one(Limits(min_risk_per_contract=30.0), MARGIN, tr("s1", stop=4999.9), reco("s1"))
    assert b.reason == "risk_below_floor"


@st.composite
def cases(draw):
    spot = draw(st.floats(4800, 5200))
    call = draw(st.booleans())
    sym = draw(st.sampled_from([CALL, LATER])) if call else PUT
    expiry = sizing.expiry_ns(dt.date(2026, 2, 20) if "2602" in sym else dt.date(2026, 3, 20))
    t = greeks.year_fraction(T0, expiry)
    iv = draw(st.floats(0.05, 1.0))
    fair = greeks.bs_price(spot, 5000, t, iv, 0.04, 0.0, call)
    g = greeks.bs_greeks(spot, 5000, t, iv, 0.04, 0.0, call)
    spread = draw(st.floats(0.05, 2.0))
    bid = max(round(fair - spread / 2, 2), 0.0)
    ask = round(max(fair + spread / 2, bid + 0.05), 2)
    entry = spot + draw(st.floats(-20, 20))
    dist = draw(st.floats(0.05, 40))
    direction = "long" if call else "short"
    stop = entry - dist if call else entry + dist
    r = reco("p", sym=sym, bid=bid, ask=ask, delta=g.delta, gamma=g.gamma,
              iv=iv if draw(st.booleans()) else None, underlying=draw(st.one_of(st.none(), st.just(spot))),
              qty=draw(st.integers(0, 500)))
    live = draw(st.one_of(st.none(), st.tuples(st.floats(0, 50), st.floats(0.05, 3))))  # a newer live quote
    quote = None if live is None else (round(live[0], 2), round(live[0] + live[1], 2))
    lim = Limits(max_contracts_per_order=draw(st.integers(1, 100)), max_open_risk=1e12,
                 max_risk_per_trade=draw(st.floats(20, 20_000)),
                 max_premium_per_trade=draw(st.one_of(st.none(), st.floats(100, 100_000))),
                 min_risk_per_contract=draw(st.floats(0.5, 100)), dtbp_floor=draw(st.floats(0, 20_000)),
                 pdt_policy=draw(st.sampled_from(["alert", "block", "off"])))
    bal = draw(st.one_of(st.none(), st.fixed_dictionaries({
        "account_type": st.sampled_from(["margin", "cash", "pdt"]),
        "option_buying_power": st.one_of(st.none(), st.floats(0, 200_000)),
        "day_trade_buying_power": st.one_of(st.none(), st.floats(0, 200_000)),
        "total_equity": st.one_of(st.none(), st.floats(0, 100_000))})))
    return tr("p", direction, entry, stop), r, quote, lim, bal


@settings(max_examples=400, deadline=None)
@given(cases())
def test_property_no_entry_risks_more_than_the_users_budget(case):
    t, r, quote, lim, bal = case
    e = Engine(["u1"], Limits(), Gates(lambda u: (True, ""), balances=lambda u: bal), user_limits={"u1": lim})
    if quote is not None:
        e.on_quote(r.tradier_symbol, *quote, ts=T0)
    out = e.on_transition(t) + e.on_recommendation(r)
    places = [i for i in out if isinstance(i, Place)]
    assert len(out) == 1 and len(places) <= 1
    if not places:
        assert out[0].reason and out[0].user == "u1"
        return
    [p] = places
    assert p.payload["side"] == "buy_to_open" and p.role == "entry" and p.order.side == "buy_to_open"
    n = p.order.quantity
    bid, ask = quote if quote is not None and 0 <= quote[0] <= quote[1] else (r.bid, r.ask)
    # the loss recomputed here from the quote the decision saw and the recommendation's greeks
    expiry = sizing.expiry_ns(dt.date(2026, 2, 20) if "2602" in r.tradier_symbol else dt.date(2026, 3, 20))
    call = "C" in r.tradier_symbol[10:11]
    if r.iv is not None:
        tt = greeks.year_fraction(T0, expiry)
        ve = greeks.bs_price(t.price, 5000, tt, r.iv, 0.04, 0.0, call)
        vs = greeks.bs_price(t.stop, 5000, tt, r.iv, 0.04, 0.0, call)
    else:
        s0 = r.underlying if r.underlying is not None else t.price
        mid = (bid + ask) / 2
        ve = max(mid + r.delta * (t.price - s0) + r.gamma * (t.price - s0) ** 2 / 2, 0.0)
        vs = max(mid + r.delta * (t.stop - s0) + r.gamma * (t.stop - s0) ** 2 / 2, 0.0)
    loss = (max(ve - vs, 0.0) + (ask - bid)) * 100
    assert loss > lim.min_risk_per_contract
    assert n * loss <= lim.max_risk_per_trade * (1 + 1e-9)
    debit = p.order.price * 100
    cap = lim.max_premium_per_trade if lim.max_premium_per_trade is not None else 4 * lim.max_risk_per_trade
    assert n * debit <= cap * (1 + 1e-9) and n <= lim.max_contracts_per_order
    assert bal is not None
    zero_dte = "2602" in r.tradier_symbol
    obp, dtbp = bal["option_buying_power"], bal["day_trade_buying_power"]
    if zero_dte:
        usable = min(x for x in (obp, None if dtbp is None else dtbp - lim.dtbp_floor) if x is not None)
        if lim.pdt_policy == "block" and bal["account_type"] != "cash":
            assert bal["total_equity"] is not None and bal["total_equity"] >= lim.pdt_min_equity
    else:
        usable = obp if obp is not None else dtbp
    assert n * debit <= usable * (1 + 1e-9)


def test_size_entry_is_the_selector_function():
    """One function: the broker's answer equals spx_common.sizing.size on the same inputs."""
    r = reco("s", iv=0.2, underlying=5003.0, gamma=0.001)
    got = size_entry(tr("s"), r, (4.8, 5.0), 5.0, EntryRisk(max_risk_per_trade=3000, max_contracts=50), MARGIN, T0)
    leg = sizing.Leg(call=True, strike=5000.0, expiry_ns=sizing.expiry_ns(dt.date(2026, 2, 20)), bid=4.8, ask=5.0,
                     iv=0.2, delta=0.5, gamma=0.001, underlying=5003.0)
    ref = sizing.size(leg, "long", 5000.0, 4995.0, sizing.Budget(3000, 40_000.0, 50), T0, 0.04, price=5.0)
    assert got.contracts == ref.contracts > 0 and got.breakdown == ref.breakdown


def test_entries_sent_since_the_last_balances_read_are_taken_off_the_buying_power():
    """Balances are read every portfolio_interval_s: two setups in between never spend the same dollars."""
    bal = {**MARGIN, "option_buying_power": 1_200.0, "day_trade_buying_power": None, "ts": T0 - 1}
    e = Engine(["u1"], Limits(), Gates(lambda u: (True, ""), balances=lambda u: bal),
               user_limits={"u1": Limits(max_risk_per_trade=5000, max_contracts_per_order=50, max_open_risk=1e9)})
    out = e.on_transition(tr("s1")) + e.on_recommendation(reco("s1"))
    assert [i.order.quantity for i in out if isinstance(i, Place)] == [2]  # $1,200 buys two $500 contracts
    out = e.on_transition(tr("s2")) + e.on_recommendation(reco("s2"))
    assert [i.reason for i in out] == ["buying_power"]  # $200 left until the balances are read again
    bal = {**bal, "option_buying_power": 200.0 + 1_000.0, "ts": T0 + 1}  # read again: the entry shows in them
    out = e.on_transition(tr("s3", ts=T0 + 2)) + e.on_recommendation(reco("s3", ts=T0 + 2))
    assert [i.order.quantity for i in out if isinstance(i, Place)] == [2]
