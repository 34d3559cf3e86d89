"""Every built-in detector: bar sequences that must fire (with the expected geometry) and ones that
must not, with and without microstructure. Run through the real host (``run_plugin``)."""

from __future__ import annotations

import datetime as dt

import pytest

import spx_builtin_detectors
from services.detector.host import PluginHost
from services.detector.market import ET
from services.detector.testing import run_plugin
from spx_builtin_detectors import gamma_squeeze, level_test, orb, orb_pullback, volume_climax, vwap_reclaim
from spx_common.models import MicroBar

S = 1_000_000_000
DAY1 = int(dt.datetime(2026, 11, 19, 9, 30, tzinfo=ET).timestamp()) * S
DAY2 = int(dt.datetime(2026, 11, 20, 9, 30, tzinfo=ET).timestamp()) * S


def mk(i, c, *, o=None, h=None, lo=None, v=1000.0, buy=None, sell=None, imb=None, sym="SPY", t0=DAY2,
       micro=True):
    o = c if o is None else o
    h = max(o, c) if h is None else h
    lo = min(o, c) if lo is None else lo
    if micro and buy is None:
        buy = sell = v / 2
    fields = {}
    if micro:
        fields = dict(buy_volume=buy, sell_volume=sell, neutral_volume=0.0, delta_volume=buy - sell,
                      bid_ask_imbalance=0.0 if imb is None else imb, quote_coverage_pct=100.0, avg_spread_bps=2.0)
    return MicroBar(sym=sym, interval="1s", start_ns=t0 + i * S, open=o, high=h, low=lo, close=c, volume=v,
                    trades=10, closed=True, **fields)


def fired(run):
    return [(c.detector, c.direction) for c in run.candidates]


def test_every_builtin_loads_through_the_entry_point():
    host = PluginHost()
    host.load_entry_points()
    names = {p["name"] for p in host.describe()}
    assert {m.NAME for m in spx_builtin_detectors.DETECTORS} <= names
    assert {"orb", "orb_pullback", "vwap_reclaim", "level_test", "volume_climax", "gamma_squeeze"} <= names
    assert not host.load_errors
    families = {p["name"]: p["family"] for p in host.describe()}
    assert families["orb_pullback"] != families["orb"]


# ------------------------------------------------------------------ ORB


def _opening_range(micro=True):
    return [mk(i, 100.0 + (0.4 if i % 2 else -0.4), h=100.5, lo=99.5, micro=micro) for i in range(60)]


def test_orb_fires_long_on_a_buyer_led_breakout_and_not_inside_the_range():
    bars = _opening_range() + [mk(i, 100.1) for i in range(60, 90)]
    assert fired(run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})) == []
    bars.append(mk(90, 100.8, o=100.1, buy=800, sell=200))
    run = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})
    assert fired(run) == [("orb", "long")]
    c = run.candidates[0]
    assert c.entry_low == 100.5 and c.stop == 100.0 and c.targets == pytest.approx([101.6, 102.4])


def test_orb_does_not_fire_when_sellers_lead_the_breakout():
    bars = _opening_range() + [mk(60, 100.1), mk(61, 100.8, o=100.1, buy=100, sell=900)]
    run = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1, "min_skew": 0.1}})
    assert fired(run) == []


def test_orb_without_microstructure_still_fires():
    bars = _opening_range(micro=False) + [mk(60, 100.1, micro=False), mk(61, 100.8, o=100.1, micro=False)]
    run = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})
    assert fired(run) == [("orb", "long")] and run.candidates[0].evidence["microstructure"] is False


# ------------------------------------------------------------------ VWAP reclaim / reject


def _vwap_run(below: bool, micro=True):
    # VWAP pinned at ~101 by heavy two-sided trade around it (no one-sided run yet)
    base = [mk(i, 101.0 + (0.1 if i % 2 else -0.1), v=100_000, micro=micro) for i in range(30)]
    side = 100.5 if below else 101.5
    return base + [mk(30 + i, side, v=10, micro=micro) for i in range(21)]


def test_vwap_reclaim_fires_long_and_reject_fires_short():
    run = run_plugin(vwap_reclaim, _vwap_run(True) + [mk(51, 101.3, o=100.5, v=10)])
    assert fired(run) == [("vwap_reclaim", "long")] and run.candidates[0].stop < 100.5
    run = run_plugin(vwap_reclaim, _vwap_run(False) + [mk(51, 100.7, o=101.5, v=10)])
    assert fired(run) == [("vwap_reclaim", "short")] and run.candidates[0].stop > 101.5


def test_vwap_reclaim_needs_the_run_and_agreeing_imbalance():
    short_run = _vwap_run(True)[:35]
    assert fired(run_plugin(vwap_reclaim, short_run + [mk(35, 101.3, v=10)])) == []
    against = _vwap_run(True) + [mk(51, 101.3, o=100.5, v=10, imb=-0.6)]
    assert fired(run_plugin(vwap_reclaim, against)) == []
    nulls = _vwap_run(True, micro=False) + [mk(51, 101.3, o=100.5, v=10, micro=False)]
    assert fired(run_plugin(vwap_reclaim, nulls)) == [("vwap_reclaim", "long")]


# ------------------------------------------------------------------ level test


def _prior_day():
    return [mk(0, 100.0, h=105.0, lo=95.0, t0=DAY1), mk(1, 100.0, t0=DAY1)]


def _decline_to(level_low, closes_after, micro=True):
    bars = _prior_day() + [mk(i, 97.0, micro=micro) for i in range(30)]
    bars += [mk(30 + i, 97.0 - 0.09 * i, micro=micro) for i in range(20)]  # down to ~95.29
    n = 50
    bars.append(mk(n, 95.02, o=95.29, lo=level_low, micro=micro))
    for j, c in enumerate(closes_after):
        bars.append(mk(n + 1 + j, c, micro=micro))
    return bars


def test_level_test_fires_long_on_a_held_test_of_prior_day_low():
    run = run_plugin(level_test, _decline_to(95.0, [95.03, 95.2]))
    assert fired(run) == [("level_test", "long")]
    c = run.candidates[0]
    assert c.evidence["level"] in ("prior_low", "pivot_S1") and c.evidence["level_price"] == 95.0
    assert c.entry_low == 95.0 and c.entry_high == 95.2 and c.stop == pytest.approx(95.0 - 0.019)
    assert c.targets[0] == pytest.approx(95.2 + (95.2 - c.stop))


def test_level_test_does_not_fire_when_the_level_breaks():
    # a close below the level in the test window: it did not hold
    assert fired(run_plugin(level_test, _decline_to(94.5, [94.8, 95.03, 95.2]))) == []
    # no bounce: price sits on the level
    assert fired(run_plugin(level_test, _decline_to(95.0, [95.01, 95.02]))) == []


def test_level_test_degrades_without_microstructure_and_respects_it_when_present():
    run = run_plugin(level_test, _decline_to(95.0, [95.03, 95.2], micro=False))
    assert fired(run) == [("level_test", "long")] and run.candidates[0].evidence["microstructure"] is False
    with_micro = run_plugin(level_test, _decline_to(95.0, [95.03, 95.2]))
    assert run.candidates[0].confidence < with_micro.candidates[0].confidence
    bars = _decline_to(95.0, [95.03])
    bars.append(mk(53, 95.2, buy=100, sell=900))  # sellers in control on the bounce
    assert fired(run_plugin(level_test, bars, config={"level_test": {"min_skew": 0.0}})) == []


# ------------------------------------------------------------------ volume climax


def _selloff(micro=True):
    return [mk(i, 101.0 - 0.025 * i, o=101.0 - 0.025 * i + 0.05, v=100, micro=micro) for i in range(40)]


def test_volume_climax_fades_a_selling_climax_with_a_long_lower_wick():
    bars = _selloff() + [mk(40, 99.8, o=100.0, h=100.0, lo=99.0, v=1000, buy=400, sell=600, imb=0.2)]
    run = run_plugin(volume_climax, bars)
    assert fired(run) == [("volume_climax", "long")]
    c = run.candidates[0]
    assert c.evidence["volume_ratio"] == pytest.approx(10.0)
    assert c.entry_low == pytest.approx(99.5) and c.entry_high == 99.8 and c.stop < 99.0


def test_volume_climax_does_not_fire_without_a_climax_or_without_absorption():
    close_low = _selloff() + [mk(40, 99.05, o=100.0, h=100.0, lo=99.0, v=1000)]
    assert fired(run_plugin(volume_climax, close_low)) == []  # closed at the low: no exhaustion
    quiet = _selloff() + [mk(40, 99.8, o=100.0, h=100.0, lo=99.0, v=150)]
    assert fired(run_plugin(volume_climax, quiet)) == []  # volume not a climax
    offers = _selloff() + [mk(40, 99.8, o=100.0, h=100.0, lo=99.0, v=1000, imb=-0.9)]
    assert fired(run_plugin(volume_climax, offers)) == []  # the book still leans to the sell side
    index = [mk(i, b.close, o=b.open, v=0, micro=False, sym="I:SPX") for i, b in enumerate(_selloff())]
    assert fired(run_plugin(volume_climax, index + [mk(40, 99.8, o=100, h=100, lo=99, v=0, micro=False,
                                                       sym="I:SPX")])) == []


def test_volume_climax_without_microstructure_fires_with_lower_confidence():
    bars = _selloff(micro=False) + [mk(40, 99.8, o=100.0, h=100.0, lo=99.0, v=1000, micro=False)]
    run = run_plugin(volume_climax, bars)
    assert fired(run) == [("volume_climax", "long")] and run.candidates[0].evidence["microstructure"] is False


# ------------------------------------------------------------------ gamma squeeze


def _chain():
    def c(strike, typ, oi):
        return {"strike": strike, "type": typ, "gamma": 0.01, "open_interest": oi}
    # cumulative GEX: -2, -1, +0.2, +1.5 (x1000): zero-gamma flip at 5150, call wall 5250
    return {"underlying": 5100.0, "ts": DAY2,
            "contracts": [c(5000, "put", 2000), c(5060, "call", 1000), c(5150, "call", 1200), c(5250, "call", 1300)]}


def _squeeze_bars(buy, sell, micro=True, cross=5153.0):
    bars = []
    for i in range(20):
        spy_c = 510.0 + 0.01 * i
        bars.append(mk(i, spy_c, o=spy_c - 0.01, v=1000, buy=buy if micro else None, sell=sell if micro else None,
                       micro=micro))
        bars.append(mk(i, 5140.0 + 0.5 * i, v=0, micro=False, sym="I:SPX"))
    bars.append(mk(20, 510.3, o=510.2, v=1000, buy=buy if micro else None, sell=sell if micro else None,
                   micro=micro))
    bars.append(mk(20, cross, o=5149.5, v=0, micro=False, sym="I:SPX"))
    return bars


def test_gamma_squeeze_fires_long_through_the_flip_with_buying_flow_and_labels_its_sources():
    run = run_plugin(gamma_squeeze, _squeeze_bars(900, 100), chain=_chain())
    assert fired(run) == [("gamma_squeeze", "long")]
    c = run.candidates[0]
    assert c.sym == "I:SPX" and c.entry_low == 5150.0 and c.entry_high == 5153.0
    assert c.targets == [pytest.approx((5153.0 + 5250.0) / 2), 5250.0]
    assert c.evidence["flow_source"] == "flow: intraday aggressor delta volume (SPY)"
    assert c.evidence["oi_source"].startswith("oi: chain open interest as of")
    assert c.evidence["flow_pressure"] == pytest.approx(0.8) and c.evidence["microstructure"] is True


def test_gamma_squeeze_does_not_fire_against_the_flow_or_without_a_cross_or_chain():
    assert fired(run_plugin(gamma_squeeze, _squeeze_bars(100, 900), chain=_chain())) == []
    assert fired(run_plugin(gamma_squeeze, _squeeze_bars(900, 100, cross=5149.8), chain=_chain())) == []
    assert fired(run_plugin(gamma_squeeze, _squeeze_bars(900, 100))) == []  # no chain: no GEX, no squeeze


def test_gamma_squeeze_falls_back_to_the_bar_direction_flow_proxy_without_microstructure():
    run = run_plugin(gamma_squeeze, _squeeze_bars(0, 0, micro=False), chain=_chain())
    assert fired(run) == [("gamma_squeeze", "long")]
    c = run.candidates[0]
    assert "bar-direction volume proxy" in c.evidence["flow_source"] and c.evidence["microstructure"] is False


# ------------------------------------------------------------------ ORB + pullback


def _breakout_and_pullback(pull_low, pull_close, resume_close, micro=True):
    bars = _opening_range(micro) + [mk(60, 100.9, o=100.4, micro=micro), mk(61, 101.2, micro=micro)]
    bars += [mk(62, 100.9, micro=micro), mk(63, pull_close, o=100.9, lo=pull_low, h=100.9, micro=micro)]
    bars.append(mk(64, resume_close, o=pull_close, micro=micro))
    return bars


def test_orb_pullback_fires_long_when_the_pullback_holds_the_range_high():
    run = run_plugin(orb_pullback, _breakout_and_pullback(100.51, 100.55, 100.95), opening_range_min=1)
    assert fired(run) == [("orb_pullback", "long")]
    c = run.candidates[0]
    assert c.entry_low == 100.5 and c.entry_high == 100.95
    assert c.stop == pytest.approx(min(100.51 - 100.5 * 2e-4, 100.5 - 0.25))


def test_orb_pullback_does_not_fire_when_the_pullback_fails_or_never_comes_back():
    failed = _breakout_and_pullback(100.2, 100.25, 100.95)  # closed back inside the range
    assert fired(run_plugin(orb_pullback, failed, opening_range_min=1)) == []
    no_pull = _breakout_and_pullback(100.85, 100.9, 101.3)  # never came back to the edge
    assert fired(run_plugin(orb_pullback, no_pull, opening_range_min=1)) == []
    inside = _opening_range() + [mk(60 + i, 100.2) for i in range(5)]
    assert fired(run_plugin(orb_pullback, inside, opening_range_min=1)) == []


def test_orb_pullback_without_microstructure_fires_with_the_flag_off():
    run = run_plugin(orb_pullback, _breakout_and_pullback(100.51, 100.55, 100.95, micro=False),
                     opening_range_min=1)
    assert fired(run) == [("orb_pullback", "long")] and run.candidates[0].evidence["microstructure"] is False
