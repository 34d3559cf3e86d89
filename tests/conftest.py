"""Shared fixtures: a private run directory per test, real ZeroMQ contexts, bounded waits, a database on
each engine (``db_url``), headless Chromium (``browser``).

Fixtures live here (or in a folder's conftest.py), never imported from another test module. The process
harness, ``eventually`` and ``free_port`` are :mod:`spx_testing` (benchmarks use them too); they are
re-exported here for the tests that import them from ``tests.conftest``."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
import zmq

from spx_common.config import BusConfig, RuntimeConfig
from spx_testing import eventually, free_port

__all__ = ["eventually", "free_port", "PG_BASE", "PG_SKIP", "pg_dsn"]


@pytest.fixture
def run_dir(monkeypatch) -> Path:
    """A short private run directory (ipc socket paths must stay under ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="spx-", dir="/tmp"))
    monkeypatch.setenv("SPX_RUNTIME_RUN_DIR", str(d))
    monkeypatch.delenv("SPX_CONFIG", raising=False)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def runtime(run_dir) -> RuntimeConfig:
    return RuntimeConfig(run_dir=run_dir)


@pytest.fixture
def bus_config() -> BusConfig:
    return BusConfig()


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def port() -> int:
    return free_port()


# ---------------------------------------------------------------- databases: SQLite and PostgreSQL

PG_BASE = os.environ.get("SPX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_dsn(url: str) -> str:
    """libpq DSN of a SQLAlchemy psycopg URL (for admin statements)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(pg_dsn(PG_BASE), connect_timeout=2):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "skip with this reason"
        return f"PostgreSQL unreachable at {PG_BASE}: {exc}"


#: why PostgreSQL tests skip (None when it answers)
PG_SKIP = _pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, run_dir):
    """A fresh, empty database URL on each engine (PostgreSQL: a private schema, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{run_dir}/spx.sqlite3"
        return
    if PG_SKIP:
        pytest.skip(PG_SKIP)
    import psycopg

    schema = f"spx_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn(PG_BASE), autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_dsn(PG_BASE), autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture
def browser():
    """``browser(url)``: headless Chromium on ``url`` and a DevTools client on its page; all stopped after.
    Skips when Chromium is not installed (apt-get install -y chromium)."""
    from services.gateway.devtools import Chromium, DevTools, chromium_path

    binary = chromium_path()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    opened: list[Chromium] = []

    def launch(url: str) -> DevTools:
        opened.append(Chromium(url, binary))
        return opened[-1].page()

    yield launch
    for b in opened:
        b.close()


os.environ.setdefault("SPX_RUNTIME_LOG_LEVEL", "WARNING")
