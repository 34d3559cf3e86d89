"""Tradier credentials at rest: sealed with :mod:`spx_common.crypto`, kept in the store.

The access token is sealed (AES-256-GCM, key ring from ``SPX_CREDENTIALS_KEYS`` or
``SPX_CREDENTIALS_KEY_FILE``) bound to the context ``tradier:<user>:access_token`` and written to the
store's ``broker_credentials`` table (ciphertext and key id only; the account id is not secret).
Plaintext only ever exists in memory, wrapped in :class:`~spx_common.crypto.Secret` until the HTTP
client needs it.  ``spx broker credentials set|show|rotate`` writes; the broker reads at start.

Per-user records (the ``users`` table): ``spx users credentials set|test|remove|status USER``;
:func:`user_allowed` is the one place that decides whether execution is allowed for a stored user and
names the exact reason when not (the broker and ``status`` both call it).
"""

from __future__ import annotations

import logging
import time
from typing import Any
import asyncio

from services.broker.config import BrokerConfig
from spx_common.config import ConfigError, RuntimeConfig, load
from spx_common.crypto import CryptoError, KeyRing, Secret
from spx_common.store import Store, make_engine, open_store
from spx_common.store.broker import StoreError, has_table
from spx_common.store.config import StoreConfig
from spx_common.flags import FlagStore
from services.broker.tradier import TradierClient, TradierError
from services.broker.portfolio import summarize_balances

BROKER = "tradier"
log = logging.getLogger("spx.broker.credentials")


def context(user: str) -> str:
    return f"{BROKER}:{user}:access_token"


def save(store: Store, ring: KeyRing, user: str, token: str | Secret, account_id: str) -> None:
    """Seal ``token`` with the primary key and store it with the account id."""
    sealed = ring.seal(token, context(user))
    store.put_credentials(user, BROKER, sealed.encode(), ring.primary, account_id=account_id)


def read(store: Store, ring: KeyRing, user: str) -> tuple[Secret, str | None] | None:
    """(token, account id) of ``user``, or None when nothing is stored; CryptoError when it cannot be opened."""
    row = store.credentials(user, BROKER)
    if row is None:
        return None
    return ring.open(bytes(row["ciphertext"]).decode(), context(user)), row.get("account_id")


def rotate(store: Store, ring: KeyRing, user: str) -> bool:
    """Re-seal ``user``'s token with the primary key; True when it changed."""
    row = store.credentials(user, BROKER)
    if row is None:
        return False
    sealed = bytes(row["ciphertext"]).decode()
    if not ring.needs_rotation(sealed):
        return False
    store.put_credentials(user, BROKER, ring.rotate(sealed, context(user)).encode(), ring.primary,
                          account_id=row.get("account_id"))
    return True


def store_url(runtime: RuntimeConfig) -> str:
    return load(StoreConfig).resolved_url(runtime)


def open_for_cli(runtime: RuntimeConfig) -> Store:
    """The store, migrated (the CLI may be the first to touch a fresh database)."""
    return open_store(store_url(runtime))


def with_stored_credentials(cfg: BrokerConfig, runtime: RuntimeConfig) -> BrokerConfig:
    """Fill the Tradier token/account from the store when the environment has no token.

    A stored token that cannot be opened (no key ring, wrong key, altered ciphertext) stops the process
    with ``ConfigError`` rather than silently falling back to paper.
    """
    if cfg.access_token:
        return cfg
    url = store_url(runtime)
    engine = None
    try:
        if not has_table(url, "broker_credentials"):
            return cfg
        engine = make_engine(url)
        store = Store(engine)
        user = cfg.users[0]
        if store.credentials(user, BROKER) is None:
            return cfg
        try:
            found = read(store, KeyRing.from_env(), user)
        except CryptoError as exc:
            raise ConfigError(f"[broker] sealed Tradier credentials of {user!r}: {exc}") from None
    except StoreError as exc:
        # database down: run without the stored token (paper mode sends nothing anywhere), say so loudly
        log.error("cannot read stored Tradier credentials (%s); running without them", type(exc).__name__)
        return cfg
    finally:
        if engine is not None:
            engine.dispose()
    if found is None:
        return cfg
    token, account = found
    return cfg.model_copy(update={"access_token": token.reveal(), "account_id": account or cfg.account_id})


def user_allowed(cfg: BrokerConfig, user: dict, *, token_stored: bool, flags: dict[str, Any]) -> tuple[bool, str]:
    """Whether orders may be sent for the stored ``user`` record, and the exact reason when not.

    Order of checks (the first failing one is the reason): ``user_disabled``, ``kill_switch``,
    ``not_opted_in`` (the user's auto-execution opt-in), then paper: ``paper_auto_execution_off`` (the
    ``[broker] paper_auto_execution`` setting or the ``paper_auto_execution`` switch);
    Tradier: ``auto_execution_flag_off`` (rollout switch), ``no_token``, ``execution_disabled``
    (TRADIER_EXECUTION_ENABLED), ``production_not_enabled`` (a production environment, or a URL whose
    scheme + host are not the sandbox's, without TRADIER_EXECUTION_PRODUCTION_ENABLED).  Limits (``daily_loss_limit``, ``max_open_risk`` ...) are
    checked per order by the engine.
    """
    if not user.get("enabled"):
        return False, "user_disabled"
    if flags.get("kill_switch"):
        return False, "kill_switch"
    if not user.get("auto_execution"):
        return False, "not_opted_in"
    if user.get("broker") == "paper":
        paper_on = cfg.paper_auto_execution and flags.get("paper_auto_execution", True)
        return (True, "") if paper_on else (False, "paper_auto_execution_off")
    if not flags.get("auto_execution"):
        return False, "auto_execution_flag_off"
    if not token_stored:
        return False, "no_token"
    if not cfg.execution_enabled:
        return False, "execution_disabled"
    if not cfg.user_is_sandbox(str(user.get("environment"))) and not cfg.production_enabled:
        return False, "production_not_enabled"
    return True, ""


def user_send_allowed(cfg: BrokerConfig, user: dict, *, token_stored: bool) -> tuple[bool, str]:
    """Whether anything at all may be sent for the stored ``user`` (exits, stops, cancels, flatten):
    paper always; Tradier needs a token, ``TRADIER_EXECUTION_ENABLED`` and, in production,
    ``TRADIER_EXECUTION_PRODUCTION_ENABLED``. The switches, opt-in and a disabled user stop entries
    only (:func:`user_allowed`), never an exit."""
    if user.get("broker") == "paper":
        return True, ""
    if not token_stored:
        return False, "no_token"
    if not cfg.execution_enabled:
        return False, "execution_disabled"
    if not cfg.user_is_sandbox(str(user.get("environment"))) and not cfg.production_enabled:
        return False, "production_not_enabled"
    return True, ""


def client_for(cfg: BrokerConfig, user: dict, token: Secret, account_id: str | None):
    """A Tradier client for a stored user's environment, token and account."""

    return TradierClient(cfg.user_url(str(user.get("environment"))), token.reveal(), account_id or "",
                         timeout_s=cfg.request_timeout_s, place_timeout_s=cfg.place_timeout_s,
                         max_retries=cfg.max_retries, max_rate_wait_s=cfg.max_rate_wait_s)


def test(store: Store, ring: KeyRing, user: str, cfg: BrokerConfig) -> dict[str, Any]:
    """Fetch balances with ``user``'s stored token from their environment's URL; record the outcome.

    Returns ``{ok, environment, account_id, account_type, option_buying_power, total_equity, error}``;
    the token is never part of it (a failure names the error class and HTTP status only).
    """


    row = store.user(user) or {"environment": "sandbox"}
    env = str(row.get("environment"))
    found = read(store, ring, user)
    out: dict[str, Any] = {"ok": False, "environment": env, "account_id": None, "error": None}
    if found is None:
        out["error"] = "no token stored"
        return out
    token, account = found
    out["account_id"] = account

    async def fetch() -> dict:
        client = client_for(cfg, row, token, account)
        try:
            return await client.balances()
        finally:
            await client.aclose()

    try:
        bal = asyncio.run(fetch())
    except TradierError as exc:
        out["error"] = _safe_error(exc, token)
        store.set_credential_status(user, error=out["error"])
        return out
    snap = summarize_balances(bal)
    out.update(ok=True, account_type=snap["account_type"], option_buying_power=snap["option_buying_power"],
               total_equity=snap["total_equity"])
    store.set_credential_status(user, ok_ns=time.time_ns())
    return out


def _safe_error(exc: BaseException, token: Secret) -> str:
    text = f"{type(exc).__name__}: {exc}"[:300]
    secret = token.reveal()
    return text.replace(secret, "***") if secret else text


def status(store: Store, user: dict, cfg: BrokerConfig, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Environment, whether a token is stored, last successful call / last error, and whether execution
    would be allowed for ``user`` (a users-table row) with the exact reason when not."""
    if flags is None:

        fs = FlagStore(load(RuntimeConfig).path("flags.json"))
        fs.reload()
        flags = fs.snapshot()
    cred = store.credentials(user["user"], BROKER)
    ok, why = user_allowed(cfg, user, token_stored=cred is not None, flags=flags)
    return {"user": user["user"], "broker": user["broker"], "environment": user["environment"],
            "base_url": cfg.user_url(user["environment"]) if user["broker"] == "tradier" else None,
            "token_stored": cred is not None, "account_id": cred.get("account_id") if cred else None,
            "last_ok_ns": user.get("last_ok_ns"), "last_error": user.get("last_error"),
            "execution_allowed": ok, "reason": why}
