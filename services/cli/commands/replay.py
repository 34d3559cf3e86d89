"""``spx replay``: publish recorded or synthetic market data on the bus, exactly as the live feed would.

    spx replay journal run/journal/2026-11-20.ticks --speed 10
    spx replay flatfile 2026-11-20-trades.csv.gz 2026-11-20-quotes.csv.gz --speed max --symbols SPY
    spx replay synthetic --date 2026-11-20 --seed 7 --compress 60

The command runs the feed service in this process (same frames, topics and status messages as
``python -m services.feed``) with a progress bar on stderr, and exits when the data is done.  The
mesh's own feed must not be running at the same time (it owns the feed's socket): stop it first
(``supervisorctl -c supervisord.conf stop spx:feed`` with ``SPX_RUNTIME_RUN_DIR`` exported, or ``spx down``), or set ``SPX_FEED_SOURCE=journal`` and
``SPX_FEED_REPLAY_PATH`` for the supervised feed instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time

from spx_common.calendar import ET
from services.cli.common import RpcError, call, configs, fail
from spx_common.align import FINAL_NS



def register(sub) -> None:
    p = sub.add_parser("replay", help="replay the tick journal, vendor flat files or a synthetic day onto the bus",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("journal", "flatfile", "synthetic"), help="what to replay")
    p.add_argument("paths", nargs="*", help="journal file/dir, or flat files (CSV or CSV.gz); none for synthetic")
    p.add_argument("--speed", default="1", help="speed multiplier (1 = real time, 10, 0.5) or 'max' (default 1)")
    p.add_argument("--symbols", help="only these symbols, comma-separated (journal, flatfile)")
    p.add_argument("--from", dest="start", help="journal: start time (ISO, New York time if no zone)")
    p.add_argument("--to", dest="end", help="journal: end time (ISO, New York time if no zone)")
    p.add_argument("--date", default=None, help="synthetic: session date (default the configured one)")
    p.add_argument("--seed", type=int, default=None, help="synthetic: seed (default the configured one)")
    p.add_argument("--compress", type=float, default=None, help="synthetic: event-time compression (60: 6.5 min day)")
    p.add_argument("--quote-sizes", choices=("vendor", "shares"), default=None,
                   help="flatfile: stock quote sizes in the vendor's unit for the file's date (vendor: round lots "
                        "before 2025-11-03) or already shares (default: [feed] flatfile_quote_sizes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)


def _ns(text: str | None) -> int | None:
    if not text:
        return None
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=ET)
    return int(t.timestamp() * 1e9)


class Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, start_ns: int | None, end_ns: int | None, enabled: bool, out=sys.stderr) -> None:
        self.start_ns, self.end_ns, self.enabled, self.out = start_ns, end_ns, enabled, out
        self.last_draw = 0.0
        self.t0 = time.monotonic()
        self.events = 0

    def __call__(self, ts: int, events: int | None = None, force: bool = False) -> None:
        if events is not None:
            self.events = events
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last_draw < 0.2):
            return
        self.last_draw = now
        clock = dt.datetime.fromtimestamp(ts / 1e9, ET).strftime("%Y-%m-%d %H:%M:%S ET")
        rate = self.events / max(now - self.t0, 1e-6)
        if self.start_ns is not None and self.end_ns and self.end_ns > self.start_ns:
            frac = min(max((ts - self.start_ns) / (self.end_ns - self.start_ns), 0.0), 1.0)
            bar = "#" * int(frac * 30)
            head = f"[{bar:<30}] {frac * 100:5.1f}%"
        else:
            head = "[replaying]"
        self.out.write(f"\r{head}  {clock}  {self.events:,} events  {rate:,.0f}/s ")
        self.out.flush()

    def done(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def cmd_replay(args) -> int:
    from services.feed.config import FeedConfig
    from services.feed.replay import FlatFileSource, JournalSource, SyntheticSource
    from services.feed.service import FeedService
    from services.feed.synthetic import SyntheticSession
    from spx_common.config import ConfigError, load

    try:
        call("feed", "ping", timeout_s=0.5)
        return fail("a feed service is running (it owns the feed socket): stop it first, e.g. "
                    "'supervisorctl -c supervisord.conf stop spx:feed' with SPX_RUNTIME_RUN_DIR exported "
                    "(README, 'Operating with supervisorctl'), or 'spx down'")
    except RpcError:
        pass
    try:
        runtime, bus = configs()
        overrides = {"replay_speed": args.speed, "replay_loop": False, "journal": "off"}
        if args.quote_sizes:
            overrides["flatfile_quote_sizes"] = args.quote_sizes
        cfg = load(FeedConfig, overrides=overrides)
    except ConfigError as exc:
        return fail(str(exc), 2)
    symbols = [s.strip() for s in args.symbols.split(",")] if args.symbols else None
    try:
        if args.kind == "journal":
            if len(args.paths) != 1:
                return fail("journal replay takes one path (a .ticks file or a journal directory)", 2)
            src = JournalSource(args.paths[0], start_ns=_ns(args.start), end_ns=_ns(args.end), symbols=symbols)
        elif args.kind == "flatfile":
            if not args.paths:
                return fail("flatfile replay needs at least one trades or quotes file", 2)
            src = FlatFileSource(args.paths, symbols=symbols, quote_sizes=cfg.flatfile_quote_sizes)
        else:
            src = SyntheticSource(SyntheticSession(args.seed if args.seed is not None else cfg.synthetic_seed,
                                                   args.date or cfg.synthetic_date,
                                                   compress=args.compress or cfg.synthetic_compress,
                                                   strikes_each_side=cfg.strikes_each_side,
                                                   strike_step=cfg.strike_step, root=cfg.option_root))
    except (FileNotFoundError, ValueError) as exc:  # includes flatfiles.FlatFileError (a bad header)
        return fail(str(exc), 2)

    watermark = aggregator_watermark()
    unchecked = [True]  # flat files know their first time only once read: check at the first event

    def check_late(ts: int | None) -> None:
        if unchecked and ts:
            unchecked.clear()
            warning = late_warning(watermark, ts)
            if warning:
                print(("\n" if progress.enabled else "") + warning, file=sys.stderr)

    progress = Progress(src.start_ns, src.end_ns, not args.no_progress and sys.stderr.isatty() or False)
    check_late(src.start_ns)
    service = FeedService(runtime, bus, config=cfg, source=src)
    service.exit_when_done = True

    def on_progress(ts: int) -> None:
        check_late(ts)
        progress(ts, service._published)
    service.progress = on_progress
    code = asyncio.run(service.run_async())
    progress(service.clock.now_ns() or 0, service._published, force=True)
    progress.done()
    print(f"replayed {service._published:,} events from {src.name}"
          f"{'' if service.replay_done else ' (interrupted)'}; drops {service.pipeline.drops or 'none'}")
    stats = getattr(src, "stats", None)
    if stats is not None and (getattr(stats, "torn", 0) or getattr(stats, "corrupt", 0)):
        print(f"journal: skipped {stats.torn} torn and {stats.corrupt} corrupt records", file=sys.stderr)
    if stats is not None and getattr(stats, "bad_rows", 0):
        print(f"flat files: skipped {stats.bad_rows} bad rows, e.g. {stats.errors[:3]}", file=sys.stderr)
    return code


def aggregator_watermark() -> int | None:
    """The running aggregator's event-time watermark (``status`` RPC), or None when none answers."""
    try:
        wm = call("aggregator", "status", timeout_s=0.5).get("watermark_ns")
    except (RpcError, AttributeError):
        return None
    return wm if isinstance(wm, int) and 0 < wm < FINAL_NS else None


def late_warning(watermark_ns: int | None, start_ns: int | None) -> str | None:
    """Say before replaying when the running aggregator has already closed bars past the data's start (the
    mesh ran a later time): it drops such events as late, so the replay would build no bars."""
    if not watermark_ns or not start_ns or start_ns >= watermark_ns:
        return None
    return (f"spx: warning: the running aggregator's bars are closed up to {_et(watermark_ns)}; this replay starts "
            f"at {_et(start_ns)}, so it will drop these events as late and build no bars from them. Restart it "
            "first ('spx restart aggregator') to replay an earlier time.")


def _et(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, ET)
    return f"{t:%Y-%m-%d %H:%M:%S} ET"
