"""``spx backfill FROM TO``: vendor history into the store (resumable, idempotent, bounded retries).

REST (Massive): second and minute bars per symbol and day, optionally trades and quotes.
``--flat-file``: import the vendor's daily trades/quotes flat files (events and 1s/60s bars).
Progress with ETA goes to stderr; the summary (fetched, skipped, failed) to stdout.
Exit code 0 when nothing failed, 1 otherwise (re-run to retry only the failed tasks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from services.cli.common import fail
from spx_common.config import load
from spx_common.store import open_store


def register(sub) -> None:
    p = sub.add_parser("backfill", help="backfill bars (and trades/quotes) from Massive into the store",
                       description=__doc__)
    p.add_argument("start", metavar="FROM", nargs="?", type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
    p.add_argument("end", metavar="TO", nargs="?", type=dt.date.fromisoformat,
                   help="last day (inclusive), YYYY-MM-DD; default FROM")
    p.add_argument("--symbols", default="SPY,I:SPX", help="comma-separated vendor symbols (default SPY,I:SPX)")
    p.add_argument("--resolution", default="second,minute",
                   help="bar resolutions: second, minute or both (default second,minute)")
    p.add_argument("--trades", action="store_true", help="also trades (v3/trades) into market_events")
    p.add_argument("--quotes", action="store_true", help="also quotes (v3/quotes) into market_events")
    p.add_argument("--flat-file", action="append", type=Path, default=[], metavar="PATH",
                   help="import a vendor flat file instead of REST (repeatable; FROM/TO not needed)")
    p.add_argument("--quote-sizes", choices=("vendor", "shares"), default="vendor",
                   help="flat files: stock quote sizes in the vendor's unit for their date (vendor, default: round "
                        "lots before 2025-11-03, multiplied to shares) or already shares (converted files)")
    p.add_argument("--retries", type=int, default=4, help="retries per request on 429/5xx/timeouts (default 4)")
    p.add_argument("--force", action="store_true", help="re-fetch tasks already marked done")
    p.set_defaults(func=cmd_backfill)


def cmd_backfill(args) -> int:
    from services.cli.backfill import Progress, import_flat_files, plan, run_rest, trading_days

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not args.flat_file and args.start is None:
        return fail("FROM is required (or --flat-file PATH)", 2)
    try:
        store = open_store()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {type(exc).__name__}")
    try:
        if args.flat_file:
            missing = [str(p) for p in args.flat_file if not p.exists()]
            if missing:
                return fail(f"no such flat file: {', '.join(missing)}", 2)
            summary = import_flat_files(store, args.flat_file, symbols=symbols or None, force=args.force,
                                        progress=Progress(len(args.flat_file)), quote_sizes=args.quote_sizes)
        else:
            spans = [s.strip() for s in args.resolution.split(",") if s.strip()]
            bad = [s for s in spans if s not in ("second", "minute")]
            if bad:
                return fail(f"unknown resolution {bad[0]!r} (second, minute)", 2)
            try:
                days = trading_days(args.start, args.end or args.start)
            except ValueError as exc:
                return fail(str(exc), 2)
            from services.feed.config import FeedConfig
            from services.feed.rest import MassiveRest

            cfg = load(FeedConfig)
            if not cfg.api_key:
                return fail("MASSIVE_API_KEY is not set", 2)
            tasks = plan(symbols, days, spans, args.trades, args.quotes)

            async def go():
                async with MassiveRest(cfg.rest_url, cfg.api_key, retries=max(args.retries, 0)) as rest:
                    return await run_rest(store, rest, tasks, progress=Progress(len(tasks)), force=args.force)

            summary = asyncio.run(go())
    except SQLAlchemyError as exc:
        return fail(f"database error: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    except KeyboardInterrupt:
        return fail("interrupted; finished tasks are checkpointed, run the same command again to resume", 130)
    finally:
        store.close()
    print(summary.text())
    return 0 if summary.failed == 0 else 1
