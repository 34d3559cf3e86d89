"""Tradier credentials at rest: sealed with :mod:`spx_common.crypto`, kept in the store.

The access token is sealed (AES-256-GCM, key ring from ``SPX_CREDENTIALS_KEYS`` or
``SPX_CREDENTIALS_KEY_FILE``) bound to the context ``tradier:<user>:access_token`` and written to the
store's ``broker_credentials`` table (ciphertext and key id only; the account id is not secret).
Plaintext only ever exists in memory, wrapped in :class:`~spx_common.crypto.Secret` until the HTTP
client needs it.  ``spx broker credentials set|show|rotate`` writes; the broker reads at start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa

from services.broker.config import BrokerConfig
from spx_common.config import ConfigError, RuntimeConfig, load
from spx_common.crypto import CryptoError, KeyRing, Secret
from spx_common.store import Store, make_engine, open_store
from spx_common.store.config import StoreConfig

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
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return cfg
    engine = make_engine(url)
    try:
        if not sa.inspect(engine).has_table("broker_credentials"):
            return cfg
        store = Store(engine)
        user = cfg.users[0]
        if store.credentials(user, BROKER) is None:
            return cfg
        try:
            found = read(store, KeyRing.from_env(), user)
        except CryptoError as exc:
            raise ConfigError(f"[broker] sealed Tradier credentials of {user!r}: {exc}") from None
    except sa.exc.SQLAlchemyError as exc:
        # database down: run without the stored token (paper mode sends nothing anywhere), say so loudly
        log.error("cannot read stored Tradier credentials (%s); running without them", type(exc).__name__)
        return cfg
    finally:
        engine.dispose()
    if found is None:
        return cfg
    token, account = found
    return cfg.model_copy(update={"access_token": token.reveal(), "account_id": account or cfg.account_id})
