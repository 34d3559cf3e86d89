"""Plugin isolation: hostile plugin packages, installed through entry points, each in its own worker.

The hostile plugins (``tests/detector/hostile``) sleep, loop, leak memory, segfault, raise and return
garbage; ``good`` returns one candidate per bar. Properties: ``good``'s candidates reach the lifecycle on
every bar, no bar waits on a hostile plugin more than once per incident (bounded by its ``hang_ms``),
each hostile plugin is disabled with its reason, probed again after its back-off, and re-enabled once it
behaves; built-in detectors give the same transitions isolated as in process.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import Limits
from services.detector.isolation import IsolatedHost, build_host
from spx_common.models import MicroBar, Trade

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000
OPEN = 1_795_185_000 * S  # 2026-11-20 09:30 New York
GROUP = "spx.detectors.hostile_test"
HOSTILE = ["sleeper", "looper", "hog", "segfault", "raiser", "garbage"]


def install_plugins(tmp_path: Path, monkeypatch, names: list[str], group: str = GROUP) -> None:
    """A distribution's metadata with one entry point per plugin package, on the path of this process and
    of every worker (what ``pip install`` of a plugin package leaves behind)."""
    dist = tmp_path / "hostile_plugins-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 1.0\n")
    eps = "".join(f"{n} = tests.detector.hostile.{n}\n" for n in names)
    (dist / "entry_points.txt").write_text(f"[{group}]\n{eps}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    monkeypatch.setenv("HOSTILE_BEHAVE_FILE", str(tmp_path / "behave"))


def bar(i: int, sym: str = "SPY") -> MicroBar:
    c = 100.0 + i / 10
    return MicroBar(sym=sym, interval="1s", start_ns=OPEN + i * S, open=c, high=c + 0.05, low=c - 0.05, close=c,
                    volume=100.0, trades=1, closed=True)


def invalidate(engine: DetectorEngine, i: int) -> None:
    """A print below the stop: the setup leaves the lifecycle, so the next bar's candidate forms again."""
    trs = engine.on_ticks([Trade(sym="SPY", price=bar(i).close - 5, size=1.0, ts=OPEN + i * S + S // 2)])
    assert [t.to_state for t in trs] == ["invalidated"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    install_plugins(tmp_path, monkeypatch, ["good", *HOSTILE])
    clock = Clock()
    host = IsolatedHost(max_failures=2, max_slow=2, retry_s=60.0, clock=clock,
                        defaults=Limits(cpu_ms=20, stop_ms=150, hang_ms=700, mem_mb=320),
                        # hog: its allocations are slow, not hostile, and page in slowly on a busy machine (its
                        # fault is memory, not time); looper: CPU-bound, so the CPU stop must fire before any
                        # wall-time limit even on a machine too busy to give it a core
                        limits={"hog": {"cpu_ms": 5000, "stop_ms": 5000, "hang_ms": 30000},
                                "looper": {"hang_ms": 30000}})
    host.load_entry_points(GROUP)
    engine = DetectorEngine(DetectorConfig(symbols=["SPY"], family_cap=1000, macro_block_below=-1.0), host)
    yield host, engine, clock, tmp_path
    host.close()
    assert all(not w.alive for w in host.workers)


def test_hostile_plugins_are_contained_disabled_and_recover(hostile):
    host, engine, clock, tmp_path = hostile
    assert not host.load_errors
    assert sorted(host.plugins) == sorted(["good", *HOSTILE])
    assert len({p.worker for p in host.plugins.values()}) == 7  # one worker per plugin package
    started = time.monotonic()
    waits = []
    for i in range(8):
        t0 = time.monotonic()
        trs = engine.on_bar(bar(i))
        waits.append(time.monotonic() - t0)
        # good's candidate reaches the lifecycle on every bar, whatever the others do
        assert [(t.detector, t.to_state) for t in trs] == [("good", "forming")], (i, trs)
        invalidate(engine, i)
    took = time.monotonic() - started
    # the sleeper sleeps 30 s a call and the looper never returns: neither holds a bar past hang_ms + slack
    assert took < 25, (took, waits)
    status = {p["name"]: p for p in host.describe()}
    assert status["good"]["status"] == "active" and status["good"]["calls"] == 8
    for name in ("sleeper", "segfault"):
        assert status[name]["status"] == "disabled" and status[name]["crashes"] == 1, status[name]
        assert status[name]["retry_in_s"] == 60.0
    assert "no answer in 700 ms" in status["sleeper"]["reason"]
    assert "signal 11" in status["segfault"]["reason"]
    assert status["looper"]["status"] == "disabled" and "stopped after 150 ms of CPU" in status["looper"]["reason"]
    assert status["raiser"]["status"] == "disabled" and "raiser: bug" in status["raiser"]["reason"]
    assert status["hog"]["status"] == "disabled" and "limit: restarted" in status["hog"]["reason"], status["hog"]
    # garbage output is refused item by item with reasons; bad output is not a fault
    assert status["garbage"]["status"] == "active" and status["garbage"]["refused"] >= 8
    reasons = {r for r, _ in engine.drain_blocks()}
    assert {"plugin_output_not_a_list", "candidate_not_a_map", "candidate_invalid"} <= reasons
    disabled = [e["plugin"] for e in host.events.status if e["status"] == "disabled"]
    assert sorted(disabled) == sorted(["sleeper", "segfault", "looper", "raiser", "hog"])
    host.events.status.clear()

    # before the back-off nobody is called again
    n_calls = {p.name: p.health.calls for p in host.plugins.values()}
    engine.on_bar(bar(8))
    assert all(host.plugins[n].health.calls == n_calls[n] for n in ("sleeper", "segfault", "looper", "raiser", "hog"))

    # after it, one probe call each; they behave now, so each is active again (crashed workers restart first)
    (tmp_path / "behave").touch()
    clock.t += 61
    deadline = time.monotonic() + 30
    i = 9
    while time.monotonic() < deadline and any(p.status != "active" for p in host.plugins.values()):
        engine.on_bar(bar(i))
        i += 1
        time.sleep(0.05)
    status = {p["name"]: p for p in host.describe()}
    assert all(s["status"] == "active" for s in status.values()), status
    enabled = sorted(e["plugin"] for e in host.events.status if e["status"] == "active")
    assert enabled == sorted(["sleeper", "segfault", "looper", "raiser", "hog"])
    assert status["segfault"]["worker_restarts"] == 1 and status["sleeper"]["worker_restarts"] == 1


def test_a_failed_probe_doubles_the_back_off(tmp_path, monkeypatch):
    install_plugins(tmp_path, monkeypatch, ["raiser"])
    clock = Clock()
    host = IsolatedHost(max_failures=1, retry_s=10.0, clock=clock)
    try:
        host.load_entry_points(GROUP)
        engine = DetectorEngine(DetectorConfig(symbols=["SPY"]), host)
        engine.on_bar(bar(0))
        assert host.describe()[0]["retry_in_s"] == 10.0
        clock.t += 10
        engine.on_bar(bar(1))  # the probe raises again
        doc = host.describe()[0]
        assert doc["status"] == "disabled" and doc["retry_in_s"] == 20.0 and doc["calls"] == 2
        assert doc["reason"].startswith("probe failed")
    finally:
        host.close()


def _day(n: int) -> list[MicroBar]:
    out = []
    for i in range(n):
        c = 100 + 2 * math.sin(i / 40) + 0.4 * math.sin(i / 7)
        out.append(MicroBar(sym="SPY", interval="1s", start_ns=OPEN + i * S, open=c - 0.05, high=c + 0.1,
                            low=c - 0.1, close=c, volume=100.0 + i % 17, trades=3, closed=True,
                            buy_volume=55.0 + i % 13, sell_volume=45.0))
    return out


def test_builtin_detectors_give_the_same_transitions_isolated_and_in_process():
    bars = _day(2400)
    seen = {}
    for mode in ("inline", "process"):
        cfg = DetectorConfig(symbols=["SPY"], isolation=mode, opening_range_min=1, family_cap=5)
        host = build_host(cfg)
        try:
            engine = DetectorEngine(cfg, host)
            seen[mode] = [(t.setup_id, t.detector, t.to_state, t.ts) for b in bars for t in engine.on_bar(b)]
            blocks = engine.drain_blocks()
        finally:
            close = getattr(host, "close", None)
            close and close()
        seen[mode + "_blocks"] = blocks
    assert seen["inline"], "the day must make setups for the comparison to mean something"
    assert seen["process"] == seen["inline"]
    assert seen["process_blocks"] == seen["inline_blocks"]


def _real_day_dir() -> Path | None:
    """The shared real trading days: ``../shared/data/real`` beside the checkout (CI's layout), else the
    session machine's ``/work/shared`` (SPX_REAL_DATA overrides)."""
    for d in (os.environ.get("SPX_REAL_DATA"), ROOT.parent / "shared" / "data" / "real", "/work/shared/data/real"):
        if d and Path(d, "2013-10-07-trades-SPY.csv.gz").exists():
            return Path(d)
    return None


def test_builtin_detectors_on_a_real_day_give_the_same_transitions_isolated_and_in_process():
    from services.aggregator.bars import bars_from_events
    from spx_common.flatfiles import read_merged

    real = _real_day_dir()
    if real is None:
        pytest.skip("the shared real days are not beside this checkout")
    start = 1381152600 * S  # 2013-10-07 09:30 New York
    events = [e for e in read_merged([real / "2013-10-07-trades-SPY.csv.gz", real / "2013-10-07-quotes-SPY.csv.gz"],
                                     symbols=["SPY"]) if start - 600 * S <= e.ts < start + 5400 * S]
    bars = [b for b in bars_from_events(events) if b.closed]
    assert len(bars) > 4000  # 100 minutes of 1 s bars (a second without a trade makes no bar)
    seen = {}
    for mode in ("inline", "process"):
        cfg = DetectorConfig(symbols=["SPY"], isolation=mode, family_cap=5)
        host = build_host(cfg)
        try:
            engine = DetectorEngine(cfg, host)
            seen[mode] = [(t.setup_id, t.detector, t.to_state, t.ts) for b in bars for t in engine.on_bar(b)]
        finally:
            getattr(host, "close", lambda: None)()
    assert seen["inline"], "the window must make setups for the comparison to mean something"
    assert seen["process"] == seen["inline"]
