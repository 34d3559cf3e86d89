"""``spx status`` on the real supervisord mesh shows every switch with the value each running service
applies, read from their heartbeats, and follows ``spx flags set`` without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.cli import supervise
from spx_common.config import SERVICES, RuntimeConfig
from spx_common.flags import FLAGS
from tests.conftest import eventually, free_port
from tests.rollout.helpers import spx_flags_set

pytestmark = pytest.mark.mesh


def _status(run_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", "status", *args],
                          env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir)}, capture_output=True, text=True,
                          timeout=30)


def test_spx_status_shows_each_services_switches_and_follows_flags_set(run_dir, monkeypatch):
    env = {"SPX_GATEWAY_PORT": str(free_port())}
    monkeypatch.setenv("SPX_GATEWAY_PORT", env["SPX_GATEWAY_PORT"])
    runtime = RuntimeConfig(run_dir=run_dir)
    supervise.start(runtime, env)
    try:
        supervise.wait_running(runtime, 60)
        pids = {p["name"]: p["pid"] for p in supervise.processes(runtime)}

        def switches():
            out = _status(run_dir, "--json")
            return out.returncode == 0 and json.loads(out.stdout)["switches"]

        every = list(SERVICES)  # spx status lists services in this order
        sw = eventually(lambda: (lambda s: s and all(sorted(sum(v.values(), [])) == sorted(every) for v in s.values())
                                 and s)(switches()), 30, 0.5, what="every service reports its switches")
        assert set(sw) == set(FLAGS)
        assert sw["tactical_alerts"] == {"True": every} and sw["kill_switch"] == {"False": every}

        out = spx_flags_set(run_dir, "tactical_alerts", "false")
        assert all(s in out for s in SERVICES), out
        eventually(lambda: (switches() or {}).get("tactical_alerts") == {"False": every}, 10, 0.5,
                   what="spx status shows the new value for every service")
        text = _status(run_dir).stdout
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("tactical_alerts"))
        assert f"False (all {len(every)} services)" in line and line.rstrip().endswith("*")
        spx_flags_set(run_dir, "tactical_alerts", "true")
        eventually(lambda: (switches() or {}).get("tactical_alerts") == {"True": every}, 10, 0.5)
        assert {p["name"]: p["pid"] for p in supervise.processes(runtime)} == pids  # nothing restarted
    finally:
        supervise.stop(runtime, 30)
