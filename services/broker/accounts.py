"""Per-user accounts: one isolated runner per trader.

An :class:`Account` is what one broker worker serves: its own broker client (the local paper broker, or
a Tradier client with that user's token, account and environment), its own bounded intent queue, its
balances, account-events stream state and reconciliation state.  With users in the store (the
``users`` table) every enabled user gets an account of their own, so one user's broken credentials,
429/500 answers or rejected order never delay another user's orders.  With no users in the store the
broker keeps today's behaviour: ONE shared account for the config lists (``[broker] users``,
``paper_users``, ``auto_execution_users``; the ``default`` paper user).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from services.broker.config import BrokerConfig
from services.broker.engine import Limits
from services.broker.client import BrokerClient
from services.broker.paper import PaperBroker, PaperClient
from services.broker.tradier import TradierClient
from services.broker import credentials
from spx_common.crypto import CryptoError, KeyRing

SHARED = "shared"  # the account of the config lists when the store has no users
log = logging.getLogger("spx.broker.accounts")


@dataclass
class Account:
    name: str
    users: list[str]
    queue: asyncio.Queue
    paper: PaperBroker | None = None
    tradier: TradierClient | None = None
    record: dict | None = None  # the users-table row; None = the shared config-list account
    credential_error: str = ""  # why a stored token could not be used (the user is refused with it)
    #: the broker said the access token expired ("" = not): nothing is sent until a new token is stored
    token_expired: str = ""
    #: fingerprints of tokens known expired (a stored token is tried again only when it is another one)
    expired_tokens: set[str] = field(default_factory=set)
    balances: dict[str, Any] = field(default_factory=dict)
    stream_state: str = "n/a"
    adopted: bool = False
    #: positions and working orders read at start (paper: restored): protective stops may be rested
    synced: bool = False
    last_position_rows: list[dict] = field(default_factory=list)
    other_positions: dict[str, float] = field(default_factory=dict)  # non-option holdings: reported, never touched
    last_drift: list[dict] = field(default_factory=list)

    _paper_client: PaperClient | None = None

    @property
    def client(self) -> BrokerClient | None:
        """The account's broker behind the one :class:`BrokerClient` interface (None: no credentials)."""
        if self.paper is not None:
            if self._paper_client is None or self._paper_client.broker is not self.paper:
                self._paper_client = PaperClient(self.paper)
            return self._paper_client
        return self.tradier

    @property
    def kind(self) -> str:
        return "paper" if self.paper is not None else "tradier"

    def describe(self) -> dict[str, Any]:
        return {"users": self.users, "kind": self.kind, "queue": self.queue.qsize(), "stream": self.stream_state,
                "environment": (self.record or {}).get("environment"), "balances": self.balances,
                "credential_error": self.credential_error or None, "token_expired": self.token_expired or None,
                "not_managed": dict(self.other_positions)}


def limits_of(cfg: BrokerConfig, record: dict | None) -> Limits:
    """The engine limits of a user record (config limits when None; the stricter of both for max
    contracts). Sizing: the record's ``max_risk_per_trade`` (risk budget to the stop) and
    ``day_trading_policy`` (``alert`` | ``block`` | ``off``), else ``[broker]``'s."""
    base = Limits(cfg.max_contracts_per_order, cfg.max_orders_per_day, cfg.max_open_risk,
                  entry_timeout_s=cfg.entry_timeout_s, max_risk_per_trade=cfg.max_risk_per_trade,
                  protective_stop=cfg.protective_stop, protective_stop_pct=cfg.protective_stop_pct,
                  max_premium_per_trade=cfg.max_premium_per_trade, min_risk_per_contract=cfg.min_risk_per_contract,
                  dtbp_floor=cfg.dtbp_floor, pdt_policy=cfg.pdt_policy, pdt_min_equity=cfg.pdt_min_equity,
                  rate=cfg.rate)
    if record is None:
        return base
    return replace(base, max_contracts_per_order=min(cfg.max_contracts_per_order, int(record["max_contracts"])),
                   max_risk_per_trade=float(record["max_risk_per_trade"]),
                   daily_loss_limit=float(record["daily_loss_limit"]),
                   pdt_policy=str(record.get("day_trading_policy") or cfg.pdt_policy))


def stored_users(url: str) -> list[dict] | None:
    """Enabled users of the store with their sealed token opened (``token``/``account_id``/``credential_error``
    added), [] when the table is empty, None when there is no users table or no database file."""
    from spx_common.store import Store, make_engine
    from spx_common.store.broker import has_table

    if not has_table(url, "users"):
        return None
    engine = make_engine(url)
    try:
        store = Store(engine)
        rows = store.users(enabled_only=True)
        ring: KeyRing | None = None
        ring_error = ""
        for row in rows:
            row.update(token=None, account_id=None, credential_error="")
            if row["broker"] != "tradier":
                continue
            if store.credentials(row["user"], credentials.BROKER) is None:
                continue
            try:
                if ring is None and not ring_error:
                    ring = KeyRing.from_env()
                if ring is None:
                    raise CryptoError(ring_error)
                found = credentials.read(store, ring, row["user"])
            except CryptoError as exc:
                ring_error = ring_error or str(exc)
                row["credential_error"] = f"credentials_unreadable: {exc}"[:300]
                continue
            if found is not None:
                row["token"], row["account_id"] = found
        return rows
    finally:
        engine.dispose()


def build(cfg: BrokerConfig, records: list[dict] | None, queue_max: int) -> list[Account]:
    """The accounts: one per stored enabled user, or the shared config-list account."""

    if not records:
        acct = Account(SHARED, list(cfg.users), asyncio.Queue(queue_max))
        if cfg.mode == "paper":
            acct.paper = PaperBroker(cfg.paper_starting_cash, cfg.paper_slippage)
        else:
            acct.tradier = TradierClient(cfg.base_url, cfg.access_token, cfg.account_id,
                                         timeout_s=cfg.request_timeout_s, place_timeout_s=cfg.place_timeout_s,
                                         max_retries=cfg.max_retries, max_rate_wait_s=cfg.max_rate_wait_s)
        return [acct]
    out = []
    for row in records:
        rec = {k: v for k, v in row.items() if k != "token"}
        acct = Account(row["user"], [row["user"]], asyncio.Queue(queue_max), record=rec,
                       credential_error=row.get("credential_error") or "")
        if row["broker"] == "paper":
            acct.paper = PaperBroker(cfg.paper_starting_cash, cfg.paper_slippage)
        elif row.get("token") is not None:
            acct.tradier = credentials.client_for(cfg, row, row["token"], row.get("account_id"))
        out.append(acct)
    return out
