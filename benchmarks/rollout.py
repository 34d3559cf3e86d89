"""Cost of the tick_fanout switch in the gateway's pure hub (no sockets): how long a policy change
takes with many price subscribers, what one poll-cadence pass costs, and the tick path with the
policy on 'all' versus an allow-list (A/B in one run).

    python benchmarks/rollout.py                      # 5,000 clients on 50 symbols
    python benchmarks/rollout.py --clients 20000 --symbols 200
"""

from __future__ import annotations

import argparse
import statistics
import time

from services.gateway.hub import Client, Hub
from spx_common.models import Trade

T0 = 1_771_599_600_000_000_000


def build(clients: int, symbols: int, fanout: str) -> tuple[Hub, list[Client]]:
    hub = Hub(price_throttle_s=0, poll_cadence_s=1.0, fanout=fanout, max_symbols=max(symbols, 10))
    cs = []
    for i in range(clients):
        c = Client(i, f"u{i}", 1_000_000)
        hub.subscribe(c, f"price:S{i % symbols}")
        cs.append(c)
    return hub, cs


def drain(cs: list[Client]) -> None:
    for c in cs:
        while c.pop() is not None:
            pass


def tick_path(hub: Hub, cs: list[Client], symbols: int, n: int) -> float:
    """Mean microseconds per on_ticks call (fan-out to the tick-stream subscribers)."""
    t0 = time.perf_counter()
    for i in range(n):
        hub.on_ticks(f"S{i % symbols}", [Trade(sym=f"S{i % symbols}", price=600 + i % 7, size=1, ts=T0 + i)], 0, 0.0)
        if i % 200 == 0:
            drain(cs)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--ticks", type=int, default=20_000)
    args = ap.parse_args()
    half = ",".join(f"u{i}" for i in range(0, args.clients, 2))

    hub, cs = build(args.clients, args.symbols, "all")
    tick_path(hub, cs, args.symbols, 200)
    flips = []
    for value in ("none", "all", half, "all") * 3:
        t0 = time.perf_counter()
        moved = hub.set_fanout(value)
        flips.append(((time.perf_counter() - t0) * 1000, moved))
        drain(cs)
    full = [ms for ms, moved in flips if moved == args.clients]
    print(f"set_fanout, {args.clients} price subscribers on {args.symbols} symbols: "
          f"all<->none (every subscriber moved, snapshot queued) median {statistics.median(full):.1f} ms")

    hub.set_fanout("none")
    drain(cs)
    passes = []
    for k in range(20):
        for s in range(args.symbols):
            hub.on_ticks(f"S{s}", [Trade(sym=f"S{s}", price=600 + k, size=1, ts=T0 + k * 10**9 + s)], 0, 0.0)
        t0 = time.perf_counter()
        hub.poll_prices()
        passes.append((time.perf_counter() - t0) * 1000)
        drain(cs)
    print(f"poll_prices pass ({args.symbols} symbols changed, {args.clients} poll subscribers): "
          f"median {statistics.median(passes):.2f} ms per cadence")

    rows = []
    for label, value in (("all", "all"), ("allow-list (half)", half), ("all", "all"), ("allow-list (half)", half)):
        hub.set_fanout(value)
        drain(cs)
        rows.append((label, tick_path(hub, cs, args.symbols, args.ticks)))
    for label in ("all", "allow-list (half)"):
        us = [v for lab, v in rows if lab == label]
        print(f"on_ticks with tick_fanout={label:<18} {min(us):.1f} us/call (best of {len(us)}; "
              f"{args.clients // args.symbols} or half as many tick subscribers per symbol)")


if __name__ == "__main__":
    main()
