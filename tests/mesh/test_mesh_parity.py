"""Parity of a replayed mesh run with the backtest (issue 27, ``spx backtest --parity``).

The real mesh replays the generated day with its option chain (feed journal on); the recorder stores the
run's transitions, orders and fills under its run id. ``spx backtest --parity RUN_ID --resolution tick
--journal auto`` re-runs the journaled window through the backtest and compares one by one.

What holds today, and is asserted: every transition the mesh recorded is made by the backtest at the same
event time and price (the detector host, gating and lifecycle in event-time order, live and offline). What
does not yet, and is only reported: the mesh's selector and broker take frames in arrival order, so at a
replay speed of 300x the contract chosen, its size and the orders' event times depend on wall-clock races
between the feed's quotes and the detector's transitions (the parity report lists them; see
docs/backtest.md, "Parity report")."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from services.cli import supervise
from spx_common.config import RuntimeConfig
from tests.conftest import free_port

pytestmark = pytest.mark.mesh
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_replayed_mesh_run_and_its_backtest_make_the_same_transitions(run_dir):
    runtime = RuntimeConfig(run_dir=run_dir)
    run_id = "parity-" + os.urandom(3).hex()
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(free_port()), "SPX_FEED_REPLAY_SPEED": "300",
                              "SPX_FEED_JOURNAL": "on", "SPX_RUN_ID": run_id,
                              # every subscriber connected before the first replayed event (a loaded machine
                              # starts the processes seconds apart; at 300x a second is five minutes of the day)
                              "SPX_FEED_REPLAY_START_DELAY_S": "20"})
    db = run_dir / "spx.sqlite3"

    def recorded() -> tuple[int, int]:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
                n = c.execute("select count(*) from setup_transitions where run_id = ?", (run_id,)).fetchone()[0]
                f = c.execute("select count(*) from fills where run_id = ?", (run_id,)).fetchone()[0]
                return n, f
        except sqlite3.Error:
            return 0, 0

    try:
        supervise.wait_running(runtime, 90)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (recorded()[0] >= 40 and recorded()[1] >= 2):
            time.sleep(1.0)
    finally:
        supervise.stop(runtime, 60)
    n, f = recorded()
    assert n >= 40 and f >= 2, f"the mesh recorded {n} transitions and {f} fills; logs in {runtime.path('logs')}"
    out = run_dir / "parity"
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir)}
    p = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "--parity", run_id, "--resolution",
                        "tick", "--journal", "auto", "--workers", "1", "--quiet", "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads((out / "parity.json").read_text())
    assert doc["compared"]["transitions"][0] == n
    transitions = [d for d in doc["differences"] if d["kind"] == "transitions"]
    assert doc["counts"]["transitions"] == 0, transitions[:10]
    # the option side was traded in both (its differences are reported, not asserted: module docstring)
    assert doc["compared"]["fills"][0] >= 2 and doc["compared"]["fills"][1] >= 1, doc["compared"]
