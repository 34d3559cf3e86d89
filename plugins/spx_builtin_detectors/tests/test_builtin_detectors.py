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
       micro=True, **override):
    """A closed 1s bar; ``micro=False`` leaves every microstructure field null; keyword overrides
    (``avg_spread_bps=40``, ``buy_volume=None`` ...) set single fields afterwards."""
    o = c if o is None else o
    h = max(o, c) if h is None else h
    lo = min(o, c) if lo is None else lo
    if micro and buy is None:
        buy = sell = v / 2
    fields = {}
    if micro:
        fields = dict(buy_volume=buy, sell_volume=sell, neutral_volume=0.0, delta_volume=buy - sell,
                      bid_ask_imbalance=0.0 if imb is None else imb, quote_coverage_pct=100.0, avg_spread_bps=2.0)
    fields.update(override)
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


# ------------------------------------------------------------------ ORB: short side, gates


def test_orb_fires_short_on_a_seller_led_breakdown_with_its_geometry():
    bars = _opening_range() + [mk(60, 99.9), mk(61, 99.2, o=99.9, buy=200, sell=800, imb=-0.3)]
    run = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})
    assert fired(run) == [("orb", "short")]
    c = run.candidates[0]
    assert (c.entry_low, c.entry_high, c.stop) == (99.2, 99.5, 100.0)
    assert c.targets == pytest.approx([98.4, 97.6])
    assert c.evidence["or_width"] == pytest.approx(1.0) and c.evidence["microstructure_note"] == "complete"
    assert c.confidence == pytest.approx(0.6)


def test_orb_waits_for_the_opening_range_to_complete():
    bars = _opening_range() + [mk(60, 100.1), mk(61, 100.8, o=100.1, buy=800, sell=200)]
    # a 30-minute opening range is still forming one minute in: a close above the first minute's high is no breakout
    assert fired(run_plugin(orb, bars, opening_range_min=30, config={"orb": {"after_min": 1}})) == []


@pytest.mark.parametrize("bad", [{"avg_spread_bps": 40.0}, {"quote_coverage_pct": 20.0}, {"bid_ask_imbalance": -0.5}])
def test_orb_is_blocked_by_wide_spreads_thin_quotes_or_a_book_leaning_against_it(bad):
    bars = _opening_range() + [mk(60, 100.1), mk(61, 100.8, o=100.1, buy=800, sell=200, **bad)]
    assert fired(run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})) == []


# ------------------------------------------------------------------ VWAP: geometry, interrupted run


def test_vwap_reclaim_and_reject_geometry_and_pattern():
    run = run_plugin(vwap_reclaim, _vwap_run(True) + [mk(51, 101.3, o=100.5, v=10)])
    c = run.candidates[0]
    vwap = c.evidence["vwap"]
    stop = 100.5 - 100.5 * 1e-4  # the run's lowest low less tol_bps (1)
    assert c.evidence["pattern"] == "reclaim" and 100.5 < vwap < 101.3
    assert (c.entry_low, c.entry_high) == (pytest.approx(vwap), 101.3) and c.stop == pytest.approx(stop)
    assert c.targets == pytest.approx([101.3 + (101.3 - stop), 101.3 + 2 * (101.3 - stop)])
    run = run_plugin(vwap_reclaim, _vwap_run(False) + [mk(51, 100.7, o=101.5, v=10, imb=-0.1)])
    c = run.candidates[0]
    stop = 101.5 + 101.5 * 1e-4
    assert c.evidence["pattern"] == "reject" and c.direction == "short"
    assert (c.entry_low, c.entry_high) == (100.7, pytest.approx(c.evidence["vwap"])) and c.stop == pytest.approx(stop)
    assert c.targets == pytest.approx([100.7 - (stop - 100.7), 100.7 - 2 * (stop - 100.7)])


def test_vwap_reclaim_does_not_fire_when_the_run_was_interrupted_or_on_a_thin_book():
    bars = _vwap_run(True)
    bars[40] = mk(40, 101.4, o=100.5, v=10)  # one close above VWAP inside the run of 20
    assert fired(run_plugin(vwap_reclaim, bars + [mk(51, 101.3, o=100.5, v=10)])) == []
    thin = _vwap_run(True) + [mk(51, 101.3, o=100.5, v=10, quote_coverage_pct=10.0)]
    assert fired(run_plugin(vwap_reclaim, thin)) == []


# ------------------------------------------------------------------ level test: rejection, OR, GEX


def _rally_to(level_high, closes_after, micro=True):
    bars = _prior_day() + [mk(i, 103.0, micro=micro) for i in range(30)]
    bars += [mk(30 + i, 103.0 + 0.09 * i, micro=micro) for i in range(20)]  # up to ~104.71
    bars.append(mk(50, 104.98, o=104.71, h=level_high, micro=micro))
    for j, c in enumerate(closes_after):
        bars.append(mk(51 + j, c, micro=micro))
    return bars


def test_level_test_fires_short_on_a_rejection_at_prior_day_high():
    run = run_plugin(level_test, _rally_to(105.0, [104.97, 104.8]))
    assert fired(run) == [("level_test", "short")]
    c = run.candidates[0]
    tol = 105.0 * 2e-4
    assert c.evidence["level"] in ("prior_high", "pivot_R1") and c.evidence["pattern"] == "rejection"
    assert (c.entry_low, c.entry_high) == (104.8, 105.0) and c.stop == pytest.approx(105.0 + tol)
    assert c.targets == pytest.approx([104.8 - (105.0 + tol - 104.8), 104.8 - 2 * (105.0 + tol - 104.8)])
    # broken: a close above the level in the window
    assert fired(run_plugin(level_test, _rally_to(105.3, [105.2, 104.97, 104.8]))) == []


def test_level_test_holds_the_opening_range_high_after_a_breakout():
    bars = _opening_range() + [mk(60 + i, 101.0) for i in range(20)]
    bars += [mk(80 + j, 100.95 - 0.05 * j) for j in range(8)]  # back down to 100.6
    bars += [mk(88, 100.53, o=100.6, lo=100.5), mk(89, 100.7, o=100.53)]
    run = run_plugin(level_test, bars, opening_range_min=1)
    assert fired(run) == [("level_test", "long")]
    c = run.candidates[0]
    assert c.evidence["level"] == "or_high" and c.evidence["pattern"] == "hold"
    assert c.entry_low == 100.5 and c.stop == pytest.approx(100.5 - 100.5 * 2e-4)


def _spx_to_call_wall(sym="I:SPX"):
    bars = [mk(i, 5200.0, v=0, micro=False, sym=sym) for i in range(100)]
    bars += [mk(100 + i, 5240.0 + 0.45 * i, v=0, micro=False, sym=sym) for i in range(20)]  # to ~5248.6
    bars += [mk(120, 5249.0, o=5248.6, h=5250.5, v=0, micro=False, sym=sym),
             mk(121, 5247.0, o=5249.0, v=0, micro=False, sym=sym)]
    return bars


def test_level_test_rejects_at_the_gex_call_wall_on_the_index_only():
    run = run_plugin(level_test, _spx_to_call_wall(), chain=_chain())
    assert fired(run) == [("level_test", "short")]
    c = run.candidates[0]
    assert c.evidence["level"] == "gex_call_wall" and c.evidence["level_price"] == 5250.0
    assert c.evidence["microstructure"] is False  # index bars carry none
    assert fired(run_plugin(level_test, _spx_to_call_wall(sym="SPY"), chain=_chain())) == []
    assert fired(run_plugin(level_test, _spx_to_call_wall())) == []  # no chain: no wall


# ------------------------------------------------------------------ volume climax: buying climax, warm-up


def _rally(micro=True):
    return [mk(i, 99.0 + 0.025 * i, o=99.0 + 0.025 * i - 0.05, v=100, micro=micro) for i in range(40)]


def test_volume_climax_fades_a_buying_climax_with_a_long_upper_wick():
    bars = _rally() + [mk(40, 100.2, o=100.0, h=101.0, lo=100.0, v=1000, buy=700, sell=300, imb=-0.1)]
    run = run_plugin(volume_climax, bars)
    assert fired(run) == [("volume_climax", "short")]
    c = run.candidates[0]
    stop = 101.0 + 0.25 * 0.05
    assert c.evidence["pattern"] == "buying_climax" and c.evidence["range_ratio"] == pytest.approx(20.0)
    assert (c.entry_low, c.entry_high) == (100.2, pytest.approx(100.5)) and c.stop == pytest.approx(stop)
    assert c.targets == pytest.approx([100.2 - (stop - 100.2), 100.2 - 2 * (stop - 100.2)])


def test_volume_climax_needs_a_warm_baseline():
    bars = _selloff()[:20] + [mk(20, 99.8, o=100.0, h=100.0, lo=99.0, v=1000)]
    assert fired(run_plugin(volume_climax, bars)) == []  # 20 baseline bars < min_bars (30)
    assert fired(run_plugin(volume_climax, bars, config={"volume_climax": {"min_bars": 15}})) == [
        ("volume_climax", "long")]


# ------------------------------------------------------------------ gamma squeeze: short, OI regime, stale chain


def _chain_flip_5100(short_gamma: bool):
    def c(strike, typ, oi):
        return {"strike": strike, "type": typ, "gamma": 0.01, "open_interest": oi}
    if short_gamma:  # cumulative +0.8, -2.2 (flip 5100), -1.2: total < 0
        contracts = [c(5000, "call", 800), c(5100, "put", 3000), c(5200, "call", 1000)]
    else:  # cumulative -0.5, +0.3 (flip 5100), +1.3: total > 0
        contracts = [c(5000, "put", 500), c(5100, "call", 800), c(5200, "call", 1000)]
    return {"underlying": 5095.0, "ts": DAY2, "contracts": contracts}


def _cross(start, step, cross_open, cross, buy, sell, micro=True):
    bars = []
    for i in range(20):
        spy_c = 510.0 + (0.01 if step > 0 else -0.01) * i
        bars.append(mk(i, spy_c, o=spy_c - 0.01 * (1 if step > 0 else -1), v=1000,
                       buy=buy if micro else None, sell=sell if micro else None, micro=micro))
        bars.append(mk(i, start + step * i, v=0, micro=False, sym="I:SPX"))
    bars.append(mk(20, 510.3, o=510.2, v=1000, buy=buy if micro else None, sell=sell if micro else None, micro=micro))
    bars.append(mk(20, cross, o=cross_open, v=0, micro=False, sym="I:SPX"))
    return bars


def test_gamma_squeeze_fires_short_through_the_flip_toward_the_put_wall():
    bars = _cross(5160.0, -0.5, 5150.5, 5147.0, buy=100, sell=900)
    run = run_plugin(gamma_squeeze, bars, chain=_chain())
    assert fired(run) == [("gamma_squeeze", "short")]
    c = run.candidates[0]
    assert (c.entry_low, c.entry_high) == (5147.0, 5150.0)
    assert c.stop == pytest.approx(5152.0 + 5150.0 * 3e-4)  # highest high of the last 5 bars + tol
    assert c.targets == pytest.approx([(5147.0 + 5000.0) / 2, 5000.0])
    assert c.evidence["flow_pressure"] == pytest.approx(-0.8) and c.evidence["oi_score"] == 0.3
    assert c.evidence["oi_source"] == "oi: chain open interest as of 2026-11-20T14:30:00Z"


def test_gamma_squeeze_blends_flow_with_the_open_interest_regime():
    moderate = _cross(5090.0, 0.5, 5099.5, 5103.0, buy=700, sell=300)  # flow pressure 0.4
    # dealers long gamma (total GEX > 0): 0.6 x 0.4 + 0.4 x 0.3 = 0.36 < 0.5 — damped, no squeeze
    assert fired(run_plugin(gamma_squeeze, moderate, chain=_chain_flip_5100(False))) == []
    # dealers short gamma: 0.6 x 0.4 + 0.4 x 1.0 = 0.64 — squeeze, toward the call wall
    run = run_plugin(gamma_squeeze, moderate, chain=_chain_flip_5100(True))
    assert fired(run) == [("gamma_squeeze", "long")]
    c = run.candidates[0]
    assert c.evidence["oi_score"] == 1.0 and c.evidence["blend"] == pytest.approx(0.64)
    assert c.evidence["total_gex"] < 0 and c.targets == pytest.approx([(5103.0 + 5200.0) / 2, 5200.0])


def test_gamma_squeeze_refuses_a_stale_chain():
    stale = {**_chain(), "ts": DAY2 - 2 * 3600 * S}  # two hours before these bars
    assert fired(run_plugin(gamma_squeeze, _squeeze_bars(900, 100), chain=stale)) == []
    run = run_plugin(gamma_squeeze, _squeeze_bars(900, 100), chain=stale,
                     config={"gamma_squeeze": {"max_chain_age_min": 180}})
    assert fired(run) == [("gamma_squeeze", "long")] and run.candidates[0].evidence["chain_age_s"] > 7200
    undated = {**_chain(), "ts": None}  # loaded before any bar: its age is unknown
    assert fired(run_plugin(gamma_squeeze, _squeeze_bars(900, 100), chain=undated,
                            config={"gamma_squeeze": {"max_chain_age_min": 180}})) == []


# ------------------------------------------------------------------ ORB + pullback: short side


def _breakdown_and_rally(pull_high, pull_close, resume_close, micro=True):
    bars = _opening_range(micro) + [mk(60, 99.1, o=99.6, micro=micro), mk(61, 98.8, micro=micro)]
    bars += [mk(62, 99.1, micro=micro), mk(63, pull_close, o=99.1, lo=99.1, h=pull_high, micro=micro)]
    bars.append(mk(64, resume_close, o=pull_close, micro=micro))
    return bars


def test_orb_pullback_fires_short_when_the_rally_fails_at_the_range_low():
    run = run_plugin(orb_pullback, _breakdown_and_rally(99.49, 99.45, 99.05), opening_range_min=1)
    assert fired(run) == [("orb_pullback", "short")]
    c = run.candidates[0]
    assert (c.entry_low, c.entry_high) == (99.05, 99.5) and c.stop == pytest.approx(99.75)
    assert c.targets == pytest.approx([99.05 - 0.7, 99.05 - 1.4])
    assert c.evidence["session_extreme"] == 98.8 and c.evidence["pullback_extreme"] == 99.49
    reclaimed = _breakdown_and_rally(99.8, 99.7, 99.05)  # closed back inside the range
    assert fired(run_plugin(orb_pullback, reclaimed, opening_range_min=1)) == []


# ------------------------------------------------------------------ every built-in: one contract

# (module, bars(micro) that must fire, run_plugin keyword arguments, expected direction)
FIRING = {
    "orb": (orb, lambda m: _opening_range(m) + [mk(60, 100.1, micro=m), mk(61, 100.8, o=100.1, micro=m)],
            {"opening_range_min": 1, "config": {"orb": {"after_min": 1}}}, "long"),
    "orb_pullback": (orb_pullback, lambda m: _breakout_and_pullback(100.51, 100.55, 100.95, micro=m),
                     {"opening_range_min": 1}, "long"),
    "vwap_reclaim": (vwap_reclaim, lambda m: _vwap_run(True, micro=m) + [mk(51, 101.3, o=100.5, v=10, micro=m)],
                     {}, "long"),
    "level_test": (level_test, lambda m: _decline_to(95.0, [95.03, 95.2], micro=m), {}, "long"),
    "volume_climax": (volume_climax, lambda m: _selloff(m) + [mk(40, 99.8, o=100.0, h=100.0, lo=99.0, v=1000,
                                                                 micro=m)], {}, "long"),
    "gamma_squeeze": (gamma_squeeze, lambda m: _squeeze_bars(900, 100, micro=m) if m else
                      _squeeze_bars(0, 0, micro=False), {"chain": _chain()}, "long"),
}
NULLS = {k: None for k in ("buy_volume", "sell_volume", "neutral_volume", "delta_volume", "bid_ask_imbalance",
                           "quote_coverage_pct", "avg_spread_bps")}
NANS = {k: float("nan") for k in NULLS}


def test_the_contract_table_covers_every_builtin():
    assert set(FIRING) == {m.NAME for m in spx_builtin_detectors.DETECTORS}


@pytest.mark.parametrize("name", sorted(FIRING))
def test_every_builtin_fills_exactly_its_declared_evidence_and_config(name):
    module, build, kw, direction = FIRING[name]
    run = run_plugin(module, build(True), **kw)
    assert fired(run) == [(name, direction)] and not run.refused
    c = run.candidates[0]
    assert set(c.evidence) == set(module.EVIDENCE)
    assert c.evidence["microstructure"] is True and c.confidence == pytest.approx(module.DEFAULTS["confidence"])
    assert module.spx_detector_describe()["name"] == name


@pytest.mark.parametrize("name", sorted(FIRING))
def test_every_builtin_degrades_on_null_microstructure_and_says_so(name):
    module, build, kw, direction = FIRING[name]
    full = run_plugin(module, build(True), **kw).candidates
    bare = run_plugin(module, build(False), **kw)
    assert [c.direction for c in bare.candidates] == [direction] and not bare.refused
    a, b = full[0], bare.candidates[0]
    assert (a.entry_low, a.entry_high, a.stop) == (b.entry_low, b.entry_high, b.stop)
    assert b.confidence == pytest.approx(a.confidence - 0.2)
    assert b.evidence["microstructure"] is False and "confidence -0.200" in b.evidence["microstructure_note"]
    assert bare.status[name]["errors"] == 0


@pytest.mark.parametrize("name", sorted(set(FIRING) - {"gamma_squeeze"}))
@pytest.mark.parametrize("fields", [NULLS, NANS], ids=["null", "nan"])
def test_null_or_nan_fields_on_the_firing_bar_never_crash_and_never_count_as_zero(name, fields):
    import msgspec

    module, build, kw, direction = FIRING[name]
    bars = build(True)
    bars[-1] = msgspec.structs.replace(bars[-1], **fields)
    run = run_plugin(module, bars, **kw)
    assert [c.direction for c in run.candidates] == [direction]
    assert run.status[name]["errors"] == 0 and not run.refused
    ev = run.candidates[0].evidence
    assert ev["aggressor_skew"] is None and ev["bid_ask_imbalance"] is None and ev["microstructure"] is False


@pytest.mark.parametrize("name", sorted(set(FIRING) - {"gamma_squeeze"}))
def test_partial_microstructure_costs_only_the_missing_fields(name):
    import msgspec

    module, build, kw, direction = FIRING[name]
    bars = build(True)
    # the aggressor side is missing (sell volume null), the book is there and agrees
    bars[-1] = msgspec.structs.replace(bars[-1], sell_volume=None, bid_ask_imbalance=0.3)
    c = run_plugin(module, bars, **kw).candidates[0]
    assert c.evidence["aggressor_skew"] is None and c.evidence["microstructure"] is True
    assert c.confidence == pytest.approx(module.DEFAULTS["confidence"] - 0.075)
    assert c.evidence["microstructure_note"] == "null: aggressor_skew — confidence -0.075"


@pytest.mark.parametrize("config, words", [({"after_mins": 1}, ["unknown key 'after_mins'", "after_min"]),
                                           ({"after_min": "soon"}, ["after_min", "finite number"]),
                                           ({"min_skew": True}, ["min_skew"])])
def test_a_bad_config_fails_loudly_and_disables_the_detector(config, words):
    bars = _opening_range() + [mk(60, 100.1), mk(61, 100.8, o=100.1)]
    run = run_plugin(orb, bars, opening_range_min=1, config={"orb": config})
    st = run.status["orb"]
    assert run.candidates == [] and st["status"] == "disabled" and st["errors"] == 3
    for w in words:
        assert w in st["last_error"]


def test_config_validation_types():
    from spx_builtin_detectors._common import ConfigError, validate

    cfg = validate("gamma_squeeze", gamma_squeeze.DEFAULTS, {"symbols": ["I:SPX", "SPY"], "stop_bars": 3,
                                                             "min_flow": 1})
    assert cfg["symbols"] == ("I:SPX", "SPY") and cfg["stop_bars"] == 3 and cfg["min_flow"] == 1.0
    for bad in ({"symbols": "I:SPX"}, {"stop_bars": 2.5}, {"stop_bars": 0}, {"min_flow": float("nan")}):
        with pytest.raises(ConfigError, match="gamma_squeeze"):
            validate("gamma_squeeze", gamma_squeeze.DEFAULTS, bad)


# ------------------------------------------------------------------ a generated session through all six


def _generated_bars():
    from services.aggregator.bars import bars_from_events
    from services.feed.synthetic import SyntheticSession

    out, chain = [], None
    for date, secs in ((dt.date(2026, 11, 19), 1800), (dt.date(2026, 11, 20), 5400)):
        s = SyntheticSession(seed=11, date=date, duration_s=secs, strikes_each_side=1, option_quote_every_s=600,
                             option_trades_per_s=0.01)
        evs = [e for e in s.events() if e.sym in ("SPY", "I:SPX")]
        out += sorted(bars_from_events(evs, intervals=("1s",)), key=lambda b: (b.start_ns, b.sym))
        chain = {"ts": s.open_ns, "underlying": None,
                 "contracts": SyntheticSession(seed=11, date=date).chain(s.open_ns + 600 * S)}
    return out, chain


def test_all_builtins_on_a_generated_session_fire_validly_deterministically_and_without_errors():
    bars, chain = _generated_bars()
    assert len(bars) > 10_000
    cfg = {"gamma_squeeze": {"max_chain_age_min": 120}}
    runs = [run_plugin(spx_builtin_detectors, bars, chain=chain, config=cfg) for _ in range(2)]
    run = runs[0]
    assert set(run.status) == set(FIRING)
    for _name, st in run.status.items():
        assert st["status"] == "active" and st["errors"] == 0 and st["refused"] == 0, st
        assert st["calls"] > 0
    # gating (family cap, dedup) may hold some back, but every candidate is geometrically valid
    assert not [r for r in run.refused if r[0].startswith("candidate")]
    assert run.candidates, "a 2-hour trending/ranging session produced no setup at all"
    declared = {m.NAME: set(m.EVIDENCE) for m in spx_builtin_detectors.DETECTORS}
    for c in run.candidates:
        assert set(c.evidence) == declared[c.detector]
    key = [(c.detector, c.sym, c.direction, c.ts, c.entry_low, c.stop) for c in run.candidates]
    assert key == [(c.detector, c.sym, c.direction, c.ts, c.entry_low, c.stop) for c in runs[1].candidates]


def _thaw(v):
    from types import MappingProxyType

    if isinstance(v, (dict, MappingProxyType)):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    return v


def test_builtins_leave_the_shared_context_as_they_found_it():
    import types

    from services.detector.hookspecs import API_VERSION, hookimpl

    def spy(name, seen):
        mod = types.SimpleNamespace()
        mod.spx_detector_describe = hookimpl(lambda: {"name": name, "family": "spy", "api_version": API_VERSION})
        mod.spx_detector_on_bar = hookimpl(lambda ctx, bar: seen.append(
            (ctx.sym, ctx.now_ns, ctx.minutes_since_open, ctx.bars, _thaw(ctx.state), _thaw(ctx.config))) and None)
        return mod

    before, after = [], []
    package = types.SimpleNamespace(DETECTORS=[spy("before", before), *spx_builtin_detectors.DETECTORS,
                                               spy("after", after)])
    for name, (_module, build, kw, direction) in FIRING.items():
        run = run_plugin(package, build(True), **kw)
        assert (name, direction) in fired(run)
    assert before and before == after  # every plugin saw the same, untouched context


def test_gamma_squeeze_on_a_symbol_with_microstructure_needs_its_confirmation_too():
    def bars(**cross):
        out = [mk(i, 5140.0 + 0.5 * i, o=5140.0 + 0.5 * i - 0.1, buy=900, sell=100) for i in range(20)]
        return out + [mk(20, 5153.0, o=5149.5, buy=900, sell=100, **cross)]

    cfg = {"gamma_squeeze": {"symbols": ["SPY"]}}
    run = run_plugin(gamma_squeeze, bars(), chain=_chain(), config=cfg)
    assert fired(run) == [("gamma_squeeze", "long")] and run.candidates[0].sym == "SPY"
    assert fired(run_plugin(gamma_squeeze, bars(avg_spread_bps=40.0), chain=_chain(), config=cfg)) == []
    assert fired(run_plugin(gamma_squeeze, bars(bid_ask_imbalance=-0.6), chain=_chain(), config=cfg)) == []
    assert fired(run_plugin(gamma_squeeze, bars(), chain=_chain())) == []  # not on SPY by default


def test_the_harness_runs_a_plugin_in_a_worker_as_the_host_does_with_the_same_candidates():
    bars = _opening_range() + [mk(i, 100.1) for i in range(60, 90)] + [mk(90, 100.8, o=100.1, buy=800, sell=200)]
    inline = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}})
    isolated = run_plugin(orb, bars, opening_range_min=1, config={"orb": {"after_min": 1}}, isolate=True)
    assert fired(isolated) == fired(inline) == [("orb", "long")]
    assert isolated.candidates == inline.candidates
    assert isolated.status["orb"]["worker"] == "spx_builtin_detectors.orb" and isolated.status["orb"]["calls"] == 91
