"""``[broker]`` configuration: Tradier access, the safety flags, limits and users.

Safety defaults (fail closed):

* every path to Tradier is off: ``TRADIER_EXECUTION_ENABLED`` is false, and a production
  (non-sandbox) base URL additionally needs ``TRADIER_EXECUTION_PRODUCTION_ENABLED``;
* users must opt in to auto-execution (``auto_execution_users``), and the ``auto_execution``
  rollout switch must be on; the ``kill_switch`` switch refuses every new entry;
* with no ``TRADIER_ACCESS_TOKEN`` the broker runs the local PAPER broker.  Paper simulation sends
  nothing anywhere, so it auto-executes for ``paper_users`` by default (``paper_auto_execution``):
  this is what lets the embedded default run end to end (a setup triggers, a paper position opens,
  T1 scales it out).  Set ``paper_auto_execution=false`` to watch without paper positions.
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field

from spx_common.config import Section, env_field

SANDBOX_URL = "https://sandbox.tradier.com/v1"
PRODUCTION_URL = "https://api.tradier.com/v1"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def url_origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` a client connects to for ``url`` (userinfo is not the host:
    ``https://sandbox.tradier.com@api.tradier.com/v1`` connects to ``api.tradier.com``); None when
    ``url`` has no scheme or host or an invalid port."""
    try:
        p = urlsplit(str(url).strip())
        host, port = p.hostname, p.port
    except ValueError:
        return None
    scheme = p.scheme.lower()
    if not scheme or not host:
        return None
    return scheme, host.lower().rstrip("."), port if port is not None else DEFAULT_PORTS.get(scheme, 0)


def is_sandbox_url(url: str, sandbox_url: str = SANDBOX_URL) -> bool:
    """Whether ``url`` reaches the sandbox: its scheme and host (and port) equal those of the configured
    ``sandbox_url``, and its host is never Tradier's production host. Everything else is production."""
    origin, sandbox, production = url_origin(url), url_origin(sandbox_url), url_origin(PRODUCTION_URL)
    return origin is not None and origin == sandbox and (production is None or origin[1] != production[1])


class BrokerConfig(Section):
    """Broker process: Tradier access, execution safety flags, limits, paper broker, users."""

    section: ClassVar[str] = "broker"

    base_url: str = env_field(SANDBOX_URL, "Tradier REST base URL (default the sandbox).", "TRADIER_BASE_URL")
    access_token: str = env_field(
        "", "Tradier access token. Empty = paper broker. Never logged, never sent to a client.",
        "TRADIER_ACCESS_TOKEN", repr=False)
    account_id: str = env_field("", "Tradier account id.", "TRADIER_ACCOUNT_ID")
    sandbox_url: str = Field(SANDBOX_URL, description="Tradier base URL for users in the sandbox environment "
                             "(per-user records; the users table).")
    production_url: str = Field(PRODUCTION_URL, description="Tradier base URL for users in the production "
                                "environment (also needs TRADIER_EXECUTION_PRODUCTION_ENABLED to send orders).")
    execution_enabled: bool = env_field(
        False, "Master switch for sending orders to Tradier.", "TRADIER_EXECUTION_ENABLED")
    production_enabled: bool = env_field(
        False, "Also needed when base_url is not the sandbox.", "TRADIER_EXECUTION_PRODUCTION_ENABLED")
    force_flatten_enabled: bool = env_field(
        False, "Flatten open 0DTE positions flatten_minutes before expiring SPXW stop trading (16:00 ET).",
        "TRADIER_FORCE_FLATTEN_ENABLED")
    flatten_minutes: float = Field(10.0, ge=1, le=120, description="Minutes before 16:00 ET to flatten 0DTE.")
    users: list[str] = Field(["default"], description="Users this broker trades for (until per-user records land).")
    auto_execution_users: list[str] = Field(
        [], description="Users who opted in to auto-execution on Tradier (default nobody).")
    paper_users: list[str] = Field(["default"], description="Users traded by the paper broker.")
    paper_auto_execution: bool = Field(
        True, description="Paper broker takes positions automatically (sends nothing anywhere).")
    paper_slippage: float = Field(
        0.0, ge=0, le=5, description="Paper fills: dollars added to the ask (buys) / taken from the bid (sells), "
        "never past the limit price.")
    paper_starting_cash: float = Field(100_000.0, gt=0, description="Paper account cash at start.")
    max_contracts_per_order: int = Field(10, ge=1, le=500, description="Refuse orders above this size.")
    max_orders_per_day: int = Field(20, ge=1, le=1000, description="Entry orders per user per day.")
    max_open_risk: float = Field(
        5000.0, gt=0, description="Dollars at risk (premium paid on open longs + working entries) per user.")
    request_timeout_s: float = Field(5.0, gt=0, le=60, description="HTTP timeout per Tradier request.")
    place_timeout_s: float = Field(5.0, gt=0, le=60, description="Placement timeout before tag lookup.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of safe (idempotent) requests.")
    max_rate_wait_s: float = Field(65.0, gt=0, description="Longest wait for a rate-limit window to reset.")
    poll_interval_s: float = Field(2.0, gt=0, description="Order status polling when the stream is down.")
    reconcile_interval_s: float = Field(30.0, gt=0, description="Positions reconciliation cadence.")
    portfolio_interval_s: float = Field(30.0, gt=0, description="Balances sync cadence.")
    portfolio_change_pct: float = Field(1.0, ge=0, description="Persist a snapshot only past this % move.")
    alert_cooldown_s: float = Field(900.0, ge=0, description="Same alert kind at most once per cooldown.")
    pdt_policy: Literal["alert", "block", "off"] = Field(
        "alert", description="PDT policy for 0DTE entries (day trades): alert = PDT / day-trade buying power alerts "
        "only; block = also refuse 0DTE entries of an account that is not pattern-day-trader qualified (equity "
        "below pdt_min_equity or unknown; cash accounts exempt); off = neither (the rule is being phased out). A "
        "stored user's day_trading_policy overrides it.")
    pdt_min_equity: float = Field(25_000.0, ge=0, description="PDT minimum equity (alerts, and the block policy).")
    max_risk_per_trade: float = Field(
        500.0, gt=0, description="Risk budget of the config-list users: dollars lost per entry if the setup's stop is "
        "hit (repriced loss + spread). Entries are re-sized from it and the account's own balances (stored users: "
        "their max_risk_per_trade).")
    max_premium_per_trade: float | None = Field(
        None, gt=0, description="Premium cap per entry in dollars (contracts x limit x 100); empty = 4 x the user's "
        "risk budget.")
    min_risk_per_contract: float = Field(
        10.0, gt=0, description="Dollars per contract: an entry whose loss to the stop (plus spread) is at or below "
        "this is refused (risk_below_floor).")
    dtbp_floor: float = Field(
        0.0, ge=0, description="Day-trade buying power a 0DTE entry must leave: sized within day-trade buying power "
        "minus this, refused (dtbp_floor) when nothing is left.")
    rate: float = Field(0.04, ge=-0.05, le=0.5, description="Risk-free rate for repricing the contract to the stop.")
    slippage_window: int = Field(200, ge=10, le=100_000, description="Fills kept for rolling slippage stats.")
    entry_price: Literal["ask", "mid"] = Field("ask", description="Entry limit: the ask (marketable) or the mid.")
    protective_stop: Literal["advisor", "premium_pct"] = Field(
        "advisor", description="Protective stop placed right after every entry fill (partial too), for the filled "
        "quantity: 'advisor' = the option's value at the setup's stop (the recommendation's sizing valueAtStop; "
        "premium_pct when unknown), 'premium_pct' = average fill x (1 - protective_stop_pct). Always at least one "
        "tick under the fill; kept equal to the open quantity; only raised by move/trail advice.")
    protective_stop_pct: float = Field(0.5, gt=0, lt=1, description="Fraction of the premium a protective stop "
                                       "risks in premium_pct mode (and in advisor mode without a value at the stop).")
    entry_timeout_s: float = Field(60.0, gt=0, le=3600, description="Cancel an entry not filled this long after "
                                   "it was sent (event time); a filled part stays and is managed.")

    @property
    def is_sandbox(self) -> bool:
        """``base_url`` reaches the sandbox (:func:`is_sandbox_url`: parsed scheme + host, not a prefix)."""
        return is_sandbox_url(self.base_url, self.sandbox_url)

    @property
    def mode(self) -> Literal["tradier", "paper"]:
        return "tradier" if self.access_token else "paper"

    def tradier_send_allowed(self) -> tuple[bool, str]:
        """Whether anything may be sent to Tradier at all, and why not."""
        if not self.access_token:
            return False, "no_token"
        if not self.execution_enabled:
            return False, "execution_disabled"
        if not self.is_sandbox and not self.production_enabled:
            return False, "production_not_enabled"
        return True, ""

    def user_url(self, environment: str) -> str:
        """Base URL of a stored user's environment (``sandbox`` or ``production``)."""
        return self.production_url if environment == "production" else self.sandbox_url

    def user_is_sandbox(self, environment: str) -> bool:
        """A stored user's URL checked like ``base_url``: sandbox only when the user is in the sandbox
        environment AND their URL's scheme + host are the sandbox's."""
        return environment != "production" and is_sandbox_url(self.user_url(environment), self.sandbox_url)

    def public(self) -> dict:
        """Settings safe to show to a client (no token)."""
        d = self.model_dump(exclude={"access_token"})
        d["access_token_set"] = bool(self.access_token)
        d["mode"] = self.mode
        return d
