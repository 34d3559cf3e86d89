"""The example plugin's own tests, through the project's plugin testing harness."""

from services.detector.testing import run_plugin
from spx_common.models import MicroBar
from spx_example_detector import inside_bar

S = 1_000_000_000
T0 = 1_795_185_000 * S


def bar(i, low, high, close):
    return MicroBar(sym="SPY", interval="1s", start_ns=T0 + i * S, open=close, high=high, low=low, close=close,
                    volume=100, trades=1, closed=True)


def test_fires_on_a_breakout_after_inside_bars():
    bars = [bar(0, 99.0, 101.0, 100.0)] + [bar(i, 99.5, 100.5, 100.0) for i in range(1, 4)] + [bar(4, 100.5, 101.6, 101.5)]
    run = run_plugin(inside_bar, bars)
    assert [c.direction for c in run.candidates] == ["long"]
    assert run.candidates[0].stop == 99.0 and not run.refused


def test_does_not_fire_without_inside_bars():
    bars = [bar(i, 99.0 - i, 101.0 + i, 100.0) for i in range(5)] + [bar(5, 100.5, 120.0, 119.0)]
    run = run_plugin(inside_bar, bars)
    assert run.candidates == [] and run.status["inside_bar"]["status"] == "active"


def test_installed_but_not_run_by_default_and_enabled_by_configuration(monkeypatch):
    """Issue 19 item 5: only the built-in detectors run by default; the example is enabled by config."""
    from services.detector.config import DetectorConfig
    from services.detector.host import PluginHost
    from spx_common.config import load

    default = PluginHost()
    default.load_entry_points(enabled=DetectorConfig().entry_points_enabled)
    names = {p["name"] for p in default.describe()}
    assert "inside_bar" not in names and {"orb", "level_test"} <= names
    assert any(a.startswith("inside_bar ") for a in default.available) and not default.load_errors

    monkeypatch.setenv("SPX_DETECTOR_ENTRY_POINTS_ENABLED", "builtin,inside_bar")
    enabled = PluginHost()
    enabled.load_entry_points(enabled=load(DetectorConfig).entry_points_enabled)
    assert {"inside_bar", "orb"} <= {p["name"] for p in enabled.describe()} and not enabled.available

    everything = PluginHost()
    everything.load_entry_points(enabled=["*"])
    assert {"inside_bar", "orb"} <= {p["name"] for p in everything.describe()}
