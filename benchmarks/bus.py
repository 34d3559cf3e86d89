"""PUB -> SUB throughput, loss and latency over ipc and tcp, using the real bus helpers.

    python benchmarks/bus.py                 # all scenarios
    python benchmarks/bus.py --quick         # smaller counts

Publisher and subscriber are separate OS processes (like the mesh). The subscriber runs
the production path: ``SubscriberCore.accept`` (envelope decode, sequence check) and a
full typed body decode of every frame. Scenarios:

* throughput, one tick per frame and 1,000 ticks per frame: frames/s, ticks/s, lost
  frames (sequence gaps), p50/p99 publish-to-receive latency;
* paced 10,000 ticks/s with the publisher batching per millisecond: p50/p99 latency.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time

import zmq

from spx_common.bus import Publisher, SubscriberCore
from spx_common.models import Quote, Trade


def _ticks(n: int, t0: int) -> list:
    out = []
    for i in range(n):
        if i % 2:
            out.append(Trade(sym="SPY", price=590.0 + (i % 50) * 0.01, size=100, ts=t0 + i, seq=i))
        else:
            out.append(Quote(sym="SPY", bid=590.0, ask=590.02, bid_size=300, ask_size=400, ts=t0 + i, seq=i))
    return out


def subscriber(endpoint: str, expect_ticks: int, timeout_s: float, q: mp.Queue, ready: mp.Event) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 2_000_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"tick.")
    sock.connect(endpoint)
    core = SubscriberCore("bench")
    ready.set()
    ticks = frames = 0
    lat: list[int] = []
    first = None
    deadline = time.monotonic() + timeout_s
    recv = sock.recv_multipart
    while ticks < expect_ticks and time.monotonic() < deadline:
        if not sock.poll(200):
            continue
        while True:
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            frame = core.accept(parts)
            if frame is None:
                continue
            now = time.time_ns()
            if first is None:
                first = time.perf_counter()
            body = frame.body()
            ticks += len(body)
            frames += 1
            if frames % 16 == 0 or len(body) > 1:
                lat.append(now - frame.pub_ns)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    q.put({"ticks": ticks, "frames": frames, "elapsed": elapsed, "lost": core.lost.total(), "lat": lat})
    sock.close(0)
    ctx.term()


def run(endpoint: str, total_ticks: int, per_frame: int, pace_tps: float | None = None) -> dict:
    q: mp.Queue = mp.Queue()
    ready = mp.Event()
    proc = mp.Process(target=subscriber, args=(endpoint, total_ticks, 60.0, q, ready))
    proc.start()
    ctx = zmq.Context()
    pub = Publisher(ctx, endpoint, "bench", hwm=2_000_000)
    ready.wait(10)
    time.sleep(0.5)  # slow-joiner: let the subscription propagate
    t0 = time.time_ns()
    if pace_tps is None:
        ticks = _ticks(per_frame, t0)
        for _ in range(total_ticks // per_frame):
            pub.publish("tick.SPY", "ticks", ticks, t0)
    else:
        # batch whatever accumulated each millisecond, as the feed does
        start = time.perf_counter()
        sent = 0
        while sent < total_ticks:
            due = int((time.perf_counter() - start) * pace_tps)
            n = min(due - sent, total_ticks - sent)
            if n > 0:
                pub.publish("tick.SPY", "ticks", _ticks(n, t0), t0)
                sent += n
            time.sleep(0.001)
    res = q.get(timeout=90)
    proc.join(10)
    pub.close()
    ctx.destroy(linger=0)
    lat = sorted(res.pop("lat")) or [0]
    res["p50_ms"] = lat[len(lat) // 2] / 1e6
    res["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    args = ap.parse_args()
    scale = 0.2 if args.quick else 1.0
    tmp = tempfile.mkdtemp(prefix="spxbus-")
    endpoints = {"ipc": f"ipc://{tmp}/bench.pub", "tcp": "tcp://127.0.0.1:47399"}
    print(f"bus benchmark (pid {os.getpid()}, {os.cpu_count()} cores)")
    print(f"{'transport':<6} {'scenario':<28} {'frames/s':>12} {'ticks/s':>12} {'lost':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for name, ep in endpoints.items():
        for label, total, per_frame, pace in (
            ("1 tick/frame", int(300_000 * scale), 1, None),
            ("1000 ticks/frame", int(3_000_000 * scale), 1000, None),
            ("10k ticks/s, batch per ms", int(50_000 * scale), 0, 10_000.0),
        ):
            r = run(ep, total, per_frame, pace)
            fps = r["frames"] / r["elapsed"] if r["elapsed"] else 0
            tps = r["ticks"] / r["elapsed"] if r["elapsed"] else 0
            if pace:
                fps, tps = r["frames"] / (total / pace), pace
            print(f"{name:<6} {label:<28} {fps:>12,.0f} {tps:>12,.0f} {int(r['lost']):>6} "
                  f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}   received {r['ticks']:,}/{total:,} ticks")


if __name__ == "__main__":
    main()
