"""Position sizing: how many option contracts a risk budget buys, priced from the entry to the stop.

One pure function, :func:`size`, used by the selector (every recommendation) and by the broker (every
entry, re-sized per user from that user's balances and settings at decision time). No I/O; inputs are
plain numbers so both services import it without importing each other.

Formulas (stated in ``docs/selector.md`` "Sizing"; dollars are per contract, 100 shares):

* ``value(S)``: the contract's value with the underlying at ``S`` -- Black-Scholes with its implied
  volatility, the time to expiry (``now`` to the expiration session's close) and the rate
  (``pricing = "iv"``); without an IV, a delta-gamma move from the mid quoted at ``underlying``
  (``pricing = "delta_gamma"``: ``mid + delta (S - S0) + gamma (S - S0)^2 / 2``, at least 0);
* ``perContractLoss = 100 x (max(value(entry) - value(stop), 0) + (ask - bid))``: the repriced move
  from the setup's entry to its stop plus the spread (half crossed getting in at the ask, half getting
  out at the bid);
* refused when the stop is on the wrong side of the entry, any price is not finite, or
  ``perContractLoss <= minRiskPerContract`` (a stop that costs nothing means the model is wrong);
* ``contractsByRisk = floor(budget / perContractLoss)``,
  ``contractsByBuyingPower = floor(buyingPower / perContractDebit)``,
  ``contractsByPremium = floor(maxPremiumDollars / perContractDebit)`` (``perContractDebit`` = entry
  limit x 100; ``maxPremiumDollars`` defaults to ``PREMIUM_MULTIPLE`` x budget);
  ``contracts = min(those three, maxContracts)``.

So ``contracts x perContractLoss <= budget`` always holds (the property the tests check).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any
from dataclasses import dataclass

from spx_common.calendar import ET, MarketCalendar
from spx_common import greeks
from spx_common.models import SizingBreakdown

MULTIPLIER = 100
DEFAULT_MIN_RISK = 10.0  # dollars per contract: a loss to the stop at or below this is refused
PREMIUM_MULTIPLE = 4.0  # default premium cap = this x the risk budget
DAY_NS = 24 * 3600 * 1_000_000_000

_calendar = None


@functools.lru_cache(maxsize=1024)
def expiry_ns(d: dt.date) -> int:
    """The close of the expiration date's session (SPXW PM settlement), in epoch ns: 16:00
    America/New_York, 13:00 on an exchange early close (``spx_common.calendar``); 16:00 on a date the
    calendar has no session for."""
    global _calendar
    if _calendar is None:

        _calendar = MarketCalendar()
    session = _calendar.session(d)
    if session is not None:
        return session.close_ns
    return int(dt.datetime.combine(d, dt.time(16, 0), ET).timestamp()) * 1_000_000_000


def is_zero_dte(expiry: int, now_ns: int) -> bool:
    """An option expiring within a day of ``now`` is a day trade."""
    return expiry - now_ns < DAY_NS


@dataclass(frozen=True, slots=True)
class Leg:
    """What sizing needs to know about one option. Prices per share; ``delta`` signed (puts negative);
    ``underlying`` is where ``delta``/``gamma``/the quote were taken (the delta-gamma origin)."""

    call: bool
    strike: float
    expiry_ns: int
    bid: float
    ask: float
    iv: float | None = None
    delta: float | None = None
    gamma: float | None = None
    underlying: float | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """The account side: dollars at risk to the stop, usable buying power and the caps."""

    risk_dollars: float
    buying_power: float
    max_contracts: int
    max_premium: float | None = None  # None = PREMIUM_MULTIPLE x risk_dollars
    min_risk_per_contract: float = DEFAULT_MIN_RISK


@dataclass(frozen=True, slots=True)
class Sizing:
    """The answer: ``contracts`` (0 when refused), ``reason`` (``None`` when at least one contract fits,
    else ``"<code>: <detail>"``), the breakdown with every term, and which limit bound the size."""

    contracts: int
    reason: str | None
    breakdown: SizingBreakdown
    bound: str = ""


def _finite(*xs: object) -> bool:
    """All real, finite numbers (bools are not numbers here)."""
    for x in xs:
        if isinstance(x, float):
            if not math.isfinite(x):
                return False
        elif not isinstance(x, int) or isinstance(x, bool):
            return False
    return True


def value_at(leg: Leg, s: float, now_ns: int, rate: float, origin: float | None = None) -> tuple[float, str]:
    """The contract's value (per share) with the underlying at ``s``, and the pricing used. The delta-gamma
    origin is ``leg.underlying``, else ``origin`` (the setup's entry: the quote is taken as its value there)."""
    if leg.iv is not None and _finite(leg.iv) and leg.iv > 0:
        t = greeks.year_fraction(now_ns, leg.expiry_ns)
        return greeks.bs_price(s, leg.strike, t, leg.iv, rate, 0.0, leg.call), "iv"
    s0 = leg.underlying if leg.underlying is not None and _finite(leg.underlying) and leg.underlying > 0 else origin
    move = s - (s if s0 is None else s0)
    v = (leg.bid + leg.ask) / 2 + (leg.delta or 0.0) * move + 0.5 * (leg.gamma or 0.0) * move * move
    return max(v, 0.0), "delta_gamma"


def loss_to_stop(leg: Leg, direction: str, entry: float, stop: float, now_ns: int, rate: float
                 ) -> tuple[float, float, float, str]:
    """``(value at entry, value at stop, spread, pricing)`` per share (see the module formulas)."""
    v_entry, pricing = value_at(leg, entry, now_ns, rate, origin=entry)
    v_stop, _ = value_at(leg, stop, now_ns, rate, origin=entry)
    return v_entry, v_stop, leg.ask - leg.bid, pricing


def check_stop(direction: str, entry: float, stop: float) -> str | None:
    """Why a setup's entry/stop cannot be sized, or ``None``."""
    if direction not in ("long", "short"):
        return f"bad_setup: direction {direction!r} is not long/short"
    if not _finite(entry, stop) or entry <= 0 or stop <= 0:
        return f"bad_setup: entry {entry!r} and stop {stop!r} must be positive numbers"
    if (direction == "long" and stop >= entry) or (direction == "short" and stop <= entry):
        side = "below" if direction == "long" else "above"
        return f"stop_wrong_side: a {direction} setup needs its stop {side} entry (entry {entry}, stop {stop})"
    return None


def size(leg: Leg, direction: str, entry: float, stop: float, budget: Budget, now_ns: int, rate: float,
         price: float | None = None) -> Sizing:
    """Contracts of ``leg`` that ``budget`` buys for a setup from ``entry`` to ``stop`` (underlying levels),
    paying ``price`` per share (default the ask). Never raises: a refusal is ``contracts=0`` with a reason."""
    price = leg.ask if price is None else price
    bd: dict[str, Any] = dict(maxRiskDollars=budget.risk_dollars if _finite(budget.risk_dollars) else 0.0, contractsByRisk=0,
              contractsByBuyingPower=0, perContractDebit=0.0, entry=entry if _finite(entry) else None,
              stop=stop if _finite(stop) else None, minRiskPerContract=budget.min_risk_per_contract,
              maxContracts=budget.max_contracts)

    def no(reason: str, **more: Any) -> Sizing:
        return Sizing(0, reason, SizingBreakdown(**{**bd, **more}))

    bad = check_stop(direction, entry, stop)
    if bad:
        return no(bad)
    if not _finite(budget.risk_dollars) or budget.risk_dollars <= 0:
        return no(f"bad_risk: risk budget {budget.risk_dollars!r} must be a positive number")
    greek_ok = all(x is None or _finite(x) for x in (leg.iv, leg.delta, leg.gamma, leg.underlying))
    if not (_finite(leg.bid, leg.ask, price, leg.strike) and 0 <= leg.bid < leg.ask and price > 0
            and leg.strike > 0 and greek_ok):
        return no(f"bad_price: quote bid {leg.bid!r} ask {leg.ask!r}, price {price!r}, strike {leg.strike!r} "
                  f"(iv {leg.iv!r}, delta {leg.delta!r}, gamma {leg.gamma!r}) must be finite, bid < ask, price > 0")
    if leg.delta is not None and abs(leg.delta) > 1:
        return no(f"bad_price: delta {leg.delta!r} is outside [-1, 1]")
    if not (leg.iv is not None and leg.iv > 0) and leg.delta is None:
        return no("bad_price: no implied volatility and no delta to reprice the contract to the stop")
    try:
        v_entry, v_stop, spread, pricing = loss_to_stop(leg, direction, entry, stop, now_ns, rate)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        return no(f"bad_price: contract cannot be repriced ({exc})")
    loss = (max(v_entry - v_stop, 0.0) + spread) * MULTIPLIER
    debit = price * MULTIPLIER
    max_premium = budget.max_premium if budget.max_premium is not None else PREMIUM_MULTIPLE * budget.risk_dollars
    bp = budget.buying_power if _finite(budget.buying_power) and budget.buying_power > 0 else 0.0
    bd.update(valueAtEntry=round(v_entry, 4), valueAtStop=round(v_stop, 4), spread=round(spread, 4),
              perContractLoss=round(loss, 2), perContractDebit=round(debit, 2), pricing=pricing,
              maxPremiumDollars=round(max_premium, 2), buyingPower=round(bp, 2))
    if not _finite(loss, v_entry, v_stop):
        return no(f"bad_price: repriced values are not finite (entry {v_entry!r}, stop {v_stop!r})")
    if loss <= budget.min_risk_per_contract:
        return no(f"risk_below_floor: loss to stop ${loss:.2f}/contract (value {v_entry:.2f} at entry, "
                  f"{v_stop:.2f} at stop, spread {spread:.2f}) is at or below the "
                  f"${budget.min_risk_per_contract:.2f} floor")
    by_risk = int(budget.risk_dollars // loss)
    by_bp = int(bp // debit)
    by_premium = int(max_premium // debit) if _finite(max_premium) and max_premium > 0 else 0
    n = max(min(by_risk, by_bp, by_premium, budget.max_contracts), 0)
    limits = (("risk", by_risk), ("buying power", by_bp), ("premium", by_premium),
              ("max_contracts", budget.max_contracts))
    bound = min(limits, key=lambda kv: kv[1])[0]
    bd.update(contractsByRisk=by_risk, contractsByBuyingPower=by_bp, contractsByPremium=by_premium, contracts=n,
              bound=bound, margin_limit_blocked=by_bp < by_risk)
    if n <= 0:
        return Sizing(0, f"zero_size: {bound} allows no contract (loss ${loss:.0f}/contract to stop {stop} vs "
                         f"risk ${budget.risk_dollars:.0f}; debit ${debit:.0f} vs buying power ${bp:.0f} and "
                         f"premium cap ${max_premium:.0f})", SizingBreakdown(**bd), bound)
    return Sizing(n, None, SizingBreakdown(**bd), bound)


def usable_buying_power(option_bp: float | None, day_trade_bp: float | None, zero_dte: bool,
                        dtbp_floor: float = 0.0) -> tuple[float, str | None]:
    """Buying power an entry may use, and a refusal when none.

    A 0DTE entry is a day trade: the smaller of the known option buying power and day-trade buying
    power minus ``dtbp_floor`` (the floor the account keeps); otherwise option buying power (the
    day-trade figure when option buying power is unknown). Non-finite or missing values are unknown.
    """
    obp = option_bp if _finite(option_bp) else None
    dtbp = day_trade_bp if _finite(day_trade_bp) else None
    if zero_dte:
        known = [x for x in (obp, None if dtbp is None else dtbp - dtbp_floor) if x is not None]
        if dtbp is not None and dtbp_floor > 0 and dtbp - dtbp_floor <= 0:
            return 0.0, (f"dtbp_floor: day-trade buying power ${dtbp:,.0f} is at or below the "
                         f"${dtbp_floor:,.0f} floor")
    else:
        known = [obp] if obp is not None else ([dtbp] if dtbp is not None else [])
    bp = min(known) if known else 0.0
    if bp <= 0:
        kind = "day-trade" if zero_dte else "option"
        return 0.0, f"no_buying_power: zero or unknown {kind} buying power"
    return bp, None


def pdt_qualified(flag: bool | None, equity: float | None, min_equity: float, account_type: str | None = None) -> bool:
    """Whether an account may day trade under the pattern-day-trader rule: the broker's flag when given;
    a cash account (no margin, the rule does not apply); else equity at or above ``min_equity``
    (unknown equity is not qualified)."""
    if flag is not None:
        return bool(flag)
    if account_type == "cash":
        return True
    return equity is not None and _finite(equity) and equity >= min_equity
