"""Aggregator restart: ``Aggregator.warm_up()`` on a day journal larger than its bound vs the whole day.

    python benchmarks/aggregator_warmup.py [--day-mb 1024] [--bound-mb 256] [--batch 20] [--dir DIR]

1. Writes one synthetic trading day (``services.feed.synthetic.SyntheticSession`` at dense rates: SPY
   trades and quotes, I:SPX values, 242 SPXW contracts quoted every 0.1 s) with ``JournalWriter``, in
   records of ``--batch`` consecutive events of several symbols (one vendor batch per record, as the
   feed journals), until the day holds ``--day-mb`` MiB (parts of ``--part-mb``).
2. Times ``warm_up()`` of a new aggregator in a fresh process (default config, the compiled bar core
   when built): with ``warmup_max_mb`` = ``--bound-mb`` (the default: ``cache_max_mb``, 256), with a
   bound above the day's size (the whole day), and the warm-up as it was before the bound (every part
   read whole, each record's symbols cached apart); reports bytes, events, the event-time span read,
   wall and CPU seconds (CPU time is the steadier figure on a shared machine) and the peak RSS (the
   mapped journal pages count in it).

The journal was just written, so it is in the page cache, as it is when the aggregator restarts during
the day; a cold disk adds its read time (256 MiB at the disk's sequential rate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_day(directory: Path, day_mb: int, batch: int, part_mb: int, strikes: int) -> tuple[int, int]:
    """A synthetic day of about ``day_mb`` MiB in ``directory`` (or the whole session); (events, bytes)."""
    from services.feed.synthetic import SyntheticSession
    from spx_common.journal import JournalWriter, journal_files

    session = SyntheticSession(seed=11, spy_trades_per_s=40.0, spy_quotes_per_s=60.0, option_quote_every_s=0.1,
                               strikes_each_side=strikes)
    writer = JournalWriter(directory, flush_interval_s=3600, max_pending=10_000_000, max_file_bytes=part_mb << 20)
    target, events, buf, appended = day_mb << 20, 0, [], 0

    def size() -> int:
        return sum(f.stat().st_size for f in journal_files(directory)) if directory.exists() else 0

    for ev in session.events():
        buf.append(ev)
        if len(buf) < batch:
            continue
        assert writer.append(buf)
        events += len(buf)
        buf, appended = [], appended + 1
        if appended % 2_000 == 0:
            writer.flush()
            if size() >= target:
                break
    writer.close()
    return events, size()


def legacy_warm_up(svc) -> dict:
    """The warm-up as it was before ``warmup_max_mb``: every part of the newest day read whole
    (``iter_batches``), each record's symbols added to the cache apart (``_cache_by_symbol``)."""
    from spx_common import journal

    files = journal.journal_files(svc.runtime.path("journal"))
    day = files[-1].name.split(".")[0]
    parts = [f for f in files if f.name.startswith(day)]
    stats = journal.ReadStats()
    for f in parts:
        for batch in journal.iter_batches(f, stats):
            svc._cache_by_symbol(batch)
            svc.agg.on_events(batch)
    for _ in svc.agg.drain():
        pass
    return {"state": "whole day, before", "bytes": sum(f.stat().st_size for f in parts), "events": stats.events,
            "span_s": float("nan"), "resynced": False}


def measure(run_dir: Path, bound_mb: int) -> dict:
    """One warm-up in this process (called in a fresh process by :func:`main`); ``bound_mb`` 0: the warm-up
    as it was before the bound."""
    from services.aggregator.config import AggregatorConfig
    from services.aggregator.service import Aggregator
    from spx_common.config import BusConfig, RuntimeConfig

    svc = Aggregator(RuntimeConfig(run_dir=run_dir), BusConfig(),
                     config=AggregatorConfig(warmup_from_journal=False, warmup_max_mb=bound_mb or None))
    t0, c0 = time.perf_counter(), time.process_time()
    info = legacy_warm_up(svc) if bound_mb == 0 else None
    if info is None:
        svc.warm_up()
        info = dict(svc.warmup)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"bound_mb": bound_mb, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "bytes": info["bytes"],
            "events": info["events"], "span_s": info["span_s"], "resynced": info["resynced"], "state": info["state"],
            "cache_mb": round(svc.cache.bytes / (1 << 20), 1), "cache_events": svc.cache.size(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--day-mb", type=int, default=1024, help="size of the synthetic day (MiB)")
    ap.add_argument("--bound-mb", type=int, default=256, help="warmup_max_mb of the bounded run")
    ap.add_argument("--batch", type=int, default=20, help="events per journal record")
    ap.add_argument("--part-mb", type=int, default=512, help="journal part size (MiB)")
    ap.add_argument("--strikes", type=int, default=60, help="option strikes each side of the money (density)")
    ap.add_argument("--dir", type=Path, help="run directory (kept; an existing journal there is reused)")
    ap.add_argument("--measure", type=int, metavar="BOUND_MB", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.dir, args.measure)))
        return
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="spx-warmup-", dir="/tmp"))
    journal_dir = run_dir / "journal"
    if not any(journal_dir.glob("*.ticks")) if journal_dir.exists() else True:
        t0 = time.perf_counter()
        events, size = write_day(journal_dir, args.day_mb, args.batch, args.part_mb, args.strikes)
        print(f"wrote {events:,} events, {size / (1 << 20):,.0f} MiB in {time.perf_counter() - t0:.0f} s "
              f"({run_dir})", file=sys.stderr)
    from services.aggregator.bars import COMPILED

    print(f"aggregator warm-up benchmark ({os.cpu_count()} cores, bar core "
          f"{'compiled' if COMPILED else 'pure Python'})")
    for bound in (args.bound_mb, 1 << 16, 0):
        out = subprocess.run([sys.executable, __file__, "--dir", str(run_dir), "--measure", str(bound)],
                             capture_output=True, text=True, timeout=3600, cwd=Path(__file__).parent.parent)
        if out.returncode != 0:
            print(f"bound {bound} MiB failed: {out.stderr.strip()[-800:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        what = {"whole_day": "whole day", "partial": f"tail ({bound} MiB bound)"}.get(r["state"], r["state"])
        print(f"{what:>22}: {r['bytes'] / (1 << 20):7,.0f} MiB, {r['events']:>11,} events, "
              f"{r['span_s']:8,.0f} s of event time -> {r['seconds']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU "
              f"({r['events'] / max(r['cpu_s'], 1e-9) / 1e6:.2f} M events per CPU s), "
              f"peak RSS {r['peak_rss_mb']:,} MiB, cache {r['cache_mb']} MiB / {r['cache_events']:,} events")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
