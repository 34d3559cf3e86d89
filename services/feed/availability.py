"""Feed availability over the regular session: the rollout SLO "prices flow (tick or fallback poll)
> 99.5% of session time", measured (pure: event time in, figures out; the feed service wraps it).

A regular-session second ``[t, t + 1 s)`` is *available* when the newest price the feed published
(a trade or an index value of a watched symbol, from the stream or the REST poll) is at most
``stale_s`` old at the second's end: a quiet second right after a print counts, a silent stream does
not. ``pct`` = available seconds / session seconds elapsed so far (the whole session once it closed);
the longest gap is the longest run of unavailable seconds, with its start. Sessions come from the
exchange calendar (early closes end at 13:00); time outside them is not counted. A day's figures
are final once event time passes its close (:meth:`Availability.take_closed`).
"""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass

from spx_common.calendar import MarketCalendar, Session, et_date
from spx_common.clock import NS_PER_S



@dataclass
class DayAvailability:
    day: str  # New York date, YYYY-MM-DD
    session_s: int  # regular-session seconds of the day (23,400; 12,600 on an early close)
    elapsed_s: int  # session seconds evaluated so far
    available_s: int
    longest_gap_s: int
    longest_gap_start_ns: int | None
    closed: bool = False

    @property
    def pct(self) -> float | None:
        return round(100.0 * self.available_s / self.elapsed_s, 4) if self.elapsed_s else None

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day, "pct": self.pct, "session_s": self.session_s, "elapsed_s": self.elapsed_s,
                "available_s": self.available_s, "longest_gap_s": self.longest_gap_s,
                "longest_gap_start_ns": self.longest_gap_start_ns, "closed": self.closed}


class Availability:
    """Availability of one feed, session by session, from price event times and the clock's advance."""

    def __init__(self, stale_s: float = 5.0, calendar: MarketCalendar | None = None) -> None:
        self.stale_ns = int(stale_s * NS_PER_S)
        self.cal = calendar or MarketCalendar()
        self.last_price_ns: int | None = None
        self.day: DayAvailability | None = None
        self._session: Session | None = None
        self._cursor_ns = 0  # start of the next session second to evaluate
        self._gap_start: int | None = None
        self._closed: list[DayAvailability] = []

    # ------------------------------------------------------------------ inputs

    def on_price(self, ts_ns: int) -> None:
        """A price was published with event time ``ts_ns`` (the newest one counts)."""
        self.advance(ts_ns)
        if self.last_price_ns is None or ts_ns > self.last_price_ns:
            self.last_price_ns = ts_ns

    def advance(self, now_ns: int) -> None:
        """Evaluate every session second that ended at or before ``now_ns`` (call it on a heartbeat too,
        so a silent feed shows as a gap while it is silent)."""
        while True:
            if self._session is None:
                s = self._next_session(now_ns)
                if s is None or now_ns < s.open_ns:
                    return
                self._session, self._cursor_ns, self._gap_start = s, s.open_ns, None
                self.day = DayAvailability(s.date.isoformat(), (s.close_ns - s.open_ns) // NS_PER_S, 0, 0, 0, None)
            s = self._session
            end = min(now_ns, s.close_ns)
            while self._cursor_ns + NS_PER_S <= end:
                self._second(self._cursor_ns)
                self._cursor_ns += NS_PER_S
            if self._cursor_ns < s.close_ns:
                return
            assert self.day is not None
            self.day.closed = True
            self._closed.append(self.day)
            self._after = s.close_ns
            self._session = None

    _after: int | None = None  # close of the last finished session

    # ------------------------------------------------------------------ outputs

    def current(self) -> DayAvailability | None:
        """The newest session's figures so far (None before the first session second)."""
        return self.day

    def take_closed(self) -> list[DayAvailability]:
        """Sessions that ended since the last call (final figures), oldest first."""
        out, self._closed = self._closed, []
        return out

    # ------------------------------------------------------------------ internals

    def _next_session(self, now_ns: int) -> Session | None:
        """The first session not yet finished: after the last finished one, else the one of ``now_ns``'s
        date that has not closed at ``now_ns`` (a feed started after the close starts with tomorrow)."""
        if self._after is not None:
            d = self.cal.next_trading_day(et_date(self._after - 1))
        else:
            s = self.cal.session_at(now_ns)
            if s is not None and now_ns < s.close_ns:
                return s
            d = self.cal.next_trading_day(et_date(now_ns))
        return self.cal.session(d)

    def _second(self, t: int) -> None:
        day = self.day
        assert day is not None
        day.elapsed_s += 1
        last = self.last_price_ns
        if last is not None and last >= t + NS_PER_S - self.stale_ns:  # fresh at the second's end
            day.available_s += 1
            self._gap_start = None
            return
        if self._gap_start is None:
            self._gap_start = t
        run = (t + NS_PER_S - self._gap_start) // NS_PER_S
        if run > day.longest_gap_s:
            day.longest_gap_s, day.longest_gap_start_ns = run, self._gap_start
