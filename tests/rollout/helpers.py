"""Shared pieces of the rollout-switch tests: flipping a switch the two supported ways, a websocket
client that records what it received and when, and real processes started side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import websockets.sync.client as wsc

from services.gateway.protocol import ServerMessage
from spx_common.bus import RpcClient
from spx_common.flags import FlagStore


def spx_flags_set(run_dir: Path, name: str, value: str) -> str:
    """``spx flags set NAME VALUE`` as an operator runs it: writes flags.json and asks every running
    service to reload. Returns its output line."""
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "flags", "set", name, value],
                         env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir)}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def reload_set(run_dir: Path, rpc: RpcClient, name: str, value) -> dict:
    """Write the switch and send the ``flags.reload`` request to one service; returns its answer."""
    FlagStore(run_dir / "flags.json").set(name, value)
    return rpc.call("flags.reload")


class WsRecorder:
    """A websocket client whose reader thread keeps ``(monotonic time, message)`` for every message,
    each validated against the documented server message schema."""

    def __init__(self, url: str, channels: list[str], token: str | None = None) -> None:
        self.ws = wsc.connect(url + (f"?token={token}" if token else ""), open_timeout=10).__enter__()
        self.messages: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.ws.send(json.dumps({"op": "subscribe", "channels": channels}))

    def _read(self) -> None:
        try:
            while True:
                msg = json.loads(self.ws.recv())
                ServerMessage.model_validate(msg)
                with self.lock:
                    self.messages.append((time.monotonic(), msg))
        except Exception:  # closed
            pass

    def on(self, channel: str, since: float = 0.0) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m.get("channel") == channel and t >= since
                    and m["type"] in ("snapshot", "update")]

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)
