"""Feed availability over the regular session (issue 28): the share of session seconds with a fresh price
and the longest gap, on a real trading day with a planted five-minute gap, checked against an independent
brute-force computation; early closes; a silent feed shows as a growing gap on the clock's advance."""

from __future__ import annotations

import bisect
import datetime as dt
import os
from pathlib import Path

import pytest

from services.feed.availability import Availability
from spx_common.clock import NS_PER_S
from spx_common.calendar import MarketCalendar

ROOT = Path(__file__).resolve().parents[2]


def real_dir() -> Path | None:
    for d in (os.environ.get("SPX_REAL_DATA"), ROOT.parent / "shared" / "data" / "real", "/work/shared/data/real"):
        if d and Path(d, "2013-10-07-trades-SPY.csv.gz").exists():
            return Path(d)
    return None


def brute(prints: list[int], open_ns: int, close_ns: int, stale_ns: int) -> tuple[int, int, int | None]:
    """Available seconds, longest gap and its start, second by second with a binary search."""
    avail, run, start, best, best_start = 0, 0, None, 0, None
    for t in range(open_ns, close_ns, NS_PER_S):
        end = t + NS_PER_S
        fresh = bisect.bisect_left(prints, end) - bisect.bisect_left(prints, end - stale_ns) > 0
        if fresh:
            avail += 1
            run, start = 0, None
        else:
            start = t if start is None else start
            run += 1
            if run > best:
                best, best_start = run, start
    return avail, best, best_start


def test_a_real_day_with_a_planted_gap_matches_an_independent_count():
    from spx_common.flatfiles import iter_events

    real = real_dir()
    if real is None:
        pytest.skip("the shared real days are not beside this checkout")
    session = MarketCalendar().session(dt.date(2013, 10, 7))
    gap_from = session.open_ns + 90 * 60 * NS_PER_S  # 11:00 New York
    gap_to = gap_from + 300 * NS_PER_S
    every = [e.ts for e in iter_events(real / "2013-10-07-trades-SPY.csv.gz", symbols=["SPY"])]
    prints = [ts for ts in every if not gap_from <= ts < gap_to]

    def run(ts_list):
        av = Availability(stale_s=5.0)
        for ts in ts_list:
            av.on_price(ts)
        av.advance(session.close_ns + 3600 * NS_PER_S)
        (d,) = av.take_closed()
        return d

    day, whole = run(prints), run(every)
    avail, longest, start = brute(sorted(prints), session.open_ns, session.close_ns, 5 * NS_PER_S)
    assert day.closed and day.day == "2013-10-07" and day.session_s == day.elapsed_s == 23_400
    assert day.available_s == avail and day.longest_gap_s == longest and day.longest_gap_start_ns == start
    # the planted gap is the day's longest: it starts within 5 s after 11:00 and lasts nearly 300 s
    assert gap_from <= start < gap_from + 5 * NS_PER_S and 290 <= longest <= 300
    # SPY alone in 2013 left ~3.8% of seconds without a print in the last 5 s; the planted gap costs its length
    assert 200 < whole.available_s - day.available_s <= 300  # the gap's seconds that had prints before
    assert 95.0 < day.pct < whole.pct < 98.0


def test_early_close_days_count_their_short_session_and_days_roll_over():
    cal = MarketCalendar()
    day = dt.date(2026, 11, 27)  # the day after Thanksgiving closes at 13:00
    s = cal.session(day)
    assert s.early
    av = Availability(stale_s=2.0, calendar=cal)
    for t in range(s.open_ns, s.close_ns, NS_PER_S):  # a price every second
        av.on_price(t)
    nxt = cal.session(cal.next_trading_day(day))
    av.on_price(nxt.open_ns + 10 * NS_PER_S)
    closed = av.take_closed()
    assert [(d.day, d.session_s, d.available_s, d.longest_gap_s) for d in closed] == [(day.isoformat(), 12_600,
                                                                                         12_600, 0)]
    cur = av.current()
    # the next session: its first 10 seconds had no price yet (the feed was silent at the open)
    assert cur.day == nxt.date.isoformat() and cur.elapsed_s == 10 and cur.available_s == 0
    assert cur.longest_gap_s == 10 and cur.longest_gap_start_ns == nxt.open_ns


def test_a_silent_feed_shows_as_a_growing_gap_while_it_is_silent():
    s = MarketCalendar().session(dt.date(2026, 12, 7))
    av = Availability(stale_s=5.0)
    av.on_price(s.open_ns + 100 * NS_PER_S)
    av.advance(s.open_ns + 160 * NS_PER_S)  # heartbeats: the clock moves, no price
    cur = av.current()
    assert cur.elapsed_s == 160 and cur.available_s == 5  # seconds 100..104 saw the price fresh
    assert cur.longest_gap_s == 100 and cur.pct == pytest.approx(100 * 5 / 160, abs=1e-3)
    av.advance(s.open_ns + 200 * NS_PER_S)
    assert av.current().longest_gap_s == 100 and av.current().elapsed_s == 200  # 105..199 is 95 s
    av.advance(s.open_ns + 210 * NS_PER_S)
    assert av.current().longest_gap_s == 105 and av.current().longest_gap_start_ns == s.open_ns + 105 * NS_PER_S


def test_before_the_open_and_on_closed_days_nothing_is_counted():
    cal = MarketCalendar()
    sat = dt.date(2026, 12, 5)
    av = Availability(calendar=cal)
    noon = int(dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC).timestamp()) * NS_PER_S
    av.on_price(noon)
    av.advance(noon + 3600 * NS_PER_S)
    assert av.current() is None and not av.take_closed() and not cal.is_trading_day(sat)
