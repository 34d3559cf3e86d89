"""Black-Scholes / Black-76 prices, greeks and implied volatility: pure functions, no I/O.

* :func:`bs_price` / :func:`bs_greeks`: spot ``s``, continuous rate ``r`` and dividend yield ``q``.
* :func:`black76_price` / :func:`black76_greeks`: forward ``f`` discounted at ``r`` (index options
  priced off the futures / parity forward).
* :func:`implied_vol`: safeguarded Newton on a bracket (falls back to bisection whenever Newton
  leaves the bracket or vega vanishes), so deep ITM/OTM and minutes-to-expiry quotes converge or
  return ``None`` -- never raise, never loop unbounded.

Time is in years and floored at :data:`MIN_T` (about 30 seconds) so the last minutes of a 0DTE
session stay finite. Prices below intrinsic value or above the no-arbitrage upper bound have no
implied volatility: :func:`implied_vol` returns ``None`` for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_T", "Greeks", "bs_price", "bs_greeks", "black76_price", "black76_greeks", "implied_vol",
           "implied_vol_black76", "norm_cdf", "norm_pdf", "year_fraction"]

MIN_T = 30.0 / (365.0 * 24 * 3600)
MIN_VOL, MAX_VOL = 1e-4, 10.0
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
NS_PER_YEAR = 365.0 * 24 * 3600 * 1e9


def norm_cdf(x: float) -> float:
    """Standard normal CDF (erfc form: accurate in both tails)."""
    return 0.5 * math.erfc(-x / _SQRT2)


def norm_pdf(x: float) -> float:
    """Standard normal density."""
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def year_fraction(now_ns: int, expiry_ns: int) -> float:
    """Years from ``now_ns`` to ``expiry_ns`` (ACT/365 in seconds), floored at :data:`MIN_T`."""
    return max((expiry_ns - now_ns) / NS_PER_YEAR, MIN_T)


@dataclass(frozen=True, slots=True)
class Greeks:
    """Price and sensitivities. ``vega`` per 1.00 of vol, ``theta`` per year, ``gamma`` per point squared."""

    price: float
    delta: float
    gamma: float
    vega: float
    theta: float


def _check(x: float, k: float, t: float, vol: float) -> float:
    if not (x > 0 and k > 0 and math.isfinite(x) and math.isfinite(k)):
        raise ValueError(f"underlying {x!r} and strike {k!r} must be positive and finite")
    if not (vol > 0 and math.isfinite(vol)):
        raise ValueError(f"volatility {vol!r} must be positive and finite")
    if not math.isfinite(t):
        raise ValueError(f"time {t!r} must be finite")
    return max(t, MIN_T)


def black76_price(f: float, k: float, t: float, vol: float, r: float = 0.0, call: bool = True) -> float:
    """Black-76 price of a European option on forward ``f``."""
    t = _check(f, k, t, vol)
    sd = vol * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    df = math.exp(-r * t)
    if call:
        return df * (f * norm_cdf(d1) - k * norm_cdf(d2))
    return df * (k * norm_cdf(-d2) - f * norm_cdf(-d1))


def black76_greeks(f: float, k: float, t: float, vol: float, r: float = 0.0, call: bool = True) -> Greeks:
    """Black-76 price and greeks (delta/gamma with respect to the forward)."""
    t = _check(f, k, t, vol)
    sqt = math.sqrt(t)
    sd = vol * sqt
    d1 = (math.log(f / k) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    df = math.exp(-r * t)
    pdf = norm_pdf(d1)
    if call:
        price = df * (f * norm_cdf(d1) - k * norm_cdf(d2))
        delta = df * norm_cdf(d1)
    else:
        price = df * (k * norm_cdf(-d2) - f * norm_cdf(-d1))
        delta = -df * norm_cdf(-d1)
    gamma = df * pdf / (f * sd)
    vega = df * f * pdf * sqt
    theta = -df * f * pdf * vol / (2 * sqt) + r * price
    return Greeks(price, delta, gamma, vega, theta)


def bs_price(s: float, k: float, t: float, vol: float, r: float = 0.0, q: float = 0.0, call: bool = True) -> float:
    """Black-Scholes(-Merton) price on spot ``s`` with dividend yield ``q``."""
    t = max(t, MIN_T)
    return black76_price(s * math.exp((r - q) * t), k, t, vol, r, call)


def bs_greeks(s: float, k: float, t: float, vol: float, r: float = 0.0, q: float = 0.0, call: bool = True) -> Greeks:
    """Black-Scholes price and greeks with delta/gamma with respect to spot."""
    t = _check(s, k, t, vol)
    carry = math.exp((r - q) * t)
    g = black76_greeks(s * carry, k, t, vol, r, call)
    sqt = math.sqrt(t)
    d1 = (math.log(s / k) + (r - q + 0.5 * vol * vol) * t) / (vol * sqt)
    d2 = d1 - vol * sqt
    eq, er = math.exp(-q * t), math.exp(-r * t)
    if call:
        theta = -s * eq * norm_pdf(d1) * vol / (2 * sqt) - r * k * er * norm_cdf(d2) + q * s * eq * norm_cdf(d1)
    else:
        theta = -s * eq * norm_pdf(d1) * vol / (2 * sqt) + r * k * er * norm_cdf(-d2) - q * s * eq * norm_cdf(-d1)
    return Greeks(g.price, g.delta * carry, g.gamma * carry * carry, g.vega * carry, theta)


def implied_vol_black76(price: float, f: float, k: float, t: float, r: float = 0.0, call: bool = True,
                        tol: float = 1e-8, max_iter: int = 100) -> float | None:
    """Volatility that reproduces ``price`` under Black-76, or ``None`` when no volatility can.

    ``None`` for non-finite input, prices at or below discounted intrinsic value (no time value
    left to invert -- typical of deep ITM quotes at the bid) or at/above the upper bound.
    """
    if not all(math.isfinite(x) for x in (price, f, k, t, r)) or f <= 0 or k <= 0 or price <= 0:
        return None
    t = max(t, MIN_T)
    df = math.exp(-r * t)
    intrinsic = df * max(f - k, 0.0) if call else df * max(k - f, 0.0)
    upper = df * f if call else df * k
    if price <= intrinsic + 1e-12 or price >= upper:
        return None
    lo, hi = MIN_VOL, MAX_VOL
    if black76_price(f, k, t, hi, r, call) < price:
        return None
    if black76_price(f, k, t, lo, r, call) > price:
        return lo  # time value below what the minimum vol gives: report the floor
    # Brenner-Subrahmanyam start near the money, clamped into the bracket.
    vol = min(max(math.sqrt(2 * math.pi / t) * (price - intrinsic) / max(df * f, 1e-12), 0.05), 3.0)
    for _ in range(max_iter):
        g = black76_greeks(f, k, t, vol, r, call)
        diff = g.price - price
        if abs(diff) < tol * max(1.0, price):
            return vol
        if diff > 0:
            hi = vol
        else:
            lo = vol
        nxt = vol - diff / g.vega if g.vega > 1e-14 else -1.0
        vol = nxt if lo < nxt < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-12:
            return vol
    return vol


def implied_vol(price: float, s: float, k: float, t: float, r: float = 0.0, q: float = 0.0, call: bool = True,
                tol: float = 1e-8) -> float | None:
    """Black-Scholes implied volatility on spot (see :func:`implied_vol_black76` for ``None`` cases)."""
    if not all(math.isfinite(x) for x in (s, t, r, q)) or s <= 0:
        return None
    t = max(t, MIN_T)
    return implied_vol_black76(price, s * math.exp((r - q) * t), k, t, r, call, tol)
