"""The regular session on real trading days (../shared/data/real: SPY, 2013-10-07 and 2013-10-09, Massive
flat-file layout, sizes in shares, no condition codes). Short windows around the open and the close.

* the opening range, the session high/low and the session VWAP of the market state equal an independent
  computation from the trades of 09:30-16:00 only, with pre- and post-market trades in the stream;
* through the tick backtest (the live aggregator, detectors and lifecycle), no setup forms outside the regular
  session by default; a plugin opted in with ``[detector] extended_hours`` runs on the extended-hours bars.
"""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pytest

from services.aggregator.bars import BarAggregator
from services.backtest.engine import Backtester
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from services.detector.hookspecs import API_VERSION, hookimpl
from spx_common import calendar as mcal
from spx_common import flatfiles
from spx_common.marketrules import TradeRules
from spx_common.models import Trade

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="the real days are not on this machine")


def ns(day: str, hm: str) -> int:
    d = dt.date.fromisoformat(day)
    h, m = map(int, hm.split(":"))
    return int(dt.datetime(d.year, d.month, d.day, h, m, tzinfo=mcal.ET).timestamp()) * 1_000_000_000


def window(tmp_path: Path, day: str, start: str, end: str) -> list:
    """The SPY trades and quotes of ``day`` with SIP time in [start, end) New York, read by the production
    flat-file reader (sizes already shares) and flagged by the feed's trade rules."""
    a, b = ns(day, start), ns(day, end)
    paths = []
    for kind in ("trades", "quotes"):
        src = REAL / f"{day}-{kind}-SPY.csv.gz"
        dst = tmp_path / f"{day}-{start.replace(':', '')}-{kind}.csv"
        with gzip.open(src, "rt") as fh, dst.open("w") as out:
            header = fh.readline()
            out.write(header)
            col = header.strip().split(",").index("sip_timestamp")
            for line in fh:
                # the conditions column is empty in these files: a plain split finds the column
                if a <= int(line.split(",")[col]) < b:
                    out.write(line)
        paths.append(dst)
    events = list(flatfiles.read_merged(paths, quote_sizes="shares"))
    TradeRules().apply(events)
    return events


def bars_of(events: list) -> list:
    agg = BarAggregator(["1s"])
    agg.on_events(events)
    return agg.flush()


def engine_state(events: list) -> dict:
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"], opening_range_min=15), PluginHost())
    for bar in bars_of(events):
        eng.on_bar(bar)
    return eng.state_for("SPY")


@pytest.mark.parametrize("day", ["2013-10-07", "2013-10-09"])
def test_opening_range_high_low_and_vwap_are_the_regular_sessions(tmp_path, day):
    events = window(tmp_path, day, "09:00", "10:05")
    trades = [e for e in events if type(e) is Trade and not e.excl]
    open_ns = ns(day, "09:30")
    regular = [t for t in trades if t.ts >= open_ns]
    pre = [t for t in trades if t.ts < open_ns]
    assert len(pre) > 100 and len(regular) > 10_000  # the window really holds both
    opening = [t.price for t in regular if t.ts < open_ns + 15 * 60 * 1_000_000_000]
    st = engine_state(events)
    assert st["session"]["now"] == "regular" and st["session"]["values"] == "regular"
    assert st["session"]["open_ns"] == open_ns and st["session"]["close_ns"] == ns(day, "16:00")
    assert (st["opening_range"]["low"], st["opening_range"]["high"]) == (min(opening), max(opening))
    assert st["opening_range"]["complete"]
    assert (st["low"], st["high"]) == (min(t.price for t in regular), max(t.price for t in regular))
    vwap = sum(t.price * t.size for t in regular) / sum(t.size for t in regular)
    assert st["vwap"] == pytest.approx(vwap, rel=1e-12)
    every = sum(t.price * t.size for t in trades) / sum(t.size for t in trades)
    assert st["extended"]["vwap"] == pytest.approx(every, rel=1e-12)
    assert st["extended"]["vwap"] != pytest.approx(vwap, rel=1e-9)  # the pre-market would have moved it
    assert (st["extended"]["low"], st["extended"]["high"]) == (min(t.price for t in trades),
                                                               max(t.price for t in trades))


def test_post_market_trades_stay_out_of_the_session_values(tmp_path):
    day = "2013-10-09"
    events = window(tmp_path, day, "15:50", "16:40")
    trades = [e for e in events if type(e) is Trade and not e.excl]
    close_ns = ns(day, "16:00")
    regular = [t for t in trades if t.ts < close_ns]
    post = [t for t in trades if t.ts >= close_ns]
    assert len(post) > 100
    st = engine_state(events)
    assert st["session"]["now"] == "post"
    assert (st["low"], st["high"]) == (min(t.price for t in regular), max(t.price for t in regular))
    vwap = sum(t.price * t.size for t in regular) / sum(t.size for t in regular)
    assert st["vwap"] == pytest.approx(vwap, rel=1e-12)
    assert st["last"] == bars_of(events)[-1].close  # the latest close, whatever the session


class Spy:
    """A plugin that forms nothing and records the bars it was called on."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    @hookimpl
    def spx_detector_describe(self):
        return {"name": "session_spy", "family": "spy", "version": "1", "api_version": API_VERSION}

    @hookimpl
    def spx_detector_on_bar(self, ctx, bar):
        self.calls.append(bar.start_ns)


def backtest(events: list, extended_hours: list[str]) -> tuple[Backtester, Spy]:
    host = PluginHost()
    host.load_entry_points()  # the built-in detectors, as the mesh runs them
    spy = Spy()
    host.register(spy, source="test")
    cfg = DetectorConfig(symbols=["SPY"], extended_hours=extended_hours, flow_proxy="SPY")
    bt = Backtester(cfg, host)
    bt.on_events(events, BarAggregator([cfg.interval], l2=True))
    return bt, spy


@pytest.mark.parametrize("day,start,end", [("2013-10-07", "09:10", "10:10"), ("2013-10-09", "15:40", "16:50")])
def test_no_setup_forms_outside_the_regular_session_by_default(tmp_path, day, start, end):
    events = window(tmp_path, day, start, end)
    session = mcal.session(dt.date.fromisoformat(day))
    bt, spy = backtest(events, [])
    formed = [t.ts for t in bt.transitions if t.to_state == "forming"]
    assert all(session.open_ns <= ts < session.close_ns for ts in formed)
    assert spy.calls and all(session.open_ns <= t < session.close_ns for t in spy.calls)
    # opted in: the same plugin runs on the extended-hours bars too (setups may then form there)
    _, spy_all = backtest(events, ["session_spy"])
    off = [t for t in spy_all.calls if not session.open_ns <= t < session.close_ns]
    assert len(off) > 60 and len(spy_all.calls) == len(spy.calls) + len(off)
