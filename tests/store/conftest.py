"""Store fixtures: every store test runs on SQLite and on PostgreSQL (a private schema per test)."""

from __future__ import annotations

import os
import uuid

import pytest

PG_BASE = os.environ.get("SPX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_dsn(url: str) -> str:
    """libpq DSN of a SQLAlchemy psycopg URL (for admin statements)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(pg_dsn(PG_BASE), connect_timeout=2):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "skip with this reason"
        return f"PostgreSQL unreachable at {PG_BASE}: {exc}"


_PG_SKIP = pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, run_dir):
    """A fresh, empty database URL on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{run_dir}/spx.sqlite3"
        return
    if _PG_SKIP:
        pytest.skip(_PG_SKIP)
    import psycopg

    schema = f"spx_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn(PG_BASE), autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_dsn(PG_BASE), autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(db_url):
    from spx_common.store import open_store

    s = open_store(db_url)
    yield s
    s.close()
