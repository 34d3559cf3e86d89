"""Per-user entry sizing (pure): the selector's recommendation re-sized for the account that trades.

A ``reco.<setup_id>`` is sized for the selector's configured defaults; it names the contract, never the
size. :func:`size_entry` sizes each entry for its user, at decision time, with the same function the
selector uses (:func:`spx_common.sizing.size`):

* risk budget = the user's ``max_risk_per_trade`` (dollars lost if the stop is hit, spread included);
* buying power = the user's synced balances, less the premium of the entries sent since they were read:
  a 0DTE entry is a day trade and uses the smaller of option and day-trade buying power, the latter minus
  ``dtbp_floor`` (a 0DTE entry that would take day-trade buying power to or below the floor is refused:
  ``dtbp_floor``); otherwise option buying power;
* PDT policy ``block`` refuses 0DTE entries of an account that is not pattern-day-trader qualified
  (equity below ``pdt_min_equity``, unknown equity included; cash accounts are not subject to it);
  ``alert`` only alerts (the portfolio sync), ``off`` neither;
* caps: the user's max contracts per order and a premium cap (``max_premium_per_trade``, default
  4 x the risk budget);
* the contract is repriced from the setup's entry to its stop with the recommendation's IV (delta-gamma
  without one) and the latest live quote of the contract.

No balances synced yet = refused (``balances_unknown``): an account is never sized blind.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from spx_common import occ, sizing
from spx_common.models import ContractRecommendation, SetupTransition, SizingBreakdown

#: selector refusals that depend on the selector's default risk context, not on the contract: such a
#: recommendation still names a contract, and the broker re-sizes it for each user's own account
ACCOUNT_REFUSALS = ("zero_size", "no_buying_power", "day_trade_blocked")
_parse = functools.lru_cache(maxsize=4096)(occ.parse)  # a handful of symbols per session, parsed once


@dataclass(frozen=True, slots=True)
class EntryRisk:
    """A user's sizing settings (from their record, else ``[broker]``)."""

    max_risk_per_trade: float = 500.0
    max_contracts: int = 10
    max_premium_per_trade: float | None = None
    min_risk_per_contract: float = sizing.DEFAULT_MIN_RISK
    dtbp_floor: float = 0.0
    pdt_policy: str = "alert"  # alert | block | off
    pdt_min_equity: float = 25_000.0
    rate: float = 0.04


@dataclass(frozen=True, slots=True)
class EntrySize:
    """``contracts`` > 0 with ``reason`` None, or 0 with a block ``reason`` code and ``detail``."""

    contracts: int
    reason: str | None
    detail: str
    breakdown: SizingBreakdown | None = None


def resizable(r: ContractRecommendation) -> bool:
    """A recommendation that names a contract the broker may size: ``ok``, or refused only for the
    selector's own default account (:data:`ACCOUNT_REFUSALS`)."""
    if not (r.tradier_symbol or r.occ_symbol):
        return False
    return r.ok or (r.reason or "").split(":", 1)[0] in ACCOUNT_REFUSALS


def entry_and_stop(t: SetupTransition, r: ContractRecommendation) -> tuple[float | None, float | None]:
    """The setup's entry (trigger price, else the middle of its entry zone) and stop, from the transition;
    else from the recommendation's sizing (what the selector sized the same setup with)."""
    entry = t.price
    if entry is None and t.entry_low is not None and t.entry_high is not None:
        entry = (t.entry_low + t.entry_high) / 2
    stop = t.stop
    if (entry is None or stop is None) and r.sizing is not None:
        entry = r.sizing.entry if entry is None else entry
        stop = r.sizing.stop if stop is None else stop
    return entry, stop


def _f(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def size_entry(t: SetupTransition, r: ContractRecommendation, quote: tuple[float, float] | None, price: float,
               risk: EntryRisk, balances: dict[str, Any] | None, now_ns: int, committed: float = 0.0) -> EntrySize:
    """Contracts of ``r``'s contract for one user, paying ``price`` (the entry limit) per share, or why not.
    ``committed``: dollars of premium of entries sent since ``balances`` were read (not in them yet),
    taken off both buying powers."""
    if not balances:
        return EntrySize(0, "balances_unknown", "no balances synced for this account yet: not sized blind")
    entry, stop = entry_and_stop(t, r)
    if entry is None or stop is None:
        return EntrySize(0, "no_stop", "the setup has no entry and stop to size the risk with")
    try:
        sym = _parse(r.tradier_symbol or r.occ_symbol or "")
    except occ.OptionSymbolError as exc:
        return EntrySize(0, "bad_symbol", str(exc))
    bid, ask = quote if quote is not None else (r.bid, r.ask)
    expiry = sizing.expiry_ns(sym.expiration)
    zero_dte = sizing.is_zero_dte(expiry, now_ns)
    equity = _f(balances.get("total_equity"))
    if zero_dte and risk.pdt_policy == "block" and \
            not sizing.pdt_qualified(None, equity, risk.pdt_min_equity, balances.get("account_type")):
        return EntrySize(0, "pdt_blocked", f"0DTE entries are day trades and the account is not pattern-day-trader "
                                           f"qualified (equity {equity}, minimum {risk.pdt_min_equity:,.0f}; "
                                           "pdt_policy block)")
    obp, dtbp = _f(balances.get("option_buying_power")), _f(balances.get("day_trade_buying_power"))
    bp, why = sizing.usable_buying_power(None if obp is None else obp - committed,
                                         None if dtbp is None else dtbp - committed, zero_dte, risk.dtbp_floor)
    if why:
        code, _, detail = why.partition(": ")
        return EntrySize(0, code, detail)
    leg = sizing.Leg(call=sym.right == "C", strike=float(sym.strike), expiry_ns=expiry,
                     bid=bid if bid is not None else math.nan, ask=ask if ask is not None else math.nan,
                     iv=r.iv, delta=r.delta, gamma=r.gamma, underlying=r.underlying)
    budget = sizing.Budget(risk.max_risk_per_trade, bp, risk.max_contracts, risk.max_premium_per_trade,
                           risk.min_risk_per_contract)
    s = sizing.size(leg, t.direction, entry, stop, budget, now_ns, risk.rate, price=price)
    if s.reason is not None:
        code, _, detail = s.reason.partition(": ")
        if code == "zero_size" and s.bound == "buying power":
            code = "buying_power"
        return EntrySize(0, code, detail, s.breakdown)
    b = s.breakdown
    return EntrySize(s.contracts, None, f"sized {s.contracts} ({s.bound}-bound): loss ${b.perContractLoss:.2f}/contract "
                                        f"entry {entry:g} -> stop {stop:g} ({b.pricing}) x {s.contracts} <= risk "
                                        f"${risk.max_risk_per_trade:.0f}; debit ${b.perContractDebit:.0f}, buying "
                                        f"power ${bp:.0f}", b)
