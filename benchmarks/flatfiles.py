"""``spx bars`` on Massive flat files: rows/s of the object path (csv module, a msgspec object per row) and of
the columnar fast path (pyarrow streaming reader, ``feed_columns``), in one run, with their bars compared.

    python benchmarks/flatfiles.py [--day 2013-10-09] [--copies 8] [--repeat 3]

1. A real day (../shared/data/real: SPY and IBM trades and quotes, gzip CSV), every ticker, both paths.
2. A vendor-like file: every ticker in one gzip CSV per kind, sorted by ticker then time, made of the real
   day plus ``--copies`` renamed copies of it (other tickers), read with ``--symbol SPY --symbol IBM`` as a
   trader reads a whole-market file; the fast path always, the object path with ``--object`` (slow).
3. The same files as plain CSV (no inflate: gzip alone takes one core ~2.5M rows/s on this machine).

rows/s = rows read (every row of every file, selected or not) / wall time of ``spx bars`` in this process
(read, rules, merge, bars, CSV written). The best of ``--repeat`` runs: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from services.aggregator.bars import COMPILED
from services.cli import main as cli
from services.cli.commands import bars as bars_cmd

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")


def rows_of(paths) -> int:
    n = 0
    for p in paths:
        with gzip.open(p, "rb") as fh:
            n += sum(1 for _ in fh) - 1
    return n


def spx_bars(trades, quotes, out: Path, fast: bool, extra=()) -> float:
    real = bars_cmd._bars_columnar
    if not fast:
        bars_cmd._bars_columnar = lambda *a: None
    try:
        t0 = time.perf_counter()
        argv = ["bars", "--quiet", "--out", str(out), *extra]
        for p in trades:
            argv += ["--trades", str(p)]
        for p in quotes:
            argv += ["--quotes", str(p)]
        assert cli.main(argv) == 0
        return time.perf_counter() - t0
    finally:
        bars_cmd._bars_columnar = real


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def vendor_file(day: str, kind: str, copies: int, out: Path) -> Path:
    """One file of every ticker (real SPY and IBM plus renamed copies), sorted by ticker then time."""
    header, by_sym = None, {}
    for sym in ("SPY", "IBM"):
        with gzip.open(REAL / f"{day}-{kind}-{sym}.csv.gz", "rt", newline="") as fh:
            r = csv.reader(fh)
            header = next(r)
            by_sym[sym] = list(r)
    path = out / f"{day}-{kind}.csv.gz"
    with gzip.open(path, "wt", newline="", compresslevel=6) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        names = sorted([(s, s) for s in by_sym] + [(f"{s}{i}", s) for i in range(copies) for s in by_sym])
        for name, src in names:
            w.writerows([name, *row[1:]] for row in by_sym[src])
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--day", default="2013-10-09")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--object", action="store_true", help="also time the object path on the vendor-like file")
    args = ap.parse_args()
    print(f"bar core: {'compiled TickCore' if COMPILED else 'PyTickCore (plain Python)'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trades = [REAL / f"{args.day}-trades-{s}.csv.gz" for s in ("SPY", "IBM")]
        quotes = [REAL / f"{args.day}-quotes-{s}.csv.gz" for s in ("SPY", "IBM")]
        n = rows_of(trades + quotes)
        t_obj = best(lambda: spx_bars(trades, quotes, tmp / "object.csv", False), args.repeat)
        t_fast = best(lambda: spx_bars(trades, quotes, tmp / "fast.csv", True), args.repeat)
        same = (tmp / "object.csv").read_bytes() == (tmp / "fast.csv").read_bytes()
        print(f"\n1. real day {args.day} (SPY, IBM; 4 gzip files, {n:,} rows, every ticker)")
        print(f"   object path  {t_obj:7.2f} s  {n / t_obj:>12,.0f} rows/s")
        print(f"   fast path    {t_fast:7.2f} s  {n / t_fast:>12,.0f} rows/s  ({t_obj / t_fast:.1f}x)")
        print(f"   bars identical: {same} (sha1 {hashlib.sha1((tmp / 'fast.csv').read_bytes()).hexdigest()[:12]})")

        vt = vendor_file(args.day, "trades", args.copies, tmp)
        vq = vendor_file(args.day, "quotes", args.copies, tmp)
        m = rows_of([vt, vq])
        sel = ["--symbol", "SPY", "--symbol", "IBM"]
        print(f"\n2. vendor-like files: {m:,} rows, {2 * (args.copies + 1)} tickers, --symbol SPY --symbol IBM")
        t_fast2 = best(lambda: spx_bars([vt], [vq], tmp / "fast2.csv", True, sel), args.repeat)
        if args.object:
            t_obj2 = spx_bars([vt], [vq], tmp / "object2.csv", False, sel)
            print(f"   object path  {t_obj2:7.2f} s  {m / t_obj2:>12,.0f} rows/s")
        print(f"   fast path    {t_fast2:7.2f} s  {m / t_fast2:>12,.0f} rows/s")
        # the same bars as the real day's (in another closing order: IBM's rows come first in the file)
        same2 = sorted((tmp / "fast2.csv").read_bytes().splitlines()) == sorted(
            (tmp / "fast.csv").read_bytes().splitlines())
        print(f"   the real day's bars (as a set of rows): {same2}")
        import subprocess

        import pyarrow as pa

        # peak RSS of `spx bars` alone: spawned by a small middle process (a child forked from this large
        # one would count this one's pages in its own peak before it execs)
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        rss = int(subprocess.run(
            [sys.executable, "-c", probe, sys.executable, "-m", "services.cli.main", "bars", "--quiet", "--trades",
             str(vt), "--quotes", str(vq), *sel, "--out", str(tmp / "rss.csv")],
            check=True, capture_output=True, text=True).stdout.split()[-1]) / 1e3
        csv_mb = sum(len(gzip.decompress(p.read_bytes())) for p in (vt, vq)) / 1e6
        print(f"   memory: Arrow's pool peak {pa.default_memory_pool().max_memory() / 1e6:,.0f} MB; `spx bars` "
              f"alone: peak RSS {rss:,.0f} MB (the files: {csv_mb:,.0f} MB of CSV)")

        pt, pq = tmp / "trades.csv", tmp / "quotes.csv"
        pt.write_bytes(gzip.decompress(vt.read_bytes()))
        pq.write_bytes(gzip.decompress(vq.read_bytes()))
        print(f"\n3. the same vendor-like files as plain CSV ({(pt.stat().st_size + pq.stat().st_size) / 1e6:,.0f} MB)")
        t_fast3 = best(lambda: spx_bars([pt], [pq], tmp / "fast3.csv", True, sel), args.repeat)
        print(f"   fast path    {t_fast3:7.2f} s  {m / t_fast3:>12,.0f} rows/s")
        same3 = (tmp / "fast3.csv").read_bytes() == (tmp / "fast2.csv").read_bytes()
        print(f"   bars identical to the gzip files': {same3}")
        same2 = same2 and same3
    return 0 if same and same2 else 1


if __name__ == "__main__":
    sys.exit(main())
