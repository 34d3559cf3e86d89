"""Detector host: plugin isolation, API versions, validation, lifecycle and built-in detectors."""

import types

import pytest

from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.hookspecs import API_VERSION, hookimpl
from services.detector.host import PluginError, PluginHost
from services.detector.lifecycle import RANK, Lifecycle
from spx_common.models import MicroBar, SetupCandidate

S = 1_000_000_000
OPEN = 1_795_185_000 * S  # 2026-11-20 09:30 New York


def plugin(name, on_bar, api=API_VERSION, family="test"):
    mod = types.SimpleNamespace()
    mod.spx_detector_describe = hookimpl(lambda: {"name": name, "family": family, "api_version": api})
    if on_bar is not None:
        mod.spx_detector_on_bar = hookimpl(on_bar)
    return mod


def bar(i, close, sym="SPY", **kw):
    return MicroBar(sym=sym, interval="1s", start_ns=OPEN + i * S, open=close, high=close + 0.05, low=close - 0.05,
                    close=close, volume=100, trades=1, closed=True, **kw)


def good(ctx, bar):
    return [{"direction": "long", "entry_low": bar.close, "entry_high": bar.close + 1, "stop": bar.close - 1,
             "targets": [bar.close + 2, bar.close + 3]}]


def test_broken_plugins_are_isolated_counted_and_disabled():
    host = PluginHost(max_failures=2, budget_ms=1.0, max_slow=2)
    calls = []

    def boom(ctx, bar):
        raise RuntimeError("bug")

    def slow(ctx, bar):  # the budget is CPU time: a busy loop overruns it, a sleep would not
        import time
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.005:
            pass

    def mutator(ctx, bar):
        with pytest.raises(AttributeError):
            bar.close = -1  # bars are frozen: nobody can change what the host and others read
        with pytest.raises(AttributeError):
            ctx.bars[-1].close = -1
        with pytest.raises(TypeError):
            ctx.state["x"] = 1
        calls.append(1)
        return "not a list"

    for p in (plugin("boom", boom), plugin("slow", slow), plugin("mutator", mutator), plugin("good", good)):
        host.register(p, "test")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"], family_cap=10), host)
    b = bar(0, 100.0)
    out = [eng.on_bar(bar(i, 100.0)) for i in range(3)]
    assert all(len(o) == 1 for o in out[:1])  # the good plugin keeps producing
    status = {p["name"]: p for p in host.describe()}
    assert status["boom"]["status"] == "disabled" and status["boom"]["errors"] == 2
    assert status["slow"]["status"] == "disabled"
    assert status["mutator"]["status"] == "active" and status["mutator"]["refused"] == 3
    assert status["good"]["status"] == "active"
    assert b.close == 100.0
    reasons = [r for r, _ in eng.drain_blocks()]
    assert "plugin_output_not_a_list" in reasons


def test_incompatible_api_version_and_bad_descriptions_are_refused_clearly():
    host = PluginHost()
    with pytest.raises(PluginError, match="targets detector API 99"):
        host.register(plugin("old", good, api=99), "test")
    with pytest.raises(PluginError, match="no spx_detector_describe"):
        host.register(types.SimpleNamespace(), "test")
    host.register(plugin("a", good), "test")
    with pytest.raises(PluginError, match="already loaded"):
        host.register(plugin("a", good), "test")


def test_invalid_candidates_are_refused_with_reasons():
    def bad(ctx, bar):
        return [{"direction": "long", "entry_low": 100, "entry_high": 101, "stop": 102, "targets": [103]},
                {"direction": "sideways", "entry_low": 1, "entry_high": 2, "stop": 0},
                {"direction": "long", "entry_low": 100, "entry_high": 101, "stop": 99, "targets": [102],
                 "confidence": 0.7}]

    host = PluginHost()
    host.register(plugin("bad", bad), "test")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"]), host)
    trs = eng.on_bar(bar(0, 100.0))
    assert [t.to_state for t in trs] == ["forming"]
    assert sorted(r for r, _ in eng.drain_blocks()) == ["candidate_geometry", "candidate_invalid"]


def cand(**kw):
    base = dict(detector="d", family="f", sym="SPY", direction="long", entry_low=100.0, entry_high=101.0, stop=99.0,
                targets=[102.0, 103.0], ts=OPEN)
    base.update(kw)
    return SetupCandidate(**base)


def test_lifecycle_is_monotonic_and_jitter_around_the_trigger_gives_one_transition():
    lc = Lifecycle(confirm_ticks=3, confirm_ns=100_000_000)
    assert lc.add(cand(), {}, 0.5).to_state == "forming"
    prices = [100.5, 101.01, 100.99, 101.02, 100.98, 101.03, 101.02, 101.05, 101.04, 101.06, 101.1, 101.0]
    trs = []
    for i, p in enumerate(prices):
        trs += lc.on_price("SPY", p, OPEN + i * 50_000_000)
    assert [t.to_state for t in trs] == ["ready", "triggered"]
    trs = []
    for i, p in enumerate([102.1, 101.5, 102.2, 103.1, 98.0]):
        trs += lc.on_price("SPY", p, OPEN + S + i)
    assert [t.to_state for t in trs] == ["target1_hit", "target2_hit"]
    assert lc.count() == 0  # terminal setups leave the active set


def test_lifecycle_dedupes_invalidates_stops_and_expires():
    lc = Lifecycle(confirm_ticks=1, confirm_ns=0, ttl_ns=10 * S)
    lc.add(cand(), {}, None)
    assert lc.add(cand(ts=OPEN + 1), {}, None) is None and lc.duplicates == 1
    assert [t.to_state for t in lc.on_price("SPY", 98.0, OPEN + 1)] == ["invalidated"]
    lc.add(cand(detector="e"), {}, None)
    assert [t.to_state for t in lc.on_price("SPY", 101.5, OPEN + 2)] == ["triggered"]
    assert [t.to_state for t in lc.on_price("SPY", 98.9, OPEN + 3)] == ["stopped"]
    lc.add(cand(detector="g"), {}, None)
    assert [t.to_state for t in lc.on_price("SPY", 100.2, OPEN + 11 * S)] == ["expired"]
    ranks = [RANK[s] for s in ("forming", "ready", "triggered", "target1_hit", "target2_hit")]
    assert ranks == sorted(ranks)


def _engine(plugin_config: dict | None = None):
    import spx_builtin_detectors

    host = PluginHost()
    host.register(spx_builtin_detectors, "test")
    return DetectorEngine(DetectorConfig(symbols=["SPY"], opening_range_min=1, family_cap=5,
                                         plugin_config=plugin_config or {}), host)


def test_orb_fires_on_a_breakout_after_the_opening_range_and_not_inside_it():
    eng = _engine({"orb": {"after_min": 1}})
    trs = []
    for i in range(60):  # opening range 99.5..100.5
        trs += eng.on_bar(bar(i, 100.0 + (0.4 if i % 2 else -0.4)))
    for i in range(60, 120):  # inside the range: nothing
        trs += eng.on_bar(bar(i, 100.1))
    assert not [t for t in trs if t.detector == "orb"]
    trs += eng.on_bar(bar(120, 101.0, buy_volume=80.0, sell_volume=20.0))
    orb = [t for t in trs if t.detector == "orb"]
    assert len(orb) == 1 and orb[0].direction == "long" and orb[0].to_state == "forming"
    assert orb[0].microstructure["aggressor_skew"] == pytest.approx(0.6)


def test_vwap_reclaim_fires_after_a_run_below_vwap_and_degrades_without_microstructure():
    eng = _engine()
    trs = []
    for i in range(40):
        trs += eng.on_bar(bar(i, 100.0))
    for i in range(40, 62):
        trs += eng.on_bar(bar(i, 99.0))
    # the drop through VWAP after a run above it is a reject (short); no long yet
    assert [t.direction for t in trs if t.detector == "vwap_reclaim"] == ["short"]
    trs += eng.on_bar(bar(62, 100.5))  # back above after 20 closes below; microstructure null: still fires
    vr = [t for t in trs if t.detector == "vwap_reclaim"]
    assert [t.direction for t in vr] == ["short", "long"]


def test_degraded_data_blocks_new_setups_with_a_reason_and_healthy_data_lifts_it():
    import msgspec

    host = PluginHost()
    host.register(plugin("good", good), "test")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"], family_cap=10, macro_block_below=-1.0), host)
    eng.on_feed_status("poll", "stream silent for 5 s")
    assert eng.on_bar(bar(0, 100.0)) == []
    assert eng.drain_blocks() == [("data_degraded", "good SPY long feed poll: stream silent for 5 s")]
    eng.on_feed_status("tick")
    assert [t.to_state for t in eng.on_bar(bar(1, 100.0))] == ["forming"]
    eng2 = DetectorEngine(DetectorConfig(symbols=["SPY"], family_cap=10, macro_block_below=-1.0), host)
    filled = msgspec.structs.replace(bar(2, 100.0), gap_fill=True, volume=0.0)
    assert eng2.on_bar(filled) == []
    assert [r for r, _ in eng2.drain_blocks()] == ["data_degraded"]


def test_the_budget_is_cpu_time_so_a_wait_is_not_an_overrun():
    """On a loaded machine a healthy plugin's call can take long in wall time while using little CPU;
    only CPU time counts against the budget (wall-time budgets disabled healthy built-ins under load)."""
    import time

    def waits(ctx, bar):
        time.sleep(0.01)

    host = PluginHost(max_slow=1, budget_ms=1.0)
    host.register(plugin("waits", waits), "test")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"]), host)
    for i in range(3):
        eng.on_bar(bar(i, 100.0))
    doc = host.describe()[0]
    assert doc["status"] == "active" and doc["slow"] == 0 and doc["calls"] == 3
