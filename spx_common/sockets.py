"""Socket helpers shared by the publish/subscribe and request/reply modules."""

from __future__ import annotations

from pathlib import Path

import zmq


def prep(sock: zmq.Socket, hwm: int, linger_ms: int) -> None:
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)


def ensure_ipc_dir(endpoint: str) -> None:
    """The directory of an ``ipc://`` endpoint exists (a bind there fails otherwise)."""
    if endpoint.startswith("ipc://"):
        Path(endpoint[6:]).parent.mkdir(parents=True, exist_ok=True)
