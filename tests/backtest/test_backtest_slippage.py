"""Slippage into the expected-value floor: promotion and the EV target judge expectancy net of each trade's
modelled slippage in R; paper slippage (``--slippage``) reaches the backtest's fills."""

from __future__ import annotations

import pytest

from services.backtest.stats import Criteria, compare, net_r, slippage_r, summarize
from services.backtest.trading import TradeModel, selector_config
from services.broker.config import BrokerConfig
from services.cli.commands.backtest import slippage_per_share
from tests.backtest.test_backtest_trading import S, bar, quote, trigger
from tests.selector.helpers import T, chain_doc


def trades(n: int, t1: int, *, slip_usd: float = 0.0, risk_usd: float = 500.0) -> list[dict]:
    return [{"r": 1.0 if i < t1 else -1.0, "t1_hit": i < t1, "t2_hit": False, "family": "f",
             "slippage_usd": slip_usd, "risk_usd": risk_usd} for i in range(n)]


def test_slippage_in_r_and_net_expectancy():
    t = {"r": 1.0, "slippage_usd": 50.0, "risk_usd": 500.0}
    assert slippage_r(t) == pytest.approx(0.1) and net_r(t) == pytest.approx(0.9)
    assert slippage_r({"r": 1.0}) == 0.0 and slippage_r({"r": 1.0, "slippage_usd": 5.0, "risk_usd": None}) == 0.0
    s = summarize(trades(10, 7, slip_usd=25.0))
    assert s.expectancy_r == pytest.approx(0.4) and s.slippage_r == pytest.approx(0.05)
    assert s.expectancy_net_r == pytest.approx(0.35)


def test_a_gross_improvement_eaten_by_slippage_is_not_promoted():
    base = trades(400, 200)  # T1 50%, expectancy 0 R, no slippage
    better = trades(400, 300)  # +0.5 R gross: promoted when its fills cost nothing
    assert compare(better, base, Criteria(), fallback=False)["promote"]
    # the same trades whose fills cost 0.5 R each (spread and slippage against the mid): no EV improvement left
    costly = trades(400, 300, slip_usd=250.0)
    p = compare(costly, base, Criteria(), fallback=False)
    assert p["expectancy_delta_r"] == pytest.approx(0.0)
    assert not p["promote"] and any(r.startswith("expectancy delta +0.000 R") for r in p["refusals"])
    exp = p["targets"]["expectancy_r"]
    assert exp["gross"] == pytest.approx(0.5) and exp["slippage_r"] == pytest.approx(0.5)
    assert exp["value"] == pytest.approx(0.0) and exp["floor_gross"] == pytest.approx(1.0) and not exp["meets"]


def _entry_fill(paper_slippage: float) -> tuple[float, float, float | None]:
    doc = chain_doc(T)
    spot = doc["underlying"]
    m = TradeModel(selector_config(), BrokerConfig(paper_slippage=paper_slippage))
    m.on_chain_doc(doc)
    m.on_transition(trigger(spot, T + S))
    sym = m.engine.recos["bt:s1"].tradier_symbol
    limit = next(o.price for o in m.orders if o.side == "buy_to_open")
    m.on_market_events([quote(sym, limit - 0.6, limit - 0.2, T + 2 * S)])  # the ask under the limit
    m.on_market_events([quote(sym, limit - 3.0, limit - 2.8, T + 3 * S)])
    m.on_price_bar(bar(T + 3 * S, spot - 1, spot - 6), T + 3 * S)  # stopped
    (rec,) = m.finish()
    return limit, rec.entry_fill, rec.slippage_usd


def test_paper_slippage_reaches_the_backtest_fills():
    limit, fill0, slip0 = _entry_fill(0.0)
    _, fill1, slip1 = _entry_fill(0.1)
    assert fill0 == pytest.approx(round(limit - 0.2, 2)) and fill1 == pytest.approx(min(fill0 + 0.1, limit))
    assert slip1 > slip0  # the paid slippage shows against the mid at decision


def test_slippage_flag_values():
    assert slippage_per_share("0.05") == 0.05
    for bad in ("-1", "9", "abc"):
        with pytest.raises(ValueError, match="--slippage"):
            slippage_per_share(bad)


def test_option_summary_breaks_slippage_down_by_time_of_day_and_moneyness():
    import datetime as dt

    from services.backtest.stats import option_summary
    from services.detector.market import ET

    def at(h: int, m: int) -> int:
        return int(dt.datetime(2026, 11, 16, h, m, tzinfo=ET).timestamp()) * 10**9

    fills = [{"quantity": 2.0}, {"quantity": 2.0}]
    trades = [{"r": 1.0, "pnl_usd": 100.0, "slippage_usd": 20.0, "fills": fills, "triggered_ns": at(9, 45),
               "option_delta": 0.42},
              {"r": -1.0, "pnl_usd": -50.0, "slippage_usd": 40.0, "fills": fills, "triggered_ns": at(15, 10),
               "option_delta": -0.2},
              {"r": 0.5}]  # no option trade: not counted
    o = option_summary(trades)
    assert o["trades"] == 2 and o["pnl_usd"] == 50.0 and o["slippage_per_contract"] == pytest.approx(0.075)
    assert o["slippage_by_time"] == {"09:30-10:30": {"per_contract": 0.05, "fills": 2},
                                     "14:30-16:00": {"per_contract": 0.1, "fills": 2}}
    assert o["slippage_by_moneyness"] == {"|delta| 0.30-0.50": {"per_contract": 0.05, "fills": 2},
                                          "|delta| < 0.30": {"per_contract": 0.1, "fills": 2}}
