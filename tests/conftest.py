"""Shared fixtures: a private run directory per test, real ZeroMQ contexts, bounded waits."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import pytest
import zmq

from spx_common.config import BusConfig, RuntimeConfig


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(cond: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = ""):
    """Poll ``cond`` until truthy or raise AssertionError after ``timeout_s`` (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s: {what or cond}")


@pytest.fixture
def port() -> int:
    return free_port()


os.environ.setdefault("SPX_RUNTIME_LOG_LEVEL", "WARNING")
