"""Selector ``select`` REQ/REP round trips per second and latency for a 200-strike chain (400 contracts).

    python benchmarks/selector.py            # 2,000 requests per scenario
    python benchmarks/selector.py --n 500

The server is a separate OS process running the production request path: ``RpcServer`` over ipc
with ``SelectorCore.select_request`` (request validation, cache, chain filters, delta targeting,
Black-Scholes risk repricing, sizing). The chain comes from the synthetic session generator with 100
strikes each side of the money, plus one live quote per request round so greeks stay fresh.
Scenarios: ``cached`` (same setup and risk context: cache hit after the first), ``adhoc`` (cache
bypassed: a full selection every request), and ``pure`` (``select()`` in-process, no sockets).
Target: p99 under 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import zmq

from services.feed.synthetic import SyntheticSession

T_OFFSET_NS = 3600 * 10**9


def _core():
    from services.selector.config import SelectorConfig
    from services.selector.core import SelectorCore

    s = SyntheticSession(seed=7, strikes_each_side=100)
    t = s.open_ns + T_OFFSET_NS
    core = SelectorCore(SelectorConfig())
    core.on_chain_doc({"ts": t, "root": "SPXW", "underlying": s.spot(s.sim_seconds(t)), "contracts": s.chain(t)})
    core.refresh()
    return core


def server(endpoint: str, ready) -> None:
    import zmq.asyncio

    from spx_common.bus import RpcServer

    core = _core()

    async def run() -> None:
        stop = asyncio.Event()
        srv = RpcServer(zmq.asyncio.Context(), endpoint, linger_ms=0)
        srv.register("select", core.select_request)
        srv.register("info", lambda p: {"contracts": len(core.chain.contracts), "underlying": core.chain.underlying})
        srv.register("stop", lambda p: stop.set() or {"stopped": True})
        ready.set()
        await srv.serve(stop)
        srv.close()

    asyncio.run(run())


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    from spx_common.bus import RpcClient

    d = tempfile.mkdtemp(prefix="spxbench-")
    endpoint = f"ipc://{os.path.join(d, 'selector.sock')}"
    ready = mp.Event()
    proc = mp.Process(target=server, args=(endpoint, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise SystemExit("server did not start")
        ctx = zmq.Context()
        client = RpcClient(ctx, endpoint, timeout_s=5.0, retries=0)
        info = client.call("info", {})
        spot = info["underlying"]
        risk = {"maxRiskDollars": 1000, "dayTradeBuyingPower": 50_000}
        print(f"chain: {info['contracts']} contracts (200+ strikes), spot {spot:.2f}; {args.n} requests per scenario")
        for name, adhoc in (("cached", False), ("adhoc", True)):
            params = {"setup": {"setup_id": "bench", "direction": "long", "entry": spot, "stop": spot - 8},
                      "risk": risk, "regime": "trending", "adhoc": adhoc}
            for _ in range(50):
                client.call("select", params)
            lat = []
            t0 = time.perf_counter()
            for _ in range(args.n):
                a = time.perf_counter()
                r = client.call("select", params)
                lat.append((time.perf_counter() - a) * 1000)
            el = time.perf_counter() - t0
            assert r["ok"], r["reason"]
            print(f"{name:>7}: {args.n / el:8.0f} round trips/s  p50 {statistics.median(lat):.3f} ms  "
                  f"p99 {_pct(lat, 0.99):.3f} ms  max {max(lat):.3f} ms")
        client.call("stop", {})
        client.close()
        ctx.destroy(linger=0)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    from services.selector.select import RiskContext, SetupSpec, select

    core = _core()
    setup = SetupSpec(setup_id="b", direction="long", entry=core.chain.underlying, stop=core.chain.underlying - 8)
    rc = RiskContext(maxRiskDollars=1000, dayTradeBuyingPower=50_000)
    now = core.clock.now_ns()
    lat = []
    for _ in range(args.n):
        a = time.perf_counter()
        select(setup, core.chain, "trending", rc, core.policy, now)
        lat.append((time.perf_counter() - a) * 1000)
    print(f"   pure: {1000 / statistics.mean(lat):8.0f} selections/s  p50 {statistics.median(lat):.3f} ms  "
          f"p99 {_pct(lat, 0.99):.3f} ms  (select() alone, 400 contracts)")


if __name__ == "__main__":
    main()
