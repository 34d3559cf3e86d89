"""Black-Scholes / Black-76 against known values, parity and inversion edge cases."""

import math

import pytest

from spx_common import greeks as g


def test_textbook_value_hull():
    # Hull, Options Futures & Other Derivatives, example 15.6: S=42 K=40 r=10% vol=20% T=0.5
    assert g.bs_price(42, 40, 0.5, 0.2, r=0.1, call=True) == pytest.approx(4.76, abs=0.005)
    assert g.bs_price(42, 40, 0.5, 0.2, r=0.1, call=False) == pytest.approx(0.81, abs=0.005)


def test_black76_textbook_value():
    # Hull example 18.? (Black's model): F=20 K=20 r=9% vol=25% T=4/12 put = 1.12
    assert g.black76_price(20, 20, 4 / 12, 0.25, r=0.09, call=False) == pytest.approx(1.12, abs=0.005)


@pytest.mark.parametrize("s,k,t,vol,r,q", [
    (5900, 5900, 1 / 365, 0.15, 0.04, 0.01), (5900, 5700, 0.002, 0.3, 0.05, 0.0),
    (100, 150, 1.0, 0.5, 0.01, 0.02), (5900, 6100, g.MIN_T, 0.2, 0.0, 0.0)])
def test_put_call_parity(s, k, t, vol, r, q):
    c = g.bs_price(s, k, t, vol, r, q, call=True)
    p = g.bs_price(s, k, t, vol, r, q, call=False)
    t = max(t, g.MIN_T)
    assert c - p == pytest.approx(s * math.exp(-q * t) - k * math.exp(-r * t), abs=1e-6 * s)


def test_greeks_match_finite_differences():
    s, k, t, v = 5900.0, 5925.0, 3 / (365 * 24), 0.18
    for call in (True, False):
        gr = g.bs_greeks(s, k, t, v, 0.04, 0.0, call)
        h = 0.01
        up, dn = g.bs_price(s + h, k, t, v, 0.04, 0.0, call), g.bs_price(s - h, k, t, v, 0.04, 0.0, call)
        assert gr.delta == pytest.approx((up - dn) / (2 * h), rel=1e-4)
        assert gr.gamma == pytest.approx((up - 2 * gr.price + dn) / (h * h), rel=1e-2)
        vu, vd = g.bs_price(s, k, t, v + 1e-4, 0.04, 0.0, call), g.bs_price(s, k, t, v - 1e-4, 0.04, 0.0, call)
        assert gr.vega == pytest.approx((vu - vd) / 2e-4, rel=1e-4)
    assert 0 < g.bs_greeks(s, k, t, v, call=True).delta < 1
    assert -1 < g.bs_greeks(s, k, t, v, call=False).delta < 0


@pytest.mark.parametrize("k", [5000, 5700, 5880, 5900, 5920, 6100, 6500])
@pytest.mark.parametrize("t_hours", [0.05, 0.5, 3, 6.5, 24 * 30])
@pytest.mark.parametrize("call", [True, False])
def test_implied_vol_round_trip_deep_and_near_expiry(k, t_hours, call):
    t = t_hours / (365 * 24)
    for vol in (0.08, 0.2, 0.6):
        price = g.bs_price(5900, k, t, vol, 0.04, call=call)
        iv = g.implied_vol(price, 5900, k, t, 0.04, call=call)
        kd = k * math.exp(-0.04 * max(t, g.MIN_T))  # parity intrinsic: S - K e^-rT
        intrinsic = max(5900 - kd, 0) if call else max(kd - 5900, 0)
        if iv is None:  # only when no time value is left to invert (deep ITM, minutes to go)
            assert price - intrinsic < 1e-9 * max(price, 1), f"no IV for price {price} k={k} t={t_hours}h"
            continue
        # Far wings: price is insensitive to vol; check the price round-trips instead.
        assert g.bs_price(5900, k, t, iv, 0.04, call=call) == pytest.approx(price, abs=1e-6 * max(price, 1))


@pytest.mark.parametrize("price", [0.0, -1.0, float("nan"), float("inf"), 50.0 - 1e-9, 6000.0])
def test_implied_vol_impossible_prices_give_none(price):
    # ITM call intrinsic 50 (S=5950,K=5900,r=0); upper bound is S.
    assert g.implied_vol(price, 5950, 5900, 0.001, call=True) is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="volatility"):
        g.bs_price(100, 100, 1, float("nan"))
    with pytest.raises(ValueError, match="strike"):
        g.bs_greeks(100, 0, 1, 0.2)
    assert g.implied_vol(1.0, float("nan"), 100, 1) is None


def test_year_fraction_floors_at_expiry():
    assert g.year_fraction(10, 5) == g.MIN_T
    assert g.year_fraction(0, int(g.NS_PER_YEAR)) == pytest.approx(1.0)
