"""Readers for Massive's daily flat files (stock trades and quotes, CSV or CSV.gz).

Columns are read by header name, never by position (layouts in ``../shared/reference/massive.md``):

* trades: ``ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,
  sip_timestamp,size,tape,trf_id,trf_timestamp``
* quotes: ``ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,
  indicators,participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp``

Timestamps are integer nanoseconds (``sip_timestamp`` is the event time); ``conditions`` holds
several comma-separated integers inside quotes, a single one bare, or nothing; a trade with
``correction`` != 0 is flagged ``excl=2`` (corrected or cancelled: out of bars, docs/microbars.md).
Quote sizes: ``quote_sizes="vendor"`` (default) reads them in the vendor's unit for their date, as
the WebSocket and REST readers do (stock sizes were round lots of 100 before 2025-11-03 on every
vendor path: ``spx_common.marketrules.quote_size_factor``); ``"shares"`` for files that already
hold shares whatever their date (files converted from another source, such as the two real days
in ``../shared/data/real/``). Option sizes are contracts. The vendor sorts rows by
ticker, then time; readers accept any order and yield events sorted by SIP time, and
:func:`merge` interleaves trades and quotes applying a quote before a trade with the same
timestamp (the aggregator's contract). Bad rows are counted in :class:`ReadStats` and skipped.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from spx_common.marketrules import EXCL_CORRECTION, quote_size_factor
from spx_common.models import Quote, Trade

TRADE_COLUMNS = {"ticker", "price", "size", "sip_timestamp"}
QUOTE_COLUMNS = {"ticker", "bid_price", "ask_price", "bid_size", "ask_size", "sip_timestamp"}


class FlatFileError(ValueError):
    pass


@dataclass
class ReadStats:
    rows: int = 0
    events: int = 0
    bad_rows: int = 0
    errors: list[str] = field(default_factory=list)  # first few, for the operator

    def bad(self, line: int, why: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < 10:
            self.errors.append(f"line {line}: {why}")


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _ints(text: str) -> list[int]:
    text = text.strip().strip('"')
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def kind_of(path: Path) -> str:
    """'trades' or 'quotes', from the header."""
    with _open(path) as fh:
        header = set(next(csv.reader(fh), []))
    if QUOTE_COLUMNS <= header:
        return "quotes"
    if TRADE_COLUMNS <= header:
        return "trades"
    raise FlatFileError(f"{path}: header has neither the trades nor the quotes columns")


QUOTE_SIZES = ("vendor", "shares")


def _read(path: Path, stats: ReadStats, symbols: set[str] | None, quote_sizes: str = "vendor") -> list[Trade | Quote]:
    if quote_sizes not in QUOTE_SIZES:
        raise ValueError(f"quote_sizes must be one of {QUOTE_SIZES}, not {quote_sizes!r}")
    vendor_units = quote_sizes == "vendor"
    kind = kind_of(path)
    out: list[Trade | Quote] = []
    with _open(path) as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            stats.rows += 1
            sym = row.get("ticker") or ""
            if symbols is not None and sym not in symbols:
                continue
            try:
                ts = int(row["sip_timestamp"])
                seq = int(row.get("sequence_number") or 0)
                if kind == "trades":
                    ev = Trade(sym=sym, price=float(row["price"]), size=float(row["size"]), ts=ts, seq=seq,
                               exch=int(row.get("exchange") or 0), cond=_ints(row.get("conditions") or ""),
                               source="replay",
                               excl=EXCL_CORRECTION if int(row.get("correction") or 0) else 0)
                    if ev.price < 0 or ev.size < 0:
                        raise ValueError("negative price or size")
                else:
                    mult = quote_size_factor(sym, ts) if vendor_units else 1
                    ev = Quote(sym=sym, bid=float(row["bid_price"]), ask=float(row["ask_price"]),
                               bid_size=float(row["bid_size"]) * mult, ask_size=float(row["ask_size"]) * mult,
                               ts=ts, seq=seq,
                               bid_exch=int(row.get("bid_exchange") or 0), ask_exch=int(row.get("ask_exchange") or 0),
                               source="replay")
                    if min(ev.bid, ev.ask, ev.bid_size, ev.ask_size) < 0:
                        raise ValueError("negative quote field")
            except (KeyError, ValueError, TypeError) as exc:
                stats.bad(reader.line_num, repr(exc))
                continue
            if not sym or ts < 0:
                stats.bad(reader.line_num, "missing ticker or timestamp")
                continue
            out.append(ev)
    # stable sort by SIP time: rows with the same time keep file order
    out.sort(key=lambda e: e.ts)
    stats.events += len(out)
    return out


def iter_events(path: Path | str, *, symbols: Iterable[str] | None = None,
                stats: ReadStats | None = None, quote_sizes: str = "vendor") -> Iterator[Trade | Quote]:
    """Events of one flat file, sorted by SIP time (any row order accepted)."""
    yield from _read(Path(path), stats or ReadStats(), set(symbols) if symbols is not None else None, quote_sizes)


def merge(*streams: Iterable[Trade | Quote]) -> Iterator[Trade | Quote]:
    """Interleave time-sorted streams by SIP time, a quote before a trade with the same time."""
    return heapq.merge(*streams, key=lambda e: (e.ts, 0 if type(e) is Quote else 1))


def read_merged(paths: Iterable[Path | str], *, symbols: Iterable[str] | None = None,
                stats: ReadStats | None = None, quote_sizes: str = "vendor") -> Iterator[Trade | Quote]:
    """Several flat files (trades and quotes) merged into one stream in aggregation order."""
    stats = stats or ReadStats()
    syms = set(symbols) if symbols is not None else None
    return merge(*[_read(Path(p), stats, syms, quote_sizes) for p in paths])
