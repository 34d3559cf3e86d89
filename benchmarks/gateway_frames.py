"""The gateway's per-message write: ``websockets`` ``broadcast()`` against a hand-built frame.

    python benchmarks/gateway_frames.py                     # 500 connections x 400 messages, each path 5 times
    python benchmarks/gateway_frames.py --clients 1000 --messages 200 --json /tmp/frames.json

The gateway writes an update at once to every subscriber whose queue is empty (``Gateway._direct``).
Until issue 25 it built the RFC 6455 text frame itself and wrote it on the transport after reading the
library's private state; now it calls ``websockets.asyncio.server.broadcast()`` for the one connection,
the library's supported synchronous write (protocol state machine, frame serializer, no task switch).
This measures what that costs per message: a real ``websockets`` server on loopback, ``--clients`` raw
TCP clients in a child process that drain their sockets, and for each path ``--messages`` rounds of one
~170-byte price update written to every connection. Reported per path: wall and CPU time per message
per connection (median of ``--repeat`` runs, paths interleaved). Wall figures mean something only on a
quiet machine (the run prints ``os.getloadavg()``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402
from websockets.protocol import State  # noqa: E402

from spx_testing import rawws  # noqa: E402

PAYLOAD = (b'{"channel":"price:SPY","type":"update","seq":123456,"source":"tick","data":{"sym":"SPY",'
           b'"price":601.23,"bid":601.22,"ask":601.24,"size":100,"ts":1765152000123456789}}')


def _clients(port: int, n: int, ready, stop) -> None:
    """``n`` raw websocket clients: handshake, then read and discard until told to stop."""
    socks = []
    for _ in range(n):
        s = rawws.connect(port, "/", timeout_s=10)
        s.setblocking(False)
        socks.append(s)
    ready.set()
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                key.fileobj.recv(1 << 20)
            except BlockingIOError:
                pass
    for s in socks:
        s.close()


def raw_frame(ws: ServerConnection, data: bytes) -> bool:
    """The removed path, for comparison only: an unmasked text frame written on the transport."""
    if ws.protocol.state is not State.OPEN or ws.send_in_progress is not None:
        return False
    n = len(data)
    head = bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big")
    ws.transport.write(head + data)
    return True


def library(ws: ServerConnection, data: bytes) -> bool:
    """The path the gateway uses now (``services.gateway.service.Gateway._direct``)."""
    if ws.state is not State.OPEN:
        return False
    broadcast((ws,), data, text=True, raise_exceptions=True)
    return True


async def _run(args) -> dict:
    conns: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=None) as server:
        port = server.sockets[0].getsockname()[1]
        ready, stop = mp.Event(), mp.Event()
        child = mp.Process(target=_clients, args=(port, args.clients, ready, stop), daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while (len(conns) < args.clients or not ready.is_set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if len(conns) < args.clients:
            raise RuntimeError(f"only {len(conns)} of {args.clients} clients connected")
        paths = {"broadcast()": library, "raw frame": raw_frame}
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
        for _ in range(args.repeat):
            for name, fn in paths.items():
                # let the previous run's bytes drain so both paths start from empty write buffers
                while any(c.transport.get_write_buffer_size() for c in conns):
                    await asyncio.sleep(0.01)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.messages):
                    for c in conns:
                        fn(c, PAYLOAD)
                w1, c1 = time.perf_counter(), time.process_time()
                n = args.messages * len(conns)
                runs[name].append(((w1 - w0) / n * 1e9, (c1 - c0) / n * 1e9))
                await asyncio.sleep(0)
        done.set()
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()
    return {name: {"wall_ns_per_msg": statistics.median(r[0] for r in rs),
                   "cpu_ns_per_msg": statistics.median(r[1] for r in rs)} for name, rs in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load = os.getloadavg()
    result = {"clients": args.clients, "messages": args.messages, "repeat": args.repeat,
              "payload_bytes": len(PAYLOAD), "loadavg": load, "paths": asyncio.run(_run(args))}
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.clients} connections x "
          f"{args.messages} messages of {len(PAYLOAD)} bytes, median of {args.repeat}")
    print(f"{'path':<14} {'wall ns/msg':>12} {'cpu ns/msg':>12}")
    for name, r in result["paths"].items():
        print(f"{name:<14} {r['wall_ns_per_msg']:>12,.0f} {r['cpu_ns_per_msg']:>12,.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
