"""spx_common.calendar: holidays and early closes by rule, checked against the exchanges' published dates."""

from __future__ import annotations

import datetime as dt

import pytest
from dateutil.easter import easter as reference_easter
from hypothesis import given, settings, strategies as st

from spx_common import calendar as mcal

D = dt.date

#: the exchanges' published full-day closures (NYSE holiday pages, Cboe's US options calendar)
PUBLISHED_HOLIDAYS = {
    2024: [D(2024, 1, 1), D(2024, 1, 15), D(2024, 2, 19), D(2024, 3, 29), D(2024, 5, 27), D(2024, 6, 19),
           D(2024, 7, 4), D(2024, 9, 2), D(2024, 11, 28), D(2024, 12, 25)],
    2025: [D(2025, 1, 1), D(2025, 1, 20), D(2025, 2, 17), D(2025, 4, 18), D(2025, 5, 26), D(2025, 6, 19),
           D(2025, 7, 4), D(2025, 9, 1), D(2025, 11, 27), D(2025, 12, 25)],
    # July 4 is a Saturday: observed Friday July 3
    2026: [D(2026, 1, 1), D(2026, 1, 19), D(2026, 2, 16), D(2026, 4, 3), D(2026, 5, 25), D(2026, 6, 19),
           D(2026, 7, 3), D(2026, 9, 7), D(2026, 11, 26), D(2026, 12, 25)],
    # Juneteenth Saturday -> Fri Jun 18, July 4 Sunday -> Mon Jul 5, Christmas Saturday -> Fri Dec 24
    2027: [D(2027, 1, 1), D(2027, 1, 18), D(2027, 2, 15), D(2027, 3, 26), D(2027, 5, 31), D(2027, 6, 18),
           D(2027, 7, 5), D(2027, 9, 6), D(2027, 11, 25), D(2027, 12, 24)],
    # Saturday New Year (Jan 1 2022) is not observed on Friday Dec 31 2021; Juneteenth's first year,
    # on a Sunday -> Monday June 20; Christmas Sunday -> Monday Dec 26
    2022: [D(2022, 1, 17), D(2022, 2, 21), D(2022, 4, 15), D(2022, 5, 30), D(2022, 6, 20), D(2022, 7, 4),
           D(2022, 9, 5), D(2022, 11, 24), D(2022, 12, 26)],
    # New Year Sunday -> Monday Jan 2
    2023: [D(2023, 1, 2), D(2023, 1, 16), D(2023, 2, 20), D(2023, 4, 7), D(2023, 5, 29), D(2023, 6, 19),
           D(2023, 7, 4), D(2023, 9, 4), D(2023, 11, 23), D(2023, 12, 25)],
    2021: [D(2021, 1, 1), D(2021, 1, 18), D(2021, 2, 15), D(2021, 4, 2), D(2021, 5, 31), D(2021, 7, 5),
           D(2021, 9, 6), D(2021, 11, 25), D(2021, 12, 24)],  # no Juneteenth before 2022
}

PUBLISHED_EARLY_CLOSES = {
    2024: [D(2024, 7, 3), D(2024, 11, 29), D(2024, 12, 24)],
    2025: [D(2025, 7, 3), D(2025, 11, 28), D(2025, 12, 24)],
    2026: [D(2026, 11, 27), D(2026, 12, 24)],  # July 3 is the holiday itself
    2027: [D(2027, 11, 26)],  # July 3 a Saturday, Dec 24 the Christmas holiday
    2023: [D(2023, 7, 3), D(2023, 11, 24)],  # Dec 24 a Sunday
    2021: [D(2021, 11, 26)],  # July 3 a Saturday; Dec 24 the Christmas holiday
}


@pytest.mark.parametrize("year", sorted(PUBLISHED_HOLIDAYS))
def test_holidays_match_the_published_schedule(year):
    assert sorted(mcal.holidays(year)) == PUBLISHED_HOLIDAYS[year]
    for d in PUBLISHED_HOLIDAYS[year]:
        assert mcal.is_holiday(d) and not mcal.is_trading_day(d) and mcal.session(d) is None


@pytest.mark.parametrize("year", sorted(PUBLISHED_EARLY_CLOSES))
def test_early_closes_match_the_published_schedule(year):
    assert sorted(mcal.early_closes(year)) == PUBLISHED_EARLY_CLOSES[year]
    for d in PUBLISHED_EARLY_CLOSES[year]:
        s = mcal.session(d)
        assert s is not None and s.early
        assert (s.close_ns - s.open_ns) // 10**9 == 3.5 * 3600


def test_names_and_observed_days():
    h = mcal.holidays(2026)
    assert h[D(2026, 4, 3)] == "Good Friday" and h[D(2026, 7, 3)] == "Independence Day"
    assert h[D(2026, 11, 26)] == "Thanksgiving"
    assert mcal.early_closes(2026)[D(2026, 11, 27)] == "Day after Thanksgiving"
    assert mcal.is_trading_day(D(2021, 12, 31))  # Saturday New Year 2022 not moved onto Friday
    assert not mcal.is_trading_day(D(2026, 11, 21))  # a Saturday
    assert mcal.is_trading_day(D(2027, 7, 2)) and not mcal.is_early_close(D(2027, 7, 2))


def test_easter_matches_an_independent_implementation_and_known_dates():
    known = {1818: D(1818, 3, 22), 2000: D(2000, 4, 23), 2019: D(2019, 4, 21), 2024: D(2024, 3, 31),
             2025: D(2025, 4, 20), 2026: D(2026, 4, 5), 2027: D(2027, 3, 28), 2038: D(2038, 4, 25),
             2285: D(2285, 3, 22)}
    for y, d in known.items():
        assert mcal.easter(y) == d


@settings(max_examples=300, deadline=None)
@given(st.integers(1583, 4099))
def test_easter_agrees_with_dateutil(year):
    assert mcal.easter(year) == reference_easter(year)


@settings(max_examples=200, deadline=None)
@given(st.integers(1999, 2199))
def test_every_year_has_its_rules(year):
    h = mcal.holidays(year)
    # nine or ten closures (eight or nine before Juneteenth); New Year missing only when it is a Saturday
    expected = 10 - (year < 2022) - (D(year, 1, 1).weekday() == 5)
    assert len(h) == expected, h
    assert all(d.weekday() < 5 and d.year == year for d in h)
    for d, name in mcal.early_closes(year).items():
        assert mcal.is_trading_day(d), (d, name)
    thanksgiving = next(d for d, n in h.items() if n == "Thanksgiving")
    assert thanksgiving.weekday() == 3 and 22 <= thanksgiving.day <= 28
    assert mcal.is_early_close(thanksgiving + dt.timedelta(days=1))


def _ny(d: dt.date, hh: int, mm: int, ss: int = 0) -> int:
    return int(dt.datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=mcal.ET).timestamp()) * 10**9


def test_is_open_edges_on_regular_holiday_and_early_close_days():
    reg, hol, early = D(2026, 11, 20), D(2026, 11, 26), D(2026, 11, 27)
    assert not mcal.is_open(_ny(reg, 9, 29, 59)) and mcal.is_open(_ny(reg, 9, 30))
    assert mcal.is_open(_ny(reg, 15, 59, 59)) and not mcal.is_open(_ny(reg, 16, 0))
    assert mcal.is_open(_ny(reg, 16, 0) - 1)
    assert not any(mcal.is_open(_ny(hol, h, 0)) for h in range(24))
    assert mcal.is_open(_ny(early, 12, 59, 59)) and not mcal.is_open(_ny(early, 13, 0))
    assert mcal.is_open(_ny(early, 13, 0) - 1)
    # across a DST change: the session is 09:30 New York on both sides
    assert mcal.session(D(2026, 3, 9)).open_ns - mcal.session(D(2026, 3, 6)).open_ns == (3 * 86400 - 3600) * 10**9


def test_trading_days_and_neighbours():
    days = mcal.trading_days(D(2026, 11, 23), D(2026, 11, 30))
    assert days == [D(2026, 11, 23), D(2026, 11, 24), D(2026, 11, 25), D(2026, 11, 27), D(2026, 11, 30)]
    assert len(mcal.trading_days(D(2025, 1, 1), D(2025, 12, 31))) == 251  # 250 on NYSE with the Jan 9 closure
    assert len(mcal.trading_days(D(2024, 1, 1), D(2024, 12, 31))) == 252
    assert mcal.next_trading_day(D(2026, 4, 2)) == D(2026, 4, 6)  # over Good Friday and the weekend
    assert mcal.previous_trading_day(D(2027, 7, 6)) == D(2027, 7, 2)
    assert mcal.next_open_ns(_ny(D(2026, 11, 25), 17, 0)) == _ny(D(2026, 11, 27), 9, 30)
    assert mcal.next_open_ns(_ny(D(2026, 11, 27), 8, 0)) == _ny(D(2026, 11, 27), 9, 30)
    assert mcal.next_open_ns(_ny(D(2026, 11, 27), 10, 0)) == _ny(D(2026, 11, 27), 10, 0)


def test_unscheduled_closures_are_added_by_the_caller():
    cal = mcal.MarketCalendar(extra_closures=[D(2025, 1, 9)], extra_early_closes=[D(2025, 1, 8)])
    assert not cal.is_trading_day(D(2025, 1, 9)) and mcal.is_trading_day(D(2025, 1, 9))
    assert cal.holidays(2025)[D(2025, 1, 9)] == "Unscheduled closure"
    assert cal.session(D(2025, 1, 8)).early and not mcal.session(D(2025, 1, 8)).early
    assert len(cal.trading_days(D(2025, 1, 1), D(2025, 12, 31))) == 250  # the published 2025 count
