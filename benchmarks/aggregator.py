"""Aggregator throughput: frames in (decoding included) -> cache + 1s/5s microbars -> bar frames out.

    python benchmarks/aggregator.py [--events 800000]

1. The live aggregation loop in one process on one core: pre-encoded ``tick.<sym>`` frames
   (a realistic mix from the synthetic session: SPY trades and quotes, I:SPX values, SPXW option
   quotes, batched per symbol as the feed does) go through ``SubscriberCore.accept`` as the service's
   (``lazy_ticks``: envelope header, sequence check), then what ``dispatch`` does for the aggregator's raw
   ``tick.`` handler: ``Aggregator.on_ticks(frame, None)`` (the bar core parses the body: bars + tick
   cache), and the encoding and sending of closed bars on a real PUB socket. Which core ran (compiled
   ``TickCore`` or ``PyTickCore``) is printed.
2. ``spx bars`` on a day of flat files of the same size (CSV read + merge + bars + CSV write).
3. With ``--reference-python PY`` (an interpreter that has ``nautilus_trader``): NautilusTrader's compiled
   1s time-bar aggregator on the same machine, right after (``benchmarks/nautilus_reference.py``), and the
   ratio: the target (750k) is set against its 1.2-1.4 M ticks/s, and this machine's speed varies 2x.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from services.aggregator.config import AggregatorConfig
from services.aggregator.service import Aggregator
from services.feed.synthetic import SyntheticSession
from spx_common.bus import SubscriberCore
from spx_common.codec import encode_payload
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import Quote, Trade
from spx_common.topics import tick_topic


def make_events(n: int) -> list:
    session = SyntheticSession(seed=11, spy_trades_per_s=40.0, spy_quotes_per_s=60.0, option_quote_every_s=0.5)
    out = []
    for ev in session.events():
        out.append(ev)
        if len(out) >= n:
            break
    return out


def frames_for(events: list, batch: int = 50, by_root: bool = True) -> tuple[list[list[bytes]], int]:
    """Group consecutive events per topic into frames of ``batch`` events, like the feed's batches:
    ``tick.<sym>``, and ``tick.O:<root>`` for options (``by_root=False``: one contract per frame, as the
    feed published before 7524d31); (frames, events framed)."""
    frames, seqs, pending, count = [], {}, {}, 0
    for ev in events:
        topic = tick_topic(ev.sym) if by_root else f"tick.{ev.sym}"
        buf = pending.setdefault(topic, [])
        buf.append(ev)
        if len(buf) >= batch:
            seqs[topic] = seqs.get(topic, 0) + 1
            frames.append([topic.encode(), encode_payload("ticks", buf, src="feed", session="b", seq=seqs[topic],
                                                          event_ns=buf[-1].ts)])
            count += len(buf)
            pending[topic] = []
    return frames, count


def bench_loop(frames: list[list[bytes]], n_events: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="spxagg-"))
    svc = Aggregator(RuntimeConfig(run_dir=tmp), BusConfig(),
                     config=AggregatorConfig(warmup_from_journal=False))
    svc.open_sockets()
    core = SubscriberCore("bench", lazy_ticks=svc.lazy_ticks)
    accept, on_ticks = core.accept, svc.on_ticks
    t0 = time.perf_counter()
    for parts in frames:
        frame = accept(parts)
        on_ticks(frame, None)  # dispatch's call of a raw handler
    dt = time.perf_counter() - t0
    assert svc.events_in.total() == n_events and not core.bad.total(), "frames refused or events not aggregated"
    bars = sum(svc.bars_out._series.values())
    print(f"live loop: {n_events:,} events in {len(frames):,} frames: {dt:.2f}s = {n_events / dt:,.0f} events/s "
          f"(header + bar core: bars + cache holds + publish; {int(bars):,} closed bars)")
    svc.pub.close()
    svc.rpc_server.close()
    if svc.sub is not None:  # the service's SUB socket, or context termination waits for it
        svc.sub.close()
    svc.ctx.destroy(linger=0)
    return n_events / dt


def bench_spx_bars(events: list) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="spxbars-"))
    tp, qp = tmp / "trades.csv.gz", tmp / "quotes.csv.gz"
    with gzip.open(tp, "wt", newline="") as ft, gzip.open(qp, "wt", newline="") as fq:
        wt, wq = csv.writer(ft), csv.writer(fq)
        wt.writerow("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
                    "sip_timestamp,size,tape,trf_id,trf_timestamp".split(","))
        wq.writerow("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                    "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp".split(","))
        n = 0
        for e in events:
            if type(e) is Trade:
                wt.writerow([e.sym, "12", 0, e.exch, n, e.ts, e.price, n, e.ts, e.size, 1, 0, 0])
            elif type(e) is Quote:
                wq.writerow([e.sym, 12, e.ask, e.ask_size, 11, e.bid, e.bid_size, 1, "", e.ts, n, e.ts, 1, 0])
            else:
                continue
            n += 1
    from services.cli.main import main as spx

    t0 = time.perf_counter()
    spx(["bars", "--trades", str(tp), "--quotes", str(qp), "--interval", "1s", "--out", str(tmp / "bars.csv"),
         "--quiet"])
    dt = time.perf_counter() - t0
    print(f"spx bars: {n:,} flat-file rows (gzip CSV) -> {tmp / 'bars.csv'} in {dt:.2f}s = {n / dt:,.0f} rows/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=800_000)
    ap.add_argument("--repeat", type=int, default=3, help="live-loop runs (each on a new aggregator)")
    ap.add_argument("--per-contract", action="store_true",
                    help="one option contract per frame (the feed's framing before tick.O:<root> batches)")
    ap.add_argument("--reference-python", metavar="PY",
                    help="interpreter with nautilus_trader: also run benchmarks/nautilus_reference.py")
    args = ap.parse_args()
    print(f"generating {args.events:,} synthetic events ...", file=sys.stderr)
    events = make_events(args.events)
    frames, framed = frames_for(events, by_root=not args.per_contract)
    print(f"aggregator benchmark (pid {os.getpid()}, {os.cpu_count()} cores)")
    from services.aggregator.bars import COMPILED, BarAggregator

    print(f"bar core: {BarAggregator.__module__}.{BarAggregator.__name__}, COMPILED={COMPILED} "
          f"({'Cython' if COMPILED else 'pure Python: not compiled, pip install -e . needs a C compiler'})")
    best = max(bench_loop(frames, framed) for _ in range(args.repeat))
    print(f"live loop best of {args.repeat}: {best:,.0f} events/s")
    bench_spx_bars(events)
    if args.reference_python:
        out = subprocess.run([args.reference_python, str(Path(__file__).with_name("nautilus_reference.py"))],
                             capture_output=True, text=True, timeout=600)
        lines = out.stdout.strip().splitlines()
        print(lines[0] if lines and out.returncode == 0 else f"reference failed: {out.stderr.strip()[-500:]}")
        if out.returncode == 0 and lines[-1].startswith("ticks_per_s="):
            rate = int(lines[-1].split("=")[1])
            print(f"ratio live loop / nautilus: {best / rate:.2f} (target 750k vs 1.2-1.4 M: 0.54-0.63)")


if __name__ == "__main__":
    main()
