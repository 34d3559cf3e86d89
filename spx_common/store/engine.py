"""Engine factory and migrations (alembic, programmatic config: works from any cwd)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from spx_common.config import PROJECT_DIR, RuntimeConfig, load
from spx_common.store.config import StoreConfig

MIGRATIONS_DIR = PROJECT_DIR / "migrations"


def database_url(cfg: StoreConfig | None = None, runtime: RuntimeConfig | None = None) -> str:
    """The configured database URL (``DATABASE_URL`` or the SQLite file under the run dir)."""
    return (cfg or load(StoreConfig)).resolved_url(runtime or load(RuntimeConfig))


def make_engine(url: str | None = None, *, busy_timeout_s: float = 2.0) -> Engine:
    """An engine with sane defaults: pre-ping (outages surface as errors, not hangs), WAL on SQLite."""
    url = url or database_url()
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s}, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                            connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {})


def _alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (default: the newest)."""
    from alembic import command

    command.upgrade(_alembic_config(url or database_url()), revision)


def current(url: str | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url or database_url())
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The newest revision of the migration history."""
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    if rev is None:  # only when migrations/versions is empty: a broken checkout
        raise RuntimeError("the migration history has no revision")
    return rev


def migrations_dir() -> Path:
    return MIGRATIONS_DIR
