"""The trade model: the live selector core, broker engine, ledger and paper broker driven in event time.

One long setup on a synthetic chain: the selector picks and sizes the contract, the broker enters at the
ask, the paper broker fills on the replayed quotes, target 1 scales out at the bid (the protective stop
cancelled first and re-placed on the runner), the breakeven stop exits at the bid. Both measures are
checked by hand: R on the underlying and the dollars of the paper fills, with slippage against the mid.
"""

from __future__ import annotations

import pytest

from services.backtest.trading import TradeModel
from services.broker.config import BrokerConfig
from spx_common.models import MicroBar, Quote, SetupTransition
from tests.selector.helpers import T, chain_doc

S = 1_000_000_000


def trigger(spot: float, ts: int, sid: str = "bt:s1", to: str = "triggered") -> SetupTransition:
    return SetupTransition(setup_id=sid, detector="d", family="f", sym="I:SPX", direction="long", to_state=to,
                           reason="t", ts=ts, price=spot, stop=spot - 5, targets=[spot + 5, spot + 10])


def bar(ts: int, hi: float, lo: float) -> MicroBar:
    return MicroBar(sym="I:SPX", interval="1s", start_ns=ts, open=lo, high=hi, low=lo, close=hi, closed=True)


def quote(sym: str, bid: float, ask: float, ts: int, size: float = 500.0) -> Quote:
    return Quote(sym="O:" + sym, bid=round(bid, 2), ask=round(ask, 2), bid_size=size, ask_size=size, ts=ts)


def test_one_trade_through_selector_broker_engine_and_paper_fills():
    doc = chain_doc(T)
    spot = doc["underlying"]
    m = TradeModel(broker_cfg=BrokerConfig(max_contracts_per_order=4, max_risk_per_trade=2000.0))
    m.on_chain_doc(doc)
    m.on_transition(trigger(spot, T + S))
    reco = m.engine.recos["bt:s1"]
    assert reco.ok and reco.option_type == "call", reco.reason
    sym = reco.tradier_symbol
    entry = [o for o in m.orders if o.side == "buy_to_open"]
    assert len(entry) == 1 and 1 <= entry[0].quantity <= 4  # sized for the account, capped per order
    qty = entry[0].quantity
    limit = entry[0].price
    # the replayed quotes: the ask at the limit fills the entry at the ask; then the option rises
    m.on_market_events([quote(sym, limit - 0.2, limit, T + 2 * S)])
    assert [(f.side, f.quantity, f.price) for f in m.fills] == [("buy_to_open", qty, limit)]
    assert any(o.type == "stop" for o in m.orders)  # the protective stop rests after the entry fill
    m.on_market_events([quote(sym, limit + 1.8, limit + 2.0, T + 3 * S)])
    m.on_price_bar(bar(T + 3 * S, spot + 5.5, spot + 1), T + 3 * S)  # target 1: scale out half at the bid
    scale = [f for f in m.fills if f.side == "sell_to_close"]
    assert [(f.quantity, f.price) for f in scale] == [(max(1, round(qty * 0.5)) if qty > 1 else 1,
                                                       round(limit + 1.8, 2))]
    m.on_market_events([quote(sym, limit - 0.5, limit - 0.3, T + 4 * S)])
    m.on_price_bar(bar(T + 4 * S, spot + 0.5, spot - 0.5), T + 4 * S)  # back to breakeven: exit all at the bid
    m.end_session()
    (rec,) = m.finish()
    sells = [f for f in m.fills if f.side == "sell_to_close"]
    assert sum(f.quantity for f in sells) == qty
    assert rec.t1_hit and not rec.t2_hit and rec.resolution == "target1_then_stop"
    assert rec.r == pytest.approx(0.5)  # half at +1 R, the rest at breakeven
    cash = sum(f.quantity * f.price for f in sells) - qty * limit
    assert rec.pnl_usd == pytest.approx(round(cash * 100, 2)) and rec.contracts == qty and rec.entry_fill == limit
    # slippage against the mid at each decision: the entry paid half the spread over the recommendation's mid
    mid = (reco.bid + reco.ask) / 2
    assert rec.slippage_usd is not None and rec.slippage_usd >= round((limit - mid) * qty * 100, 2) - 0.01
    assert [f["role"] for f in rec.fills][0] == "entry" and rec.risk_usd and rec.risk_usd > 0


def test_fees_come_off_the_dollars_and_no_chain_means_no_option_trade():
    doc = chain_doc(T)
    spot = doc["underlying"]
    m = TradeModel(fee_per_contract=0.65)
    m.on_transition(trigger(spot, T + S))  # no chain replayed: the selector refuses, R is still measured
    m.on_price_bar(bar(T + 2 * S, spot - 1, spot - 6), T + 2 * S)
    (rec,) = m.finish()
    assert rec.r == pytest.approx(-1.0) and rec.resolution == "stopped"
    assert rec.pnl_usd is None and rec.option_reason.startswith("empty_chain")
    with pytest.raises(ValueError, match="fee_per_contract"):
        TradeModel(fee_per_contract=float("nan"))


def test_a_lifecycle_stop_settles_at_the_plans_stop_and_the_broker_exits():
    doc = chain_doc(T)
    spot = doc["underlying"]
    m = TradeModel()
    m.on_chain_doc(doc)
    m.on_transition(trigger(spot, T + S))
    sym = m.engine.recos["bt:s1"].tradier_symbol
    limit = next(o.price for o in m.orders if o.side == "buy_to_open")
    m.on_market_events([quote(sym, limit - 0.2, limit, T + 2 * S)])
    m.on_market_events([quote(sym, limit - 2.0, limit - 1.8, T + 3 * S)])
    stopped = SetupTransition(setup_id="bt:s1", detector="d", family="f", sym="I:SPX", direction="long",
                              to_state="stopped", reason="stop breached", ts=T + 3 * S, price=spot - 7, stop=spot - 5,
                              targets=[spot + 5, spot + 10])
    m.on_transition(stopped)
    (rec,) = m.finish()
    assert rec.r == pytest.approx(-1.0)  # at the plan's stop, not at the breaching tick
    assert rec.pnl_usd is not None and rec.pnl_usd < 0
    assert sum(f.quantity for f in m.fills if f.side == "sell_to_close") == rec.contracts  # the broker got out


def test_exit_advice_without_an_r_multiple_is_priced_from_its_price_not_a_crash():
    """``r_multiple`` is optional on the wire: ``float(None)`` stopped the whole backtest."""
    from services.backtest.trading import TradeRecord
    from spx_common.models import ExitAdvice

    rec = TradeRecord(setup_id="s", detector="d", family="f", sym="SPY", direction="short", triggered_ns=1,
                      entry=100.0, stop=102.0, targets=[98.0])
    adv = lambda **kw: ExitAdvice(setup_id="s", action="exit_all", reason="r", ts=2, **kw)  # noqa: E731
    assert TradeModel._r_of(adv(r_multiple=1.5), rec) == 1.5
    assert TradeModel._r_of(adv(price=97.0), rec) == 1.5  # short: 3 points in favour over a 2-point risk
    assert TradeModel._r_of(adv(), rec) == 0.0
