"""``spx bars``: microbars from vendor flat files or the tick journal, with the live aggregator's code."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from itertools import islice
from pathlib import Path

from services.aggregator.bars import CSV_COLUMNS, BarAggregator, csv_row, csv_rows, parse_interval
from services.cli.common import Progress, fail
from spx_common import flatfiles, journal
from spx_common.marketrules import TradeRules, explain_row


def _wrap_columns(columns, width: int = 78) -> str:
    """Column names joined by commas, broken between names (never inside one)."""
    lines, line = [], "  "
    for i, name in enumerate(columns):
        item = name + ("," if i < len(columns) - 1 else "")
        if len(line) + len(item) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = "  "
        line += item + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser(
        "bars", help="build microbars offline from flat files or the tick journal (same code as live)",
        description="Reads Massive trades/quotes flat files (CSV or CSV.gz, any row order) or the tick journal and "
        "writes bars with the live aggregator's code.",
        epilog="output columns (CSV header; nulls empty):\n" + _wrap_columns(CSV_COLUMNS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trades", type=Path, action="append", default=[], help="trades flat file (repeatable)")
    p.add_argument("--quotes", type=Path, action="append", default=[], help="quotes flat file (repeatable)")
    p.add_argument("--journal", type=Path, help="tick journal file or directory (run/journal)")
    p.add_argument("--interval", default="1s", help="bar interval: 1s, 5s, 250ms, 1m (default 1s)")
    p.add_argument("--symbol", action="append", help="only these tickers (repeatable)")
    p.add_argument("--no-l2", action="store_true", help="null the microstructure fields (ENABLE_L2_MICROSTRUCTURE=false)")
    p.add_argument("--fill-gaps", action="store_true", help="zero-volume bars for buckets without a trade")
    p.add_argument("--quote-sizes", choices=flatfiles.QUOTE_SIZES, default="vendor",
                   help="flat files: stock quote sizes in the vendor's unit for their date (vendor, default: round "
                        "lots before 2025-11-03, multiplied to shares) or already shares (files converted from "
                        "another source)")
    p.add_argument("--outlier-pct", type=float, default=0.0,
                   help="outlier guard: exclude prints with no condition more than this many percent outside "
                        "the quote in force (default 0: off; the feed's [feed] outlier_guard_pct)")
    p.add_argument("--explain", action="store_true",
                   help="print every print that is not a regular print for the bars (volume only or excluded: "
                        "conditions, correction, outlier) and the counts per reason on stderr")
    p.add_argument("--out", type=Path, default=None, help="output CSV (default stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_bars)


def cmd_bars(args) -> int:
    try:
        parse_interval(args.interval)
    except ValueError as exc:
        return fail(str(exc), 2)
    if not (args.trades or args.quotes or args.journal):
        return fail("give --trades/--quotes flat files or --journal", 2)
    t0 = time.perf_counter()
    if not args.journal and not args.explain and not args.outlier_pct:
        done = _bars_columnar(args, t0)
        if done is not None:
            return done
    fstats, jstats = flatfiles.ReadStats(), journal.ReadStats()
    try:
        if args.journal:
            events = journal.iter_events(args.journal, symbols=args.symbol, stats=jstats)
        else:
            events = flatfiles.read_merged([*args.trades, *args.quotes], symbols=args.symbol, stats=fstats,
                                           quote_sizes=args.quote_sizes)
    except (OSError, flatfiles.FlatFileError) as exc:
        return fail(str(exc))
    try:
        rules = TradeRules(outlier_pct=args.outlier_pct, keep=1 << 62 if args.explain else 0)
    except ValueError as exc:
        return fail(str(exc), 2)
    agg = BarAggregator([args.interval], l2=not args.no_l2, fill_gaps=args.fill_gaps)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = bars = 0
    progress = not args.quiet and sys.stderr.isatty()
    events = iter(events)
    report_at = 200_000
    try:
        while chunk := list(islice(events, 4096)):  # the live path's batch call, so the same hot path
            rules.apply(chunk)  # the feed's trade rules (spx_common/marketrules.py), as live
            agg.on_events(chunk)
            if args.explain and rules.kept:
                for ev in rules.kept:
                    print("excluded " + explain_row(ev), file=sys.stderr)
                rules.kept.clear()
            n += len(chunk)
            for bar in agg.drain():
                writer.writerow(csv_row(bar))
                bars += 1
            if progress and n >= report_at:
                report_at += 200_000
                print(f"\r{n:,} events, {bars:,} bars, {n / (time.perf_counter() - t0):,.0f} events/s",
                      end="", file=sys.stderr)
        for bar in agg.flush():
            writer.writerow(csv_row(bar))
            bars += 1
    finally:
        if args.out:
            out.close()
    dt = time.perf_counter() - t0
    if not args.quiet:
        bad = fstats.bad_rows + jstats.torn + jstats.corrupt
        print(f"\r{n:,} events -> {bars:,} bars in {dt:.2f}s ({n / dt if dt else 0:,.0f} events/s); "
              f"late {agg.late}, bad rows/records {bad}", file=sys.stderr)
        for err in fstats.errors + jstats.problems[:10]:
            print(f"  skipped: {err}", file=sys.stderr)
    if args.explain or (rules.excluded and not args.quiet):
        total = sum(rules.excluded.values())
        per = ", ".join(f"{k}: {v:,} ({rules.excluded_size[k]:,.0f} size)" for k, v in sorted(rules.excluded.items()))
        print(f"prints excluded or volume only, by reason (docs/microbars.md): {per or 'none'}" +
              (f"; {total:,} in all" if total else ""), file=sys.stderr)
    return 0


#: events per ``feed_columns`` call: bars are written between calls, so they never pile up in memory
COLUMN_BATCH = 1 << 16


def _bars_columnar(args, t0: float) -> int | None:
    """Flat files through the columnar reader and ``feed_columns``: the object path's bars, byte for byte
    (the same bar core, events in the same order with the same flags), without a Python object per row.
    None when the reader cannot prove it reads the files as the object reader does (a bad row, a value
    Arrow refuses): the caller then takes the object path, which reports the rows it skips."""
    try:
        import numpy as np
        import pyarrow  # noqa: F401  (a dependency; an environment installed before it keeps the object path)
    except ImportError:
        return None
    fstats = flatfiles.ReadStats()
    progress = None
    if not args.quiet and sys.stderr.isatty():  # reading is nearly all of the time: a bar with the ETA
        bar = Progress(unit="MB")

        def progress(done: int, total: int) -> None:
            bar(done >> 20, max(total >> 20, 1) if total else 0, "read")
    try:
        cols = flatfiles.read_columns([*args.trades, *args.quotes], symbols=args.symbol, stats=fstats,
                                      quote_sizes=args.quote_sizes, progress=progress)
    except flatfiles.ColumnarUnsupported:
        return None
    except (OSError, flatfiles.FlatFileError) as exc:
        return fail(str(exc))
    rules = TradeRules()
    excl = rules.apply_columns(cols.names, cols.sym, cols.kind, cols.excl, cols.cond, cols.conds, cols.b)
    agg = BarAggregator([args.interval], l2=not args.no_l2, fill_gaps=args.fill_gaps)
    # symbol ids in the order of first appearance in the stream, as events would add them
    seen, first = np.unique(cols.sym, return_index=True)
    ids = np.full(len(cols.names), -1, dtype=np.int32)
    ids[seen[np.argsort(first)]] = agg.symbol_ids([cols.names[i] for i in seen[np.argsort(first)]])
    sids = ids[cols.sym] if len(cols) else np.empty(0, np.int32)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = bars = 0
    try:
        for lo in range(0, len(cols), COLUMN_BATCH):
            hi = lo + COLUMN_BATCH
            agg.feed_columns(sids[lo:hi], cols.kind[lo:hi], cols.ts[lo:hi], cols.a[lo:hi], cols.b[lo:hi],
                             cols.c[lo:hi], cols.d[lo:hi], excl[lo:hi])
            n += min(hi, len(cols)) - lo
            rows = csv_rows(agg.drain())
            writer.writerows(rows)
            bars += len(rows)
        rows = csv_rows(agg.flush())
        writer.writerows(rows)
        bars += len(rows)
    finally:
        if args.out:
            out.close()
    dt = time.perf_counter() - t0
    if not args.quiet:
        print(f"\r{n:,} events -> {bars:,} bars in {dt:.2f}s ({n / dt if dt else 0:,.0f} events/s, "
              f"{fstats.rows / dt if dt else 0:,.0f} rows/s read); late {agg.late}, bad rows/records 0",
              file=sys.stderr)
    if rules.excluded and not args.quiet:
        total = sum(rules.excluded.values())
        per = ", ".join(f"{k}: {v:,} ({rules.excluded_size[k]:,.0f} size)" for k, v in sorted(rules.excluded.items()))
        print(f"prints excluded or volume only, by reason (docs/microbars.md): {per}; {total:,} in all",
              file=sys.stderr)
    return 0
