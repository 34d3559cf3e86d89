"""NYSE / Cboe trading calendar computed by rule: full-day holidays, 13:00 early closes, sessions.

Pure and event-time only: every function takes a date or an event time (Unix ns) and never reads
the clock, so live, replay and backtest agree (``from spx_common import calendar as mcal``)::

    mcal.is_open(ts_ns)                      # inside the regular session at this event time?
    mcal.session(date)                       # Session(date, open_ns, close_ns, early) or None
    mcal.trading_days(start, end)            # the days with a session, inclusive
    mcal.holidays(2026)                      # {date: "Thanksgiving", ...} (observed dates)
    mcal.early_closes(2026)                  # {date: "Day after Thanksgiving", ...}

Rules (the exchanges' published schedule; US equities and Cboe equity/index options follow it):

=======================  ================================================================
New Year's Day           Jan 1; Sunday -> Monday Jan 2; **Saturday -> not observed** (the
                         exchange stays open on Friday Dec 31, the last day of the year)
Martin Luther King Day   third Monday of January (from 1998)
Washington's Birthday    third Monday of February
Good Friday              two days before Easter Sunday (Gregorian computus)
Memorial Day             last Monday of May
Juneteenth               June 19 (from 2022); Saturday -> Friday, Sunday -> Monday
Independence Day         July 4; Saturday -> Friday, Sunday -> Monday
Labor Day                first Monday of September
Thanksgiving             fourth Thursday of November
Christmas                Dec 25; Saturday -> Friday, Sunday -> Monday
=======================  ================================================================

Early closes at 13:00 New York: July 3 when it is a Monday to Thursday (the day before
Independence Day; when July 4 is a Saturday, July 3 is the holiday itself), the Friday after
Thanksgiving, and Dec 24 when it is a Monday to Thursday.

The regular session is 09:30-16:00 New York (13:00 on early closes); expiring (0DTE) SPXW
options stop trading at the same close.  Non-expiring SPX/SPXW options trade 15 minutes longer
(16:15, 13:15 on early closes); not modelled here.

Not rules, so not here: unscheduled closures (national days of mourning such as 2025-01-09,
weather such as 2012-10-29/30).  Pass them as ``extra_closures`` to :class:`MarketCalendar`.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import NamedTuple
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from spx_common.clock import NS_PER_S

ET = ZoneInfo("America/New_York")
OPEN = dt.time(9, 30)
CLOSE = dt.time(16, 0)
EARLY_CLOSE = dt.time(13, 0)


class Session(NamedTuple):
    """One regular trading session; ``open_ns``/``close_ns`` are Unix ns (close exclusive)."""

    date: dt.date
    open_ns: int
    close_ns: int
    early: bool

    def contains(self, ts_ns: int) -> bool:
        return self.open_ns <= ts_ns < self.close_ns


def easter(year: int) -> dt.date:
    """Western (Gregorian) Easter Sunday: the anonymous Gregorian algorithm (Meeus/Jones/Butcher)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    lunar = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * lunar) // 451
    month, day = divmod(h + lunar - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The ``n``-th (1-based) ``weekday`` (Monday=0) of the month; ``n=-1``: the last one."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _observed(d: dt.date) -> dt.date:
    """Saturday -> the Friday before, Sunday -> the Monday after."""
    if d.weekday() == 5:
        return d - dt.timedelta(days=1)
    if d.weekday() == 6:
        return d + dt.timedelta(days=1)
    return d


@lru_cache(maxsize=256)
def _holidays(year: int) -> tuple[tuple[dt.date, str], ...]:
    out: list[tuple[dt.date, str]] = []
    ny = dt.date(year, 1, 1)
    if ny.weekday() != 5:  # a Saturday New Year is not moved onto Friday Dec 31
        out.append((_observed(ny), "New Year's Day"))
    if year >= 1998:
        out.append((_nth_weekday(year, 1, 0, 3), "Martin Luther King Jr. Day"))
    out.append((_nth_weekday(year, 2, 0, 3), "Washington's Birthday"))
    out.append((easter(year) - dt.timedelta(days=2), "Good Friday"))
    out.append((_nth_weekday(year, 5, 0, -1), "Memorial Day"))
    if year >= 2022:
        out.append((_observed(dt.date(year, 6, 19)), "Juneteenth"))
    out.append((_observed(dt.date(year, 7, 4)), "Independence Day"))
    out.append((_nth_weekday(year, 9, 0, 1), "Labor Day"))
    out.append((_nth_weekday(year, 11, 3, 4), "Thanksgiving"))
    out.append((_observed(dt.date(year, 12, 25)), "Christmas"))
    return tuple(sorted(out))


@lru_cache(maxsize=256)
def _early_closes(year: int) -> tuple[tuple[dt.date, str], ...]:
    out: list[tuple[dt.date, str]] = []
    jul3 = dt.date(year, 7, 3)
    if jul3.weekday() < 4:  # Monday-Thursday; a Friday July 3 is the observed holiday
        out.append((jul3, "Day before Independence Day"))
    out.append((_nth_weekday(year, 11, 3, 4) + dt.timedelta(days=1), "Day after Thanksgiving"))
    dec24 = dt.date(year, 12, 24)
    if dec24.weekday() < 4:  # a Friday Dec 24 is the observed Christmas holiday
        out.append((dec24, "Christmas Eve"))
    return tuple(out)


def _ns(d: dt.date, t: dt.time) -> int:
    return int(dt.datetime.combine(d, t, ET).timestamp()) * NS_PER_S


def et_date(ts_ns: int) -> dt.date:
    """The New York calendar date of an event time (floor to the second: no float rounding)."""
    return dt.datetime.fromtimestamp(ts_ns // NS_PER_S, ET).date()


class MarketCalendar:
    """The rule calendar plus optional unscheduled closures and early closes (dates)."""

    def __init__(self, extra_closures: Iterable[dt.date] = (), extra_early_closes: Iterable[dt.date] = ()) -> None:
        self.extra_closures = frozenset(extra_closures)
        self.extra_early_closes = frozenset(extra_early_closes)

    def holidays(self, year: int) -> dict[dt.date, str]:
        """Full-day closures of ``year`` (observed dates) -> name."""
        out = dict(_holidays(year))
        for d in self.extra_closures:
            if d.year == year:
                out.setdefault(d, "Unscheduled closure")
        return dict(sorted(out.items()))

    def early_closes(self, year: int) -> dict[dt.date, str]:
        """13:00 closes of ``year`` -> name."""
        out = dict(_early_closes(year))
        for d in self.extra_early_closes:
            if d.year == year:
                out.setdefault(d, "Unscheduled early close")
        return dict(sorted(out.items()))

    def is_holiday(self, d: dt.date) -> bool:
        return d in self.extra_closures or any(h == d for h, _ in _holidays(d.year))

    def is_early_close(self, d: dt.date) -> bool:
        if not self.is_trading_day(d):
            return False
        return d in self.extra_early_closes or any(e == d for e, _ in _early_closes(d.year))

    def is_trading_day(self, d: dt.date) -> bool:
        """A weekday that is not a holiday."""
        return d.weekday() < 5 and not self.is_holiday(d)

    def session(self, d: dt.date) -> Session | None:
        """The regular session of ``d``, or None when the market is closed all day."""
        if not self.is_trading_day(d):
            return None
        early = self.is_early_close(d)
        return Session(d, _ns(d, OPEN), _ns(d, EARLY_CLOSE if early else CLOSE), early)

    def session_at(self, ts_ns: int) -> Session | None:
        """The session of the New York date of ``ts_ns`` (whether or not ``ts_ns`` is inside it)."""
        return self.session(et_date(ts_ns))

    def is_open(self, ts_ns: int) -> bool:
        """True when ``ts_ns`` is inside a regular session (open inclusive, close exclusive)."""
        s = self.session_at(ts_ns)
        return s is not None and s.contains(ts_ns)

    def trading_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Trading days from ``start`` to ``end`` inclusive."""
        out, d = [], start
        while d <= end:
            if self.is_trading_day(d):
                out.append(d)
            d += dt.timedelta(days=1)
        return out

    def next_trading_day(self, d: dt.date) -> dt.date:
        """The first trading day strictly after ``d``."""
        d += dt.timedelta(days=1)
        while not self.is_trading_day(d):
            d += dt.timedelta(days=1)
        return d

    def previous_trading_day(self, d: dt.date) -> dt.date:
        """The last trading day strictly before ``d``."""
        d -= dt.timedelta(days=1)
        while not self.is_trading_day(d):
            d -= dt.timedelta(days=1)
        return d

    def next_open_ns(self, ts_ns: int) -> int:
        """The open of the first session that has not closed at ``ts_ns`` (``ts_ns`` itself when open)."""
        s = self.session_at(ts_ns)
        if s is not None and ts_ns < s.close_ns:
            return max(ts_ns, s.open_ns)
        nxt = self.session(self.next_trading_day(et_date(ts_ns)))
        assert nxt is not None
        return nxt.open_ns


#: the rule calendar; the module-level functions below use it
DEFAULT = MarketCalendar()
holidays = DEFAULT.holidays
early_closes = DEFAULT.early_closes
is_holiday = DEFAULT.is_holiday
is_early_close = DEFAULT.is_early_close
is_trading_day = DEFAULT.is_trading_day
session = DEFAULT.session
session_at = DEFAULT.session_at
is_open = DEFAULT.is_open
trading_days = DEFAULT.trading_days
next_trading_day = DEFAULT.next_trading_day
previous_trading_day = DEFAULT.previous_trading_day
next_open_ns = DEFAULT.next_open_ns

__all__ = ["DEFAULT", "ET", "MarketCalendar", "Session", "early_closes", "easter", "et_date", "holidays",
           "is_early_close", "is_holiday", "is_open", "is_trading_day", "next_open_ns", "next_trading_day",
           "previous_trading_day", "session", "session_at", "trading_days"]
