"""Contract selection and sizing: a pure function of setup, chain, regime and risk context.

:func:`select` never raises on bad input: every refusal is a ``ContractRecommendation`` with
``ok=False`` and a reason whose first word is a stable code (``empty_chain``, ``bad_setup``,
``stop_wrong_side``, ``no_buying_power``, ``day_trade_blocked``, ``no_contract``, ``zero_size``,
``stale_chain``, ``bad_price``, ``risk_below_floor``). Sizing is :func:`spx_common.sizing.size`, the
same function the broker re-sizes every entry with.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from services.selector.chain import Chain, Contract, expiry_ns, health
from spx_common import sizing
from spx_common.models import ContractRecommendation, SizingBreakdown

#: regime -> (target |delta|, lowest, highest). Documented in docs/selector.md.
DELTA_TABLE: dict[str, tuple[float, float, float]] = {
    "trending": (0.50, 0.40, 0.65),     # momentum: near the money, most gamma per dollar of theta
    "volatile": (0.60, 0.45, 0.75),     # wide swings: ITM-leaning, less vega/IV-crush exposure
    "ranging": (0.35, 0.25, 0.45),      # mean reversion to a level: cheaper, smaller debit at risk
    "compression": (0.30, 0.20, 0.40),  # breakout anticipation: cheap convexity before expansion
    "unknown": (0.40, 0.30, 0.55),
}
REGIME_ALIASES = {"trend": "trending", "trend_up": "trending", "trend_down": "trending", "range": "ranging",
                  "chop": "ranging", "squeeze": "compression", "expansion": "volatile", "reversal": "volatile"}


def regime_key(regime: str | None) -> str:
    """Normalize a detector regime label onto a :data:`DELTA_TABLE` row (``unknown`` when not known)."""
    r = (regime or "unknown").strip().lower()
    r = REGIME_ALIASES.get(r, r)
    return r if r in DELTA_TABLE else "unknown"


class SetupSpec(msgspec.Struct, kw_only=True):
    """What selection needs from a setup. ``entry`` is the underlying entry price."""

    setup_id: str = "adhoc"
    direction: str
    entry: float
    stop: float
    targets: list[float] = []


class RiskContext(msgspec.Struct, kw_only=True):
    """A user's risk context (field names as in the issue / Tradier balances)."""

    maxRiskDollars: float
    dayTradeBuyingPower: float | None = None
    optionBuyingPower: float | None = None
    pdtQualified: bool | None = None
    equity: float | None = None

    def fingerprint(self) -> str:
        """Stable short hash: the cache key part that keeps one user's sizing from another's."""
        return hashlib.blake2b(msgspec.json.encode(self), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """Selection knobs (see :class:`services.selector.config.SelectorConfig`)."""

    max_spread_pct: float = 0.10
    min_open_interest: int = 100
    min_volume: int = 0
    max_contracts: int = 50
    day_trade_policy: str = "buying_power"
    pdt_min_equity: float = 25_000.0
    stale_s: float = 30.0
    min_chain_contracts: int = 20
    rate: float = 0.04
    min_risk_per_contract: float = sizing.DEFAULT_MIN_RISK
    max_premium_per_trade: float | None = None  # None = sizing.PREMIUM_MULTIPLE x the risk budget

    @classmethod
    def from_config(cls, cfg: Any) -> Policy:
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__ if hasattr(cfg, k)})


def _no(setup_id: str, reason: str, ts: int, sizing: SizingBreakdown | None = None) -> ContractRecommendation:
    return ContractRecommendation(setup_id=setup_id, ok=False, reason=reason, sizing=sizing, ts=ts)


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


def check_setup(s: SetupSpec) -> str | None:
    """Reason the setup cannot be traded, or ``None`` (the shared sizing check)."""
    return sizing.check_stop(s.direction, s.entry, s.stop)


def buying_power(risk: RiskContext, zero_dte: bool, policy: Policy) -> tuple[float, str | None]:
    """Usable buying power and a blocking reason (``None`` when trading is allowed).

    :func:`spx_common.sizing.usable_buying_power`: a 0DTE trade is a day trade and uses the smaller of
    the known ``dayTradeBuyingPower`` and ``optionBuyingPower``; otherwise ``optionBuyingPower``. The
    ``pdt`` policy also refuses 0DTE when ``pdtQualified`` is false (or unknown with equity below
    ``pdt_min_equity``); ``off`` skips the day-trade gate (buying power still bounds the size).
    """
    bp, block = sizing.usable_buying_power(risk.optionBuyingPower, risk.dayTradeBuyingPower, zero_dte)
    if zero_dte and policy.day_trade_policy == "pdt" and \
            not sizing.pdt_qualified(risk.pdtQualified, risk.equity, policy.pdt_min_equity):
        return bp, ("day_trade_blocked: account is not pattern-day-trader qualified "
                    f"(policy pdt; equity {risk.equity}) and 0DTE options are day trades")
    return bp, block


def leg_of(c: Contract, underlying: float | None) -> sizing.Leg:
    """The sizing view of a chain contract (its live quote, IV and greeks at ``underlying``)."""
    return sizing.Leg(call=c.call, strike=c.strike, expiry_ns=expiry_ns(c.symbol.expiration), bid=c.bid,
                      ask=c.ask, iv=c.iv, delta=c.delta, gamma=c.gamma, underlying=underlying)


def candidates(chain: Chain, call: bool, policy: Policy) -> tuple[list[Contract], dict[str, int]]:
    """Contracts of one side passing quote, spread, liquidity and greek checks, and counts of why others failed."""
    why = {"bad_quote": 0, "wide_spread": 0, "low_open_interest": 0, "low_volume": 0, "no_delta": 0}
    out = []
    for c in chain.contracts.values():
        if c.call != call:
            continue
        if not c.quote_ok or not c.ask:
            why["bad_quote"] += 1
        elif c.spread_pct is None or c.spread_pct > policy.max_spread_pct:
            why["wide_spread"] += 1
        elif c.open_interest < policy.min_open_interest:
            why["low_open_interest"] += 1
        elif c.volume < policy.min_volume:
            why["low_volume"] += 1
        elif c.delta is None or not math.isfinite(c.delta):
            why["no_delta"] += 1
        else:
            out.append(c)
    return out, why


def select(setup: SetupSpec, chain: Chain | None, regime: str | None, risk: RiskContext, policy: Policy,
           now_ns: int) -> ContractRecommendation:
    """The contract to buy (call for long, put for short), how many, and why; or why nothing qualifies."""
    sid = setup.setup_id
    bad = check_setup(setup)
    if bad:
        return _no(sid, bad, now_ns)
    if not _finite(risk.maxRiskDollars) or risk.maxRiskDollars <= 0:
        return _no(sid, f"bad_risk: maxRiskDollars {risk.maxRiskDollars!r} must be a positive number", now_ns)
    if chain is None or not chain.contracts:
        return _no(sid, "empty_chain: no option chain (or an empty one) to select from", now_ns)
    h = health(chain, now_ns, stale_s=policy.stale_s, min_contracts=policy.min_chain_contracts)
    stale = [i for i in h.issues if i.startswith("stale")]
    if stale:
        return _no(sid, "stale_chain: " + stale[0], now_ns)
    call = setup.direction == "long"
    rk = regime_key(regime)
    target, lo, hi = DELTA_TABLE[rk]
    pool, why = candidates(chain, call, policy)
    in_band = [c for c in pool if lo <= abs(c.delta) <= hi]
    if not in_band:
        counts = ", ".join(f"{k} {v}" for k, v in why.items() if v)
        return _no(sid, f"no_contract: no {'call' if call else 'put'} with |delta| in [{lo:.2f}, {hi:.2f}] "
                        f"(regime {rk}) passing filters (spread <= {policy.max_spread_pct:.0%} of mid, "
                        f"OI >= {policy.min_open_interest}, volume >= {policy.min_volume}); "
                        f"{len(pool)} passed filters outside the band; rejected: {counts or 'none'}", now_ns)
    best = min(in_band, key=lambda c: (abs(abs(c.delta) - target), c.spread_pct, c.strike))
    leg = leg_of(best, chain.underlying)
    zero_dte = sizing.is_zero_dte(leg.expiry_ns, now_ns)
    bp, block = buying_power(risk, zero_dte, policy)
    budget = sizing.Budget(risk.maxRiskDollars, bp, policy.max_contracts, policy.max_premium_per_trade,
                           policy.min_risk_per_contract)
    sz = sizing.size(leg, setup.direction, setup.entry, setup.stop, budget, now_ns, policy.rate)
    b = sz.breakdown
    base = dict(setup_id=sid, occ_symbol=best.symbol.occ, tradier_symbol=best.symbol.tradier,
                massive_symbol=best.symbol.massive, option_type="call" if call else "put", strike=best.strike,
                expiration=best.symbol.expiration.isoformat(), delta=round(best.delta, 4), bid=best.bid, ask=best.ask,
                mid=round(best.mid, 4), sizing=b, ts=now_ns, iv=best.iv, gamma=best.gamma,
                underlying=chain.underlying)
    if block:
        return ContractRecommendation(ok=False, reason=block, suggestedContracts=0, **base)
    if sz.reason is not None:
        return ContractRecommendation(ok=False, reason=sz.reason, suggestedContracts=0, **base)
    reason = (f"{best.symbol.tradier} |delta| {abs(best.delta):.2f} (regime {rk}, target {target:.2f}); "
              f"{sz.contracts} contracts, {sz.bound}-bound: loss ${b.perContractLoss:.0f}/contract from entry "
              f"{setup.entry} to stop {setup.stop} (value {b.valueAtEntry:.2f} -> {b.valueAtStop:.2f}, "
              f"spread {b.spread:.2f}, {b.pricing}) -> {b.contractsByRisk} by risk ${risk.maxRiskDollars:.0f}; "
              f"debit ${b.perContractDebit:.0f} -> {b.contractsByBuyingPower} by buying power ${bp:.0f}, "
              f"{b.contractsByPremium} by premium cap ${b.maxPremiumDollars:.0f}"
              + ("; quotes wide/illiquid" if h.issues else ""))
    return ContractRecommendation(ok=True, reason=reason, suggestedContracts=sz.contracts, **base)


class RecoCache:
    """Recommendations for 10 s of event time keyed by setup + risk fingerprint; bounded, oldest evicted."""

    def __init__(self, ttl_s: float = 10.0, max_items: int = 4096) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.max_items = max_items
        self._d: OrderedDict[tuple, tuple[int, ContractRecommendation]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(setup: SetupSpec, regime: str | None, risk: RiskContext) -> tuple:
        return (setup.setup_id, setup.direction, setup.entry, setup.stop, tuple(setup.targets), regime_key(regime),
                risk.fingerprint())

    def get(self, key: tuple, now_ns: int) -> ContractRecommendation | None:
        hit = self._d.get(key)
        if hit is None or now_ns - hit[0] > self.ttl_ns or now_ns < hit[0]:
            self.misses += 1
            return None
        self.hits += 1
        return hit[1]

    def put(self, key: tuple, now_ns: int, reco: ContractRecommendation) -> None:
        self._d[key] = (now_ns, reco)
        self._d.move_to_end(key)
        while len(self._d) > self.max_items:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)
