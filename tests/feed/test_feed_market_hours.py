"""The live feed's poll fallback follows the exchange calendar (spx_common.calendar): no polling on a
holiday, polling during an early-close session until 13:00 New York, then back to a quiet ``tick``.

The feed's market time while the stream is silent is the last stream event's time plus the silence,
so these tests put the feed on a chosen day by stamping what the fake vendor streams.
"""

from __future__ import annotations

import datetime as dt
import time


from spx_common import calendar as mcal
from spx_common.models import Trade
from tests.conftest import eventually
from tests.feed.helpers import RunningFeed


def ny_ns(y: int, m: int, d: int, hh: int, mm: int, ss: int = 0) -> int:
    return int(dt.datetime(y, m, d, hh, mm, ss, tzinfo=mcal.ET).timestamp()) * 10**9


def _last_trade_polls(fake) -> int:
    return sum(1 for path, _, _ in list(fake.requests) if path.startswith("/v2/last/trade"))


def test_no_polling_on_a_holiday_polling_until_an_early_close_then_quiet(run_dir, fake):
    assert mcal.is_holiday(dt.date(2026, 11, 26)) and mcal.is_early_close(dt.date(2026, 11, 27))
    # Until the first stream event the feed's market time is the wall clock: run during real market
    # hours, it polls before the holiday trade arrives. Those polls get a trade of the holiday too.
    fake.trades["SPY"] = [Trade(sym="SPY", price=590.1, size=100, ts=ny_ns(2026, 11, 26, 10, 59), seq=8)]
    with RunningFeed(run_dir, source="live", api_key="k", ws_url=fake.ws_url, rest_url=fake.rest_url,
                     poll_after_s=0.8, poll_interval_s=0.2, poll_market_hours_only=True, chain_every_s=30,
                     ping_interval_s=5, ping_timeout_s=5, connect_timeout_s=3) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        modes = lambda: [s.mode for s in feed.bodies("status.feed")]  # noqa: E731

        # Thanksgiving 11:00 New York: the stream goes silent, which is expected; no poll mode, no REST
        fake.push("stocks", [Trade(sym="SPY", price=590.0, size=1, ts=ny_ns(2026, 11, 26, 11, 0), seq=1)])
        eventually(lambda: any(e.seq == 1 for e in feed.events("tick.SPY")), 5, what="the holiday trade")
        eventually(lambda: feed.service.mode == "tick", 5, what="tick mode on the holiday")
        seen, polls = len(modes()), _last_trade_polls(fake)
        time.sleep(2.5)  # three times poll_after_s of silence
        assert "poll" not in modes()[seen:]
        assert _last_trade_polls(fake) == polls
        assert feed.service.mode == "tick"
        fake.trades["SPY"] = [Trade(sym="SPY", price=590.5, size=100, ts=ny_ns(2026, 11, 27, 12, 59, 56), seq=9)]

        # the next day closes at 13:00: silent at 12:59:55 -> poll mode and REST polls
        seen = len(modes())
        fake.push("stocks", [Trade(sym="SPY", price=590.2, size=1, ts=ny_ns(2026, 11, 27, 12, 59, 55), seq=2)])
        eventually(lambda: "poll" in modes()[seen:], 5, what="poll mode during the early-close session")
        eventually(lambda: _last_trade_polls(fake) > polls, 5, what="a REST last-trade poll")
        eventually(lambda: any(e.source == "poll" and e.seq == 9 for e in feed.events("tick.SPY")), 5,
                   what="the polled last trade")

        # 13:00 passes (five seconds of market time after the last event): the feed leaves poll mode
        def left_poll_at_the_close():
            bodies = feed.bodies("status.feed")[seen:]
            ms = [s.mode for s in bodies]
            if "poll" not in ms:
                return False
            after = bodies[ms.index("poll"):]
            return any(s.mode == "tick" and s.detail == "market closed" for s in after)

        eventually(left_poll_at_the_close, 10, what="tick / market closed after 13:00")
        n = _last_trade_polls(fake)
        time.sleep(1.0)  # five poll intervals
        assert _last_trade_polls(fake) == n, "no REST polling after the early close"
        assert feed.service.live.polling is False
