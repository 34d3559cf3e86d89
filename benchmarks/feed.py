"""Feed hot path: vendor JSON arrays in, normalized ``ticks`` frames out (``tick.<sym>``, ``tick.O:<root>``), on one core.

    python benchmarks/feed.py [--events 300000] [--array 50]

Builds realistic Massive frames (JSON arrays of ``--array`` mixed SPY/SPXW/I:SPX trades, quotes
and index values, from the synthetic session), then times each stage and the whole path:
parse (msgspec JSON -> models), pipeline (dedupe + order guard + per-symbol grouping) and
frame encoding (``codec.encode_payload`` per symbol group, what ``Publisher.publish`` sends).
Target: >= 300,000 events/s end to end.

``--ws`` also measures the running service: the fake Massive server (spx_testing/fakes/massive.py)
sends the same frames over a real loopback WebSocket to a real ``FeedService`` (own thread and
event loop, journal on) and a ZeroMQ subscriber counts the events that come out on ``tick.*``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import msgspec

from spx_common import codec
from services.feed.parsing import MassiveParser, to_wire
from services.feed.pipeline import TickPipeline
from services.feed.synthetic import SyntheticSession


def frames(n_events: int, per_array: int) -> list[bytes]:
    evs = list(itertools.islice(SyntheticSession(seed=11).events(), n_events))
    for i, ev in enumerate(evs):  # vendor sequence numbers, so dedupe uses the (sym, seq) key
        if hasattr(ev, "seq"):
            ev.seq = i + 1
    enc = msgspec.json.Encoder()
    return [enc.encode([to_wire(e) for e in evs[i:i + per_array]]) for i in range(0, len(evs), per_array)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--array", type=int, default=50, help="events per vendor frame")
    ap.add_argument("--ws", action="store_true", help="also measure the service over a real WebSocket")
    args = ap.parse_args()
    raw = frames(args.events, args.array)
    n = sum(1 for _ in itertools.islice(SyntheticSession(seed=11).events(), args.events))
    print(f"{len(raw):,} vendor frames, {n:,} events, {sum(map(len, raw)) / n:.0f} JSON bytes/event")

    parser = MassiveParser()
    t0 = time.perf_counter()
    parsed = [parser.parse(r)[0] for r in raw]
    t_parse = time.perf_counter() - t0

    pipe = TickPipeline()
    t0 = time.perf_counter()
    grouped = [pipe.process(b) for b in parsed]
    t_pipe = time.perf_counter() - t0

    t0 = time.perf_counter()
    seq = 0
    for groups in grouped:
        for _sym, evs in groups:
            seq += 1
            codec.encode_payload("ticks", evs, src="feed", session="bench", seq=seq, event_ns=evs[-1].ts)
    t_enc = time.perf_counter() - t0

    # the whole path again, fresh state, as the feed runs it
    parser, pipe = MassiveParser(), TickPipeline()
    t0 = time.perf_counter()
    seq = 0
    for r in raw:
        for _sym, evs in pipe.process(parser.parse(r)[0]):
            seq += 1
            codec.encode_payload("ticks", evs, src="feed", session="bench", seq=seq, event_ns=evs[-1].ts)
    t_all = time.perf_counter() - t0
    assert not parser.errors and pipe.accepted == n, (parser.errors, pipe.drops)

    for label, t in (("parse (JSON -> models)", t_parse), ("pipeline (dedupe, guard, group)", t_pipe),
                     ("frame encode (msgpack envelope)", t_enc), ("end to end", t_all)):
        print(f"{label:<36} {t / n * 1e6:7.3f} us/event  {n / t:>12,.0f} events/s")
    journal_figures([ev for b in parsed for ev in b])
    if args.ws:
        ws_figures(raw, n)


def journal_figures(events: list) -> None:
    """Tick journal: caller-side append cost, background write throughput, read-back speed, size."""
    import os
    import shutil
    import tempfile

    from spx_common.journal import JournalWriter, iter_events

    d = tempfile.mkdtemp(prefix="spx-journal-bench-")
    try:
        w = JournalWriter(d, flush_interval_s=0.25, max_pending=len(events) + 1)
        t0 = time.perf_counter()
        for i in range(0, len(events), 50):
            w.append(events[i:i + 50])
        t_append = time.perf_counter() - t0
        w.close()
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_events(d))
        t_read = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{'journal append (hot path)':<36} {t_append / n * 1e6:7.3f} us/event  {n / t_append:>12,.0f} events/s")
    print(f"{'journal write (thread, until closed)':<36} {t_write / n * 1e6:7.3f} us/event  {n / t_write:>12,.0f} events/s")
    print(f"{'journal read (iter_events)':<36} {t_read / n * 1e6:7.3f} us/event  {n / t_read:>12,.0f} events/s")
    print(f"journal size: {size / n:.0f} bytes/event")



def ws_figures(raw: list[bytes], n: int) -> None:
    """Fake vendor -> WebSocket -> feed process -> ZeroMQ -> subscriber: events/s through all of it.

    The feed runs as its own process (``python -m services.feed``, journal on), as under supervisord;
    the fake server and the subscriber share this process.
    """
    import os
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    import zmq

    from spx_common.bus import Subscriber
    from spx_common.config import BusConfig, RuntimeConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from spx_testing import ServiceProcess
    from spx_testing.fakes.massive import FakeMassive

    run_dir = Path(tempfile.mkdtemp(prefix="spx-feed-bench-"))
    runtime, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    with FakeMassive(api_key="bench") as fake:
        env = dict(SPX_RUNTIME_RUN_DIR=str(run_dir), MASSIVE_API_KEY="bench", MASSIVE_WS_URL=fake.ws_url,
                   MASSIVE_REST_URL=fake.rest_url, SPX_FEED_POLL_AFTER_S="3600", SPX_FEED_CHAIN_EVERY_S="3600",
                   SPX_FEED_BACKFILL="false", SPX_FEED_RAW_QUEUE_MAX="100000", SPX_FEED_JOURNAL="on",
                   SPX_RUNTIME_LOG_LEVEL="WARNING")
        prof = os.environ.get("FEED_BENCH_PROFILE")  # a path: profile the feed process with cProfile
        cmd = [sys.executable, "-m", "cProfile", "-o", prof, "-m", "services.feed"] if prof else \
            [sys.executable, "-m", "services.feed"]
        proc = ServiceProcess(cmd, name="feed", env=env, stop_timeout_s=15)
        ctx = zmq.Context()
        sub = Subscriber(ctx, [bus.pub_endpoint("feed", runtime)], ["tick."])
        try:
            with proc:
                proc.wait_ready(lambda: fake.subscribed("stocks", "T.SPY"), 30, "the feed subscribed T.SPY")
                time.sleep(1.5)  # subscriber connected (slow joiner)
                texts = [r.decode() for r in raw]

                async def blast() -> None:
                    for c in fake._live("stocks"):
                        for text in texts:
                            await c.ws.send(text)

                got = frames_in = 0
                cpu0 = _cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                fake._call(blast, timeout_s=120)
                t_sent = time.perf_counter() - t0
                deadline = time.monotonic() + 120
                while got < n and time.monotonic() < deadline:
                    f = sub.recv(1.0)
                    if f is not None:
                        got += len(f.body())
                        frames_in += 1
                dt = time.perf_counter() - t0
                cpu_s = _cpu_seconds(proc.pid) - cpu0
        finally:
            sub.close()
            ctx.destroy(linger=0)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{'feed process: WebSocket in, ZeroMQ out':<36} {dt / max(got, 1) * 1e6:7.3f} us/event  {got / dt:>12,.0f} "
          f"events/s  ({got:,}/{n:,} events in {frames_in:,} tick frames; fake server sent all in {t_sent:.2f} s)")
    print(f"{'  feed process CPU per event':<36} {cpu_s / max(got, 1) * 1e6:7.3f} us/event  "
          f"{got / max(cpu_s, 1e-9):>12,.0f} events per CPU-second")


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
