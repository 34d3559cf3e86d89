"""The backtester on a generated three-day dataset with planted setups whose outcomes are known by
hand; determinism; baseline comparison and promotion both ways; minute-bar fallback refused; the
CLI end to end. Real stores (SQLite and PostgreSQL), the real detector host, lifecycle and exit
advisor."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.backtest import run as bt
from services.backtest.stats import Criteria, compare, max_drawdown, newcombe, wilson
from services.detector.config import DetectorConfig
from services.detector.market import ET
from spx_common.models import MicroBar
from spx_common.store import open_store

S = 10**9
DAYS = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
CFG = DetectorConfig(entry_points=False, plugins=["tests.backtest.planted_plugin"], symbols=["SPY"])
ROOT = Path(__file__).resolve().parents[2]


def open_ns(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, 9, 30, tzinfo=ET).timestamp()) * S


def bar(t0, i, c, *, hi=None, lo=None, v=100.0, interval="1s"):
    return MicroBar(sym="SPY", interval=interval, start_ns=t0 + i * S, open=c, high=c if hi is None else hi,
                    low=c if lo is None else lo, close=c, volume=v, trades=1, closed=True)


def planted_day(d: dt.date, after: list[tuple[float, float, float]]) -> list[MicroBar]:
    """Flat at 100, the planted signal bar (close 101.05 in the entry zone, volume 777), a trigger bar
    at 101.3 (entry 101.3: stop 100.3 is exactly 1R below, targets 1R and 2R above), then ``after``
    bars as (close, high, low)."""
    t0 = open_ns(d)
    bars = [bar(t0, i, 100.0) for i in range(10)]
    bars.append(bar(t0, 10, 101.05, v=777))
    bars.append(bar(t0, 11, 101.3))
    for j, (c, h, lo) in enumerate(after):
        bars.append(bar(t0, 12 + j, c, hi=h, lo=lo))
    return bars


# day 1: T1, T2, then the runner stops at breakeven -> 0.5*1 + 0.25*2 + 0.25*0 = +1.0 R
# day 2: the stop                                  -> -1.0 R
# day 3: T1, then breakeven stop                   -> 0.5*1 + 0.5*0 = +0.5 R
PLANTED = {
    DAYS[0]: [(102.5, 102.5, 101.5), (103.5, 103.5, 102.5), (101.0, 103.0, 101.0)],
    DAYS[1]: [(100.5, 101.3, 100.2)],
    DAYS[2]: [(102.5, 102.5, 101.5), (101.0, 102.0, 101.0)],
}


def seed(store, minute_day: dt.date | None = None) -> None:
    for d, after in PLANTED.items():
        bars = planted_day(d, after)
        if d == minute_day:  # only vendor minute bars stored for this day
            bars = [MicroBar(**{**{f: getattr(b, f) for f in b.__struct_fields__}, "interval": "60s"}) for b in bars]
        store.upsert_bars(bars)


def test_planted_setups_are_found_and_figures_match_a_hand_computation(db_url):
    store = open_store(db_url)
    try:
        seed(store)
        res = bt.run(store, bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"],
                                       criteria=Criteria(min_trades=3)), CFG)
        trades = res["trades"]
        assert [(t["t1_hit"], t["t2_hit"], t["r"]) for t in trades] == [
            (True, True, 1.0), (False, False, -1.0), (True, False, 0.5)]
        assert all(t["entry"] == 101.3 and t["stop"] == 100.3 for t in trades)
        o = res["overall"]
        assert (o["trades"], o["t1_hits"], o["t2_hits"]) == (3, 2, 1)
        assert o["t1_rate"] == pytest.approx(2 / 3, abs=1e-6) and o["t2_rate"] == pytest.approx(1 / 3, abs=1e-6)
        assert o["expectancy_r"] == pytest.approx(0.5 / 3, abs=1e-6)
        assert o["max_drawdown_r"] == pytest.approx(1.0)  # +1, then -1: from the peak 1.0 down to 0.0
        lo, hi = wilson(2, 3)
        assert o["t1_ci"] == [round(lo, 6), round(hi, 6)]
        assert res["families"]["planted"]["trades"] == 3
        ev = res["evidence"]
        assert [d["resolution"] for d in ev["data"]] == ["second"] * 3 and not ev["fallback_to_minute_bars"]
        assert ev["sample"]["resolved_trades"] == 3 and ev["plugins"] == [
            {"name": "planted", "family": "planted", "version": "1.0"}]
        assert res["promotion"]["promote"] is False  # no baseline given
        # the setup instances were written with source "backtest", apart from live rows
        rows = store.setup_instances(source="backtest")
        assert len(rows) == 3 and all(r["setup_id"].startswith("bt-") for r in rows)
        assert {r["state"] for r in rows} >= {"stopped"}
        assert store.setup_instances(source="live") == []
    finally:
        store.close()


def test_same_data_and_config_give_identical_results(run_dir):
    store = open_store(f"sqlite:///{run_dir}/a.sqlite3")
    try:
        seed(store)
        opts = bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"])
        a = json.dumps(bt.run(store, opts, CFG), sort_keys=True)
        b = json.dumps(bt.run(store, opts, CFG), sort_keys=True)
        assert a == b
        assert len(store.setup_instances(source="backtest")) == 3  # re-running rewrote the same rows
    finally:
        store.close()


def test_baseline_comparison_refuses_a_small_sample_whose_interval_straddles_and_names_why(run_dir):
    """Three planted trades against a clearly worse baseline: the point deltas are large, but with so few
    trades the intervals reach below the thresholds, so the confidence-aware rule refuses (it promoted on
    point deltas before issue 27)."""
    store = open_store(f"sqlite:///{run_dir}/a.sqlite3")
    try:
        seed(store)
        worse = {"trades": [{"r": -1.0, "t1_hit": False, "t2_hit": False, "family": "planted"}] * 3,
                 "range": {"trading_days": 3}}
        better = {"trades": [{"r": 2.0, "t1_hit": True, "t2_hit": True, "family": "planted"}] * 3}
        opts = bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"], criteria=Criteria(min_trades=3),
                          baseline=worse, record=False)
        p = bt.run(store, opts, CFG)["promotion"]
        assert p["t1_delta_pp"] == pytest.approx(200 / 3, abs=1e-4)
        lo, hi = newcombe(2, 3, 0, 3)
        assert p["t1_delta_ci_pp"] == [round(lo * 100, 6), round(hi * 100, 6)] and lo < 0.01 < p["t1_delta_pp"]
        assert p["expectancy_delta_r"] == pytest.approx(0.5 / 3 + 1.0, abs=1e-6)
        assert p["promote"] is False and len(p["refusals"]) == 2
        assert p["refusals"][0] == "T1 delta +66.67 pp, 95% interval [-5.86, +93.85] pp: lower bound < +1.00 pp"
        assert p["refusals"][1].startswith("expectancy delta +1.167 R, 95% interval [+0.000,")
        assert {c["criterion"]: c["pass"] for c in p["criteria"]} == {
            "data": True, "sample": True, "T1 hit rate delta": False, "expectancy delta (R)": False, "throughput": True}
        opts.baseline = better
        p = bt.run(store, opts, CFG)["promotion"]
        assert p["promote"] is False
        assert any(r.startswith("T1 delta") for r in p["refusals"])
        assert any(r.startswith("expectancy delta") for r in p["refusals"])
        opts.baseline, opts.criteria = worse, Criteria(min_trades=30)
        p = bt.run(store, opts, CFG)["promotion"]
        assert p["promote"] is False and "sample 3 resolved trades < minimum 30" in p["refusals"]
    finally:
        store.close()


def _trades(n: int, t1: int, r_hit: float, r_miss: float, usd: tuple[float, float] | None = None) -> list[dict]:
    out = []
    for i in range(n):
        hit = i < t1
        t = {"r": r_hit if hit else r_miss, "t1_hit": hit, "t2_hit": False, "family": "f"}
        if usd is not None:
            t["pnl_usd"] = usd[0] if hit else usd[1]
        out.append(t)
    return out


def test_promotion_rule_at_the_boundary_uses_the_lower_bound_of_each_interval():
    base = _trades(400, 200, 1.0, -1.0)  # T1 50%, expectancy 0
    # a clear improvement on a large sample: every lower bound clears its threshold
    strong = _trades(400, 300, 1.0, -1.0)  # T1 75%, expectancy +0.5 R
    p = compare(strong, base, Criteria(), fallback=False, days=10, baseline_days=10)
    assert p["promote"] and p["t1_delta_ci_pp"][0] >= 1.0 and p["expectancy_delta_ci_r"][0] >= 0.05
    # the point deltas clear the thresholds (+3 pp, +0.06 R) but the intervals straddle them: refused
    near = _trades(400, 212, 1.0, -1.0)
    p = compare(near, base, Criteria(), fallback=False, days=10, baseline_days=10)
    assert p["t1_delta_pp"] == pytest.approx(3.0) and p["expectancy_delta_r"] == pytest.approx(0.06)
    assert p["t1_delta_ci_pp"][0] < 1.0 < p["t1_delta_pp"] and p["expectancy_delta_ci_r"][0] < 0.05
    assert not p["promote"] and len(p["refusals"]) == 2
    # throughput guardrail: as good per trade, but fewer than 80% of the baseline's trades per day
    p = compare(strong[:300], base, Criteria(), fallback=False, days=10, baseline_days=10)
    assert not p["promote"] and p["refusals"] == ["throughput 30.00 trades/day < 80% of the baseline's 40.00"]
    assert p["throughput_share"] == pytest.approx(0.75)
    # dollars: judged too when both sides carry option P&L
    p = compare(_trades(400, 300, 1.0, -1.0, (100.0, -300.0)), _trades(400, 200, 1.0, -1.0, (100.0, -80.0)),
                Criteria(), fallback=False, days=10, baseline_days=10)
    usd = next(c for c in p["criteria"] if c["criterion"] == "expectancy delta ($)")
    assert p["expectancy_delta_usd"] == pytest.approx(-10.0) and not usd["pass"] and not p["promote"]
    assert p["refusals"] == [next(r for r in p["refusals"] if r.startswith("dollar expectancy delta -10.00"))]
    # the seeds' absolute floors are reported as targets, not gating
    assert p["targets"]["t1_rate"] == {"value": 0.75, "target": 0.64, "meets": True}


def test_minute_bar_fallback_is_reported_and_refused_for_promotion(run_dir):
    store = open_store(f"sqlite:///{run_dir}/a.sqlite3")
    try:
        seed(store, minute_day=DAYS[1])
        worse = {"trades": [{"r": -1.0, "t1_hit": False, "t2_hit": False, "family": "planted"}] * 3}
        res = bt.run(store, bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"], baseline=worse,
                                       criteria=Criteria(min_trades=3), record=False), CFG)
        ev = res["evidence"]
        assert [d["resolution"] for d in ev["data"]] == ["second", "minute", "second"]
        assert ev["data"][1]["source"] == "vendor minute bars (fallback)" and ev["fallback_to_minute_bars"]
        p = res["promotion"]
        assert p["promote"] is False
        assert p["refusals"][0] == ("data fell back to vendor minute bars for at least one day "
                                    "(second bars or ticks required)")
    finally:
        store.close()


def test_statistics_helpers():
    assert max_drawdown([1, -1, -1, 2, -3]) == 3
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_cli_writes_markdown_png_and_json(run_dir, tmp_path):
    url = f"sqlite:///{run_dir}/cli.sqlite3"
    store = open_store(url)
    seed(store)
    store.close()
    out = tmp_path / "report"
    env = {**os.environ, "DATABASE_URL": url, "SPX_RUNTIME_RUN_DIR": str(run_dir),
           "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.backtest.planted_plugin"}
    p = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "2026-11-16", "2026-11-18",
                        "--symbols", "SPY", "--out", str(out), "--save-baseline", str(tmp_path / "base.json"),
                        "--min-trades", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "3 resolved trades" in p.stdout and "REFUSED: no baseline" in p.stdout
    md = (out / "report.md").read_text()
    assert "| planted | 3 |" in md and "REFUSED" in md and "report.png" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "report.json").read_text())
    assert doc["overall"]["trades"] == 3
    again = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "2026-11-16", "2026-11-18",
                            "--symbols", "SPY", "--out", str(tmp_path / "r2"), "--baseline",
                            str(tmp_path / "base.json"), "--min-trades", "3", "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "REFUSED: T1 delta +0.00 pp" in again.stdout  # the same run is no improvement on itself
    bad = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "2026-11-18", "2026-11-16"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "is before FROM" in bad.stderr


def test_tick_resolution_replays_stored_trades_through_the_live_aggregator(db_url):
    from spx_common.models import Quote, Trade

    t0 = open_ns(DAYS[0])
    evs = []
    for i in range(10):
        evs.append(Quote(sym="SPY", bid=99.99, ask=100.01, bid_size=100, ask_size=100, ts=t0 + i * S))
        evs.append(Trade(sym="SPY", price=100.0, size=10, ts=t0 + i * S + 1))
    evs.append(Trade(sym="SPY", price=101.05, size=777, ts=t0 + 10 * S))  # the planted bar: volume 777
    # the first tick of second 11 closes the planted bar (the setup forms after it, as live); the
    # next four, 600 ms beyond the trigger, pass the 3-tick / 500 ms debounce: triggered at 101.3
    evs += [Trade(sym="SPY", price=101.3, size=1, ts=t0 + 11 * S + k * 200_000_000) for k in range(5)]
    evs += [Trade(sym="SPY", price=p, size=1, ts=t0 + (12 + j) * S) for j, p in enumerate((102.5, 103.5, 101.0))]
    store = open_store(db_url)
    try:
        store.insert_events(evs)
        res = bt.run(store, bt.Options(start=DAYS[0], end=DAYS[0], resolution="tick", symbols=["SPY"],
                                       record=False), CFG)
        assert [(t["t1_hit"], t["t2_hit"], t["r"], t["entry"]) for t in res["trades"]] == [(True, True, 1.0, 101.3)]
        ev = res["evidence"]
        assert ev["data"] == [{"day": "2026-11-16", "source": "store ticks", "resolution": "tick", "rows": len(evs),
                               "options": {"source": "none"}}]
        assert ev["sample"]["ticks"] == len(evs) and not ev["fallback_to_minute_bars"]
    finally:
        store.close()


def test_apply_profile_requarantines_with_the_evidence_in_the_reason(run_dir, tmp_path):
    """A family failing its floors in the backtest is quarantined; the profile reason names the data
    the backtest used; backtest rows never count in the live rolling window."""
    url = f"sqlite:///{run_dir}/p.sqlite3"
    store = open_store(url)
    seed(store)
    from spx_common.store.profile import Floors, Profile
    store.save_profile(Profile(defaults=Floors(min_t1_hit_rate=0.9, min_expectancy_r=0.5, min_trades=3)),
                       author="test", reason="strict floors")
    store.close()
    env = {**os.environ, "DATABASE_URL": url, "SPX_RUNTIME_RUN_DIR": str(run_dir),
           "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.backtest.planted_plugin"}
    p = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "2026-11-16", "2026-11-18",
                        "--symbols", "SPY", "--out", str(tmp_path / "r"), "--apply-profile", "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "quarantined planted: backtest 2026-11-16..2026-11-18 (data: store second bars; config" in p.stdout
    store = open_store(url)
    try:
        assert not store.get_active_profile().allows("planted")
        assert store.family_stats(0, 2**62) == []  # live window: backtest rows excluded
        # stored instances carry the lifecycle's own resolution; issue 18: day 3's setup, still open at the
        # end of the data, expires at its session's close and is counted (it used to stay open, uncounted)
        assert [s.trades for s in store.family_stats(0, 2**62, source="backtest")] == [3]
    finally:
        store.close()
