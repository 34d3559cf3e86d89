"""The regular session from the exchange calendar bounds the market state: early closes and holidays."""

from __future__ import annotations

import datetime as dt

from services.detector.market import SessionState
from spx_common import calendar as mcal
from spx_common.models import MicroBar

S = 1_000_000_000


def at(day: dt.date, h: int, m: int) -> int:
    return int(dt.datetime(day.year, day.month, day.day, h, m, tzinfo=mcal.ET).timestamp()) * S


def bar(ts: int, price: float, volume: float = 100.0) -> MicroBar:
    return MicroBar(sym="SPY", interval="1s", start_ns=ts, open=price, high=price, low=price, close=price,
                    volume=volume, trades=1, vwap=price, closed=True)


def test_an_early_close_ends_the_session_at_13_00():
    day = dt.date(2026, 11, 27)  # the Friday after Thanksgiving
    assert mcal.is_early_close(day)
    ss = SessionState(opening_range_min=15)
    ss.on_bar(bar(at(day, 9, 0), 90.0))  # pre-market
    ss.on_bar(bar(at(day, 9, 30), 100.0))
    ss.on_bar(bar(at(day, 12, 59), 101.0))
    assert ss.now == "regular" and ss.snapshot()["session"]["early_close"]
    ss.on_bar(bar(at(day, 13, 0), 120.0, volume=1e6))  # after the early close: post-market
    doc = ss.snapshot()
    assert doc["session"]["now"] == "post" and doc["session"]["close_ns"] == at(day, 13, 0)
    assert (doc["low"], doc["high"]) == (100.0, 101.0) and doc["vwap"] == 100.5
    assert doc["opening_range"]["high"] == 100.0 and doc["last"] == 120.0
    assert (doc["extended"]["low"], doc["extended"]["high"]) == (90.0, 120.0)


def test_a_holiday_has_no_session_and_keeps_the_prior_day():
    ss = SessionState()
    day = dt.date(2026, 11, 25)
    ss.on_bar(bar(at(day, 10, 0), 100.0))
    ss.on_bar(bar(at(day, 16, 30), 130.0))  # post-market: not the day's close
    thanksgiving = dt.date(2026, 11, 26)
    ss.on_bar(bar(at(thanksgiving, 10, 0), 99.0))
    doc = ss.snapshot()
    assert doc["session"] == {"now": "closed", "values": "regular", "open_ns": None, "close_ns": None,
                              "early_close": False}
    assert doc["high"] is None and doc["vwap"] is None and doc["opening_range"]["high"] is None
    assert doc["prior_day"] == {"high": 100.0, "low": 100.0, "close": 100.0}
