"""The runner trail (issue 18, item 6): live, the selector trails on the aggregator's 60 s bars (its
``bar_interval``, now one of the aggregator's default intervals); the backtest trails on the same bars:
event-time 60 s buckets of the 1 s bars, closed when the next bucket's first bar arrives, the part of the
trigger's minute before the trigger included (it used to count 60 bars from each trigger)."""

from __future__ import annotations

import datetime as dt

from services.aggregator.config import AggregatorConfig
from services.backtest.engine import Backtester
from services.detector.config import DetectorConfig
from services.detector.host import PluginHost
from services.detector.market import ET
from services.selector.config import SelectorConfig
from spx_common.models import MicroBar, SetupTransition

S = 10**9
MIN = 60 * S
T0 = int(dt.datetime(2026, 11, 16, 10, 0, tzinfo=ET).timestamp()) * S  # a minute boundary


def bar(ts, low, high):
    return MicroBar(sym="SPY", interval="1s", start_ns=ts, open=low, high=high, low=low, close=high, volume=1.0,
                    trades=1, closed=True)


def test_live_selector_trails_on_a_bar_the_aggregator_publishes_by_default():
    assert SelectorConfig().bar_interval in AggregatorConfig().intervals


def test_backtest_trails_on_event_time_60s_bars_like_the_live_aggregator():
    bt = Backtester(DetectorConfig(entry_points=False, plugins=[], symbols=["SPY"]), PluginHost(), pivot_every=60)
    for s in range(30):  # the trigger's minute before the trigger: part of its 60 s bar
        bt.on_bar(bar(T0 + s * S, 99.6, 99.8))
    bt._record([SetupTransition(setup_id="x", detector="d", family="f", sym="SPY", direction="long",
                                to_state="triggered", reason="t", ts=T0 + 30 * S, price=100.0, stop=99.0,
                                targets=[101.0, 102.0])])
    for s in range(30, 60):
        bt.on_bar(bar(T0 + s * S, 100.2, 102.5 if s == 40 else 100.4))  # T1 and T2 at second 40
    lows = [102.2, 102.1, 101.8, 102.3, 102.4]  # minutes 1-5: a swing low in minute 3
    for m, low in enumerate(lows, start=1):
        for s in range(60):
            bt.on_bar(bar(T0 + m * MIN + s * S, low if s == 20 else low + 0.1, low + 0.3))
    bt.on_bar(bar(T0 + 6 * MIN, 102.5, 102.7))  # the first bar of minute 6 closes minute 5's 60 s bar
    trails = [a for a in bt.advice if a.action == "trail_stop"]
    assert [(a.stop, a.price) for a in trails] == [(101.3, 101.8)]  # pivot 101.8 - trail buffer 0.5
    # on the aligned 60 s bar of minute 5, at its event time: its end (as the aggregator publishes it)
    assert trails[0].ts == T0 + 6 * MIN and trails[0].ts % MIN == 0
    assert [a.action for a in bt.advice[:3]] == ["scale_out", "move_stop", "scale_out"]
