"""Tick ingest to setup transition published, on the real processes, at a steady event rate.

    python benchmarks/lifecycle.py                      # 10,000 events/s for 30 s
    python benchmarks/lifecycle.py --rate 20000 --seconds 15
    python benchmarks/lifecycle.py --feed massive        # the real feed on the fake Massive WebSocket

Real ``services.aggregator`` and ``services.detector`` processes run in a private run directory;
this process is the feed: it binds the feed's endpoint and publishes ``tick.<sym>`` frames (trades
and quotes, 10 events per frame, four symbols) whose event time ``ts`` is the wall-clock time of
publication — the moment the tick enters the mesh (ingest). The aggregator turns them into 1s bars,
the detector runs a probe plugin (``benchmarks/lifecycle_plugin.py``: a long and a short setup per
closed bar) and evaluates every tick against the active setups; a price sawtooth moves them through
ready, triggered, targets and stops. A subscriber here receives every ``setup.transition``; its
latency is receipt time minus the ``ts`` of the tick that caused it (a transition carries that
tick's event time). Target: p99 under 10 ms at 10,000 events/s. Every wait is bounded.

``--feed massive`` puts the real ``services.feed`` process in front (``source=live``) on the fake
Massive WebSocket (``spx_testing/fakes/massive.py``) streaming SPY trades and quotes at the rate; ingest is
then the vendor time ``t`` of the tick (the millisecond the fake sent it, truncated: the figure
over-states by up to 1 ms), and the detector's own histogram (feed publish -> transition publish)
is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import Quote, Trade, Watermark
from spx_common.topics import watermark_topic
from spx_testing import Processes, ProcessFailed

ROOT = Path(__file__).resolve().parents[1]
SYMS = ["SPY", "QQQ", "IWM", "DIA"]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second (default 10000)")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to stream (default 30)")
    ap.add_argument("--batch", type=int, default=10, help="events per tick frame (default 10)")
    ap.add_argument("--feed", choices=("bench", "massive"), default="bench",
                    help="bench: this process publishes tick frames as the feed; massive: the real feed "
                         "process on the fake Massive WebSocket")
    args = ap.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="spx-bench-lifecycle-"))
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = {"SPX_RUNTIME_RUN_DIR": str(run_dir), "PYTHONPATH": str(ROOT),
           "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "benchmarks.lifecycle_plugin",
           "SPX_DETECTOR_SYMBOLS": ",".join(SYMS), "SPX_DETECTOR_FAMILY_CAP": "1000",
           "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1", "SPX_DETECTOR_CONFIRM_MS": "50",
           "SPX_DETECTOR_RESTORE_SETUPS": "false", "SPX_DETECTOR_WARMUP": "false",
           "SPX_AGGREGATOR_INTERVALS": "1s",
           # wall-clock vendor times: the probe forms setups at any time of day (the regular-session rule
           # would leave an evening run with 0 transitions)
           "SPX_DETECTOR_EXTENDED_HOURS": "bench_probe"}
    fake = None
    names = ["aggregator", "detector"]
    if args.feed == "massive":
        from spx_testing.fakes.massive import FakeMassive, MarketMix

        fake = FakeMassive(api_key="bench-key")
        fake.start()
        env.update({"SPX_FEED_SOURCE": "live", "MASSIVE_API_KEY": "bench-key", "MASSIVE_WS_URL": fake.ws_url,
                    "MASSIVE_REST_URL": fake.rest_url, "SPX_FEED_JOURNAL": "off", "SPX_DETECTOR_SYMBOLS": "SPY",
                    "SPX_RUNTIME_LOG_LEVEL": "WARNING"})
        names.insert(0, "feed")
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0) if fake is None else None
    ps = Processes()
    for n in names:
        ps.service(n, env=env)
    sub = Subscriber(ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition"], heartbeats=True)
    det = RpcClient(ctx, bus.rep_endpoint("detector", rt), timeout_s=1.0, retries=0)
    agg = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1.0, retries=0)
    lat: list[float] = []
    bar_lat: list[float] = []
    states: dict[str, int] = {}
    try:
        def ready() -> bool:
            if feed is not None:
                feed.heartbeat(time.time_ns())
            sub.recv(0.05)
            try:
                return ("feed" in det.call("status")["peers"] and "feed" in agg.call("status")["peers"]
                        and "aggregator" in det.call("status")["peers"])
            except RpcError:
                return False

        try:
            ps["detector"].wait_ready(ready, 30, "the mesh hears itself", 0.2)
        except ProcessFailed as exc:
            print(f"processes did not come up: {exc}", file=sys.stderr)
            return 1
        if fake is not None:
            fake.wait_subscribed("stocks", "T.SPY", 30)
        frame_every = args.batch / args.rate
        n_frames = int(args.seconds * args.rate / args.batch)
        print(f"streaming {args.rate:,} events/s for {args.seconds:.0f} s " + (
              f"({n_frames:,} frames of {args.batch}) over {len(SYMS)} symbols ..." if fake is None else
              "of SPY trades and quotes from the fake Massive WebSocket ..."), file=sys.stderr)
        t_start = time.perf_counter()
        sent = 0
        stop = threading.Event()

        def receive() -> None:  # its own thread: receipt time is never delayed by publishing
            while not stop.is_set():
                f = sub.recv(0.05)
                if f is not None and f.topic == "setup.transition":
                    now = time.time_ns()
                    tr = f.body()
                    states[tr.to_state] = states.get(tr.to_state, 0) + 1
                    if tr.to_state == "forming":  # caused by a closed bar (ts = bar start), not a tick
                        bar_lat.append((now - tr.ts) / 1e6)
                    else:
                        lat.append((now - tr.ts) / 1e6)

        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        if fake is not None:
            handle = fake.stream("stocks", MarketMix([]).stocks, args.rate, args.seconds)
            handle.done.wait(args.seconds + 30)
            n_frames, sent = 0, handle.sent
            print(f"fake Massive: {handle.sent:,} events sent, {handle.unsent:,} unsent", file=sys.stderr)
        wm_topic = watermark_topic("feed")
        for i in range(n_frames):
            target = t_start + i * frame_every
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sym = SYMS[i % len(SYMS)]
            ts = time.time_ns()
            # sawtooth: 0.5 point up over 2.5 s, then down, per symbol
            phase = (ts / 1e9) % 5.0
            px = 100.0 + (phase if phase < 2.5 else 5.0 - phase) * 0.2
            evs = []
            for j in range(args.batch):
                if j % 2:
                    evs.append(Quote(sym=sym, bid=px - 0.01, ask=px + 0.01, bid_size=100, ask_size=100, ts=ts))
                else:
                    evs.append(Trade(sym=sym, price=px, size=1, ts=ts))
            feed.publish(f"tick.{sym}", "ticks", evs, ts)
            # as the real feed does after each batch: the detector and aggregator align ticks and bars in
            # event time and hold what no watermark has passed (without it: 0 transitions)
            feed.publish(wm_topic, "watermark", Watermark(ns=ts), ts)
            sent += len(evs)
        elapsed = time.perf_counter() - t_start
        time.sleep(1.0)
        stop.set()
        rx.join(5)
        print(f"events sent: {sent:,} in {elapsed:.1f} s = {sent / elapsed:,.0f} events/s")
        print(f"transitions received: {len(lat) + len(bar_lat):,}  by state: {dict(sorted(states.items()))}")
        print(f"tick ingest -> transition received ({len(lat)} tick-caused): p50 {pct(lat, 0.5):.2f} ms  "
              f"p90 {pct(lat, 0.9):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  max {max(lat, default=float('nan')):.2f} ms"
              f"  (target p99 < 10 ms)")
        print(f"bar start -> forming received ({len(bar_lat)}, includes the 1 s bar itself and its close): "
              f"p50 {pct(bar_lat, 0.5):.0f} ms  p99 {pct(bar_lat, 0.99):.0f} ms")
        try:
            text = det.call("metrics")
            text = text if isinstance(text, str) else str(text)
            for line in text.splitlines():
                if line.startswith(("setup_transition_latency_ms_count", "setup_transition_latency_ms_sum",
                                    "setup_transition_latency_ms_bucket",
                                    "spx_frames_dropped", "frames_dropped", "bus_gap")):
                    print("detector metric:", line)
        except RpcError:
            pass
        return 0
    finally:
        ps.stop_all()
        for s in (sub, det, agg, feed):
            if s is not None:
                s.close()
        ctx.destroy(linger=0)
        if fake is not None:
            fake.stop()


if __name__ == "__main__":
    raise SystemExit(main())
