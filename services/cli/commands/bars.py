"""``spx bars``: microbars from vendor flat files or the tick journal, with the live aggregator's code."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from itertools import islice
from pathlib import Path

from services.aggregator.bars import CSV_COLUMNS, BarAggregator, csv_row, parse_interval
from services.cli.common import fail
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
