"""Persistence: SQLAlchemy Core tables, alembic migrations, an idempotent repository.

``Store`` is the API other services call (setup instances, orders, fills, positions,
portfolio snapshots, bars, broker credential ciphertext, users, optimizer profiles);
``get_active_profile()`` is what the detector host reads.
"""

from spx_common.store.config import StoreConfig
from spx_common.store.engine import current, database_url, head, make_engine, upgrade
from spx_common.store.profile import FamilyPolicy, FamilyStats, Floors, Profile, evaluate
from spx_common.store.repo import Store


def open_store(url: str | None = None, *, migrate: bool = True) -> Store:
    """A :class:`Store` on the configured database, migrated to the newest schema first."""
    url = url or database_url()
    if migrate:
        upgrade(url)
    return Store(make_engine(url))


_migrated: set[str] = set()


def get_active_profile(url: str | None = None) -> Profile:
    """The active optimizer profile of the configured database (the detector host calls this).

    Migrates the database the first time per process and URL; later calls are one indexed
    select. Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database is unavailable: the
    caller decides (the detector host keeps its last profile). A long-lived caller may keep a
    :class:`Store` and call ``store.get_active_profile()`` instead.
    """
    url = url or database_url()
    store = open_store(url, migrate=url not in _migrated)
    _migrated.add(url)
    try:
        return store.get_active_profile()
    finally:
        store.close()


__all__ = ["FamilyPolicy", "FamilyStats", "Floors", "Profile", "Store", "StoreConfig", "current", "database_url",
           "evaluate", "get_active_profile", "head", "make_engine", "open_store", "upgrade"]
