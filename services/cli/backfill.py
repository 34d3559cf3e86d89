"""Backfill history into the store: Massive REST (second/minute bars, optional trades and quotes)
and the vendor's daily flat files (``spx backfill``).

It composes the feed's REST client, the aggregator's bar core and the store, which is why it lives with the
CLI (the layer that may use several services' parts) and not in the recorder process.

The work is split into tasks, one per (kind, symbol, day); a task that finished is recorded in
``backfill_checkpoints`` and skipped on the next run, so an interrupted backfill resumes where it
stopped.  Every row is an idempotent upsert (natural keys), so re-running never duplicates.
Retries are bounded by the REST client (retryable statuses, capped backoff); a task that still
fails is recorded ``failed`` with its reason and the run moves on.

Trades go through the feed's trade rules (``spx_common.marketrules.TradeRules``: conditions,
corrections) first: ``market_events`` keeps the prints that make bars (its rows have no condition
column), bars are built without the excluded ones, and ``Summary.excluded`` counts what was left out.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from collections.abc import Callable, Iterable

import msgspec

from services.aggregator.bars import bars_from_events
from services.feed.rest import MassiveRest, RestError
from spx_common import models as m
from spx_common.calendar import ET
from spx_common.flatfiles import FlatFileError, ReadStats, open_text, read_merged
from spx_common.marketrules import TradeRules
from spx_common.store.repo import Store

#: REST timespan -> stored bar interval
SPANS = {"second": "1s", "minute": "60s"}
CHUNK = 5000


@dataclass
class Summary:
    fetched: int = 0
    skipped: int = 0
    failed: int = 0
    rows: int = 0
    bad_rows: int = 0
    excluded: int = 0  # trades the trade rules keep out of bars (docs/microbars.md): not stored
    failures: list[str] = field(default_factory=list)

    def text(self) -> str:
        s = (f"backfill: {self.fetched} fetched ({self.rows:,} rows), {self.skipped} skipped (already done), "
             f"{self.failed} failed, {self.bad_rows} bad rows dropped, {self.excluded:,} trades excluded by "
             "condition or correction")
        return "\n".join([s, *(f"  failed {f}" for f in self.failures)])


class Progress:
    """A one-line progress bar with ETA on ``stream`` (stderr); redrawn in place on a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stream, self.width, self.clock = max(total, 1), stream or sys.stderr, width, clock
        self.start = clock()
        self.done = 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def line(self, rows: int, label: str = "") -> str:
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = self.clock() - self.start
        eta = (elapsed / self.done * (self.total - self.done)) if self.done else float("nan")
        eta_s = "--:--" if eta != eta else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {frac:4.0%} "
                f"ETA {eta_s} rows {rows:,} {label}")

    def step(self, rows: int, label: str = "") -> None:
        self.done += 1
        text = self.line(rows, label)
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150) + ("\n" if self.done >= self.total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Weekdays from ``start`` to ``end`` inclusive (exchange holidays simply return no data)."""
    if end < start:
        raise ValueError(f"TO {end} is before FROM {start}")
    days, d = [], start
    while d <= end:
        if d.weekday() < 5:
            days.append(d)
        d += dt.timedelta(days=1)
    return days


def bar_from_agg(sym: str, interval: str, r: dict) -> m.MicroBar | None:
    """A REST aggregate ``{o,h,l,c,v,vw,n,t(ms)}`` as a stored bar, or None when malformed."""
    try:
        return msgspec.convert({"sym": sym, "interval": interval, "start_ns": int(r["t"]) * 1_000_000,
                                "open": r["o"], "high": r["h"], "low": r["l"], "close": r["c"],
                                "volume": r.get("v") or 0.0, "trades": int(r.get("n") or 0), "vwap": r.get("vw"),
                                "closed": True, "source": "backfill"}, m.MicroBar)
    except (KeyError, TypeError, ValueError, msgspec.ValidationError):
        return None


def plan(symbols: Iterable[str], days: Iterable[dt.date], spans: Iterable[str], trades: bool,
         quotes: bool) -> list[tuple[str, str, dt.date]]:
    """Every task as (kind, symbol, day); kind is a REST timespan, ``trades`` or ``quotes``."""
    kinds = list(spans) + (["trades"] if trades else []) + (["quotes"] if quotes else [])
    return [(k, s, d) for d in days for s in symbols for k in kinds]


def task_key(kind: str, sym: str, day: dt.date) -> str:
    return f"rest:{kind}:{sym}:{day.isoformat()}"


async def run_rest(store: Store, rest: MassiveRest, tasks: list[tuple[str, str, dt.date]], *,
                   progress: Progress | None = None, force: bool = False) -> Summary:
    """Run ``tasks`` against ``rest``."""
    summary = Summary()
    for kind, sym, day in tasks:
        key = task_key(kind, sym, day)
        cp = None if force else await asyncio.to_thread(store.checkpoint, key)
        if cp is not None and cp["status"] == "done":
            summary.skipped += 1
            if progress:
                progress.step(summary.rows, f"skip {key}")
            continue
        try:
            n = await _fetch(store, rest, kind, sym, day, summary)
        except (RestError, OSError) as exc:
            summary.failed += 1
            summary.failures.append(f"{key}: {exc}")
            await asyncio.to_thread(store.set_checkpoint, key, "failed", 0, str(exc)[:500])
        else:
            summary.fetched += 1
            summary.rows += n
            await asyncio.to_thread(store.set_checkpoint, key, "done", n)
        if progress:
            progress.step(summary.rows, key)
    return summary


async def _fetch(store: Store, rest: Any, kind: str, sym: str, day: dt.date, summary: Summary) -> int:
    if kind in SPANS:
        raw = await rest.aggregates(sym, 1, kind, day.isoformat(), day.isoformat())
        bars = [b for b in (bar_from_agg(sym, SPANS[kind], r) for r in raw) if b is not None]
        summary.bad_rows += len(raw) - len(bars)
        for i in range(0, len(bars), CHUNK):
            await asyncio.to_thread(store.upsert_bars, bars[i:i + CHUNK])
        return len(bars)
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()) * 1_000_000_000
    end = start + 86_400 * 1_000_000_000
    it = rest.trades(sym, gte_ns=start, lt_ns=end) if kind == "trades" else rest.quotes(sym, gte_ns=start, lt_ns=end)
    rules = TradeRules()
    n, buf = 0, []
    async for ev in it:
        buf.append(ev)
        if len(buf) >= CHUNK:
            n += await asyncio.to_thread(store.insert_events, _kept(buf, rules, summary))
            buf = []
    if buf:
        n += await asyncio.to_thread(store.insert_events, _kept(buf, rules, summary))
    return n


def _kept(events: list, rules: TradeRules, summary: Summary) -> list:
    """``events`` (flagged in place) without the trades the trade rules flag (counted in ``summary.excluded``)."""
    if not rules.apply(events):
        return events
    kept = [e for e in events if not (type(e) is m.Trade and e.excl)]
    summary.excluded += len(events) - len(kept)
    return kept


def flat_file_day(path: Path) -> str:
    """The trading day a flat file holds: the ``YYYY-MM-DD`` in its name (the vendor names files by
    day), else the New York date of its first row's SIP time; "" when neither can be read."""
    found = re.search(r"(\d{4}-\d{2}-\d{2})", path.name)
    if found:
        return found.group(1)
    try:
        with open_text(path) as fh:
            row = next(csv.DictReader(fh), None)
        ts = int(row["sip_timestamp"]) if row else None
    except (OSError, KeyError, TypeError, ValueError):
        return ""
    return "" if ts is None else dt.datetime.fromtimestamp(ts / 1e9, ET).date().isoformat()


def pair_by_day(paths: Iterable[Path]) -> list[tuple[str, list[Path]]]:
    """Group flat files by trading day (trades and quotes of one day together), oldest day first."""
    days: dict[str, list[Path]] = {}
    for p in paths:
        days.setdefault(flat_file_day(p), []).append(p)
    return sorted(days.items())


def import_flat_files(store: Store, paths: list[Path], *, symbols: Iterable[str] | None = None,
                      intervals: tuple[str, ...] = ("1s", "60s"), force: bool = False,
                      progress: Progress | None = None, quote_sizes: str = "vendor") -> Summary:
    """Import vendor flat files (trades and quotes): events into ``market_events`` and bars into ``bars``.

    The files of one trading day are read together, merged in aggregation order (a quote before a
    trade at the same time) with :func:`spx_common.flatfiles.read_merged`, and aggregated by the
    live aggregator's :class:`~services.aggregator.bars.BarAggregator`, exactly as ``spx bars
    --trades T --quotes Q`` does: a day's bars carry the quotes' microstructure (aggressor split,
    imbalance, coverage), not the trades alone. One checkpoint per day (its files' names and sizes).
    ``summary.fetched``/``skipped`` count files. ``quote_sizes``: as :func:`spx_common.flatfiles.read_merged`
    (``"shares"`` for files converted from another source that already hold shares)."""
    summary = Summary()
    for _day, group in pair_by_day(paths):
        key = "flat:" + "+".join(f"{p.name}:{p.stat().st_size if p.exists() else 0}" for p in sorted(group))
        cp = None if force else store.checkpoint(key)
        if cp is not None and cp["status"] == "done":
            summary.skipped += len(group)
        else:
            stats = ReadStats()
            try:
                events = list(read_merged(group, symbols=symbols, stats=stats, quote_sizes=quote_sizes))
                kept = _kept(events, TradeRules(), summary)
                n = 0
                for i in range(0, len(kept), CHUNK):
                    n += store.insert_events(kept[i:i + CHUNK])
                bars = bars_from_events(events, intervals=intervals)  # volume-only prints count in volume
                for i in range(0, len(bars), CHUNK):
                    store.upsert_bars([msgspec.structs.replace(b, source="backfill") for b in bars[i:i + CHUNK]])
            except (FlatFileError, OSError, ValueError) as exc:
                summary.failed += len(group)
                summary.failures.append(f"{', '.join(map(str, group))}: {exc}")
                store.set_checkpoint(key, "failed", 0, str(exc)[:500])
            else:
                summary.fetched += len(group)
                summary.rows += n + len(bars)
                summary.bad_rows += stats.bad_rows
                store.set_checkpoint(key, "done", n + len(bars))
        if progress:
            for p in group:
                progress.step(summary.rows, p.name)
    return summary
