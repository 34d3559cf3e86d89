"""The real mesh under the real supervisord, from supervisord.conf, seen through the gateway.

Starts every process with ``spx up``'s code path in a private run directory, connects a
websocket client to the gateway, receives price and 1s bar messages, then SIGKILLs one
service and checks that supervisord restarts it (and only it) and data flows through it again.
"""

import asyncio
import json
import os
import signal
import time

import pytest
import websockets

from services.cli import supervise
from spx_common.config import RuntimeConfig
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.mesh


@pytest.fixture
def mesh(run_dir, monkeypatch):
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_RUNTIME_LOG_LEVEL": "INFO"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runtime = RuntimeConfig(run_dir=run_dir)
    supervise.start(runtime, env)
    try:
        supervise.wait_running(runtime, 60)

        def listening() -> bool:  # RUNNING can come before the gateway's port is bound
            import socket
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", port)) == 0
        eventually(listening, 30, what="gateway port listening")
        yield runtime, port
    finally:
        supervise.stop(runtime, 30)


async def _collect(url: str, channels: list[str], want: set[str], timeout_s: float) -> dict[str, list[dict]]:
    """Subscribe and gather messages until every channel in ``want`` produced a data message."""
    got: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout_s
    async with websockets.connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": channels}))
        while time.monotonic() < deadline and not want <= {c for c, msgs in got.items() if msgs}:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            msg = json.loads(raw)
            assert msg.get("type") != "error", msg
            if msg.get("channel") in want and msg.get("type") == "update" and msg.get("data") is not None:
                for key in ("channel", "type", "seq", "data"):
                    assert key in msg, (key, msg)
                got.setdefault(msg["channel"], []).append(msg)
    return got


def test_mesh_streams_to_websocket_and_survives_a_killed_service(mesh):
    runtime, port = mesh
    url = f"ws://127.0.0.1:{port}/ws"
    channels = ["price:SPY", "microbar:SPY:1s"]
    got = asyncio.run(_collect(url, channels, set(channels), 60))
    assert got.get("price:SPY"), f"no price messages; logs in {runtime.path('logs')}"
    assert got.get("microbar:SPY:1s"), f"no 1s bar messages; logs in {runtime.path('logs')}"
    bar = got["microbar:SPY:1s"][-1]["data"]
    assert {"open", "high", "low", "close", "volume"} <= set(bar)

    before = {p["name"]: p["pid"] for p in supervise.processes(runtime)}
    os.kill(before["aggregator"], signal.SIGKILL)

    def restarted():
        now = {p["name"]: (p["pid"], p["statename"]) for p in supervise.processes(runtime)}
        pid, state = now["aggregator"]
        return now if state == "RUNNING" and pid != before["aggregator"] else None

    after = eventually(restarted, 30, interval_s=0.2, what="supervisord restarts the aggregator")
    assert {k: v[0] for k, v in after.items() if k != "aggregator"} == {
        k: v for k, v in before.items() if k != "aggregator"}, "other services must not restart"
    got = asyncio.run(_collect(url, ["microbar:SPY:1s"], {"microbar:SPY:1s"}, 45))
    assert got.get("microbar:SPY:1s"), "bars did not resume after the aggregator restart"
