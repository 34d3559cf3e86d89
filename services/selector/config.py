"""Selector configuration (``[selector]`` / ``SPX_SELECTOR_*``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from spx_common.config import Section


class SelectorConfig(Section):
    """Selector service: chain freshness, contract filters, sizing defaults, exit mechanics."""

    section: ClassVar[str] = "selector"

    root: str = Field("SPXW", description="Option root whose chain (chain.<root>) and quotes are used.")
    max_spread_pct: float = Field(0.10, gt=0, le=2, description="Largest bid/ask spread as a fraction of mid.")
    min_open_interest: int = Field(100, ge=0, description="Minimum open interest of a selectable contract.")
    min_volume: int = Field(0, ge=0, description="Minimum contracts traded today of a selectable contract.")
    max_contracts: int = Field(50, ge=1, le=10_000, description="Hard cap on suggestedContracts.")
    min_risk_per_contract: float = Field(
        10.0, gt=0, description="Dollars per contract: a loss from entry to stop (repriced, plus the spread) at or "
        "below this is refused (risk_below_floor) instead of sizing a huge position.")
    max_premium_per_trade: float | None = Field(
        None, gt=0, description="Premium cap in dollars per recommendation (contracts x ask x 100); empty = 4 x the "
        "risk budget (maxRiskDollars).")
    day_trade_policy: Literal["buying_power", "pdt", "off"] = Field(
        "buying_power", description="0DTE gate: buying_power = needs day-trade / option buying power (post-2026 "
        "intraday-margin rule); pdt = also refuse when pdtQualified is false (brokers still applying the old rule); "
        "off = no gate (paper).")
    pdt_min_equity: float = Field(25_000.0, ge=0, description="Equity under which the pdt policy refuses 0DTE "
                                  "when pdtQualified is not given.")
    cache_ttl_s: float = Field(10.0, ge=0, le=300, description="Event-time life of a cached recommendation.")
    cache_max: int = Field(4096, ge=1, description="Bound on cached recommendations (oldest evicted).")
    stale_s: float = Field(30.0, gt=0, description="Chain (snapshot and quotes) older than this is stale.")
    min_chain_contracts: int = Field(20, ge=1, description="Fewer contracts than this is a partial chain.")
    rate: float = Field(0.04, ge=-0.05, le=0.5, description="Risk-free rate for implied-vol and greek computation.")
    default_max_risk_dollars: float = Field(500.0, ge=0, description="Risk context of published reco.<id> frames: "
                                            "dollars at risk per trade.")
    default_buying_power: float = Field(100_000.0, ge=0, description="Risk context of published reco.<id> frames: "
                                        "day-trade buying power. Default = the paper account's starting cash so the "
                                        "embedded default trades on paper; the broker re-checks each real account's "
                                        "own buying power before any order (0 = published recos size 0 contracts).")
    default_equity: float = Field(100_000.0, ge=0, description="Risk context of published reco.<id> frames: account "
                                  "equity (default: the paper account's starting cash).")
    scale1_fraction: float = Field(0.5, gt=0, le=1, description="Fraction scaled out at 1R (target 1).")
    scale2_fraction: float = Field(0.5, gt=0, le=1, description="Fraction of what remains scaled out at 2R.")
    bar_interval: str = Field("60s", pattern=r"^[0-9]{1,4}[smh]$", description="Closed bars whose confirmed swing "
                              "pivots trail the runner.")
    price_interval: str = Field("1s", pattern=r"^[0-9]{1,4}[smh]$", description="Closed bars checked for target and "
                                "stop touches (their high/low).")
    pivot_left: int = Field(2, ge=1, le=20, description="Bars before a swing pivot that must be higher (lows) / lower.")
    pivot_right: int = Field(2, ge=1, le=20, description="Bars after a swing pivot confirming it.")
    trail_buffer: float = Field(0.5, ge=0, description="Index points placed beyond the pivot.")
    max_advisors: int = Field(256, ge=1, description="Bound on concurrently tracked setups in the exit advisor.")
