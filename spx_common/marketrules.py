"""Market rules a trader assumes, in one place: which prints make bars, and one unit per field.

**Trade conditions** (docs/microbars.md, "Which prints make bars"). The vendor publishes, per stock trade
condition id, whether a print with it updates the consolidated high/low, open/close and volume
(``trade_conditions.json`` beside this module: the table, its source and date). A stock print whose
conditions all update the three makes bars. One whose excluding conditions (any of the three false) all
still update the volume is **volume only** (``excl`` 4: average-price, prior-reference, out-of-sequence,
odd-lot, cash, next-day, contingent prints, ...): its size counts in bar volume and neutral volume and
nothing else. One with a condition that does not update the volume (official open/close markers, the
corrected consolidated close) is **excluded** (``excl`` 1). One override, named in the table file:
Form T (12, extended hours) updates bars, as in the vendor's own minute bars. Unknown ids do not exclude
(a vocabulary we do not know must never hide a real trade). Option prints have no table here; only
corrections exclude them.

A **correction** (``correction`` != 0 in REST and flat files: the print was corrected or cancelled) is
excluded, and so, when the guard is on (``outlier_pct`` > 0), is a print **without a condition** priced
more than ``outlier_pct`` percent outside the quote in force (bid/ask both > 0).

The flag is :attr:`spx_common.models.Trade.excl` (0 = in bars; :data:`EXCL_CONDITION`,
:data:`EXCL_CORRECTION`, :data:`EXCL_OUTLIER`, :data:`EXCL_VOLUME_ONLY`). Vendor readers set the correction flag (the field is theirs);
:class:`TradeRules` sets the rest and counts what it excluded per reason. The feed runs every event it
publishes through one ``TradeRules`` (live stream, REST backfill and poll, flat-file and synthetic replay),
``spx bars`` and the backtester run theirs over what they read, so the bus, the journal, the aggregator's
tick cache and every offline path carry the same flag. The bar cores (``fastcore.TickCore``, ``pybars``)
skip an excluded trade for everything but the tick cache and add a volume-only one's size to volume and
neutral volume only; the detector's lifecycle ignores both.

**Units** (docs/feed.md, "Units"). Stock quote sizes are shares on every path, option sizes contracts:
the vendor sent stock quote sizes in round lots of 100 before 2025-11-03 on the WebSocket, REST and flat
files alike, so :func:`quote_size_factor` is applied by all three readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
import datetime as dt

from spx_common.models import MarketEvent, Quote, Trade

if TYPE_CHECKING:  # numpy comes with pyarrow; imported where the columnar path runs
    import numpy as np
    import numpy.typing as npt

EXCL_CONDITION = 1
EXCL_CORRECTION = 2
EXCL_OUTLIER = 3
#: a print that updates the consolidated volume and not the price: its size counts in bar volume (and
#: neutral volume), nothing else (no OHLC, trade count, VWAP or side)
EXCL_VOLUME_ONLY = 4
REASONS = {EXCL_CONDITION: "condition", EXCL_CORRECTION: "correction", EXCL_OUTLIER: "outlier",
           EXCL_VOLUME_ONLY: "volume only"}

TABLE_PATH = Path(__file__).with_name("trade_conditions.json")


@dataclass(frozen=True, slots=True)
class Condition:
    id: int
    name: str
    updates_high_low: bool
    updates_open_close: bool
    updates_volume: bool

    @property
    def excludes(self) -> bool:
        """A print with this condition does not make bars as a regular print (see the module docstring)."""
        return not (self.updates_high_low and self.updates_open_close and self.updates_volume)

    @property
    def volume_only(self) -> bool:
        """It updates the consolidated volume but not the last sale or the high/low."""
        return self.updates_volume and self.excludes


def load_table(path: Path = TABLE_PATH) -> tuple[dict[int, Condition], dict[str, Any]]:
    """The condition table (``id -> Condition``, the project's override applied) and the file's metadata."""
    doc = json.loads(path.read_text())
    table: dict[int, Condition] = {}
    for row in doc["conditions"]:
        c = Condition(int(row["id"]), str(row["name"]), bool(row["updates_high_low"]),
                      bool(row["updates_open_close"]), bool(row["updates_volume"]))
        if str(c.id) in doc.get("override", {}):
            c = Condition(c.id, c.name, True, True, True)
        table[c.id] = c
    meta = {k: v for k, v in doc.items() if k != "conditions"}
    return table, meta


TABLE, TABLE_META = load_table()
#: condition ids whose prints stay out of bars
EXCLUDING = frozenset(i for i, c in TABLE.items() if c.excludes)


#: condition ids whose prints count in bar volume only
VOLUME_ONLY_IDS = frozenset(i for i, c in TABLE.items() if c.volume_only)


def excluding_conditions(cond: Iterable[int]) -> list[int]:
    """The ids of ``cond`` that exclude a stock print from bars (empty: the print makes bars)."""
    return [c for c in cond if c in EXCLUDING]


def classify(cond: Iterable[int]) -> int:
    """``Trade.excl`` of a stock print with these conditions: 0 (makes bars), :data:`EXCL_VOLUME_ONLY` (every
    excluding condition still updates the volume) or :data:`EXCL_CONDITION` (one does not)."""
    ex = excluding_conditions(cond)
    if not ex:
        return 0
    return EXCL_VOLUME_ONLY if all(c in VOLUME_ONLY_IDS for c in ex) else EXCL_CONDITION


def condition_name(cid: int) -> str:
    c = TABLE.get(cid)
    return c.name if c is not None else "unknown"


# ---------------------------------------------------------------------------------------- units

#: 2025-11-03 00:00 America/New_York (05:00 UTC), in ns: stock quote sizes are shares from here on.
SHARES_SINCE_NS = 1_762_146_000 * 1_000_000_000


def quote_size_factor(sym: str, ts_ns: int) -> int:
    """What the vendor's quote sizes of ``sym`` at ``ts_ns`` are multiplied by to be shares (stocks) or
    contracts (options, ``O:`` tickers): 100 for stock quotes stamped before 2025-11-03 (round lots), else 1."""
    return 100 if ts_ns < SHARES_SINCE_NS and not sym.startswith("O:") else 1


# ---------------------------------------------------------------------------------------- the rule, applied


class TradeRules:
    """Flag the trades of an event stream that stay out of bars, and count them.

    ``apply(events)`` sets :attr:`Trade.excl` in place (events already flagged keep their flag) and returns
    the number of excluded trades seen (flagged here or before). ``excluded[label]`` counts excluded prints by label: a condition id
    (``"37"``; a print with two excluding conditions counts under both), ``"correction"`` or ``"outlier"``;
    ``excluded_size`` likewise sums their sizes. ``outlier_pct`` > 0 turns the outlier guard on: the quote
    in force is the latest quote of the symbol seen by this instance, in stream order.
    ``keep`` > 0 keeps the first ``keep`` excluded trades in ``kept`` (``spx bars --explain``).
    """

    def __init__(self, outlier_pct: float = 0.0, keep: int = 0) -> None:
        if outlier_pct < 0:
            raise ValueError("outlier_pct must be >= 0 (0: the guard is off)")
        self.outlier = outlier_pct / 100.0
        self.keep = keep
        self.kept: list[Trade] = []
        self.excluded: dict[str, int] = {}
        self.excluded_size: dict[str, float] = {}
        self._quotes: dict[str, Quote] = {}
        self._verdicts: dict[tuple[int, ...], tuple[int, tuple[str, ...]]] = {}  # cond tuple -> (excl, labels), bounded

    def _verdict(self, cond: list[int]) -> tuple[int, tuple[str, ...]]:
        """(excl, labels) of a stock print's conditions, memoised (bounded)."""
        key = tuple(cond)
        out = self._verdicts.get(key)
        if out is None:
            out = (classify(key), tuple(str(c) for c in excluding_conditions(key)))
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            self._verdicts[key] = out
        return out

    def _count(self, ev: Trade, labels: Iterable[str]) -> None:
        for label in labels:
            self.excluded[label] = self.excluded.get(label, 0) + 1
            self.excluded_size[label] = self.excluded_size.get(label, 0.0) + ev.size
        if len(self.kept) < self.keep:
            self.kept.append(ev)

    def apply(self, events: Iterable[MarketEvent]) -> int:
        n = 0
        guard = self.outlier > 0
        quotes = self._quotes
        verdicts = self._verdicts
        for ev in events:
            if type(ev) is not Trade:
                if guard and type(ev) is Quote:
                    quotes[ev.sym] = ev
                continue
            cond = ev.cond
            if ev.excl:  # flagged upstream (a reader's correction, or an earlier TradeRules): counted here too
                excl = ev.excl
                self._count(ev, self._verdict(cond)[1] if excl in (EXCL_CONDITION, EXCL_VOLUME_ONLY)
                            else (REASONS.get(excl, "other"),))
                n += 1
                continue
            if cond:
                if ev.sym.startswith("O:"):
                    continue  # no option table: only corrections (above) exclude option prints
                verdict = verdicts.get(tuple(cond))
                if verdict is None:
                    verdict = self._verdict(cond)
                if verdict[0]:
                    ev.excl = verdict[0]
                    self._count(ev, verdict[1])
                    n += 1
            elif guard:
                q = quotes.get(ev.sym)
                if q is not None and q.bid > 0 and q.ask > 0 and (
                        ev.price > q.ask * (1 + self.outlier) or ev.price < q.bid * (1 - self.outlier)):
                    ev.excl = EXCL_OUTLIER
                    self._count(ev, ("outlier",))
                    n += 1
        return n

    def apply_columns(self, names: list[str], sym: npt.NDArray[Any], kind: npt.NDArray[Any], excl: npt.NDArray[Any],
                      cond: npt.NDArray[Any], conds: list[tuple[int, ...]],
                      size: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """:meth:`apply` on columns (``spx_common.flatfiles.Columns``, stream order): the new ``excl``
        array (a reader's flag kept, :data:`EXCL_CONDITION` or :data:`EXCL_VOLUME_ONLY` set by the condition
        table) with the same
        counts and size sums as :meth:`apply` on the same events. Only with the outlier guard off and
        ``keep`` 0 (the guard needs the quote in force per trade: :meth:`apply`)."""
        import numpy as np  # at run time only here: the event path needs no numpy

        if self.outlier > 0 or self.keep:
            raise ValueError("apply_columns: the outlier guard and keep need apply()")
        option = np.array([n.startswith("O:") for n in names] or [False], dtype=bool)
        verdict = [self._verdict(list(c)) if c else (0, ()) for c in conds]  # once per distinct conditions
        code = np.array([v[0] for v in verdict] or [0], dtype=np.uint8)
        trade = kind == 0
        flagged = trade & (excl != 0)
        by_cond = trade & (excl == 0) & (code[cond] != 0) & ~option[sym]
        out = np.where(by_cond, code[cond], excl).astype(np.uint8)
        labelled: dict[str, list[Any]] = {}
        for i in np.flatnonzero(flagged):  # rare: a loop keeps the counting rules in one place
            e = int(out[i])
            labels = (verdict[cond[i]][1] if e in (EXCL_CONDITION, EXCL_VOLUME_ONLY)
                      else (REASONS.get(e, "other"),))
            for label in labels:
                labelled.setdefault(label, []).append(i)
        for c in np.unique(cond[by_cond]):
            rows = np.flatnonzero(by_cond & (cond == c))
            for label in verdict[c][1]:
                labelled.setdefault(label, []).append(rows)
        for label, idx in labelled.items():
            rows = np.sort(np.concatenate([np.atleast_1d(x) for x in idx]))
            self.excluded[label] = self.excluded.get(label, 0) + len(rows)
            # sequential sum in stream order, as apply() adds: cumsum is left to right
            sizes = np.concatenate([[self.excluded_size.get(label, 0.0)], size[rows]])
            self.excluded_size[label] = float(np.cumsum(sizes)[-1])
        return out

    def take_counts(self) -> tuple[dict[str, int], dict[str, float]]:
        """The counts since the last call (for moving them into metrics), then reset."""
        c, s = self.excluded, self.excluded_size
        self.excluded, self.excluded_size = {}, {}
        return c, s


def explain_row(ev: Trade) -> str:
    """One line about an excluded trade: time, symbol, price, size, why."""

    when = dt.datetime.fromtimestamp(ev.ts / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if ev.excl in (EXCL_CONDITION, EXCL_VOLUME_ONLY):
        why = ("volume only, " if ev.excl == EXCL_VOLUME_ONLY else "") + "conditions " + ", ".join(
            f"{c} {condition_name(c)}" for c in excluding_conditions(ev.cond))
    else:
        why = REASONS.get(ev.excl, f"excl={ev.excl}")
        if ev.cond:
            why += f" (conditions {list(ev.cond)})"
    return f"{when} {ev.sym} price {ev.price!r} size {ev.size:,.10g} seq {ev.seq}: {why}"
