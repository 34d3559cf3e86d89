"""Store fixtures: every store test runs on SQLite and on PostgreSQL (``db_url``, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(db_url):
    from spx_common.store import open_store

    s = open_store(db_url)
    yield s
    s.close()
