"""Fixtures shared by the feed tests."""

from __future__ import annotations

import pytest

from spx_testing.fakes.massive import FakeMassive


@pytest.fixture
def fake():
    """The fake Massive server (WebSocket + REST on free loopback ports), accepting the key ``k``."""
    with FakeMassive(api_key="k") as f:
        yield f
