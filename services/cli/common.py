"""Helpers shared by CLI commands: config, bus access, printing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import zmq

from spx_common.bus import RpcClient, RpcError
from spx_common.config import BusConfig, RuntimeConfig, load


def configs() -> tuple[RuntimeConfig, BusConfig]:
    return load(RuntimeConfig), load(BusConfig)


def call(service: str, method: str, params: Any = None, *, timeout_s: float = 2.0, retries: int = 0) -> Any:
    """Ask a running service; raises RpcError (code ``timeout`` when it is not running)."""
    runtime, bus = configs()
    ctx = zmq.Context.instance()
    client = RpcClient(ctx, bus.rep_endpoint(service, runtime), timeout_s=timeout_s, retries=retries)
    try:
        return client.call(method, params)
    finally:
        client.close()


def fail(message: str, code: int = 1) -> int:
    print(f"spx: {message}", file=sys.stderr)
    return code


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, sort_keys=True))


__all__ = ["RpcError", "call", "configs", "fail", "print_json"]


def gateway_url(ws: bool = False) -> str:
    """Where the gateway listens, from its config section when it is importable."""
    host, port = "127.0.0.1", 8765
    try:
        from services.gateway.config import GatewayConfig
        from spx_common.config import load

        cfg = load(GatewayConfig)
        host, port = getattr(cfg, "host", host), getattr(cfg, "port", port)
    except ImportError:
        pass
    return f"ws://{host}:{port}/ws" if ws else f"http://{host}:{port}/"


def table(headers: list[str], rows: list[list[Any]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """Rows under headers, each column as wide as its widest cell (columns in ``right`` right-aligned),
    two spaces between columns; the last column is never padded."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = []
        for i, v in enumerate(values):
            last = i == len(values) - 1
            out.append(v.rjust(widths[i]) if i in right else (v if last else v.ljust(widths[i])))
        return "  ".join(out).rstrip()
    return "\n".join([line(headers), *(line(r) for r in cells)])


class Progress:
    """A one-line progress bar with ETA on stderr (``stream``), for the long commands: ``spx backtest`` (days or
    jobs), ``spx bars`` (MB of flat files read). Called as ``progress(done, total, what)``."""

    def __init__(self, stream: Any = None, width: int = 30, unit: str = "days") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.t0, self.unit = width, time.monotonic(), unit

    def __call__(self, done: int, total: int, what: str) -> None:
        frac = done / total if total else 1.0
        el = time.monotonic() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        bar = "#" * int(frac * self.width)
        eta_s = f"{eta:5.1f}s" if done else "    -"  # nothing done yet: no rate to project
        self.stream.write(f"\r[{bar:<{self.width}}] {done}/{total} {self.unit}  {what:<10}  "
                          f"elapsed {el:5.1f}s  eta {eta_s}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
