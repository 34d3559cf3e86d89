"""Readers for Massive's daily flat files (stock trades and quotes, CSV or CSV.gz).

Columns are read by header name, never by position (layouts in ``docs/vendor/massive.md``):

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

import contextlib
import csv
import gzip
import heapq
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Iterator

from spx_common.errors import Refused
from spx_common.marketrules import EXCL_CORRECTION, SHARES_SINCE_NS, quote_size_factor
from spx_common.models import Quote, Trade

if TYPE_CHECKING:  # numpy comes with pyarrow, imported where the columnar path runs
    import numpy as np

TRADE_COLUMNS = {"ticker", "price", "size", "sip_timestamp"}
QUOTE_COLUMNS = {"ticker", "bid_price", "ask_price", "bid_size", "ask_size", "sip_timestamp"}


class FlatFileError(Refused, ValueError):
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


def open_text(path: Path) -> io.TextIOBase:
    """A flat file opened for reading as text (gzip when it ends in .gz), as the csv module wants it."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _ints(text: str) -> list[int]:
    text = text.strip().strip('"')
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def kind_of(path: Path) -> str:
    """'trades' or 'quotes', from the header."""
    with open_text(path) as fh:
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
    with open_text(path) as fh:
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


# ---------------------------------------------------------------------------------------- columnar reader

#: the columns the fast reader parses, with their Arrow types (the rest of a row is never converted)
_TRADE_TYPES = {"ticker": "dict", "conditions": "dict", "correction": "int64", "exchange": "int64",
                "price": "float64", "sequence_number": "int64", "sip_timestamp": "int64", "size": "float64"}
_QUOTE_TYPES = {"ticker": "dict", "ask_exchange": "int64", "ask_price": "float64", "ask_size": "float64",
                "bid_exchange": "int64", "bid_price": "float64", "bid_size": "float64",
                "sequence_number": "int64", "sip_timestamp": "int64"}
_MAX_TS = 1 << 62  # the bar cores refuse event times at or beyond this (services/aggregator/fastcore.pyx)


class ColumnarUnsupported(FlatFileError):
    """The columnar reader cannot prove it reads this file as :func:`iter_events` does (a value Arrow
    refuses, a bad row, a time the cores refuse, NaN): read it with the object path instead."""


@dataclass
class Columns:
    """The selected, valid rows of flat files in aggregation order, as numpy arrays.

    ``sym`` indexes ``names``; ``kind`` is 0 for a trade, 1 for a quote (the bar cores' codes); ``a, b, c,
    d`` are price, size, 0, 0 for a trade and bid, ask, bid size, ask size (in shares or contracts) for a
    quote; ``excl`` is the reader's flag (:data:`EXCL_CORRECTION`) and ``cond`` indexes ``conds``, the
    distinct parsed ``conditions`` (quotes: index 0, the empty tuple)."""

    names: list[str]
    conds: list[tuple[int, ...]]
    sym: np.ndarray
    kind: np.ndarray
    ts: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    excl: np.ndarray
    cond: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)


def _column_types(kind: str):
    import pyarrow as pa

    typ = {"dict": pa.dictionary(pa.int32(), pa.string()), "int64": pa.int64(), "float64": pa.float64()}
    return {k: typ[v] for k, v in (_TRADE_TYPES if kind == "trades" else _QUOTE_TYPES).items()}


def _lut(dictionary, codes: dict, table: list, convert) -> np.ndarray:
    """Global codes (into ``table``) of a batch's dictionary values, converting new values once."""
    import numpy as np

    out = np.empty(len(dictionary), dtype=np.int32)
    for i, value in enumerate(dictionary.to_pylist()):
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(table)
            table.append(convert(value))
        out[i] = code
    return out


def _source(path: Path, stack: contextlib.ExitStack) -> tuple[Any, Any]:
    """What Arrow reads: a gzip file inflated by ISA-L in a thread of its own when ``isal`` is installed
    (~1.5x zlib's speed here, and it overlaps Arrow's parsing on the other core), else the path (Arrow
    inflates with zlib, by the ``.gz`` suffix as :func:`_open` decides); and the raw file ISA-L reads
    (its position is how far the file was read: the progress), or None."""
    if path.suffix != ".gz":
        return path, None
    try:
        from isal import igzip_threaded
    except ImportError:
        return path, None
    raw = stack.enter_context(open(path, "rb"))
    return stack.enter_context(igzip_threaded.open(raw, "rb", threads=1)), raw


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # Arrow says what is wrong with it when it opens it


def read_columns(paths: Iterable[Path | str], *, symbols: Iterable[str] | None = None,
                 stats: ReadStats | None = None, quote_sizes: str = "vendor",
                 block_size: int = 1 << 20, progress: Callable[[int, int], None] | None = None) -> Columns:
    """Several flat files (trades and quotes) as :class:`Columns` in :func:`read_merged`'s order: SIP time,
    a quote before a trade at the same time, then the order of ``paths`` and of rows in a file.

    Streamed: Arrow parses ``block_size`` bytes at a time (only the columns the bars need, typed), tickers
    are filtered per batch, so memory grows with the selected rows, not with the files. The same rows as
    the object reader or :class:`ColumnarUnsupported` (nothing is guessed: the caller falls back).
    ``progress(done, total)``, after every block: bytes of the files (as stored, compressed or not) read so
    far and in all; within a file Arrow inflates itself, a block counts ``block_size`` bytes."""
    import numpy as np
    import pyarrow as pa
    from pyarrow import csv as pacsv

    if quote_sizes not in QUOTE_SIZES:
        raise ValueError(f"quote_sizes must be one of {QUOTE_SIZES}, not {quote_sizes!r}")
    stats = stats or ReadStats()
    wanted = set(symbols) if symbols is not None else None
    names: list[str] = []
    sym_codes: dict[str, int] = {}
    conds: list[tuple[int, ...] | None] = [()]
    cond_codes: dict[str, int] = {"": 0}

    def name_code(value: str) -> str:
        return value

    def parse_cond(value: str):
        try:
            return tuple(_ints(value))
        except ValueError:
            return None  # the object reader skips the row as bad: so do not guess here

    parts: list[tuple] = []
    rows = 0
    stack = contextlib.ExitStack()
    files = [Path(p) for p in paths]
    sizes = [_size(p) for p in files] if progress is not None else []
    total, before = sum(sizes), 0
    for i, path in enumerate(files):
        kind = kind_of(path)
        types = _column_types(kind)
        try:
            source, raw = _source(path, stack)
            blocks = 0
            reader = pacsv.open_csv(
                source, read_options=pacsv.ReadOptions(block_size=block_size),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                     include_missing_columns=True, null_values=[""],
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False))
            for batch in reader:
                rows += batch.num_rows
                if progress is not None:
                    blocks += 1
                    at = raw.tell() if raw is not None else blocks * block_size
                    progress(before + min(at, sizes[i]), total)
                tick = batch.column("ticker")
                lut = _lut(tick.dictionary, sym_codes, names, name_code)
                if wanted is not None:
                    keep = np.array([n in wanted for n in names], dtype=bool)
                    lut = np.where(keep[lut], lut, -1) if len(lut) else lut
                sym = lut[tick.indices.to_numpy(zero_copy_only=False)] if len(lut) else np.empty(0, np.int32)
                sel = np.flatnonzero(sym >= 0) if wanted is not None else None
                if sel is not None and len(sel) == 0:
                    continue
                part = _batch_part(batch, kind, sym, sel, cond_codes, conds, parse_cond, names, quote_sizes)
                parts.append(part)
        except pa.ArrowInvalid as exc:
            raise ColumnarUnsupported(f"{path}: {exc}") from None
        finally:
            stack.close()
        if progress is not None:
            before += sizes[i]
            progress(before, total)
    if any(c is None for c in conds[1:]) and parts:
        bad = np.array([c is None for c in conds], dtype=bool)
        if any(bad[p[-1]].any() for p in parts):
            raise ColumnarUnsupported("a conditions value the object reader refuses")
    if parts:
        cols = [np.concatenate([p[i] for p in parts]) for i in range(9)]
    else:
        cols = [np.empty(0, t) for t in (np.int32, np.int8, np.int64, *[np.float64] * 4, np.uint8, np.int32)]
    sym, kind, ts, a, b, c, d, excl, cond = cols
    if len(ts) and (ts.max() >= _MAX_TS):
        raise ColumnarUnsupported("an event time at or beyond 2116-02-20 (the cores refuse it)")
    # SIP time, then a quote before a trade, then file and row order: one int64 key (times < 2**62, so
    # 2 * ts + 1 fits) sorted stably; timsort takes the files' time-sorted runs in near-linear time
    order = np.argsort(ts * 2 + (kind == 0), kind="stable")
    stats.rows += rows
    stats.events += len(order)
    return Columns(names=names, conds=[c if c is not None else () for c in conds], sym=sym[order],
                   kind=kind[order], ts=ts[order], a=a[order], b=b[order], c=c[order], d=d[order],
                   excl=excl[order], cond=cond[order])


def _batch_part(batch, kind: str, sym, sel, cond_codes: dict, conds: list, parse_cond, names: list[str],
                quote_sizes: str) -> tuple:
    """One record batch's selected rows as (sym, kind, ts, a, b, c, d, excl, cond) arrays, checked as the
    object reader checks them (a failing row: :class:`ColumnarUnsupported`)."""
    import numpy as np

    def col(name: str, fill=None):
        arr = batch.column(name)
        if arr.null_count:
            if fill is None:
                raise ColumnarUnsupported(f"an empty {name} (a bad row for the object reader)")
            arr = arr.fill_null(fill)
        out = arr.to_numpy(zero_copy_only=False)
        return out if sel is None else out[sel]

    if sel is not None:
        sym = sym[sel]
    ts = col("sip_timestamp")
    for name in ("sequence_number", "exchange", "correction", "bid_exchange", "ask_exchange"):
        if name in batch.schema.names:
            col(name, 0)  # parsed by Arrow as int64 (else ArrowInvalid), as the object reader parses it
    n = len(ts)
    if kind == "trades":
        a, b = col("price"), col("size")
        c = d = np.zeros(n)
        excl = np.where(col("correction", 0) != 0, EXCL_CORRECTION, 0).astype(np.uint8)
        cd = batch.column("conditions")
        lut = _lut(cd.dictionary, cond_codes, conds, parse_cond)
        idx = cd.indices.to_numpy(zero_copy_only=False)
        cond = lut[idx if sel is None else idx[sel]] if len(lut) else np.zeros(n, np.int32)
        k = np.zeros(n, np.int8)
        values = (a, b)
    else:
        a, b = col("bid_price"), col("ask_price")
        c, d = col("bid_size"), col("ask_size")
        if quote_sizes == "vendor":
            stock = np.array([not s.startswith("O:") for s in names] or [True], dtype=bool)[sym]
            mult = np.where((ts < SHARES_SINCE_NS) & stock, 100.0, 1.0)
            c, d = c * mult, d * mult  # float(size) * 100 in the object reader: the same IEEE product
        excl = np.zeros(n, np.uint8)
        cond = np.zeros(n, np.int32)
        k = np.ones(n, np.int8)
        values = (a, b, c, d)
    for v in values:
        if not (v >= 0).all():  # negative or NaN: the object reader skips the row, msgspec refuses NaN
            raise ColumnarUnsupported("a negative or NaN price, size or quote field")
    empty = names.index("") if "" in names else -1  # a row without a ticker: bad for the object reader
    if (ts < 0).any() or (sym < 0).any() or (empty >= 0 and (sym == empty).any()):
        raise ColumnarUnsupported("a missing ticker or a negative time")
    return (sym.astype(np.int32), k, ts.astype(np.int64), a.astype(np.float64), b.astype(np.float64),
            np.asarray(c, np.float64), np.asarray(d, np.float64), excl, cond.astype(np.int32))
